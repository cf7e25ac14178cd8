//! The boundaries between the DMA logic and the machine, as traits.
//!
//! Each is implemented twice: by the kernel on aarch64 (a thin, unsafe layer:
//! `DC` instructions, a raw copy, the Xen hypercall) and by recording fakes in
//! this crate's tests. None of them is called with a linear-map address of
//! pool memory: pool memory is reached only through the pool's own window.

use core::fmt;

use tidepool_mm::{PhysRange, VirtAddr};

/// A cache maintenance operation to the point of coherency, by VA or by PA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CacheOp {
    /// Write dirty lines back (`DC CVAC`; Xen `GNTTAB_CACHE_CLEAN`).
    Clean,
    /// Discard lines (`DC IVAC`; Xen `GNTTAB_CACHE_INVAL`).
    Invalidate,
    /// Write dirty lines back, then discard them (`DC CIVAC`; Xen both flags).
    CleanInvalidate,
}

impl fmt::Display for CacheOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Clean => "clean",
            Self::Invalidate => "invalidate",
            Self::CleanInvalidate => "clean+invalidate",
        })
    }
}

/// Data-cache maintenance by virtual address, to the point of coherency.
///
/// The kernel's implementation issues `DC CVAC` / `DC IVAC` / `DC CIVAC` for
/// every cache line overlapping the range and completes with `DSB`.
pub trait CacheMaintenance {
    /// Applies `op` to every cache line overlapping `[start, start + len)` and
    /// returns once the maintenance is complete.
    ///
    /// [`CacheOp::Invalidate`] must not destroy data outside the range: a
    /// partial line at either end is cleaned and invalidated, not just
    /// invalidated (as Linux's `dcache_inval_poc` and Xen's
    /// `invalidate_dcache_va_range` do).
    fn maintain(&mut self, op: CacheOp, start: VirtAddr, len: u64);
}

/// Cache maintenance by physical address done by the platform (the
/// hypervisor): Xen's `GNTTABOP_cache_flush`.
///
/// The address is a *machine* address for Xen. DMA addresses here are
/// physical addresses, so this is meaningful only where guest-physical equals
/// machine-physical (dom0, which Xen maps 1:1 on Arm, or a direct-mapped
/// domU). Elsewhere the kernel passes no platform.
pub trait PlatformFlush {
    /// Applies `op` to every byte of `range` in one batched request: the
    /// implementation splits the range into entries that each stay inside one
    /// 4 KiB page and issues them together (more than one hypercall only when
    /// its entry array is full or Xen preempts). Xen stops a batch at its
    /// first failing entry; the implementation reports that as
    /// [`FlushFailed`] with the hypercalls it made.
    fn flush(&mut self, op: CacheOp, range: PhysRange) -> Result<FlushDone, FlushFailed>;
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
/// The kernel's implementation is a raw copy; it relies on every address it
/// is given being mapped and valid for the length: pool windows are set up by
/// the kernel, and CPU buffers are vouched for by whoever built the
/// [`CpuBuffer`](crate::CpuBuffer).
pub trait DmaMemory {
    /// Copies `len` bytes from `src` to `dst`; the two ranges do not overlap.
    fn copy(&mut self, src: VirtAddr, dst: VirtAddr, len: u64);
    /// Writes `len` zero bytes at `dst`.
    fn zero(&mut self, dst: VirtAddr, len: u64);
}
