//! Powering off and rebooting: `SCHEDOP_shutdown` under Xen, PSCI
//! SYSTEM_OFF or SYSTEM_RESET otherwise.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::arch::aarch64::cpu::wait_for_interrupt;
use crate::arch::aarch64::psci::{self, Conduit};
use crate::xen::{self, ShutdownReason};

/// How this machine is turned off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerControl {
    /// Ask Xen (`SCHEDOP_shutdown`).
    Xen,
    /// PSCI through this conduit.
    Psci(Conduit),
}

static CONTROL: AtomicU8 = AtomicU8::new(0);

/// Records how to power off. Called at boot, once the platform is known.
pub fn set_power_control(control: PowerControl) {
    let code = match control {
        PowerControl::Psci(Conduit::Hvc) => 0,
        PowerControl::Psci(Conduit::Smc) => 1,
        PowerControl::Xen => 2,
    };
    CONTROL.store(code, Ordering::Release);
}

fn power_control() -> PowerControl {
    match CONTROL.load(Ordering::Acquire) {
        1 => PowerControl::Psci(Conduit::Smc),
        2 => PowerControl::Xen,
        _ => PowerControl::Psci(Conduit::Hvc),
    }
}

/// Shuts the system down, saying why on the console first. `Crash` is a
/// crash status for Xen (`SHUTDOWN_crash`); PSCI has no such status, so on
/// bare metal the console line is the only record of it.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let word = match reason {
        ShutdownReason::PowerOff => "poweroff",
        ShutdownReason::Reboot => "reboot",
        ShutdownReason::Crash => "crash",
    };
    crate::console::write_line(format_args!(
        "shutdown: {word} uptime_us={}",
        crate::timer::uptime_us()
    ));
    match power_control() {
        PowerControl::Xen => {
            if let Err(err) = xen::shutdown(reason) {
                crate::console::write_line(format_args!("shutdown: {err}; halting"));
            }
        }
        PowerControl::Psci(conduit) => {
            let (call, rc) = match reason {
                ShutdownReason::Reboot => ("SYSTEM_RESET", psci::system_reset(conduit)),
                ShutdownReason::PowerOff | ShutdownReason::Crash => {
                    ("SYSTEM_OFF", psci::system_off(conduit))
                }
            };
            crate::console::write_line(format_args!(
                "shutdown: PSCI {call} failed ({rc}); halting"
            ));
        }
    }
    loop {
        wait_for_interrupt();
    }
}
