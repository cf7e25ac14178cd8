//! Grant table v1: frames mapped with `XENMEM_add_to_physmap` into the
//! region the hypervisor node's first `reg` entry names (a window of Normal
//! write-back memory), and the kernel's grants in them.
//!
//! The table starts with one frame (504 usable entries) and grows a frame
//! at a time when a grant finds no free entry (`xen: grant table grown
//! ...`), up to the region's frames and Xen's `max_nr_frames`: a PV disk
//! keeps over a thousand grants, so every PV boot grows it. Grants are made
//! and ended with IRQs masked around a lock, so interrupt handlers may end
//! grants too. A growth is one `XENMEM_add_to_physmap` under that lock, so
//! nothing sees a half-grown table; it allocates nothing (`GrantTable`'s
//! free map is sized for the limit at setup); if Xen refuses, the table
//! stays as it was, the grant fails with Xen's answer, and the next grant
//! that finds the table full asks again. Which frame goes where, the limit
//! and which frames Xen has placed are `GrantTable`'s (host-tested); this
//! module makes the hypercall and the slice over the window. A frame Xen
//! placed but the table refused (an entry not free) is not placed again
//! (Xen answers `EBUSY` to a second placement since 4.17): a later growth
//! takes it.

use core::fmt;

use log::info;
use spin::{Mutex, Once};
use tidepool_dma::{OwnedPhysRange, PageGrants};
use tidepool_dt::Hypervisor as HypervisorNode;
use tidepool_mm::{AddressMap, PAGE_SIZE, PhysAddr, VirtAddr};
use tidepool_xen_abi::{
    DomId, Grant, GrantAccess, GrantEntryV1, GrantError, GrantFrames, GrantNotEnded, GrantRegion,
    GrantTable, GrantableFrame, Hypervisor, VacantFrame, XenError, XenMapSpace,
    grant::GRANT_ENTRIES_PER_FRAME,
};

use super::Xen;
use crate::irq;

/// The table and the kernel's window over its region, under one lock.
struct Grants {
    table: GrantTable<'static>,
    window: Window,
}

static TABLE: Once<Mutex<Grants>> = Once::new();

/// The kernel's side of the growing table: the hypercall that places a
/// frame, and the kernel's window over the grant-table region. Which frame
/// goes where, the limit and which frames are placed are the table's
/// ([`GrantRegion`], [`GrantTable::grow`]).
struct Window {
    /// The window's address of the region's first byte.
    va: VirtAddr,
    /// Frames of the region the window maps (checked in [`init`]).
    frames: usize,
}

impl GrantFrames<'static> for Window {
    fn place(&mut self, index: u64, at: VacantFrame) -> Result<(), XenError> {
        Xen.add_to_physmap(XenMapSpace::GrantTable, index, at)
    }

    fn entries(&self, frames: usize) -> &'static [GrantEntryV1] {
        let frames = frames.min(self.frames);
        // SAFETY: the window maps the region's first `self.frames` frames
        // read-write as Normal write-back memory for the kernel's lifetime
        // (checked in `init`). `Window` is private to this module, and its
        // one user is the `GrantTable` `init` hands it to, which asks only
        // for frames Xen has placed (`GrantFrames::entries`' promise, kept
        // by the table's own count of placed frames and host-tested), so
        // the slice covers Xen's frames only. Nothing else in the kernel
        // uses the region (`GrantRegion::new`'s contract, promised in
        // `init`). Every field of `GrantEntryV1` is an atomic, so sharing
        // the entries with Xen is sound.
        unsafe {
            core::slice::from_raw_parts(
                self.va.0 as *const GrantEntryV1,
                frames * GRANT_ENTRIES_PER_FRAME,
            )
        }
    }
}

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
    /// The window over the region does not cover the frames the table may
    /// grow to.
    NotMapped {
        /// The region's guest-physical address.
        gpa: u64,
        /// Bytes the table may grow to.
        bytes: u64,
    },
    /// `GNTTABOP_setup_table` failed.
    SetupTable(XenError),
    /// `GNTTABOP_setup_table` places the first frame elsewhere than it was
    /// mapped.
    FrameMismatch {
        /// Where it was mapped (GFN).
        mapped: u64,
        /// Where Xen says it is (GFN).
        reported: u64,
    },
    /// The table's first frame could not be mapped, or its free map
    /// allocated, or its entries are not free.
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
            Self::NotMapped { gpa, bytes } => {
                write!(
                    f,
                    "region at gpa {gpa:#x} has no window of {bytes:#x} bytes"
                )
            }
            Self::FrameMismatch { mapped, reported } => write!(
                f,
                "frame 0 mapped at gfn {mapped:#x}, Xen reports gfn {reported:#x}"
            ),
            Self::Table(error) => error.fmt(f),
        }
    }
}

/// Maps the grant table's first frame into the hypervisor node's
/// grant-table region, checks where Xen says it is, and builds the table,
/// able to grow to the region's frames and Xen's `max_nr_frames`.
pub fn init(node: &HypervisorNode, map: &AddressMap) -> Result<(), GrantSetupError> {
    let mut xen = Xen;
    let size = xen.grant_query_size().map_err(GrantSetupError::QuerySize)?;
    let node_region = node.grant_table;
    let region_frames = node_region.size() / PAGE_SIZE;
    let gpa = node_region.base();
    // SAFETY: the hypervisor node's first `reg` entry is the grant-table
    // region, guest-physical space Xen keeps for the table; the memory plan
    // gives it nothing else, the kernel reaches it only through the
    // entries `Window` returns, and this `init`, which runs once (from
    // `xen::init` at boot), makes the only `GrantRegion`.
    let region = unsafe { GrantRegion::new(gpa / PAGE_SIZE, region_frames, size.max_nr_frames) };
    let (first_gfn, limit) = (region.first_gfn(), region.limit());
    if limit == 0 {
        return Err(GrantSetupError::NoFrames {
            region_frames,
            max_nr_frames: size.max_nr_frames,
        });
    }
    let bytes = limit as u64 * PAGE_SIZE;
    // The table grows in place: its window must hold every frame up to
    // the limit, not only the first.
    let va = map
        .region_of(PhysAddr(gpa))
        .filter(|r| r.phys.contains(PhysAddr(gpa + bytes - 1)))
        .and_then(|_| map.window_address(PhysAddr(gpa)))
        .ok_or(GrantSetupError::NotMapped { gpa, bytes })?;
    let mut window = Window { va, frames: limit };
    let mut table = GrantTable::in_region(region).map_err(GrantSetupError::Table)?;
    table.grow(&mut window).map_err(GrantSetupError::Table)?;
    let mut reported = [0u64; 1];
    xen.grant_setup_table(&mut reported)
        .map_err(GrantSetupError::SetupTable)?;
    if reported[0] != first_gfn {
        return Err(GrantSetupError::FrameMismatch {
            mapped: first_gfn,
            reported: reported[0],
        });
    }
    info!(
        "xen: grant table v1 at gpa {gpa:#x} va {va} frames={} limit={limit} region_frames={region_frames} max_nr_frames={} entries={} free={}",
        table.frames(),
        size.max_nr_frames,
        table.frames() * GRANT_ENTRIES_PER_FRAME,
        table.free_count()
    );
    TABLE.call_once(|| Mutex::new(Grants { table, window }));
    Ok(())
}

/// Why a grant could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantTableError {
    /// No grant table (not under Xen, or before [`init`]).
    NotSetUp,
    /// The table refused: exhausted at its limit, Xen refused a frame to
    /// grow it, a grown frame's entries were in use or not the table's,
    /// or the frame is beyond 32 bits.
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

fn with_table<R>(action: impl FnOnce(&mut Grants) -> R) -> Result<R, GrantTableError> {
    let grants = TABLE.get().ok_or(GrantTableError::NotSetUp)?;
    Ok(irq::without_interrupts(|| action(&mut grants.lock())))
}

/// Grants through the table, growing it by a frame when no entry is free,
/// and says so on the console once the lock is released: every growth,
/// whether or not the grant then succeeds.
fn grant_or_grow(
    grants: &Mutex<Grants>,
    domid: DomId,
    frame: GrantableFrame,
    access: GrantAccess,
) -> Result<Grant, GrantError> {
    let (result, grown) = irq::without_interrupts(|| {
        let grants = &mut *grants.lock();
        let table = &mut grants.table;
        let before = table.frames();
        let result = table.grant_or_grow(&mut grants.window, domid, frame, access);
        let grown = (table.frames() != before).then(|| (table.frames(), table.free_count()));
        (result, grown)
    });
    if let Some((frames, free)) = grown {
        info!(
            "xen: grant table grown frames={frames} entries={} free={free}",
            frames * GRANT_ENTRIES_PER_FRAME
        );
    }
    result
}

/// Grants `domid` access to `frame`, which its owner vouched for, growing
/// the table when every entry is granted. Fails with
/// [`GrantError::Exhausted`] at the table's limit, [`GrantError::Grow`] if
/// Xen refuses a frame, [`GrantError::StaleEntry`] or
/// [`GrantError::WrongEntries`] if a grown frame's entries are in use or
/// not the table's, [`GrantError::FrameTooLarge`] for a frame beyond 32
/// bits. Only the returned [`Grant`] can end the grant.
pub fn grant(
    domid: DomId,
    frame: GrantableFrame,
    access: GrantAccess,
) -> Result<Grant, GrantTableError> {
    let grants = TABLE.get().ok_or(GrantTableError::NotSetUp)?;
    grant_or_grow(grants, domid, frame, access).map_err(GrantTableError::Table)
}

/// Ends `grant`. While the other domain still has it mapped this fails with
/// [`GrantError::InUse`] and the grant comes back in the error, still
/// valid: end it again after the other domain unmaps it.
pub fn end(grant: Grant) -> Result<(), GrantNotEnded> {
    match TABLE.get() {
        Some(grants) => irq::without_interrupts(|| grants.lock().table.end(grant)),
        // Grants come only from the table: this one is not the kernel's.
        None => {
            let error = GrantError::NotGranted(grant.gref());
            Err(GrantNotEnded { grant, error })
        }
    }
}

/// How much of the grant table is in use.
pub struct GrantUsage {
    /// Entries granted now.
    pub in_use: usize,
    /// Entries usable in the frames mapped.
    pub usable: usize,
    /// Frames mapped.
    pub frames: usize,
    /// The most frames the table may grow to.
    pub limit: usize,
}

/// How much of the table is in use.
pub fn usage() -> Result<GrantUsage, GrantTableError> {
    with_table(|grants| {
        let table = &grants.table;
        GrantUsage {
            in_use: table.usable() - table.free_count(),
            usable: table.usable(),
            frames: table.frames(),
            limit: table.limit(),
        }
    })
}

/// The grant table as the DMA layer's [`PageGrants`]: how a grant device's
/// pool buffers are granted to its back end and their grants ended.
pub struct KernelGrants(&'static Mutex<Grants>);

/// The grant table for the DMA layer, once [`init`] has set it up.
pub fn page_grants() -> Option<KernelGrants> {
    TABLE.get().map(KernelGrants)
}

// SAFETY: `grant` writes one v1 entry granting exactly the lent page's
// frame to `domid` with `access` (nothing on an error; growing the table
// first only adds free entries), and `end` is `GrantTable::end`, which
// frees the entry only once Xen shows no mapping of it
// (`GTF_reading`/`GTF_writing` clear) and gives the grant back otherwise.
// Neither keeps an address.
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
        grant_or_grow(self.0, domid, frame, access)
    }

    fn end(&mut self, grant: Grant) -> Result<(), GrantNotEnded> {
        irq::without_interrupts(|| self.0.lock().table.end(grant))
    }
}
