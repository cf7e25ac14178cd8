//! The boundaries between the DMA logic and the machine, as traits.
//!
//! Each is implemented twice: by the kernel on aarch64 (a thin, unsafe layer:
//! `DC` instructions, a raw copy, the Xen hypercall, grant-table entries) and by recording fakes in
//! this crate's tests. None of them is called with a linear-map address of
//! pool memory: pool memory is reached only through the pool's own window.
//!
//! # Why the traits are `unsafe` and their ranges are tokens
//!
//! Every method touches memory (copies into it, discards its cache lines,
//! asks Xen to) at addresses it is given. Two things make that sound:
//!
//! - **Callers cannot name memory.** A method takes an [`OwnedVirtRange`] or
//!   an [`OwnedPhysRange`], which only this crate builds, from memory the DMA
//!   layer owns at that moment: a block of a pool (vouched for by the
//!   `unsafe` [`PoolSet::add`](crate::PoolSet::add)) or a CPU buffer being
//!   mapped (vouched for by the `unsafe` [`CpuBuffer::new`](crate::CpuBuffer::new)).
//!   It only lends them by reference for one call, so safe code outside the
//!   crate can neither forge nor keep one: it cannot make an implementation
//!   touch memory the layer does not own.
//! - **The layer relies on what implementations do.** It hands memory to a
//!   device and back on the strength of the maintenance being exactly what
//!   was asked, complete on return, and confined to the range (an invalidate
//!   that dropped a dirty neighbouring line would lose data the layer does
//!   not own). Those promises are the "Implementation safety" of each trait,
//!   so implementing one is `unsafe`, as for `virtio-drivers`' `Hal`.
//!
//! The alternative, `unsafe fn` methods taking raw addresses, would put
//! `unsafe` blocks in this crate's logic at every call and leave each call's
//! justification to a comment; tokens make it a type.

use core::fmt;

pub use tidepool_mm::CacheOp;
use tidepool_mm::{PhysRange, VirtAddr};
use tidepool_xen_abi::{DomId, Grant, GrantAccess, GrantError, GrantNotEnded};

/// A range of kernel virtual addresses the DMA layer owns for the duration
/// of one boundary call: a block of a pool's window, or a CPU buffer mapped
/// for streaming. Only this crate builds one, and only lends it.
///
/// ```compile_fail,E0451
/// // Safe code cannot point a boundary trait at memory of its choice.
/// let range = tidepool_dma::OwnedVirtRange { start: tidepool_mm::VirtAddr(0x1000), len: 8 };
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct OwnedVirtRange {
    start: VirtAddr,
    len: u64,
}

impl OwnedVirtRange {
    /// Only the DMA layer vouches for a range.
    pub(crate) const fn new(start: VirtAddr, len: u64) -> Self {
        Self { start, len }
    }

    /// First byte.
    pub const fn start(&self) -> VirtAddr {
        self.start
    }

    /// Length in bytes (never 0, never wrapping).
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty (never, for a range the layer lends).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A range of physical memory the DMA layer owns for the duration of one
/// boundary call: a block of a pool. Only this crate builds one, and only
/// lends it.
///
/// ```compile_fail,E0451
/// // Safe code cannot ask the platform to invalidate memory of its choice.
/// let range = tidepool_dma::OwnedPhysRange { range: tidepool_mm::PhysRange::new(0x4000_0000, 0x1000) };
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct OwnedPhysRange {
    range: PhysRange,
}

impl OwnedPhysRange {
    /// Only the DMA layer vouches for a range.
    pub(crate) const fn new(range: PhysRange) -> Self {
        Self { range }
    }

    /// The range.
    pub const fn range(&self) -> PhysRange {
        self.range
    }
}

/// Data-cache maintenance by virtual address, to the point of coherency.
///
/// The kernel's implementation issues `DC CVAC` / `DC IVAC` / `DC CIVAC` for
/// every cache line overlapping the range and completes with `DSB`.
///
/// # Implementation safety
///
/// [`maintain`](Self::maintain) must do `op` to the point of coherency on
/// every cache line overlapping the range and nothing else, complete before
/// it returns, and keep no address past the call. [`CacheOp::Invalidate`]
/// must not destroy data outside the range: a partial line at either end is
/// cleaned and invalidated, not just invalidated (as Linux's
/// `dcache_inval_poc` and Xen's `invalidate_dcache_va_range` do).
///
/// ```compile_fail,E0200
/// // Implementing it takes `unsafe impl`: the DMA layer relies on it.
/// struct Nothing;
/// impl tidepool_dma::CacheMaintenance for Nothing {
///     fn maintain(&mut self, _: tidepool_dma::CacheOp, _: &tidepool_dma::OwnedVirtRange) {}
/// }
/// ```
#[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
pub unsafe trait CacheMaintenance {
    /// Applies `op` to every cache line overlapping `range` and returns once
    /// the maintenance is complete.
    fn maintain(&mut self, op: CacheOp, range: &OwnedVirtRange);
}

/// Cache maintenance by physical address done by the platform (the
/// hypervisor): Xen's `GNTTABOP_cache_flush`.
///
/// The address is a *machine* address for Xen. DMA addresses here are
/// physical addresses, so this is meaningful only where guest-physical equals
/// machine-physical (dom0, which Xen maps 1:1 on Arm, or a direct-mapped
/// domU). Elsewhere the kernel passes no platform.
///
/// # Implementation safety
///
/// [`flush`](Self::flush) must apply `op` to exactly the range (whole cache
/// lines, to the point of coherency), complete before it returns `Ok`, and
/// keep no address past the call; an `Err` must mean the maintenance may be
/// incomplete, so that the layer redoes it by VA.
#[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
pub unsafe trait PlatformFlush {
    /// Applies `op` to every byte of `range` in one batched request: the
    /// implementation splits the range into entries that each stay inside one
    /// 4 KiB page and issues them together (more than one hypercall only when
    /// its entry array is full or Xen preempts). Xen stops a batch at its
    /// first failing entry; the implementation reports that as
    /// [`FlushFailed`] with the hypercalls it made.
    fn flush(&mut self, op: CacheOp, range: &OwnedPhysRange) -> Result<FlushDone, FlushFailed>;
}

/// What a successful [`PlatformFlush::flush`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlushDone {
    /// Hypercalls made.
    pub hypercalls: u32,
    /// 4 KiB pages flushed (entries of the batch).
    pub pages: u32,
}

/// A [`PlatformFlush::flush`] the platform refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlushFailed {
    /// Why, as Xen said it.
    pub errno: FlushErrno,
    /// Hypercalls made before and including the refused one.
    pub hypercalls: u32,
}

impl fmt::Display for FlushFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cache flush refused ({}) after {} hypercalls",
            self.errno, self.hypercalls
        )
    }
}

/// The error a `GNTTABOP_cache_flush` entry returned.
///
/// Every one of them is handled the same way (maintenance through the pool
/// window); they are kept apart only to report what Xen said.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlushErrno {
    /// `-EPERM` (1): the page has no owner or the owner has no grant table,
    /// as for a static host `/reserved-memory` pool on Xen 4.17.
    Eperm,
    /// `-EINVAL` (22): bad entry, invalid frame, or a foreign page not
    /// granted to the caller.
    Einval,
    /// `-ENOSYS` (38): no cache flush in this hypervisor.
    Enosys,
    /// `-EOPNOTSUPP` (95): an unsupported flush source.
    Eopnotsupp,
    /// Any other negative return value, as returned.
    Other(i64),
}

impl FlushErrno {
    /// The errno behind a negative Xen return value (`-1` is [`Self::Eperm`]).
    pub const fn from_xen_return(ret: i64) -> Self {
        match ret {
            -1 => Self::Eperm,
            -22 => Self::Einval,
            -38 => Self::Enosys,
            -95 => Self::Eopnotsupp,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for FlushErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eperm => f.write_str("EPERM"),
            Self::Einval => f.write_str("EINVAL"),
            Self::Enosys => f.write_str("ENOSYS"),
            Self::Eopnotsupp => f.write_str("EOPNOTSUPP"),
            Self::Other(ret) => write!(f, "error {ret}"),
        }
    }
}

/// Byte copies between kernel virtual addresses: a CPU buffer and a pool
/// window. The bounce buffers of streaming DMA go through it.
///
/// The kernel's implementation is a raw copy. It may rely on what the layer
/// promises of every range it lends: mapped, valid for reads and writes for
/// its length, and owned by the layer for the call (pool blocks through
/// [`PoolSet::add`](crate::PoolSet::add)'s contract, CPU buffers through
/// [`CpuBuffer::new`](crate::CpuBuffer::new)'s); the two ranges of a copy
/// have the same length and do not overlap.
///
/// # Implementation safety
///
/// [`copy`](Self::copy) must write exactly `dst` with the bytes of `src`,
/// [`zero`](Self::zero) exactly `dst` with zeros, touch no other memory, be
/// complete on return and keep no address past the call: the layer hands
/// these bytes to a device (or back to the CPU buffer's owner) right after.
#[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
pub unsafe trait DmaMemory {
    /// Copies the bytes of `src` to `dst` (same length, no overlap).
    fn copy(&mut self, src: &OwnedVirtRange, dst: &OwnedVirtRange);
    /// Writes zeros over `dst`.
    fn zero(&mut self, dst: &OwnedVirtRange);
}

/// Grants of this domain's pages to another domain (Xen's grant table): the
/// device side of a grant device ([`Addressing::Grant`](crate::Addressing::Grant)).
///
/// The kernel's implementation writes a v1 grant-table entry
/// (`GrantableFrame` of the lent page) and ends it through the [`Grant`]
/// token the table made; the tests' fake is a real
/// [`tidepool_xen_abi::GrantTable`] over entries in host memory.
///
/// # Implementation safety
///
/// [`grant`](Self::grant) must grant `domid` access to exactly the one page
/// `page` names (a page-aligned 4 KiB block the layer owns and keeps until
/// the grant has ended), with `access`, and nothing else; on an error
/// nothing is granted. [`end`](Self::end) must end exactly the grant it is
/// given, and return `Ok` only once the other domain can no longer reach
/// the page through it (Xen's entry revoked, no mapping of it left); the
/// layer frees the page for reuse on `Ok` and never otherwise. Neither
/// keeps an address past the call.
#[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
pub unsafe trait PageGrants {
    /// Grants `domid` `access` to the page `page` names.
    fn grant(
        &mut self,
        domid: DomId,
        page: &OwnedPhysRange,
        access: GrantAccess,
    ) -> Result<Grant, GrantError>;
    /// Ends `grant`, or gives it back, still valid, with the reason
    /// (typically [`GrantError::InUse`]: the other domain still maps it).
    fn end(&mut self, grant: Grant) -> Result<(), GrantNotEnded>;
}
