//! The generic timer's virtual counter and virtual timer (CNTV), which the
//! kernel's clock, sleeps and timeouts are built on. Under Xen every guest
//! owns the virtual timer outright (its PPI is injected by Xen); on bare
//! QEMU it is the same hardware timer.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    CNTFRQ_EL0, CNTP_CTL_EL0, CNTP_TVAL_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTVCT_EL0, Readable,
    Writeable,
};

/// Counter ticks per second (CNTFRQ_EL0), never 0.
pub fn frequency() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

/// The virtual count (CNTVCT_EL0), read after an ISB so that it is not taken
/// ahead of the code before it.
pub fn counter() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// Arms the virtual timer: its interrupt asserts once the virtual count
/// reaches `compare` (immediately if it already has).
pub fn arm(compare: u64) {
    CNTV_CVAL_EL0.set(compare);
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::IMASK::CLEAR);
    barrier::isb(barrier::SY);
}

/// Stops the virtual timer; its (level-triggered) interrupt deasserts.
pub fn disarm() {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::CLEAR + CNTV_CTL_EL0::IMASK::SET);
    barrier::isb(barrier::SY);
}

/// Makes the EL1 physical timer (CNTP, which the kernel does not otherwise
/// use) assert its interrupt now: for the self-test of an interrupt that
/// nobody handles.
pub fn fire_physical_timer_now() {
    CNTP_TVAL_EL0.set(0);
    CNTP_CTL_EL0.write(CNTP_CTL_EL0::ENABLE::SET + CNTP_CTL_EL0::IMASK::CLEAR);
    barrier::isb(barrier::SY);
}
