//! Grant table v1: frames mapped with `XENMEM_add_to_physmap` into the
//! region the hypervisor node's first `reg` entry names (a window of Normal
//! write-back memory), and the kernel's grants in them.
//!
//! Grants are made and ended with IRQs masked around a lock, so interrupt
//! handlers may end grants too.

use alloc::vec;
use core::fmt;

use log::info;
use spin::{Mutex, Once};
use tidepool_dma::{OwnedPhysRange, PageGrants};
use tidepool_dt::Hypervisor as HypervisorNode;
use tidepool_mm::{AddressMap, PAGE_SIZE, PhysAddr};
use tidepool_xen_abi::{
    DomId, Grant, GrantAccess, GrantEntryV1, GrantError, GrantNotEnded, GrantRef, GrantTable,
    GrantableFrame, Hypervisor, VacantFrame, XenError, XenMapSpace,
};

use super::Xen;
use crate::irq;

/// Frames the kernel maps: 2048 entries, 2040 of them usable (blkfront's
/// 32 request slots of 33 pages and its ring page take 1057; 42 slots on
/// a two-page ring, 1388).
const FRAMES: u64 = 4;

/// Grant entries per 4 KiB frame.
const ENTRIES_PER_FRAME: usize = PAGE_SIZE as usize / size_of::<GrantEntryV1>();

static TABLE: Once<Mutex<GrantTable<'static>>> = Once::new();

/// Why the grant table could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantSetupError {
    /// `GNTTABOP_query_size` failed.
    QuerySize(XenError),
    /// The region or Xen's limit leaves no frame to map.
    NoFrames {
        /// Frames the region holds.
        region_frames: u64,
        /// Xen's `max_nr_frames`.
        max_nr_frames: u32,
    },
    /// The region has no window in the address map.
    NotMapped {
        /// Its guest-physical address.
        gpa: u64,
    },
    /// Xen refused to map a frame.
    MapFrame {
        /// The frame's index in the table.
        index: u64,
        /// Xen's answer.
        error: XenError,
    },
    /// `GNTTABOP_setup_table` failed.
    SetupTable(XenError),
    /// `GNTTABOP_setup_table` places a frame elsewhere than it was mapped.
    FrameMismatch {
        /// The frame's index in the table.
        index: usize,
        /// Where it was mapped (GFN).
        mapped: u64,
        /// Where Xen says it is (GFN).
        reported: u64,
    },
    /// The table's entries are not free.
    Table(GrantError),
}

impl fmt::Display for GrantSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QuerySize(error) | Self::SetupTable(error) => error.fmt(f),
            Self::NoFrames {
                region_frames,
                max_nr_frames,
            } => write!(
                f,
                "no frame to map: region holds {region_frames}, Xen allows {max_nr_frames}"
            ),
            Self::NotMapped { gpa } => write!(f, "region at gpa {gpa:#x} has no window"),
            Self::MapFrame { index, error } => write!(f, "frame {index}: {error}"),
            Self::FrameMismatch {
                index,
                mapped,
                reported,
            } => write!(
                f,
                "frame {index} mapped at gfn {mapped:#x}, Xen reports gfn {reported:#x}"
            ),
            Self::Table(error) => error.fmt(f),
        }
    }
}

/// Maps the grant table's frames into the hypervisor node's grant-table
/// region, checks where Xen says they are, and builds the free list.
pub fn init(node: &HypervisorNode, map: &AddressMap) -> Result<(), GrantSetupError> {
    let mut xen = Xen;
    let size = xen.grant_query_size().map_err(GrantSetupError::QuerySize)?;
    let region = node.grant_table;
    let region_frames = region.size() / PAGE_SIZE;
    let frames = FRAMES.min(region_frames).min(u64::from(size.max_nr_frames));
    if frames == 0 {
        return Err(GrantSetupError::NoFrames {
            region_frames,
            max_nr_frames: size.max_nr_frames,
        });
    }
    let gpa = region.base();
    let va = map
        .window_address(PhysAddr(gpa))
        .ok_or(GrantSetupError::NotMapped { gpa })?;
    let first_gfn = gpa / PAGE_SIZE;
    for index in 0..frames {
        // SAFETY: the frame lies in the hypervisor node's grant-table region
        // (`frames` is bounded by its size), guest-physical space Xen
        // reserves for this: the kernel uses it only through this table,
        // read as the entries Xen places there. `init` runs once.
        let frame = unsafe { VacantFrame::new(first_gfn + index) };
        xen.add_to_physmap(XenMapSpace::GrantTable, index, frame)
            .map_err(|error| GrantSetupError::MapFrame { index, error })?;
    }
    let mut reported = [0u64; FRAMES as usize];
    let reported = &mut reported[..frames as usize];
    xen.grant_setup_table(reported)
        .map_err(GrantSetupError::SetupTable)?;
    for (index, (&gfn, mapped)) in reported.iter().zip(first_gfn..).enumerate() {
        if gfn != mapped {
            return Err(GrantSetupError::FrameMismatch {
                index,
                mapped,
                reported: gfn,
            });
        }
    }
    let entries = frames as usize * ENTRIES_PER_FRAME;
    // SAFETY: the window maps the grant-table region read-write as Normal
    // write-back memory for the kernel's lifetime, Xen has just put the
    // table's first `frames` frames there, and nothing else in the kernel
    // uses the region. Every field of `GrantEntryV1` is an atomic, so sharing
    // the entries with Xen is sound.
    let entries: &'static [GrantEntryV1] =
        unsafe { core::slice::from_raw_parts(va.0 as *const GrantEntryV1, entries) };
    let free = vec![GrantRef::default(); entries.len()].leak();
    let table = GrantTable::new(entries, free).map_err(GrantSetupError::Table)?;
    info!(
        "xen: grant table v1 at gpa {gpa:#x} va {va} frames={frames} (max {}) entries={} free={}",
        size.max_nr_frames,
        entries.len(),
        table.free_count()
    );
    TABLE.call_once(|| Mutex::new(table));
    Ok(())
}

/// Why a grant could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantTableError {
    /// No grant table (not under Xen, or before [`init`]).
    NotSetUp,
    /// The table refused (exhausted, frame beyond 32 bits).
    Table(GrantError),
}

impl fmt::Display for GrantTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSetUp => f.write_str("the grant table is not set up"),
            Self::Table(error) => error.fmt(f),
        }
    }
}

fn with_table<R>(
    action: impl FnOnce(&mut GrantTable<'static>) -> Result<R, GrantError>,
) -> Result<R, GrantTableError> {
    let table = TABLE.get().ok_or(GrantTableError::NotSetUp)?;
    irq::without_interrupts(|| action(&mut table.lock())).map_err(GrantTableError::Table)
}

/// Grants `domid` access to `frame`, which its owner vouched for. Fails
/// with [`GrantError::Exhausted`] when every entry is granted. Only the
/// returned [`Grant`] can end the grant.
pub fn grant(
    domid: DomId,
    frame: GrantableFrame,
    access: GrantAccess,
) -> Result<Grant, GrantTableError> {
    with_table(|table| table.grant(domid, frame, access))
}

/// Ends `grant`. While the other domain still has it mapped this fails with
/// [`GrantError::InUse`] and the grant comes back in the error, still
/// valid: end it again after the other domain unmaps it.
pub fn end(grant: Grant) -> Result<(), GrantNotEnded> {
    match TABLE.get() {
        Some(table) => irq::without_interrupts(|| table.lock().end(grant)),
        // Grants come only from the table: this one is not the kernel's.
        None => {
            let error = GrantError::NotGranted(grant.gref());
            Err(GrantNotEnded { grant, error })
        }
    }
}

/// Entries granted now and entries usable in all.
pub fn usage() -> Result<(usize, usize), GrantTableError> {
    with_table(|table| Ok((table.usable() - table.free_count(), table.usable())))
}

/// Entries not granted now.
pub fn free_count() -> Result<usize, GrantTableError> {
    with_table(|table| Ok(table.free_count()))
}

/// The grant table as the DMA layer's [`PageGrants`]: how a grant device's
/// pool buffers are granted to its back end and their grants ended.
pub struct KernelGrants(&'static Mutex<GrantTable<'static>>);

/// The grant table for the DMA layer, once [`init`] has set it up.
pub fn page_grants() -> Option<KernelGrants> {
    TABLE.get().map(KernelGrants)
}

// SAFETY: `grant` writes one v1 entry granting exactly the lent page's
// frame to `domid` with `access` (nothing on an error), and `end` is
// `GrantTable::end`, which frees the entry only once Xen shows no mapping
// of it (`GTF_reading`/`GTF_writing` clear) and gives the grant back
// otherwise. Neither keeps an address.
unsafe impl PageGrants for KernelGrants {
    fn grant(
        &mut self,
        domid: DomId,
        page: &OwnedPhysRange,
        access: GrantAccess,
    ) -> Result<Grant, GrantError> {
        // SAFETY: the DMA layer lends a page of a grant device's pool, which
        // it owns and keeps allocated until the grant has ended (for good if
        // it never does: `PageGrants`' contract); a guest-physical address
        // of this domain's RAM. The CPU touches it only while the buffer is
        // the driver's (before it is mapped for a request, after it is
        // unmapped), as the grant device's protocol allows.
        let frame = unsafe { GrantableFrame::new(page.range().base.0 / PAGE_SIZE) };
        irq::without_interrupts(|| self.0.lock().grant(domid, frame, access))
    }

    fn end(&mut self, grant: Grant) -> Result<(), GrantNotEnded> {
        irq::without_interrupts(|| self.0.lock().end(grant))
    }
}
