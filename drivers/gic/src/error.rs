//! The driver's error type.

use core::fmt;

use crate::{Affinity, IntId, IntKind};

/// A register block whose pending register writes are tracked by a
/// Register Write Pending (RWP) bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterBlock {
    /// The distributor (GICD_CTLR.RWP).
    Distributor,
    /// The redistributor of the CPU with this affinity (GICR_CTLR.RWP).
    Redistributor(Affinity),
}

impl fmt::Display for RegisterBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Distributor => f.write_str("distributor"),
            Self::Redistributor(affinity) => write!(f, "redistributor of CPU {affinity}"),
        }
    }
}

/// Why the GIC driver could not do what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicError {
    /// The raw value is a special INTID (1020–1023) or beyond, not an SGI,
    /// PPI or SPI.
    NotAnInterrupt(u32),
    /// The number is beyond the interrupts of its kind (16 SGIs, 16 PPIs,
    /// 988 SPIs).
    NumberOutOfRange {
        /// Kind the number was given for.
        kind: IntKind,
        /// The rejected number.
        number: u32,
    },
    /// The SPI is beyond those this distributor implements
    /// (GICD_TYPER.ITLinesNumber).
    IntIdOutOfRange {
        /// The rejected interrupt.
        intid: IntId,
        /// One past the highest INTID this distributor implements.
        limit: u32,
    },
    /// SGIs are always edge-triggered; level was asked for.
    SgiIsEdgeOnly(IntId),
    /// Priority `0xff` is never signalled through the priority mask.
    PriorityMasked(IntId),
    /// No GICv3 redistributor frame in the region reports this CPU's affinity.
    RedistributorNotFound {
        /// Affinity of the CPU whose redistributor was looked for.
        affinity: Affinity,
        /// Number of redistributors examined.
        examined: usize,
    },
    /// The redistributor kept GICR_WAKER.ChildrenAsleep set after
    /// ProcessorSleep was cleared.
    WakeTimeout(Affinity),
    /// A register write stayed pending (RWP set) for too long.
    WritePendingTimeout(RegisterBlock),
    /// ICC_SRE_EL1.SRE stays 0: a higher exception level keeps the GICv3
    /// CPU interface in legacy (memory-mapped) mode, which this driver does
    /// not drive.
    SystemRegistersDisabled,
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnInterrupt(raw) => {
                write!(f, "INTID {raw} is not an SGI, PPI or SPI (those end at 1019)")
            }
            Self::NumberOutOfRange { kind, number } => write!(f, "{kind} {number} does not exist"),
            Self::IntIdOutOfRange { intid, limit } => {
                write!(f, "{intid} is beyond this GIC's interrupts (it implements INTIDs below {limit})")
            }
            Self::SgiIsEdgeOnly(intid) => write!(f, "{intid} cannot be level-triggered: SGIs are edge-only"),
            Self::PriorityMasked(intid) => {
                write!(f, "{intid}: priority 0xff would never be signalled through the priority mask")
            }
            Self::RedistributorNotFound { affinity, examined } => write!(
                f,
                "no GICv3 redistributor for CPU {affinity} among the {examined} in the region"
            ),
            Self::WakeTimeout(affinity) => {
                write!(f, "redistributor of CPU {affinity} did not wake (GICR_WAKER.ChildrenAsleep stayed set)")
            }
            Self::WritePendingTimeout(block) => {
                write!(f, "{block}: register write still pending (RWP) after polling")
            }
            Self::SystemRegistersDisabled => f.write_str(
                "GICv3 system register interface disabled (ICC_SRE_EL1.SRE stays 0): legacy mode is not supported",
            ),
        }
    }
}

impl core::error::Error for GicError {}
