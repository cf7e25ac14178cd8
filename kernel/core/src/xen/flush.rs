//! `GNTTABOP_cache_flush` for the DMA layer: cache maintenance of a
//! physical range by Xen, every page of the range in one batched hypercall,
//! with Xen's refusal reported, never swallowed.
//!
//! Xen reads the addresses as *machine* addresses, so a flush is issued only
//! where guest-physical equals machine-physical (dom0, or a direct-mapped
//! domU); elsewhere it is refused before any hypercall.

use core::fmt;

use tidepool_dma::{DmaDirection, SyncPoint, cache_op_for};
use tidepool_mm::PhysRange;
use tidepool_xen_abi::{
    CacheFlushBatch, CacheFlushDone, CacheFlushError, CacheFlushOp, cache_flush_range,
};

use super::Xen;

/// Why a flush was not done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushError {
    /// Not running under Xen (or before [`super::init`]).
    NoXen,
    /// This domain's guest-physical addresses are not machine addresses, so
    /// Xen would flush someone else's memory: nothing was issued.
    NotDirectMapped,
    /// Xen refused a page (or the range overflows): which pages are known
    /// done, which one failed, and the errno.
    Refused(CacheFlushError),
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoXen => f.write_str("cache_flush: not running under Xen"),
            Self::NotDirectMapped => f.write_str(
                "cache_flush: this domain is not direct-mapped (guest-physical is not machine)",
            ),
            Self::Refused(error) => error.fmt(f),
        }
    }
}

/// The flush a DMA sync needs, from the DMA layer's operation for
/// (`point`, `direction`): `None` when the sync needs no maintenance.
pub fn op_for(point: SyncPoint, direction: DmaDirection) -> Option<CacheFlushOp> {
    cache_op_for(point, direction).map(|op| match op {
        tidepool_dma::CacheOp::Clean => CacheFlushOp::Clean,
        tidepool_dma::CacheOp::Invalidate => CacheFlushOp::Invalidate,
        tidepool_dma::CacheOp::CleanInvalidate => CacheFlushOp::CleanInvalidate,
    })
}

/// Flushes `range` with `op` through `GNTTABOP_cache_flush`, building the
/// batches in the caller's `batch` (no allocation, no lock).
pub fn cache_flush(
    batch: &mut CacheFlushBatch,
    range: PhysRange,
    op: CacheFlushOp,
) -> Result<CacheFlushDone, FlushError> {
    let domain = super::domain().ok_or(FlushError::NoXen)?;
    if !domain.direct_mapped() {
        return Err(FlushError::NotDirectMapped);
    }
    cache_flush_range(&mut Xen, batch, range.base.0, range.size, op).map_err(FlushError::Refused)
}
