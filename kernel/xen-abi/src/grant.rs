//! Grant table v1 (`xen/include/public/grant_table.h`): the entry layout,
//! the setup and size-query arguments, and the guest's bookkeeping of which
//! references are free.
//!
//! Arm supports only version 1. A [`GrantTable`] starts empty in the
//! [`GrantRegion`] the device tree's `/hypervisor` node names and grows a
//! frame at a time when a grant finds no free entry, as Linux's
//! `gnttab_expand` does, up to a limit (the region's frames and Xen's
//! `max_nr_frames`): the table keeps which frame goes where and which Xen
//! has placed; the kernel's [`GrantFrames`] makes the
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)` call and maps the
//! entries, which the table checks extend its own.
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

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use crate::domain::DomId;
use crate::error::XenError;
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
    /// Every usable entry is granted and the table is at its limit.
    Exhausted {
        /// Usable (non-reserved) entries of the table.
        usable: usize,
        /// Frames the table has.
        frames: usize,
        /// The most frames it may have.
        limit: usize,
    },
    /// Xen refused to map the table's next frame; the table is as it was.
    Grow {
        /// The frame's index in the table.
        frame: usize,
        /// Xen's answer.
        error: XenError,
    },
    /// The free map for the table's limit could not be allocated.
    NoMemory {
        /// The limit, in frames.
        limit: usize,
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
    /// [`GrantFrames::entries`] answered a growth with entries that are not
    /// the table's own followed by the new frame's: they start elsewhere or
    /// are not exactly the frames asked for. The table is as it was.
    WrongEntries {
        /// Frames asked for.
        frames: usize,
        /// Entries given.
        len: usize,
    },
    /// A non-reserved entry was not all-zero when its frame joined the
    /// table.
    StaleEntry {
        /// The entry.
        gref: GrantRef,
        /// Its flags.
        flags: u16,
    },
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted {
                usable,
                frames,
                limit,
            } => write!(
                f,
                "grant table exhausted: all {usable} usable entries are granted, \
                 frames={frames} limit={limit}"
            ),
            Self::Grow { frame, error } => {
                write!(f, "grant table frame {frame} not mapped: {error}")
            }
            Self::NoMemory { limit } => {
                write!(
                    f,
                    "no memory for the free map of {limit} grant-table frames"
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
            Self::WrongEntries { frames, len } => write!(
                f,
                "grant table growth to {frames} frames got {len} entries that do not extend its own"
            ),
            Self::StaleEntry { gref, flags } => {
                write!(
                    f,
                    "{gref} is not free as its frame joins the table (flags {flags:#x})"
                )
            }
        }
    }
}

/// The v1 entry's frame number for `frame`, which must fit 32 bits.
fn entry_frame(frame: &GrantableFrame) -> Result<u32, GrantError> {
    u32::try_from(frame.gfn).map_err(|_| GrantError::FrameTooLarge(frame.gfn))
}

/// The kernel's side of a growing [`GrantTable`]: the hypercall that has
/// Xen place a frame of the table, and the kernel's view of the region the
/// frames are placed in. Which frame goes where, how many there may be and
/// which are placed is the table's bookkeeping ([`GrantRegion`],
/// [`GrantTable::grow`]), not the implementation's.
///
/// # What the table relies on, and checks
///
/// The table grants and ends grants through the entries
/// [`entries`](Self::entries) returns, so they must be the entries Xen
/// reads. [`GrantTable::grow`] accepts an answer only if it starts where
/// the table's entries start (once it has any) and is exactly the frames
/// asked for, and refuses any other with [`GrantError::WrongEntries`]: an
/// implementation cannot swap the table's entries for other memory, where
/// ending a grant would clear a copy while Xen's entry still grants the
/// frame.
pub trait GrantFrames<'a> {
    /// Has Xen place frame `index` of the table at `at`
    /// (`XENMEM_add_to_physmap(XENMAPSPACE_grant_table)`). The table asks
    /// for each frame once, in order, and again only after Xen refused it.
    fn place(&mut self, index: u64, at: VacantFrame) -> Result<(), XenError>;

    /// The entries of the table's first `frames` frames, all placed, as the
    /// kernel maps them (fewer if its mapping ends before). The table asks
    /// only for frames Xen has placed.
    fn entries(&self, frames: usize) -> &'a [GrantEntryV1];
}

/// Where a growing [`GrantTable`]'s frames go: the guest-physical region
/// the `/hypervisor` node's first `reg` entry names, frame `i` of the table
/// at the region's frame `i` (as Linux and Zephyr place them), and how many
/// the table may have: the region's frames or Xen's `max_nr_frames`,
/// whichever is fewer.
///
/// ```compile_fail,E0133
/// // Naming the grant-table region is the kernel's promise.
/// let region = tidepool_xen_abi::GrantRegion::new(0x38000, 64, 64);
/// ```
///
/// ```compile_fail,E0451
/// let region = tidepool_xen_abi::GrantRegion { first_gfn: 0x38000, limit: 64 };
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct GrantRegion {
    first_gfn: u64,
    limit: usize,
}

impl GrantRegion {
    /// The region of `region_frames` frames from guest frame `first_gfn`,
    /// for a table Xen lets have `max_nr_frames` (`GNTTABOP_query_size`).
    ///
    /// # Safety
    ///
    /// Guest frames `first_gfn..first_gfn + region_frames` are this
    /// domain's grant-table region: guest-physical space Xen keeps for the
    /// table, which nothing else uses or names (no other `GrantRegion`, no
    /// [`VacantFrame`] of it), and which the kernel accesses only through
    /// the entries its [`GrantFrames`] returns, as the pages Xen places
    /// there. The table this region is given to makes the tokens that place
    /// its frames, one frame at a time.
    #[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
    pub const unsafe fn new(first_gfn: u64, region_frames: u64, max_nr_frames: u32) -> Self {
        let mut limit = max_nr_frames as u64;
        if region_frames < limit {
            limit = region_frames;
        }
        // No frame beyond the last guest frame number.
        if u64::MAX - first_gfn < limit {
            limit = u64::MAX - first_gfn;
        }
        Self {
            first_gfn,
            // At most `u32::MAX`: fits a 64-bit `usize`.
            limit: limit as usize,
        }
    }

    /// The region's first guest frame, where the table's frame 0 goes.
    pub const fn first_gfn(&self) -> u64 {
        self.first_gfn
    }

    /// The most frames the table may have.
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// The token that places the table's frame `index` (below the limit).
    fn frame(&self, index: usize) -> VacantFrame {
        debug_assert!(index < self.limit);
        VacantFrame::reclaimed(self.first_gfn + index as u64)
    }
}

/// Entries per `u64` of [`GrantTable`]'s free map.
const BITS: usize = u64::BITS as usize;

/// The guest side of a v1 grant table: grants frames to other domains and
/// ends grants, keeping which references are free, and grows a frame at a
/// time up to its limit.
///
/// Entries below [`GNTTAB_NR_RESERVED_ENTRIES`] are never touched; the others
/// must be unused (flags zero, as Xen creates them) when their frame joins
/// the table. The free map holds a bit per entry the table may ever have,
/// allocated with the table (64 bytes per frame of the limit: 4 KiB for
/// Xen's default 64), so growing and ending grants never allocate: the
/// table grows on the I/O path, and interrupt handlers end grants.
pub struct GrantTable<'a> {
    /// The entries of the table's frames.
    entries: &'a [GrantEntryV1],
    /// A bit per entry up to the limit, set while the entry is free.
    free: Vec<u64>,
    free_count: usize,
    /// No word of `free` before this one has a bit set.
    first_free_word: usize,
    /// Where the table grows, if it does.
    region: Option<GrantRegion>,
    /// Frames Xen has placed in the region: the table's, and one more while
    /// a placed frame is refused ([`GrantError::StaleEntry`]). Xen places a
    /// frame only once (again, `EBUSY`), so a growth after a refusal takes
    /// that frame without placing it.
    placed: usize,
}

impl<'a> GrantTable<'a> {
    /// A table of the mapped `entries`, which does not grow. References
    /// are handed out lowest first. Fails if a non-reserved entry already
    /// has flags set (this table could not tell it from its own) or the
    /// free map cannot be allocated.
    pub fn new(entries: &'a [GrantEntryV1]) -> Result<Self, GrantError> {
        let frames = entries.len().div_ceil(GRANT_ENTRIES_PER_FRAME);
        let mut table = Self::with_limit(frames, None)?;
        table.take(entries)?;
        table.placed = frames;
        Ok(table)
    }

    /// An empty table that [`grow`](Self::grow)s into `region`, up to its
    /// limit. Fails if the free map cannot be allocated.
    pub fn in_region(region: GrantRegion) -> Result<Self, GrantError> {
        Self::with_limit(region.limit, Some(region))
    }

    fn with_limit(limit: usize, region: Option<GrantRegion>) -> Result<Self, GrantError> {
        // Saturates to a size no allocation has.
        let words = limit.saturating_mul(GRANT_ENTRIES_PER_FRAME / BITS);
        let mut free = Vec::new();
        free.try_reserve_exact(words)
            .map_err(|_| GrantError::NoMemory { limit })?;
        free.resize(words, 0);
        Ok(Self {
            entries: &[],
            free,
            free_count: 0,
            first_free_word: 0,
            region,
            placed: 0,
        })
    }

    /// Makes `entries`, the table's entries followed by new ones, the
    /// table's, with the new ones free. On an error nothing changes.
    fn take(&mut self, entries: &'a [GrantEntryV1]) -> Result<(), GrantError> {
        let first = self.entries.len().max(GNTTAB_NR_RESERVED_ENTRIES as usize);
        for (index, entry) in entries.iter().enumerate().skip(first) {
            let flags = entry.flags.load(Ordering::Acquire);
            if flags != 0 {
                let gref = GrantRef(u32::try_from(index).unwrap_or(u32::MAX));
                return Err(GrantError::StaleEntry { gref, flags });
            }
        }
        for index in first..entries.len() {
            self.free[index / BITS] |= 1 << (index % BITS);
        }
        self.free_count += entries.len().saturating_sub(first);
        // `first_free_word` needs no update: it is never past the old
        // entries' last word, so never past the new entries' first.
        self.entries = entries;
        Ok(())
    }

    /// Adds the table's next frame: has Xen place it in the region through
    /// `frames` (unless Xen already has), then frees its entries. Fails
    /// with [`GrantError::Exhausted`] at the limit, [`GrantError::Grow`]
    /// when Xen refuses, [`GrantError::WrongEntries`] when `frames` answers
    /// with other entries than the table's, and [`GrantError::StaleEntry`]
    /// when an entry of the new frame is in use; on an error the table is
    /// as it was, and the next growth asks for the same frame.
    pub fn grow(&mut self, frames: &mut impl GrantFrames<'a>) -> Result<(), GrantError> {
        let frame = self.frames();
        let Some(region) = self.region.as_ref().filter(|r| frame < r.limit) else {
            return Err(self.exhausted());
        };
        if self.placed == frame {
            frames
                .place(frame as u64, region.frame(frame))
                .map_err(|error| GrantError::Grow { frame, error })?;
            self.placed += 1;
        }
        let entries = frames.entries(frame + 1);
        let extends =
            self.entries.is_empty() || core::ptr::eq(entries.as_ptr(), self.entries.as_ptr());
        if !extends || entries.len() != (frame + 1) * GRANT_ENTRIES_PER_FRAME {
            return Err(GrantError::WrongEntries {
                frames: frame + 1,
                len: entries.len(),
            });
        }
        self.take(entries)
    }

    fn exhausted(&self) -> GrantError {
        GrantError::Exhausted {
            usable: self.usable(),
            frames: self.frames(),
            limit: self.limit(),
        }
    }

    /// Usable (non-reserved) entries.
    pub fn usable(&self) -> usize {
        self.entries
            .len()
            .saturating_sub(GNTTAB_NR_RESERVED_ENTRIES as usize)
    }

    /// Entries not granted now.
    pub fn free_count(&self) -> usize {
        self.free_count
    }

    /// Frames the table has.
    pub fn frames(&self) -> usize {
        self.entries.len().div_ceil(GRANT_ENTRIES_PER_FRAME)
    }

    /// The most frames the table may have.
    pub fn limit(&self) -> usize {
        self.region.as_ref().map_or(self.frames(), |r| r.limit)
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
        let frame = entry_frame(&frame)?;
        self.grant_entry(domid, frame, access)
    }

    /// Writes a grant of v1 frame number `frame` into the lowest free entry.
    fn grant_entry(
        &mut self,
        domid: DomId,
        frame: u32,
        access: GrantAccess,
    ) -> Result<Grant, GrantError> {
        let words = self.entries.len().div_ceil(BITS);
        let Some((word, bits)) = self.free[..words]
            .iter_mut()
            .enumerate()
            .skip(self.first_free_word)
            .find(|(_, bits)| **bits != 0)
        else {
            return Err(self.exhausted());
        };
        let bit = bits.trailing_zeros();
        *bits &= !(1 << bit);
        self.first_free_word = word;
        self.free_count -= 1;
        // A bit of a word below `words`: an entry of the table.
        let gref = GrantRef((word * BITS) as u32 + bit);
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

    /// [`grant`](Self::grant), first growing the table by a frame from
    /// `frames` when no entry is free. The frame number is checked before
    /// the table grows; a failed growth is the error (the table as it was,
    /// nothing granted). Whether it grew shows in [`frames`](Self::frames).
    pub fn grant_or_grow(
        &mut self,
        frames: &mut impl GrantFrames<'a>,
        domid: DomId,
        frame: GrantableFrame,
        access: GrantAccess,
    ) -> Result<Grant, GrantError> {
        let frame = entry_frame(&frame)?;
        if self.free_count == 0 {
            self.grow(frames)?;
        }
        self.grant_entry(domid, frame, access)
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
        let (word, bit) = (gref.0 as usize / BITS, 1 << (gref.0 as usize % BITS));
        if self.free[word] & bit != 0 {
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
        self.free[word] |= bit;
        self.free_count += 1;
        self.first_free_word = self.first_free_word.min(word);
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
    use crate::Hypervisor;
    use crate::error::{XenErrno, XenOp};
    use crate::hypercall::tests::RecordingXen;
    use crate::memory::XenMapSpace;

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
        let mut gt = GrantTable::new(&entries).unwrap();
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
        let mut gt = GrantTable::new(&entries).unwrap();
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
        let mut gt = GrantTable::new(&entries).unwrap();
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
        let mut gt = GrantTable::new(&entries).unwrap();
        let a = gt.grant(DomId(1), frame(1), GrantAccess::ReadOnly).unwrap();
        let gref = a.gref();
        gt.grant(DomId(1), frame(2), GrantAccess::ReadOnly).unwrap();
        let err = gt
            .grant(DomId(1), frame(3), GrantAccess::ReadOnly)
            .unwrap_err();
        assert_eq!(
            err,
            GrantError::Exhausted {
                usable: 2,
                frames: 1,
                limit: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "grant table exhausted: all 2 usable entries are granted, frames=1 limit=1"
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
        let mut gt = GrantTable::new(&entries).unwrap();
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
    fn setup_refuses_stale_entries_and_an_impossible_limit() {
        let stale = table(10);
        stale[9].flags.store(GTF_permit_access, Ordering::SeqCst);
        let err = GrantTable::new(&stale).err().unwrap();
        assert_eq!(
            err,
            GrantError::StaleEntry {
                gref: GrantRef(9),
                flags: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "gref 9 is not free as its frame joins the table (flags 0x1)"
        );
        let limit = usize::MAX / 8;
        let region = GrantRegion {
            first_gfn: 0x38000,
            limit,
        };
        let err = GrantTable::in_region(region).err().unwrap();
        assert_eq!(err, GrantError::NoMemory { limit });
        assert!(
            err.to_string()
                .starts_with("no memory for the free map of ")
        );
        let small = table(4);
        let mut gt = GrantTable::new(&small).unwrap();
        assert_eq!(
            gt.grant(DomId(1), frame(1), GrantAccess::ReadWrite),
            Err(GrantError::Exhausted {
                usable: 0,
                frames: 1,
                limit: 1
            })
        );
    }

    /// The kernel's side of a growing table in host memory, as the
    /// kernel's: places a frame with the hypercall (through the recording
    /// double; like Xen since 4.17 it refuses to place a frame twice,
    /// `EBUSY`), and answers with the entries of the frames asked for,
    /// fewer where its window (`entries`) ends.
    struct Window<'a> {
        entries: &'a [GrantEntryV1],
        xen: RecordingXen,
        /// (index, gfn) of each frame placed.
        placed: Vec<(u64, u64)>,
    }

    impl<'a> Window<'a> {
        fn new(entries: &'a [GrantEntryV1]) -> Self {
            Self {
                entries,
                xen: RecordingXen::default(),
                placed: Vec::new(),
            }
        }

        fn placements(&self) -> usize {
            let calls = self.xen.log.iter();
            calls.filter(|(op, _)| *op == XenOp::AddToPhysmap).count()
        }
    }

    impl<'a> GrantFrames<'a> for Window<'a> {
        fn place(&mut self, index: u64, at: VacantFrame) -> Result<(), XenError> {
            if self.placed.iter().any(|&(placed, _)| placed == index) {
                return Err(XenError::errno(XenOp::AddToPhysmap, XenErrno::EBUSY));
            }
            let gfn = at.gfn();
            self.xen
                .add_to_physmap(XenMapSpace::GrantTable, index, at)?;
            self.placed.push((index, gfn));
            Ok(())
        }

        fn entries(&self, frames: usize) -> &'a [GrantEntryV1] {
            let len = frames.saturating_mul(PER_FRAME).min(self.entries.len());
            &self.entries[..len]
        }
    }

    /// The region of `region_frames` frames at gfn 0x38000, for a table Xen
    /// lets have `max_nr_frames`.
    #[allow(unsafe_code)]
    fn region(region_frames: u64, max_nr_frames: u32) -> GrantRegion {
        // SAFETY: a test: the window is host memory, and the recording
        // double places nothing anywhere.
        unsafe { GrantRegion::new(0x38000, region_frames, max_nr_frames) }
    }

    const PER_FRAME: usize = GRANT_ENTRIES_PER_FRAME;

    /// Grants until refused; the references granted, those whose grant
    /// grew the table, and the refusal.
    fn fill<'a>(
        gt: &mut GrantTable<'a>,
        window: &mut Window<'a>,
    ) -> (Vec<Grant>, Vec<u32>, GrantError) {
        let mut grants = Vec::new();
        let mut grew_at = Vec::new();
        loop {
            let before = gt.frames();
            match gt.grant_or_grow(window, DomId(1), frame(7), GrantAccess::ReadOnly) {
                Ok(grant) => {
                    if gt.frames() != before {
                        grew_at.push(grant.gref().0);
                    }
                    grants.push(grant);
                }
                Err(error) => {
                    assert_eq!(gt.frames(), before, "a refused grant grew the table");
                    return (grants, grew_at, error);
                }
            }
        }
    }

    #[test]
    fn the_region_limits_the_table_to_its_frames_and_xens() {
        assert_eq!(region(64, 64).limit(), 64);
        assert_eq!(region(64, 2).limit(), 2);
        assert_eq!(region(3, 64).limit(), 3);
        assert_eq!(region(0, 64).limit(), 0);
        assert_eq!(region(u64::MAX, u32::MAX).limit(), u32::MAX as usize);
        assert_eq!(region(1, 1).first_gfn(), 0x38000);
        // No frame number past the last.
        // SAFETY: a test: nothing is placed.
        #[allow(unsafe_code)]
        let last = unsafe { GrantRegion::new(u64::MAX - 1, 64, 64) };
        assert_eq!(last.limit(), 1);
    }

    /// The free map is a bit per entry the limit allows: 64 bytes a frame.
    #[test]
    fn the_free_map_holds_a_bit_per_entry_of_the_limit() {
        let gt = GrantTable::in_region(region(64, 64)).unwrap();
        assert_eq!(gt.free.len() * size_of::<u64>(), 64 * 64);
        let gt = GrantTable::in_region(region(64, 3)).unwrap();
        assert_eq!(gt.free.len(), 3 * PER_FRAME / 64);
    }

    /// The flags and map flags are those of Xen's `grant_table.h`.
    #[test]
    fn flag_values_are_xens() {
        assert_eq!(
            [GTF_permit_access, GTF_readonly, GTF_reading, GTF_writing],
            [1, 4, 8, 16]
        );
        assert_eq!([GNTMAP_host_map, GNTMAP_readonly], [2, 4]);
    }

    #[test]
    fn the_table_grows_a_frame_when_full_up_to_its_limit() {
        // The window holds four frames, Xen allows three.
        let entries = table(4 * PER_FRAME);
        let mut window = Window::new(&entries);
        let mut gt = GrantTable::in_region(region(4, 3)).unwrap();
        assert_eq!((gt.frames(), gt.usable(), gt.free_count()), (0, 0, 0));
        assert_eq!(gt.limit(), 3);
        gt.grow(&mut window).unwrap();
        assert_eq!((gt.frames(), gt.usable(), gt.free_count()), (1, 504, 504));
        let (mut grants, grew_at, exhausted) = fill(&mut gt, &mut window);
        let refs: Vec<u32> = grants.iter().map(|g| g.gref().0).collect();
        // Each growth came when the table was full, maps one frame, and its
        // lowest entry is the next handed out.
        assert_eq!(grew_at, [512, 1024]);
        // Frame i of the table at the region's frame i, each placed once.
        assert_eq!(window.placed, [(0, 0x38000), (1, 0x38001), (2, 0x38002)]);
        assert_eq!(window.placements(), 3);
        // Every usable entry of the three frames once, lowest first; the
        // reserved entries never, and untouched.
        assert_eq!(refs, (8..3 * 512).collect::<Vec<u32>>());
        assert!(
            entries[..8]
                .iter()
                .all(|e| e.flags.load(Ordering::SeqCst) == 0)
        );
        assert_eq!(
            entries[3 * 512 - 1].flags.load(Ordering::SeqCst),
            GTF_permit_access | GTF_readonly
        );
        // Only at the limit is a grant refused, and nothing more is mapped
        // though the window has room.
        assert_eq!(
            exhausted,
            GrantError::Exhausted {
                usable: 1528,
                frames: 3,
                limit: 3
            }
        );
        assert_eq!(
            exhausted.to_string(),
            "grant table exhausted: all 1528 usable entries are granted, frames=3 limit=3"
        );
        assert_eq!(gt.grow(&mut window), Err(exhausted));
        assert_eq!(window.placements(), 3);
        // An entry of a grown frame ends and is handed out again.
        gt.end(grants.swap_remove(1100 - 8)).unwrap();
        let again = gt.grant_or_grow(&mut window, DomId(1), frame(8), GrantAccess::ReadWrite);
        assert_eq!(again.map(|g| g.gref().0), Ok(1100));
        assert_eq!(gt.frames(), 3);
    }

    #[test]
    fn a_refused_growth_leaves_the_table_as_it_was() {
        let entries = table(2 * PER_FRAME);
        let mut window = Window::new(&entries);
        let mut gt = GrantTable::in_region(region(2, 64)).unwrap();
        gt.grow(&mut window).unwrap();
        let held: Vec<Grant> = (0..504)
            .map(|i| gt.grant(DomId(1), frame(i), GrantAccess::ReadOnly).unwrap())
            .collect();
        window.xen.ret = -12;
        let err = gt
            .grant_or_grow(&mut window, DomId(1), frame(1), GrantAccess::ReadOnly)
            .unwrap_err();
        assert_eq!(
            err,
            GrantError::Grow {
                frame: 1,
                error: XenError::errno(XenOp::AddToPhysmap, XenErrno::ENOMEM)
            }
        );
        assert_eq!(
            err.to_string(),
            "grant table frame 1 not mapped: memory_op(add_to_physmap): ENOMEM (-12)"
        );
        assert_eq!((gt.frames(), gt.usable(), gt.free_count()), (1, 504, 0));
        assert!(
            entries[512..]
                .iter()
                .all(|e| e.flags.load(Ordering::SeqCst) == 0)
        );
        // The grants made before still end, and reuse needs no growth.
        let first = held.into_iter().next().unwrap();
        gt.end(first).unwrap();
        let reused = gt.grant_or_grow(&mut window, DomId(1), frame(1), GrantAccess::ReadOnly);
        assert_eq!((reused.map(|g| g.gref().0), gt.frames()), (Ok(8), 1));
        // Once Xen agrees, the same frame is placed and its entries freed.
        window.xen.ret = 0;
        let grown = gt.grant_or_grow(&mut window, DomId(1), frame(2), GrantAccess::ReadOnly);
        assert_eq!(grown.map(|g| g.gref().0), Ok(512));
        assert_eq!((gt.frames(), gt.usable(), gt.free_count()), (2, 1016, 511));
        assert_eq!(window.placed, [(0, 0x38000), (1, 0x38001)]);
    }

    #[test]
    fn a_stale_frame_is_refused_until_cleared_then_taken_without_placing_it_again() {
        let entries = table(3 * PER_FRAME);
        entries[700]
            .flags
            .store(GTF_permit_access, Ordering::SeqCst);
        let mut window = Window::new(&entries);
        let mut gt = GrantTable::in_region(region(3, 64)).unwrap();
        gt.grow(&mut window).unwrap();
        let (grants, _, refused) = fill(&mut gt, &mut window);
        assert_eq!(grants.len(), 504);
        // Xen placed frame 1, but an entry of it is in use: refused whole.
        let stale = GrantError::StaleEntry {
            gref: GrantRef(700),
            flags: 1,
        };
        assert_eq!(refused, stale);
        assert_eq!((gt.frames(), gt.usable(), gt.free_count()), (1, 504, 0));
        assert_eq!(window.placed, [(0, 0x38000), (1, 0x38001)]);
        // Asked again, the table takes the placed frame rather than placing
        // it again (Xen would refuse) or another: the same refusal.
        for _ in 0..3 {
            let again = gt.grant_or_grow(&mut window, DomId(1), frame(7), GrantAccess::ReadOnly);
            assert_eq!(again, Err(stale));
        }
        assert_eq!(window.placements(), 2);
        // Once the entry is free, the next growth takes frame 1, and the
        // table goes on to its limit with consistent numbers.
        entries[700].flags.store(0, Ordering::SeqCst);
        let (more, grew_at, exhausted) = fill(&mut gt, &mut window);
        assert_eq!(grew_at, [512, 1024]);
        assert_eq!(more.len(), 2 * 512);
        assert_eq!(window.placed, [(0, 0x38000), (1, 0x38001), (2, 0x38002)]);
        assert_eq!(
            exhausted,
            GrantError::Exhausted {
                usable: 3 * 512 - 8,
                frames: 3,
                limit: 3
            }
        );
        assert_eq!((gt.usable(), gt.free_count()), (1528, 0));
    }

    #[test]
    fn the_frame_is_checked_before_the_table_grows() {
        let entries = table(2 * PER_FRAME);
        let mut window = Window::new(&entries);
        let mut gt = GrantTable::in_region(region(2, 64)).unwrap();
        gt.grow(&mut window).unwrap();
        let _held: Vec<Grant> = (0..504)
            .map(|i| gt.grant(DomId(1), frame(i), GrantAccess::ReadOnly).unwrap())
            .collect();
        let too_large =
            gt.grant_or_grow(&mut window, DomId(1), frame(1 << 32), GrantAccess::ReadOnly);
        assert_eq!(too_large, Err(GrantError::FrameTooLarge(1 << 32)));
        // Nothing placed, nothing grown.
        assert_eq!((gt.frames(), gt.free_count()), (1, 0));
        assert_eq!(window.placements(), 1);
    }

    /// A `GrantFrames` that answers with other memory than the table's
    /// once the table has a frame, or with too few entries.
    struct Liar<'a> {
        window: Window<'a>,
        other: &'a [GrantEntryV1],
        short: bool,
    }

    impl<'a> GrantFrames<'a> for Liar<'a> {
        fn place(&mut self, index: u64, at: VacantFrame) -> Result<(), XenError> {
            self.window.place(index, at)
        }

        fn entries(&self, frames: usize) -> &'a [GrantEntryV1] {
            match (frames, self.short) {
                (1, _) => self.window.entries(1),
                (_, false) => &self.other[..frames * PER_FRAME],
                (_, true) => self.window.entries(frames - 1),
            }
        }
    }

    #[test]
    fn a_growth_answered_with_other_entries_is_refused() {
        for short in [false, true] {
            let entries = table(2 * PER_FRAME);
            // A copy whose entry 8 says it grants: ending through it would
            // leave Xen's entry granting.
            let other = table(2 * PER_FRAME);
            other[8].flags.store(GTF_permit_access, Ordering::SeqCst);
            let mut liar = Liar {
                window: Window::new(&entries),
                other: &other,
                short,
            };
            let mut gt = GrantTable::in_region(region(2, 64)).unwrap();
            gt.grow(&mut liar).unwrap();
            let held: Vec<Grant> = (0..504)
                .map(|i| gt.grant(DomId(1), frame(i), GrantAccess::ReadOnly).unwrap())
                .collect();
            let err = gt
                .grant_or_grow(&mut liar, DomId(1), frame(1), GrantAccess::ReadOnly)
                .unwrap_err();
            let len = if short { 512 } else { 1024 };
            assert_eq!(err, GrantError::WrongEntries { frames: 2, len });
            assert_eq!((gt.frames(), gt.free_count()), (1, 0));
            // Ending a grant clears Xen's entry, not the copy's.
            let first = held.into_iter().next().unwrap();
            gt.end(first).unwrap();
            assert_eq!(entries[8].flags.load(Ordering::SeqCst), 0);
            assert_eq!(other[8].flags.load(Ordering::SeqCst), GTF_permit_access);
        }
        assert_eq!(
            GrantError::WrongEntries {
                frames: 2,
                len: 1024
            }
            .to_string(),
            "grant table growth to 2 frames got 1024 entries that do not extend its own"
        );
    }

    #[test]
    fn a_region_or_xen_limit_stops_the_growth() {
        // The region holds one frame; Xen allows 64.
        let entries = table(2 * PER_FRAME);
        let mut window = Window::new(&entries);
        let mut gt = GrantTable::in_region(region(1, 64)).unwrap();
        gt.grow(&mut window).unwrap();
        let exhausted = GrantError::Exhausted {
            usable: 504,
            frames: 1,
            limit: 1,
        };
        assert_eq!(gt.grow(&mut window), Err(exhausted));
        assert_eq!(window.placements(), 1);
        // Xen allows one frame; the region holds 64.
        let entries = table(2 * PER_FRAME);
        let mut window = Window::new(&entries);
        let mut gt = GrantTable::in_region(region(64, 1)).unwrap();
        gt.grow(&mut window).unwrap();
        assert_eq!(gt.grow(&mut window), Err(exhausted));
        assert_eq!(window.placements(), 1);
        // A table that does not grow has its frames as its limit.
        let fixed = table(PER_FRAME);
        let entries = table(2 * PER_FRAME);
        let mut window = Window::new(&entries);
        let mut gt = GrantTable::new(&fixed).unwrap();
        assert_eq!((gt.frames(), gt.limit()), (1, 1));
        assert_eq!(gt.grow(&mut window), Err(exhausted));
        assert_eq!(window.placements(), 0);
        // An empty region: no frame at all.
        let mut gt = GrantTable::in_region(region(0, 64)).unwrap();
        assert_eq!(
            gt.grow(&mut window),
            Err(GrantError::Exhausted {
                usable: 0,
                frames: 0,
                limit: 0
            })
        );
    }
}
