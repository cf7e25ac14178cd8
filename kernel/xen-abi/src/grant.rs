//! Grant table v1 (`xen/include/public/grant_table.h`): the entry layout,
//! the setup and size-query arguments, and the guest's bookkeeping of which
//! references are free.
//!
//! Arm supports only version 1. The kernel maps the table's frames with
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)` into the region the
//! device tree's `/hypervisor` node names, and hands the entries to
//! [`GrantTable`] as a slice.
//!
//! A grant lets another domain read or write one of this domain's frames,
//! and a grant mapping puts another domain's frame at one of this domain's
//! guest-physical frames; both name memory, so both take tokens only the
//! memory's owner makes: a [`GrantableFrame`] to grant, a
//! [`VacantFrame`] to map at (given back, on unmap, by
//! the [`GrantMapping`] the map returned). A grant is ended only through the
//! [`Grant`] that made it: ending another's grant would free its entry for
//! reuse, and the other domain, still told that reference, would reach
//! whatever frame the entry names next.

use core::fmt;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use crate::domain::DomId;
use crate::memory::VacantFrame;

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_map_grant_ref: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_unmap_grant_ref: u32 = 1;
/// `GNTTABOP_setup_table`.
pub const GNTTABOP_setup_table: u32 = 2;
/// `GNTTABOP_query_size`.
pub const GNTTABOP_query_size: u32 = 6;

/// `GTF_permit_access`: the entry lets `domid` map or access `frame`.
pub const GTF_permit_access: u16 = 1;
/// `GTF_type_mask`: the entry's type bits.
pub const GTF_type_mask: u16 = 3;
/// `GTF_readonly`: only read-only access is permitted.
pub const GTF_readonly: u16 = 1 << 2;
/// `GTF_reading`: Xen marks the entry in use for reading (set by Xen).
pub const GTF_reading: u16 = 1 << 3;
/// `GTF_writing`: Xen marks the entry in use for writing (set by Xen).
pub const GTF_writing: u16 = 1 << 4;

/// `GNTMAP_host_map`: map the granted frame into the caller's address space
/// (on Arm: at the guest-physical address `host_addr`).
pub const GNTMAP_host_map: u32 = 1 << 1;
/// `GNTMAP_readonly`: map read-only.
pub const GNTMAP_readonly: u32 = 1 << 2;

/// `GNTTAB_NR_RESERVED_ENTRIES`: entries 0..8 belong to the toolstack
/// (0 console, 1 xenstore) and are never handed out.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// Entries per 4 KiB grant-table frame.
pub const GRANT_ENTRIES_PER_FRAME: usize = 4096 / size_of::<GrantEntryV1>();

/// A grant reference: the index of an entry in the grant table.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct GrantRef(pub u32);

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gref {}", self.0)
    }
}

/// One of this domain's frames, which its owner lets another domain access
/// through a grant ([`GrantTable::grant`]). Only [`GrantableFrame::new`],
/// the owner's promise, makes one.
///
/// ```compile_fail,E0133
/// // Sharing a frame with another domain is the owner's promise.
/// let frame = tidepool_xen_abi::GrantableFrame::new(0x40123);
/// ```
///
/// ```compile_fail,E0451
/// let frame = tidepool_xen_abi::GrantableFrame { gfn: 0x40123 };
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct GrantableFrame {
    gfn: u64,
}

impl GrantableFrame {
    /// Guest frame `gfn` (guest-physical address >> 12), to be granted.
    ///
    /// # Safety
    ///
    /// The caller owns frame `gfn` (this domain's RAM, allocated to it) and
    /// keeps it allocated, given to nothing else, until the grant made from
    /// this token has ended ([`GrantTable::end`] returned `Ok`), or for
    /// good. Until then the other domain may read it (and, with
    /// [`GrantAccess::ReadWrite`], write it), so the kernel accesses the
    /// page only as its protocol with that domain allows: atomics for a
    /// shared ring, or a data page only while no request that names it is
    /// in flight (before it is sent, after its response).
    #[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
    pub const unsafe fn new(gfn: u64) -> Self {
        Self { gfn }
    }
}

/// A grant made by [`GrantTable::grant`]: only the table makes one, and
/// [`GrantTable::end`] takes it, so only the grant's maker can end it. Its
/// [`GrantRef`] is what the other domain is told.
///
/// ```compile_fail,E0308
/// // A reference is not a grant: safe code cannot end someone else's.
/// use tidepool_xen_abi::{GrantRef, GrantTable};
/// fn end_any(table: &mut GrantTable<'_>) {
///     let _ = table.end(GrantRef(8));
/// }
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct Grant {
    gref: GrantRef,
}

impl Grant {
    /// The reference to tell the other domain.
    pub const fn gref(&self) -> GrantRef {
        self.gref
    }
}

/// A grant [`GrantTable::end`] did not end, given back with the reason
/// (typically [`GrantError::InUse`]: end it again once the other domain has
/// unmapped it).
#[derive(PartialEq, Eq, Debug)]
pub struct GrantNotEnded {
    /// The grant, still valid.
    pub grant: Grant,
    /// Why it was not ended.
    pub error: GrantError,
}

impl fmt::Display for GrantNotEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// `struct grant_entry_v1`, shared with Xen while it is live.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GrantEntryV1 {
    /// `GTF_*`: type and flags. Written by the guest to grant and revoke;
    /// Xen sets and clears `GTF_reading`/`GTF_writing`.
    pub flags: AtomicU16,
    /// The domain being granted access.
    pub domid: AtomicU16,
    /// The guest frame number (GFN) granted.
    pub frame: AtomicU32,
}

crate::assert_layout!(GrantEntryV1, size 8, align 4, flags @ 0, domid @ 2, frame @ 4);

/// `struct gnttab_setup_table`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GnttabSetupTable {
    /// The domain (`DOMID_SELF`).
    pub dom: u16,
    /// Frames wanted; Xen grows the table to this size.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Guest handle of a `xen_pfn_t[nr_frames]` Xen fills with the frames'
    /// current GFNs (on Arm: those already mapped with `add_to_physmap`).
    pub frame_list: u64,
}

crate::assert_layout!(GnttabSetupTable, size 24, align 8,
    dom @ 0, nr_frames @ 4, status @ 8, frame_list @ 16);

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GnttabQuerySize {
    /// The domain (`DOMID_SELF`).
    pub dom: u16,
    /// OUT: frames in the table now.
    pub nr_frames: u32,
    /// OUT: the most frames the table can have.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
}

crate::assert_layout!(GnttabQuerySize, size 16, align 4,
    dom @ 0, nr_frames @ 4, max_nr_frames @ 8, status @ 12);

impl GnttabQuerySize {
    /// A query for the calling domain.
    pub const fn new() -> Self {
        Self {
            dom: DomId::SELF.0,
            nr_frames: 0,
            max_nr_frames: 0,
            status: 0,
        }
    }
}

impl Default for GnttabQuerySize {
    fn default() -> Self {
        Self::new()
    }
}

impl GnttabSetupTable {
    /// A setup request for the calling domain; `nr_frames` and `frame_list`
    /// are filled from the frame buffer when the call is issued.
    pub const fn new() -> Self {
        Self {
            dom: DomId::SELF.0,
            nr_frames: 0,
            status: 0,
            frame_list: 0,
        }
    }
}

impl Default for GnttabSetupTable {
    fn default() -> Self {
        Self::new()
    }
}

/// A mapping of a granted frame, as `GNTTABOP_map_grant_ref` returns it
/// (`grant_handle_t`); needed to unmap it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GrantHandle(pub u32);

impl fmt::Display for GrantHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grant handle {}", self.0)
    }
}

/// A grant mapping made by [`Hypervisor::grant_map`](crate::Hypervisor::grant_map):
/// another domain's frame at one of this domain's guest-physical frames.
/// Only a successful map makes one, and
/// [`Hypervisor::grant_unmap`](crate::Hypervisor::grant_unmap) takes it to
/// remove exactly that mapping, so safe code cannot unmap a frame it did
/// not map. Dropping it leaves the mapping in place for good (its frame is
/// never handed out again).
///
/// ```compile_fail,E0451
/// // No forged mapping: address and handle are private.
/// use tidepool_xen_abi::{GrantHandle, GrantMapping};
/// let mapping = GrantMapping { gfn: 0x40401, handle: GrantHandle(0) };
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct GrantMapping {
    gfn: u64,
    handle: GrantHandle,
}

impl GrantMapping {
    /// A mapping Xen just made at `frame`.
    pub(crate) const fn new(frame: VacantFrame, handle: GrantHandle) -> Self {
        Self {
            gfn: frame.gfn(),
            handle,
        }
    }

    /// The guest-physical address the granted frame appears at.
    pub const fn gpa(&self) -> u64 {
        self.gfn << 12
    }

    /// Xen's handle of the mapping.
    pub const fn handle(&self) -> GrantHandle {
        self.handle
    }

    /// The frame back, once Xen has removed the mapping.
    pub(crate) const fn into_frame(self) -> VacantFrame {
        VacantFrame::reclaimed(self.gfn)
    }
}

/// `struct gnttab_map_grant_ref`. The inputs are private and only
/// [`Hypervisor::grant_map`](crate::Hypervisor::grant_map) builds one, from a
/// [`VacantFrame`].
#[repr(C)]
#[derive(PartialEq, Eq, Debug)]
pub struct GnttabMapGrantRef {
    /// Where to map: on Arm, with [`GNTMAP_host_map`], the guest-physical
    /// address (page-aligned) the frame appears at.
    pub(crate) host_addr: u64,
    /// `GNTMAP_*`.
    pub(crate) flags: u32,
    /// The grant reference in the granting domain's table.
    pub(crate) gref: u32,
    /// The granting domain.
    pub(crate) dom: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: the mapping's handle.
    pub handle: u32,
    /// OUT: the frame's bus address, for `GNTMAP_device_map`.
    pub dev_bus_addr: u64,
}

crate::assert_layout!(GnttabMapGrantRef, size 32, align 8, host_addr @ 0, flags @ 8,
    gref @ 12, dom @ 16, status @ 18, handle @ 20, dev_bus_addr @ 24);

impl GnttabMapGrantRef {
    /// A host mapping of `dom`'s grant `gref` at `frame`, read-only or
    /// read-write.
    pub(crate) const fn host(
        dom: DomId,
        gref: GrantRef,
        frame: &VacantFrame,
        access: GrantAccess,
    ) -> Self {
        Self {
            host_addr: frame.gpa(),
            flags: match access {
                GrantAccess::ReadOnly => GNTMAP_host_map | GNTMAP_readonly,
                GrantAccess::ReadWrite => GNTMAP_host_map,
            },
            gref: gref.0,
            dom: dom.0,
            status: 0,
            handle: 0,
            dev_bus_addr: 0,
        }
    }
}

/// `struct gnttab_unmap_grant_ref`. The inputs are private and only
/// [`Hypervisor::grant_unmap`](crate::Hypervisor::grant_unmap) builds one,
/// from a [`GrantMapping`].
#[repr(C)]
#[derive(PartialEq, Eq, Debug)]
pub struct GnttabUnmapGrantRef {
    /// The address the frame was mapped at (its `host_addr`).
    pub(crate) host_addr: u64,
    /// The device mapping's bus address (0 for a host mapping).
    pub(crate) dev_bus_addr: u64,
    /// The mapping's handle.
    pub(crate) handle: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
}

crate::assert_layout!(GnttabUnmapGrantRef, size 24, align 8,
    host_addr @ 0, dev_bus_addr @ 8, handle @ 16, status @ 20);

impl GnttabUnmapGrantRef {
    /// Removes the host mapping `mapping`.
    pub(crate) const fn host(mapping: &GrantMapping) -> Self {
        Self {
            host_addr: mapping.gpa(),
            dev_bus_addr: 0,
            handle: mapping.handle.0,
            status: 0,
        }
    }
}

/// The grant table's size as `GNTTABOP_query_size` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GrantTableSize {
    /// Frames the table has now.
    pub nr_frames: u32,
    /// The most frames it may grow to.
    pub max_nr_frames: u32,
}

/// What a grant lets the other domain do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GrantAccess {
    /// Read only (`GTF_readonly`).
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// Errors of [`GrantTable`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GrantError {
    /// Every usable entry is granted.
    Exhausted {
        /// Usable (non-reserved) entries of the table.
        usable: usize,
    },
    /// The remote domain still has the grant mapped (`GTF_reading` or
    /// `GTF_writing`); the grant stays valid and may be ended later.
    InUse {
        /// The grant.
        gref: GrantRef,
        /// The entry's flags when the attempt was made.
        flags: u16,
    },
    /// The reference lies beyond the table.
    OutOfRange {
        /// The reference.
        gref: GrantRef,
        /// Entries in the table.
        entries: usize,
    },
    /// The reference is one of the toolstack's reserved entries (0..8).
    Reserved(GrantRef),
    /// The reference is not currently granted by this table.
    NotGranted(GrantRef),
    /// The frame number does not fit the v1 entry's 32 bits.
    FrameTooLarge(u64),
    /// A non-reserved entry was not all-zero when the table was built.
    StaleEntry {
        /// The entry.
        gref: GrantRef,
        /// Its flags.
        flags: u16,
    },
    /// The free-list storage given at setup is smaller than the table's
    /// usable entries.
    FreeListTooSmall {
        /// Slots needed.
        needed: usize,
        /// Slots given.
        provided: usize,
    },
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted { usable } => {
                write!(
                    f,
                    "grant table exhausted: all {usable} usable entries are granted"
                )
            }
            Self::InUse { gref, flags } => {
                write!(
                    f,
                    "{gref} is still mapped by the remote domain (flags {flags:#x})"
                )
            }
            Self::OutOfRange { gref, entries } => {
                write!(f, "{gref} is beyond the grant table ({entries} entries)")
            }
            Self::Reserved(gref) => write!(f, "{gref} is reserved for the toolstack"),
            Self::NotGranted(gref) => write!(f, "{gref} is not granted"),
            Self::FrameTooLarge(gfn) => {
                write!(f, "frame {gfn:#x} does not fit a v1 grant entry (32 bits)")
            }
            Self::StaleEntry { gref, flags } => {
                write!(f, "{gref} is not free at setup (flags {flags:#x})")
            }
            Self::FreeListTooSmall { needed, provided } => write!(
                f,
                "grant free list needs {needed} slots, {provided} were given"
            ),
        }
    }
}

/// The guest side of a v1 grant table: grants frames to other domains and
/// ends grants, with a free list of references.
///
/// Entries below [`GNTTAB_NR_RESERVED_ENTRIES`] are never touched; the others
/// must be unused (flags zero, as Xen creates them) when the table is built.
pub struct GrantTable<'a> {
    entries: &'a [GrantEntryV1],
    free: &'a mut [GrantRef],
    free_len: usize,
}

impl<'a> GrantTable<'a> {
    /// Builds the table over the mapped `entries`, keeping the free list in
    /// `free_storage`, which needs one slot per non-reserved entry.
    /// References are handed out lowest first. Fails if a non-reserved entry
    /// already has flags set: this table could not tell it from its own.
    pub fn new(
        entries: &'a [GrantEntryV1],
        free_storage: &'a mut [GrantRef],
    ) -> Result<Self, GrantError> {
        let first = GNTTAB_NR_RESERVED_ENTRIES as usize;
        let usable = entries.len().saturating_sub(first);
        if free_storage.len() < usable {
            return Err(GrantError::FreeListTooSmall {
                needed: usable,
                provided: free_storage.len(),
            });
        }
        for (index, entry) in entries.iter().enumerate().skip(first) {
            let flags = entry.flags.load(Ordering::Acquire);
            if flags != 0 {
                let gref = GrantRef(u32::try_from(index).unwrap_or(u32::MAX));
                return Err(GrantError::StaleEntry { gref, flags });
            }
        }
        // The free list is a stack: push the highest reference first.
        let refs = (first..entries.len()).rev();
        for (slot, index) in free_storage.iter_mut().zip(refs) {
            // `index` < entries.len(), whose references are u32 by ABI.
            *slot = GrantRef(u32::try_from(index).unwrap_or(u32::MAX));
        }
        Ok(Self {
            entries,
            free: free_storage,
            free_len: usable,
        })
    }

    /// Usable (non-reserved) entries.
    pub fn usable(&self) -> usize {
        self.entries
            .len()
            .saturating_sub(GNTTAB_NR_RESERVED_ENTRIES as usize)
    }

    /// Entries not granted now.
    pub fn free_count(&self) -> usize {
        self.free_len
    }

    /// Grants `domid` access to `frame`. On an error nothing is granted.
    ///
    /// Writes the frame and domain first and publishes the flags last with
    /// release ordering, so Xen never sees a valid entry with stale contents.
    ///
    /// ```compile_fail,E0308
    /// // A frame number is not a grantable frame: only its owner makes one.
    /// use tidepool_xen_abi::{DomId, GrantAccess, GrantTable};
    /// fn share(table: &mut GrantTable<'_>) {
    ///     let _ = table.grant(DomId(1), 0x40123, GrantAccess::ReadWrite);
    /// }
    /// ```
    pub fn grant(
        &mut self,
        domid: DomId,
        frame: GrantableFrame,
        access: GrantAccess,
    ) -> Result<Grant, GrantError> {
        let gfn = frame.gfn;
        let frame = u32::try_from(gfn).map_err(|_| GrantError::FrameTooLarge(gfn))?;
        if self.free_len == 0 {
            return Err(GrantError::Exhausted {
                usable: self.usable(),
            });
        }
        self.free_len -= 1;
        let gref = self.free[self.free_len];
        let entry = &self.entries[gref.0 as usize];
        entry.frame.store(frame, Ordering::Relaxed);
        entry.domid.store(domid.0, Ordering::Relaxed);
        let flags = match access {
            GrantAccess::ReadOnly => GTF_permit_access | GTF_readonly,
            GrantAccess::ReadWrite => GTF_permit_access,
        };
        entry.flags.store(flags, Ordering::Release);
        Ok(Grant { gref })
    }

    /// Ends a grant: atomically clears the entry's flags, but only while Xen
    /// has it neither reading nor writing. On [`GrantError::InUse`] the grant
    /// stays valid, comes back in the error, and the caller must retry after
    /// the remote domain unmaps. (The other errors mean the grant came from
    /// another table.)
    pub fn end(&mut self, grant: Grant) -> Result<(), GrantNotEnded> {
        self.end_entry(grant.gref)
            .map_err(|error| GrantNotEnded { grant, error })
    }

    fn end_entry(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        let entry = self.entry(gref)?;
        if self.free_len >= self.usable() {
            // Every usable entry is on the free list: none is granted.
            return Err(GrantError::NotGranted(gref));
        }
        let mut flags = entry.flags.load(Ordering::Acquire);
        loop {
            if flags & GTF_type_mask != GTF_permit_access {
                return Err(GrantError::NotGranted(gref));
            }
            if flags & (GTF_reading | GTF_writing) != 0 {
                return Err(GrantError::InUse { gref, flags });
            }
            match entry
                .flags
                .compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(current) => flags = current,
            }
        }
        // Checked above: free_len < usable <= free.len().
        self.free[self.free_len] = gref;
        self.free_len += 1;
        Ok(())
    }

    fn entry(&self, gref: GrantRef) -> Result<&'a GrantEntryV1, GrantError> {
        if gref.0 < GNTTAB_NR_RESERVED_ENTRIES {
            return Err(GrantError::Reserved(gref));
        }
        self.entries
            .get(gref.0 as usize)
            .ok_or(GrantError::OutOfRange {
                gref,
                entries: self.entries.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame to grant (the tests' entries point at nothing).
    fn frame(gfn: u64) -> GrantableFrame {
        GrantableFrame { gfn }
    }

    /// A grant this table did not make (from another table, in the
    /// kernel's terms): only tests can build one.
    fn foreign(gref: u32) -> Grant {
        Grant {
            gref: GrantRef(gref),
        }
    }

    fn table(n: usize) -> Vec<GrantEntryV1> {
        (0..n).map(|_| GrantEntryV1::default()).collect()
    }

    #[test]
    fn grant_writes_entry_and_hands_out_lowest_first() {
        let entries = table(16);
        let mut storage = [GrantRef::default(); 8];
        let mut gt = GrantTable::new(&entries, &mut storage).unwrap();
        assert_eq!(gt.usable(), 8);
        let a = gt
            .grant(DomId(1), frame(0x40123), GrantAccess::ReadWrite)
            .unwrap();
        let b = gt
            .grant(DomId(2), frame(0x40124), GrantAccess::ReadOnly)
            .unwrap();
        assert_eq!((a.gref(), b.gref()), (GrantRef(8), GrantRef(9)));
        let e = &entries[8];
        assert_eq!(e.flags.load(Ordering::SeqCst), GTF_permit_access);
        assert_eq!(e.domid.load(Ordering::SeqCst), 1);
        assert_eq!(e.frame.load(Ordering::SeqCst), 0x40123);
        assert_eq!(
            entries[9].flags.load(Ordering::SeqCst),
            GTF_permit_access | GTF_readonly
        );
        assert_eq!(gt.free_count(), 6);
        // Reserved entries are untouched.
        assert!(
            entries[..8]
                .iter()
                .all(|e| e.flags.load(Ordering::SeqCst) == 0)
        );
    }

    #[test]
    fn end_clears_flags_and_reference_is_reused() {
        let entries = table(10);
        let mut storage = [GrantRef::default(); 2];
        let mut gt = GrantTable::new(&entries, &mut storage).unwrap();
        let a = gt
            .grant(DomId(1), frame(1), GrantAccess::ReadWrite)
            .unwrap();
        let gref = a.gref();
        gt.end(a).unwrap();
        assert_eq!(entries[gref.0 as usize].flags.load(Ordering::SeqCst), 0);
        assert_eq!(gt.free_count(), 2);
        let again = gt
            .grant(DomId(1), frame(2), GrantAccess::ReadWrite)
            .unwrap();
        assert_eq!(again.gref(), gref);
        // A grant this table did not make is refused, and given back.
        let err = gt.end(foreign(9)).unwrap_err();
        assert_eq!(
            err,
            GrantNotEnded {
                grant: foreign(9),
                error: GrantError::NotGranted(GrantRef(9))
            }
        );
        assert_eq!(err.to_string(), "gref 9 is not granted");
        gt.end(again).unwrap();
        // Every entry free: nothing to end.
        assert_eq!(
            gt.end(foreign(8)).unwrap_err().error,
            GrantError::NotGranted(GrantRef(8))
        );
    }

    #[test]
    fn end_fails_while_remote_maps_the_grant() {
        let entries = table(9);
        let mut storage = [GrantRef::default(); 1];
        let mut gt = GrantTable::new(&entries, &mut storage).unwrap();
        let mut g = gt
            .grant(DomId(3), frame(7), GrantAccess::ReadWrite)
            .unwrap();
        let gref = g.gref();
        let entry = &entries[gref.0 as usize];
        for busy in [GTF_reading, GTF_writing, GTF_reading | GTF_writing] {
            entry.flags.fetch_or(busy, Ordering::SeqCst);
            let err = gt.end(g).unwrap_err();
            assert_eq!(
                err.error,
                GrantError::InUse {
                    gref,
                    flags: GTF_permit_access | busy
                }
            );
            // The grant comes back to its maker.
            g = err.grant;
            // The grant is left intact.
            assert_eq!(entry.flags.load(Ordering::SeqCst), GTF_permit_access | busy);
            entry.flags.fetch_and(!busy, Ordering::SeqCst);
        }
        assert_eq!(
            GrantError::InUse { gref, flags: 0x19 }.to_string(),
            "gref 8 is still mapped by the remote domain (flags 0x19)"
        );
        gt.end(g).unwrap();
        assert_eq!(gt.free_count(), 1);
    }

    #[test]
    fn exhaustion_is_an_error_until_a_grant_ends() {
        let entries = table(10);
        let mut storage = [GrantRef::default(); 2];
        let mut gt = GrantTable::new(&entries, &mut storage).unwrap();
        let a = gt.grant(DomId(1), frame(1), GrantAccess::ReadOnly).unwrap();
        let gref = a.gref();
        gt.grant(DomId(1), frame(2), GrantAccess::ReadOnly).unwrap();
        let err = gt
            .grant(DomId(1), frame(3), GrantAccess::ReadOnly)
            .unwrap_err();
        assert_eq!(err, GrantError::Exhausted { usable: 2 });
        assert_eq!(
            err.to_string(),
            "grant table exhausted: all 2 usable entries are granted"
        );
        gt.end(a).unwrap();
        assert_eq!(
            gt.grant(DomId(1), frame(3), GrantAccess::ReadOnly)
                .unwrap()
                .gref(),
            gref
        );
    }

    #[test]
    fn bad_references_and_frames_are_refused() {
        let entries = table(12);
        let mut storage = [GrantRef::default(); 4];
        let mut gt = GrantTable::new(&entries, &mut storage).unwrap();
        assert_eq!(
            gt.end(foreign(1)).unwrap_err().error,
            GrantError::Reserved(GrantRef(1))
        );
        assert_eq!(
            gt.end(foreign(12)).unwrap_err().error,
            GrantError::OutOfRange {
                gref: GrantRef(12),
                entries: 12
            }
        );
        assert_eq!(
            gt.grant(DomId(1), frame(1 << 32), GrantAccess::ReadWrite),
            Err(GrantError::FrameTooLarge(1 << 32))
        );
        assert_eq!(gt.free_count(), 4);
    }

    #[test]
    fn map_arguments_carry_access_and_target() {
        let at = VacantFrame::reclaimed(0x40401);
        let map = GnttabMapGrantRef::host(DomId(1), GrantRef(9), &at, GrantAccess::ReadOnly);
        assert_eq!(map.flags, GNTMAP_host_map | GNTMAP_readonly);
        assert_eq!((map.gref, map.dom, map.host_addr), (9, 1, 0x4040_1000));
        let map = GnttabMapGrantRef::host(DomId(0), GrantRef(8), &at, GrantAccess::ReadWrite);
        assert_eq!(map.flags, 2);
        let mapping = GrantMapping::new(at, GrantHandle(3));
        assert_eq!(
            (mapping.gpa(), mapping.handle()),
            (0x4040_1000, GrantHandle(3))
        );
        let unmap = GnttabUnmapGrantRef::host(&mapping);
        assert_eq!(
            (unmap.host_addr, unmap.dev_bus_addr, unmap.handle),
            (0x4040_1000, 0, 3)
        );
        assert_eq!(GrantHandle(3).to_string(), "grant handle 3");
        assert_eq!(mapping.into_frame(), VacantFrame::reclaimed(0x40401));
    }

    #[test]
    fn setup_checks_free_list_storage() {
        let entries = table(GRANT_ENTRIES_PER_FRAME);
        let mut storage = [GrantRef::default(); 100];
        assert_eq!(
            GrantTable::new(&entries, &mut storage).err(),
            Some(GrantError::FreeListTooSmall {
                needed: 504,
                provided: 100
            })
        );
        let stale = table(10);
        stale[9].flags.store(GTF_permit_access, Ordering::SeqCst);
        let mut storage = [GrantRef::default(); 2];
        let err = GrantTable::new(&stale, &mut storage).err().unwrap();
        assert_eq!(
            err,
            GrantError::StaleEntry {
                gref: GrantRef(9),
                flags: 1
            }
        );
        assert_eq!(err.to_string(), "gref 9 is not free at setup (flags 0x1)");
        let small = table(4);
        let mut none: [GrantRef; 0] = [];
        let mut gt = GrantTable::new(&small, &mut none).unwrap();
        assert_eq!(
            gt.grant(DomId(1), frame(1), GrantAccess::ReadWrite),
            Err(GrantError::Exhausted { usable: 0 })
        );
    }
}
