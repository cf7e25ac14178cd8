//! The platform under the kernel, set up once after the MMU is on: the
//! interrupt controller ([`crate::irq`]), the virtual timer
//! ([`crate::timer`]) and, when the device tree has a `/hypervisor` node,
//! the Xen guest interfaces ([`crate::xen`]). IRQs are unmasked last.

pub mod selftest;

use core::fmt;

use tidepool_dt::DeviceTree;

use crate::irq::{self, IrqError};
use crate::memory_plan::MemorySetup;
use crate::xen::{self, XenSetupError};

/// Why the platform could not be set up.
#[derive(Debug)]
pub enum PlatformError {
    /// The interrupt controller.
    Irq(IrqError),
    /// The device tree has no architected timer node.
    NoTimer,
    /// The timer's interrupt.
    Timer(IrqError),
    /// The Xen guest interfaces.
    Xen(XenSetupError),
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Irq(error) => write!(f, "irq: {error}"),
            Self::NoTimer => f.write_str("timer: the device tree has no arm,armv8-timer node"),
            Self::Timer(error) => write!(f, "timer: {error}"),
            Self::Xen(error) => write!(f, "xen: {error}"),
        }
    }
}

/// Sets up interrupts, the timer and Xen (if present), then unmasks IRQs.
pub fn init(
    dt: &'static DeviceTree,
    memory: &'static MemorySetup<'static>,
) -> Result<(), PlatformError> {
    let platform = &dt.platform;
    irq::init(platform, &memory.layout.address_map).map_err(PlatformError::Irq)?;
    let timer = platform.timer.as_ref().ok_or(PlatformError::NoTimer)?;
    crate::timer::init(timer).map_err(PlatformError::Timer)?;
    if let Some(node) = &platform.hypervisor {
        xen::init(node, memory).map_err(PlatformError::Xen)?;
    }
    irq::unmask();
    Ok(())
}
