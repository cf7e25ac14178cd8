//! Data-cache maintenance by virtual address, to the point of coherency.

use aarch64_cpu::asm::barrier;
use tidepool_mm::CacheOp;
use tidepool_mm::cache::line_spans;

/// Smallest data-cache line of this CPU (CTR_EL0.DminLine).
fn dcache_line() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects (aarch64-cpu does not declare it).
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Applies `op` to every cache line of `[start, start + len)`, then waits for
/// completion (DSB SY).
///
/// `Invalidate` discards data, so it is applied only to lines wholly inside
/// the range: a partial line at either end also holds bytes of a neighbour,
/// and is cleaned and invalidated instead ([`line_spans`], host-tested).
///
/// # Safety
///
/// With [`CacheOp::Invalidate`] the caller owns the range: the data of
/// every dirty line wholly inside it is lost, so nobody else may have
/// written it through the cache or rely on what it holds. `Clean` and
/// `CleanInvalidate` lose no data; for them any range is sound (an unmapped
/// VA faults like a load).
pub unsafe fn maintain_range(op: CacheOp, start: usize, len: usize) {
    barrier::dsb(barrier::SY);
    let line = dcache_line();
    for span in line_spans(op, start, len, line) {
        let lines = (0..span.lines).map(|index| span.first + index * line);
        // SAFETY (each block): DC by VA only affects cache state for the
        // line at `addr`; it reads or writes no program-visible memory
        // beyond what the coherence protocol does anyway, except that IVAC
        // drops dirty data: `line_spans` asks for it only on whole lines
        // inside the range, which the caller owns.
        match span.op {
            CacheOp::Clean => {
                for addr in lines {
                    // SAFETY: as above.
                    unsafe { core::arch::asm!("dc cvac, {}", in(reg) addr, options(nostack)) };
                }
            }
            CacheOp::Invalidate => {
                for addr in lines {
                    // SAFETY: as above; a whole line inside the range.
                    unsafe { core::arch::asm!("dc ivac, {}", in(reg) addr, options(nostack)) };
                }
            }
            CacheOp::CleanInvalidate => {
                for addr in lines {
                    // SAFETY: as above.
                    unsafe { core::arch::asm!("dc civac, {}", in(reg) addr, options(nostack)) };
                }
            }
        }
    }
    barrier::dsb(barrier::SY);
}
