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
/// Safe to call on any address range: an unmapped VA faults like a load. Note
/// that `Invalidate` discards data: callers use it only on memory whose CPU
/// writes do not matter (a buffer a device is about to write).
pub fn maintain_range(op: CacheOp, start: usize, len: usize) {
    if len == 0 {
        return;
    }
    let line = dcache_line();
    let mut addr = start & !(line - 1);
    let end = start + len;
    barrier::dsb(barrier::SY);
    while addr < end {
        // SAFETY: DC by VA only affects cache state for `addr`'s line; it
        // reads or writes no program-visible memory beyond what the
        // coherence protocol does anyway.
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
