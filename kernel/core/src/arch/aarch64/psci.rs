//! PSCI calls (power-off, reset) through the conduit the device tree names.

/// How PSCI calls reach the firmware or hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `HVC #0` (a hypervisor implements PSCI: QEMU at EL1, Xen).
    Hvc,
    /// `SMC #0` (firmware at EL3, or QEMU's PSCI when the guest owns EL2).
    Smc,
}

/// PSCI 0.2+ SYSTEM_OFF function ID.
const SYSTEM_OFF: u64 = 0x8400_0008;

/// PSCI 0.2+ SYSTEM_RESET function ID.
const SYSTEM_RESET: u64 = 0x8400_0009;

/// Asks for the system to be powered off. Returns only if the call failed,
/// with PSCI's error code.
pub fn system_off(conduit: Conduit) -> i64 {
    call_no_arguments(conduit, SYSTEM_OFF)
}

/// Asks for the system to be reset. Returns only if the call failed, with
/// PSCI's error code.
pub fn system_reset(conduit: Conduit) -> i64 {
    call_no_arguments(conduit, SYSTEM_RESET)
}

fn call_no_arguments(conduit: Conduit, function: u64) -> i64 {
    let ret: i64;
    // SAFETY: SYSTEM_OFF and SYSTEM_RESET take no pointers and do not
    // return on success; x0-x3 are declared clobbered as the SMC Calling
    // Convention allows.
    unsafe {
        match conduit {
            Conduit::Hvc => core::arch::asm!("hvc #0", inlateout("x0") function as i64 => ret,
                lateout("x1") _, lateout("x2") _, lateout("x3") _, options(nostack)),
            Conduit::Smc => core::arch::asm!("smc #0", inlateout("x0") function as i64 => ret,
                lateout("x1") _, lateout("x2") _, lateout("x3") _, options(nostack)),
        }
    }
    ret
}
