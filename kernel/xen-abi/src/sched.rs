//! `sched_op` arguments (`xen/include/public/sched.h`).

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

crate::assert_layout!(SchedShutdown, size 4, align 4, reason @ 0);

/// Why the domain shuts down (`SHUTDOWN_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShutdownReason {
    /// Power off: for dom0, Xen halts the machine.
    PowerOff,
    /// Reboot.
    Reboot,
    /// Suspend (the call returns when the domain resumes).
    Suspend,
    /// The domain crashed.
    Crash,
    /// The watchdog fired.
    Watchdog,
    /// Soft reset.
    SoftReset,
}

impl ShutdownReason {
    /// The `SHUTDOWN_*` value.
    pub const fn raw(self) -> u32 {
        match self {
            Self::PowerOff => xen_sys::SHUTDOWN_poweroff,
            Self::Reboot => xen_sys::SHUTDOWN_reboot,
            Self::Suspend => xen_sys::SHUTDOWN_suspend,
            Self::Crash => xen_sys::SHUTDOWN_crash,
            Self::Watchdog => xen_sys::SHUTDOWN_watchdog,
            Self::SoftReset => xen_sys::SHUTDOWN_soft_reset,
        }
    }
}

impl SchedShutdown {
    /// The argument for `reason`.
    pub const fn new(reason: ShutdownReason) -> Self {
        Self {
            reason: reason.raw(),
        }
    }
}
