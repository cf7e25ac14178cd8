//! Data-cache maintenance by virtual address, to the point of coherency.

use aarch64_cpu::asm::barrier;

/// A cache maintenance operation by VA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOp {
    /// DC CVAC: write dirty lines back to the PoC.
    Clean,
    /// DC IVAC: discard lines (dirty data is lost).
    Invalidate,
    /// DC CIVAC: write back, then discard.
    CleanInvalidate,
}

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
/// Safe to call on any address range: an unmapped VA faults like a load.
/// `Invalidate` discards data, so it is applied only to lines wholly inside
/// the range: a partial line at either end also holds bytes of a neighbour,
/// and is cleaned and invalidated instead.
pub fn maintain_range(op: CacheOp, start: usize, len: usize) {
    if len == 0 {
        return;
    }
    let line = dcache_line();
    let end = start + len;
    let first = start & !(line - 1);
    let last = (end - 1) & !(line - 1);
    barrier::dsb(barrier::SY);
    let mut addr = first;
    while addr <= last {
        let partial = (addr == first && start != first) || (addr == last && end != last + line);
        let op = match op {
            CacheOp::Invalidate if partial => CacheOp::CleanInvalidate,
            op => op,
        };
        // SAFETY: DC by VA only affects cache state for `addr`'s line; it
        // reads or writes no program-visible memory beyond what the
        // coherence protocol does anyway (IVAC only on whole lines inside
        // the range, whose contents the caller gives up).
        unsafe {
            match op {
                CacheOp::Clean => core::arch::asm!("dc cvac, {}", in(reg) addr, options(nostack)),
                CacheOp::Invalidate => {
                    core::arch::asm!("dc ivac, {}", in(reg) addr, options(nostack))
                }
                CacheOp::CleanInvalidate => {
                    core::arch::asm!("dc civac, {}", in(reg) addr, options(nostack))
                }
            }
        }
        addr += line;
    }
    barrier::dsb(barrier::SY);
}
