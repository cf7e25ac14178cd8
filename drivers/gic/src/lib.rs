//! Arm Generic Interrupt Controller driver (GICv2 and GICv3) for a kernel
//! running at EL1, on bare hardware, under QEMU or as a Xen guest (whose
//! virtual GIC has the host's version).
//!
//! Build a [`GicV2`] from its [`v2::Distributor`] and [`v2::CpuInterface`]
//! blocks, or a [`GicV3`] from its [`v3::Distributor`], its
//! [`v3::Redistributors`] region and the CPU's [`Affinity`]; hold either as a
//! [`Gic`]. Then [`Gic::init_distributor`], `Gic::init_cpu_interface`, and
//! [`Gic::enable`] the interrupts to take; in the IRQ handler,
//! `Gic::acknowledge` and `Gic::end_of_interrupt`. The CPU-interface
//! methods exist on aarch64 only (GICv3's are system-register accesses);
//! everything else also builds on the host, where it is tested against
//! register blocks in plain memory.
//! [`decode_interrupt_specifier`] turns a device-tree `interrupts` entry into
//! the INTID and trigger to pass to [`Gic::enable`].
//!
//! The only `unsafe` code: one constructor per register block, the
//! `Send`/`Sync` claim for register references (module `mmio`) and, on
//! aarch64, the GICv3 system-register accessors. All waits on the hardware
//! are bounded and end in a [`GicError`].

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

mod affinity;
mod common;
mod dt;
mod error;
mod intid;
#[allow(unsafe_code)]
mod mmio;
#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
mod sysreg;
#[cfg(test)]
mod testing;
pub mod v2;
pub mod v3;

pub use affinity::Affinity;
pub use dt::{DtInterruptError, decode_interrupt_specifier};
pub use error::{GicError, RegisterBlock};
pub use intid::{DEFAULT_PRIORITY, IntId, IntKind, Trigger};
pub use v2::GicV2;
pub use v3::GicV3;

/// An interrupt taken by `acknowledge`, to be completed with
/// `end_of_interrupt` (of [`Gic`], [`GicV2`] or [`GicV3`]).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an acknowledged interrupt stays active until it is passed to end_of_interrupt"]
pub struct Acknowledged {
    intid: IntId,
    /// The value read from the acknowledge register, written back on EOI
    /// (for a GICv2 SGI it also names the source CPU).
    iar: u32,
}

impl Acknowledged {
    /// The interrupt that was acknowledged.
    pub fn intid(&self) -> IntId {
        self.intid
    }
}

/// A GIC of either version, as the kernel holds it (in a `static`, shared
/// with the IRQ path: it is `Send` and `Sync`).
pub enum Gic {
    /// A GICv2 (`arm,gic-400`, `arm,cortex-a15-gic`, `arm,cortex-a9-gic`).
    V2(GicV2),
    /// A GICv3 (`arm,gic-v3`).
    V3(GicV3),
}

impl Gic {
    /// The architecture version: 2 or 3.
    pub fn version(&self) -> u8 {
        match self {
            Self::V2(_) => 2,
            Self::V3(_) => 3,
        }
    }

    /// One past the highest INTID the distributor implements.
    pub fn intid_limit(&self) -> u32 {
        match self {
            Self::V2(gic) => gic.intid_limit(),
            Self::V3(gic) => gic.intid_limit(),
        }
    }

    /// Resets the distributor (all interrupts disabled) and enables it; on
    /// GICv3 also wakes the calling CPU's redistributor and disables its SGIs
    /// and PPIs. Call once, before [`Gic::enable`].
    pub fn init_distributor(&self) -> Result<(), GicError> {
        match self {
            Self::V2(gic) => {
                gic.init_distributor();
                Ok(())
            }
            Self::V3(gic) => gic.init_distributor(),
        }
    }

    /// Enables the calling CPU's interface: nothing masked by priority, EOI
    /// drops priority and deactivates together.
    #[cfg(target_arch = "aarch64")]
    pub fn init_cpu_interface(&self) -> Result<(), GicError> {
        match self {
            Self::V2(gic) => {
                gic.init_cpu_interface();
                Ok(())
            }
            Self::V3(gic) => gic.init_cpu_interface(),
        }
    }

    /// Configures an interrupt's trigger and priority (lower is more urgent;
    /// [`DEFAULT_PRIORITY`] suits ordinary interrupts), routes an SPI to the
    /// calling CPU, and enables it.
    pub fn enable(&self, intid: IntId, trigger: Trigger, priority: u8) -> Result<(), GicError> {
        match self {
            Self::V2(gic) => gic.enable(intid, trigger, priority),
            Self::V3(gic) => gic.enable(intid, trigger, priority),
        }
    }

    /// Disables an interrupt.
    pub fn disable(&self, intid: IntId) -> Result<(), GicError> {
        match self {
            Self::V2(gic) => gic.disable(intid),
            Self::V3(gic) => gic.disable(intid),
        }
    }

    /// Acknowledges the highest-priority pending interrupt, or `None` if
    /// there is none (a spurious INTID, 1020–1023).
    #[cfg(target_arch = "aarch64")]
    pub fn acknowledge(&self) -> Option<Acknowledged> {
        match self {
            Self::V2(gic) => gic.acknowledge(),
            Self::V3(gic) => gic.acknowledge(),
        }
    }

    /// Completes an acknowledged interrupt (priority drop and deactivation).
    #[cfg(target_arch = "aarch64")]
    pub fn end_of_interrupt(&self, acknowledged: Acknowledged) {
        match self {
            Self::V2(gic) => gic.end_of_interrupt(acknowledged),
            Self::V3(gic) => gic.end_of_interrupt(acknowledged),
        }
    }
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Gic>();
};
