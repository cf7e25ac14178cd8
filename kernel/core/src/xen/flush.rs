//! `GNTTABOP_cache_flush`: cache maintenance of a physical range by Xen,
//! every page of the range in batched hypercalls, with Xen's refusal
//! reported, never swallowed. [`XenFlush`] is the kernel's one way to issue
//! it: the DMA layer's [`PlatformFlush`] and the platform self-test both go
//! through it.
//!
//! Xen reads the addresses as *machine* addresses, so a [`XenFlush`] exists
//! only where guest-physical equals machine-physical (dom0, or a
//! direct-mapped domU): [`XenFlush::new`] refuses elsewhere, before any
//! hypercall can be made.

use core::fmt;

use tidepool_dma::{FlushDone, FlushErrno, FlushFailed, OwnedPhysRange, PlatformFlush};
use tidepool_mm::{CacheOp, PhysRange};
use tidepool_xen_abi::{
    CacheFlushBatch, CacheFlushDone, CacheFlushError, CacheFlushTarget, cache_flush_range,
};

use super::Xen;
use crate::arch::aarch64::timer::counter;

/// Why there is no Xen flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushUnavailable {
    /// Not running under Xen (or before [`super::init`]).
    NoXen,
    /// This domain's guest-physical addresses are not machine addresses, so
    /// Xen would flush someone else's memory.
    NotDirectMapped,
}

impl fmt::Display for FlushUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoXen => "not running under Xen",
            Self::NotDirectMapped => {
                "this domain is not direct-mapped (guest-physical is not machine)"
            }
        })
    }
}

/// `GNTTABOP_cache_flush` for a direct-mapped domain, with the buffer its
/// batches are built in (no allocation, no lock on the I/O path), and the
/// time spent in the DMA layer's flushes (for `bench=`: what a pool path
/// pays the hypervisor, measured rather than inferred).
pub struct XenFlush {
    batch: CacheFlushBatch,
    /// Counter ticks spent in [`PlatformFlush::flush`], hypercalls included.
    ticks: u64,
}

impl XenFlush {
    /// The flush, if this domain may issue it.
    pub fn new() -> Result<Self, FlushUnavailable> {
        let domain = super::domain().ok_or(FlushUnavailable::NoXen)?;
        if !domain.direct_mapped() {
            return Err(FlushUnavailable::NotDirectMapped);
        }
        Ok(Self {
            batch: CacheFlushBatch::new(),
            ticks: 0,
        })
    }

    /// Counter ticks the DMA layer's flushes took so far (virtual counter).
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Applies `op` to every byte of `range` through Xen.
    ///
    /// # Safety
    ///
    /// With [`CacheOp::Invalidate`] the caller owns `range`: Xen discards
    /// the dirty lines wholly inside it (it cleans partial ones first).
    /// `Clean` and `CleanInvalidate` lose no data.
    pub unsafe fn flush_range(
        &mut self,
        op: CacheOp,
        range: PhysRange,
    ) -> Result<CacheFlushDone, CacheFlushError> {
        // SAFETY: a `XenFlush` exists only in a direct-mapped domain (`new`),
        // so the range's guest-physical addresses are its machine addresses;
        // for `Invalidate` the caller owns the range (this function's
        // contract), and the other operations lose no data.
        let target = unsafe { CacheFlushTarget::new(range.base.0, range.size, op) };
        cache_flush_range(&mut Xen, &mut self.batch, &target)
    }
}

// SAFETY: `flush_range` asks Xen for exactly `op` on every page of the range
// and reports any entry Xen did not do as an error; Xen's flush is complete
// when the hypercall returns, and nothing is kept.
unsafe impl PlatformFlush for XenFlush {
    fn flush(&mut self, op: CacheOp, range: &OwnedPhysRange) -> Result<FlushDone, FlushFailed> {
        let start = counter();
        // SAFETY: the DMA layer lends only a block of a pool it owns.
        let result = unsafe { self.flush_range(op, range.range()) };
        self.ticks += counter().wrapping_sub(start);
        match result {
            Ok(done) => Ok(FlushDone {
                hypercalls: done.hypercalls,
                pages: done.pages as u32,
            }),
            Err(error) => Err(FlushFailed {
                // A range overflow never reaches Xen: report it as EINVAL.
                errno: error.errno().map_or(FlushErrno::Einval, |e| {
                    FlushErrno::from_xen_return(-e.code())
                }),
                hypercalls: error.hypercalls(),
            }),
        }
    }
}
