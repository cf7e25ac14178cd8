//! Small CPU facts and primitives.

use aarch64_cpu::registers::{CNTFRQ_EL0, CNTVCT_EL0, Readable, SCTLR_EL1};

/// Waits for an interrupt (Xen traps WFI and deschedules the vCPU).
pub fn wait_for_interrupt() {
    aarch64_cpu::asm::wfi();
}

/// Microseconds on the virtual counter (since the domain or machine started).
pub fn uptime_us() -> u64 {
    let freq = CNTFRQ_EL0.get().max(1);
    let ticks = CNTVCT_EL0.get();
    ((u128::from(ticks) * 1_000_000) / u128::from(freq)) as u64
}

/// Whether the MMU and data cache are on (SCTLR_EL1.M and .C): before that,
/// every data access is Device memory, which exclusive (atomic
/// read-modify-write) accesses must not target, and stores bypass the caches.
pub fn caches_enabled() -> bool {
    SCTLR_EL1.is_set(SCTLR_EL1::M) && SCTLR_EL1.is_set(SCTLR_EL1::C)
}
