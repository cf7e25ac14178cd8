//! Small CPU facts and primitives.

use aarch64_cpu::registers::{CNTFRQ_EL0, CNTVCT_EL0, Readable};

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
