//! A grant table for tests of grant devices (this crate's and the cache
//! model's): a real [`GrantTable`] over v1 entries in host memory, with the
//! back end's mappings played by setting an entry's in-use flag as Xen
//! does. Test code only (feature `fake-grants`).

#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use tidepool_mm::PAGE_SIZE;
use tidepool_xen_abi::grant::GTF_writing;
use tidepool_xen_abi::{
    DomId, Grant, GrantAccess, GrantEntryV1, GrantError, GrantNotEnded, GrantRef, GrantTable,
    GrantableFrame,
};

use crate::{OwnedPhysRange, PageGrants};

/// A v1 grant table over entries in host memory.
pub struct FakeGrantTable {
    entries: &'static [GrantEntryV1],
    table: GrantTable<'static>,
}

impl FakeGrantTable {
    /// A table with `usable` entries besides the 8 reserved ones.
    pub fn new(usable: usize) -> Self {
        let entries: &'static [GrantEntryV1] = Vec::leak(
            (0..8 + usable)
                .map(|_| GrantEntryV1::default())
                .collect::<Vec<_>>(),
        );
        Self {
            entries,
            table: GrantTable::new(entries).expect("fresh entries"),
        }
    }

    /// The back end maps `gref` (Xen sets the in-use flag).
    pub fn map_by_back_end(&self, gref: GrantRef) {
        self.entries[gref.0 as usize]
            .flags
            .fetch_or(GTF_writing, Ordering::AcqRel);
    }

    /// What entry `gref` grants: (flags, domain, frame).
    pub fn entry(&self, gref: GrantRef) -> (u16, u16, u32) {
        let entry = &self.entries[gref.0 as usize];
        (
            entry.flags.load(Ordering::Acquire),
            entry.domid.load(Ordering::Acquire),
            entry.frame.load(Ordering::Acquire),
        )
    }

    /// Entries granted now.
    pub fn granted(&self) -> usize {
        self.table.usable() - self.table.free_count()
    }
}

// SAFETY: grants host entries no other domain reads; the frames it names
// are the test's own pages, which no domain can reach.
unsafe impl PageGrants for FakeGrantTable {
    fn grant(
        &mut self,
        domid: DomId,
        page: &OwnedPhysRange,
        access: GrantAccess,
    ) -> Result<Grant, GrantError> {
        assert_eq!(page.range().size, PAGE_SIZE, "one page per grant");
        assert!(page.range().base.is_aligned(PAGE_SIZE));
        // SAFETY: a page of a test's memory, which no domain can reach.
        let frame = unsafe { GrantableFrame::new(page.range().base.0 / PAGE_SIZE) };
        self.table.grant(domid, frame, access)
    }

    fn end(&mut self, grant: Grant) -> Result<(), GrantNotEnded> {
        self.table.end(grant)
    }
}
