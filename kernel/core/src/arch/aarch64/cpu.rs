//! Small CPU facts and primitives.

use aarch64_cpu::registers::{DAIF, ReadWriteable, Readable, SCTLR_EL1};

use core::sync::atomic::{AtomicU64, Ordering};

use super::timer;

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
pub fn mask_irqs() {
    DAIF.modify(DAIF::I::Masked);
}

/// Unmasks IRQs (PSTATE.I = 0): a pending interrupt is taken at once.
pub fn unmask_irqs() {
    DAIF.modify(DAIF::I::Unmasked);
}

/// The virtual counter when the kernel's Rust code was entered.
static ENTRY_TICKS: AtomicU64 = AtomicU64::new(0);

/// Notes the kernel's entry time; called first thing by the entry code (a
/// plain store: no exclusive access, so safe with the MMU off).
pub fn mark_entry() {
    ENTRY_TICKS.store(timer::counter(), Ordering::Relaxed);
}

/// Microseconds since [`mark_entry`]: the kernel's own boot time, without
/// the hypervisor's or firmware's before it.
pub fn since_entry_us() -> u64 {
    let ticks = timer::counter().wrapping_sub(ENTRY_TICKS.load(Ordering::Relaxed));
    ((u128::from(ticks) * 1_000_000) / u128::from(timer::frequency())) as u64
}

/// Microseconds on the virtual counter (since the domain or machine started).
pub fn uptime_us() -> u64 {
    ((u128::from(timer::counter()) * 1_000_000) / u128::from(timer::frequency())) as u64
}

/// Whether the MMU and data cache are on (SCTLR_EL1.M and .C): before that,
/// every data access is Device memory, which exclusive (atomic
/// read-modify-write) accesses must not target, and stores bypass the caches.
pub fn caches_enabled() -> bool {
    SCTLR_EL1.is_set(SCTLR_EL1::M) && SCTLR_EL1.is_set(SCTLR_EL1::C)
}
