//! Small CPU facts and primitives.

use aarch64_cpu::registers::{DAIF, Readable, SCTLR_EL1};

/// Waits for an interrupt (Xen traps WFI and deschedules the vCPU). It
/// returns once an interrupt is pending, even one masked by PSTATE.I.
pub fn wait_for_interrupt() {
    aarch64_cpu::asm::wfi();
}

/// Whether IRQs are masked (PSTATE.I): at boot, and inside an exception.
pub fn irqs_masked() -> bool {
    DAIF.is_set(DAIF::I)
}

/// Masks IRQs (PSTATE.I = 1).
///
/// Also a compiler barrier: memory accesses after it (to state an interrupt
/// handler shares, under a lock taken with IRQs masked) are not moved before
/// it. `aarch64-cpu`'s `DAIF` accessors are `nomem` asm, which promises the
/// compiler the opposite; this asm is not `nomem`.
pub fn mask_irqs() {
    // SAFETY: DAIFSet only sets PSTATE.I; it touches no memory. Not `nomem`,
    // so the compiler keeps memory accesses on their side of it.
    unsafe { core::arch::asm!("msr daifset, #2", options(nostack, preserves_flags)) };
}

/// Unmasks IRQs (PSTATE.I = 0): a pending interrupt is taken at once.
///
/// Also a compiler barrier: memory accesses before it (to state shared with
/// an interrupt handler) are not moved after it, where the handler could run
/// in between.
pub fn unmask_irqs() {
    // SAFETY: DAIFClr only clears PSTATE.I; a handler may run right after,
    // and the asm is not `nomem`, so every memory access the compiler
    // scheduled before it is done by then.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
}

/// Whether the MMU and data cache are on (SCTLR_EL1.M and .C): before that,
/// every data access is Device memory, which exclusive (atomic
/// read-modify-write) accesses must not target, and stores bypass the caches.
pub fn caches_enabled() -> bool {
    SCTLR_EL1.is_set(SCTLR_EL1::M) && SCTLR_EL1.is_set(SCTLR_EL1::C)
}
