//! Decoding of exception syndromes (ESR_EL1) into words a person can act on.
//!
//! Pure logic: the arch exception handler feeds it the raw registers.

use core::fmt;

/// Exception class (ESR_EL1.EC), the kinds a kernel at EL1 can meet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExceptionClass {
    /// EC 0x00: unknown reason (e.g. an undefined instruction).
    Unknown,
    /// EC 0x01: trapped WFI/WFE.
    WfiWfe,
    /// EC 0x07: FP/SIMD access trapped (CPACR_EL1.FPEN).
    FpSimdAccess,
    /// EC 0x0e: illegal execution state.
    IllegalState,
    /// EC 0x15: SVC from AArch64.
    Svc,
    /// EC 0x16: HVC from AArch64 (only seen when HVC is undefined).
    Hvc,
    /// EC 0x17: SMC from AArch64.
    Smc,
    /// EC 0x18: trapped system register access.
    SysReg,
    /// EC 0x20: instruction abort from a lower EL.
    InstructionAbortLower,
    /// EC 0x21: instruction abort at the same EL.
    InstructionAbort,
    /// EC 0x22: PC alignment fault.
    PcAlignment,
    /// EC 0x24: data abort from a lower EL.
    DataAbortLower,
    /// EC 0x25: data abort at the same EL.
    DataAbort,
    /// EC 0x26: SP alignment fault.
    SpAlignment,
    /// EC 0x2c: trapped floating-point exception.
    FpException,
    /// EC 0x2f: SError interrupt.
    SError,
    /// EC 0x3c: BRK instruction.
    Brk,
    /// Any other class, with its number.
    Other(u8),
}

impl ExceptionClass {
    /// The class encoded in `esr`.
    pub fn from_esr(esr: u64) -> Self {
        match ((esr >> 26) & 0x3f) as u8 {
            0x00 => Self::Unknown,
            0x01 => Self::WfiWfe,
            0x07 => Self::FpSimdAccess,
            0x0e => Self::IllegalState,
            0x15 => Self::Svc,
            0x16 => Self::Hvc,
            0x17 => Self::Smc,
            0x18 => Self::SysReg,
            0x20 => Self::InstructionAbortLower,
            0x21 => Self::InstructionAbort,
            0x22 => Self::PcAlignment,
            0x24 => Self::DataAbortLower,
            0x25 => Self::DataAbort,
            0x26 => Self::SpAlignment,
            0x2c => Self::FpException,
            0x2f => Self::SError,
            0x3c => Self::Brk,
            other => Self::Other(other),
        }
    }

    /// Whether the class is an instruction or data abort, whose ISS holds a fault status.
    pub fn is_abort(self) -> bool {
        matches!(
            self,
            Self::InstructionAbort
                | Self::InstructionAbortLower
                | Self::DataAbort
                | Self::DataAbortLower
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown-reason (undefined instruction?)",
            Self::WfiWfe => "wfi-wfe-trap",
            Self::FpSimdAccess => "fp-simd-access-trap",
            Self::IllegalState => "illegal-execution-state",
            Self::Svc => "svc",
            Self::Hvc => "hvc",
            Self::Smc => "smc",
            Self::SysReg => "system-register-trap",
            Self::InstructionAbortLower => "instruction-abort-lower-el",
            Self::InstructionAbort => "instruction-abort",
            Self::PcAlignment => "pc-alignment",
            Self::DataAbortLower => "data-abort-lower-el",
            Self::DataAbort => "data-abort",
            Self::SpAlignment => "sp-alignment",
            Self::FpException => "fp-exception",
            Self::SError => "serror",
            Self::Brk => "brk",
            Self::Other(_) => "other",
        }
    }
}

impl fmt::Display for ExceptionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(ec) => write!(f, "other(ec={ec:#04x})"),
            known => f.write_str(known.name()),
        }
    }
}

/// The fault-status code of an abort (ISS.DFSC / IFSC).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultStatus {
    /// Address size fault at a lookup level.
    AddressSize(u8),
    /// Translation fault (no valid descriptor) at a lookup level.
    Translation(u8),
    /// Access flag fault at a lookup level.
    AccessFlag(u8),
    /// Permission fault at a lookup level.
    Permission(u8),
    /// Synchronous external abort, not on a table walk.
    External,
    /// Synchronous external abort on a table walk, at a lookup level.
    ExternalOnWalk(u8),
    /// Alignment fault.
    Alignment,
    /// TLB conflict abort.
    TlbConflict,
    /// Any other code.
    Other(u8),
}

impl FaultStatus {
    /// Decodes the 6-bit fault status code of an abort ESR.
    pub fn from_esr(esr: u64) -> Self {
        let code = (esr & 0x3f) as u8;
        let level = code & 0b11;
        match code {
            0b00_0000..=0b00_0011 => Self::AddressSize(level),
            0b00_0100..=0b00_0111 => Self::Translation(level),
            0b00_1000..=0b00_1011 => Self::AccessFlag(level),
            0b00_1100..=0b00_1111 => Self::Permission(level),
            0b01_0000 => Self::External,
            0b01_0100..=0b01_0111 => Self::ExternalOnWalk(level),
            0b10_0001 => Self::Alignment,
            0b11_0000 => Self::TlbConflict,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddressSize(l) => write!(f, "address-size fault at level {l}"),
            Self::Translation(l) => write!(f, "translation fault at level {l}"),
            Self::AccessFlag(l) => write!(f, "access-flag fault at level {l}"),
            Self::Permission(l) => write!(f, "permission fault at level {l}"),
            Self::External => f.write_str("synchronous external abort"),
            Self::ExternalOnWalk(l) => write!(f, "external abort on table walk at level {l}"),
            Self::Alignment => f.write_str("alignment fault"),
            Self::TlbConflict => f.write_str("TLB conflict abort"),
            Self::Other(c) => write!(f, "fault status {c:#04x}"),
        }
    }
}

/// Where an exception came from, as the vector table tells it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VectorKind {
    /// Synchronous exception.
    Sync,
    /// IRQ.
    Irq,
    /// FIQ.
    Fiq,
    /// SError.
    SError,
}

/// Which group of the vector table was used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VectorOrigin {
    /// The kernel, running on its normal stack (SP_EL0).
    Kernel,
    /// The exception handler itself (SP_EL1): a nested fault.
    Nested,
    /// A lower exception level (impossible: tidepool runs no EL0 code).
    LowerEl,
}

/// Splits the vector index (0..16) pushed by the vector table.
pub fn decode_vector(index: u64) -> (VectorOrigin, VectorKind) {
    let origin = match index / 4 {
        0 => VectorOrigin::Kernel,
        1 => VectorOrigin::Nested,
        _ => VectorOrigin::LowerEl,
    };
    let kind = match index % 4 {
        0 => VectorKind::Sync,
        1 => VectorKind::Irq,
        2 => VectorKind::Fiq,
        _ => VectorKind::SError,
    };
    (origin, kind)
}

/// A decoded synchronous exception or SError, for the fault report.
#[derive(Clone, Copy, Debug)]
pub struct Syndrome {
    /// ESR_EL1 as read.
    pub esr: u64,
    /// FAR_EL1 as read (meaningful for aborts and PC alignment faults).
    pub far: u64,
    /// ELR_EL1: the faulting instruction.
    pub elr: u64,
}

impl Syndrome {
    /// The exception class.
    pub fn class(&self) -> ExceptionClass {
        ExceptionClass::from_esr(self.esr)
    }

    /// For aborts: the fault status and, for data aborts, whether it was a write.
    pub fn abort(&self) -> Option<(FaultStatus, Option<bool>)> {
        let class = self.class();
        if !class.is_abort() {
            return None;
        }
        let is_data = matches!(
            class,
            ExceptionClass::DataAbort | ExceptionClass::DataAbortLower
        );
        let write = is_data.then_some(self.esr & (1 << 6) != 0);
        Some((FaultStatus::from_esr(self.esr), write))
    }

    /// Whether FAR_EL1 holds the faulting address (aborts: unless FnV is set).
    pub fn far_valid(&self) -> bool {
        match self.class() {
            c if c.is_abort() => self.esr & (1 << 10) == 0,
            ExceptionClass::PcAlignment => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_abort_translation_level3_read() {
        // EC=0x25, IL=1, ISS: WnR=0, DFSC=0b000111.
        let s = Syndrome {
            esr: 0x9600_0007,
            far: 0xffff_0000_7800_0000,
            elr: 0x4008_1234,
        };
        assert_eq!(s.class(), ExceptionClass::DataAbort);
        assert_eq!(s.abort(), Some((FaultStatus::Translation(3), Some(false))));
        assert!(s.far_valid());
        assert_eq!(s.class().to_string(), "data-abort");
        assert_eq!(
            FaultStatus::Translation(3).to_string(),
            "translation fault at level 3"
        );
    }

    #[test]
    fn write_permission_and_alignment() {
        let s = Syndrome {
            esr: 0x9600_004f,
            far: 0,
            elr: 0,
        };
        assert_eq!(s.abort(), Some((FaultStatus::Permission(3), Some(true))));
        let s = Syndrome {
            esr: 0x9600_0021,
            far: 0,
            elr: 0,
        };
        assert_eq!(s.abort(), Some((FaultStatus::Alignment, Some(false))));
    }

    #[test]
    fn instruction_abort_has_no_direction() {
        let s = Syndrome {
            esr: 0x8600_0005,
            far: 0x10,
            elr: 0x10,
        };
        assert_eq!(s.class(), ExceptionClass::InstructionAbort);
        assert_eq!(s.abort(), Some((FaultStatus::Translation(1), None)));
    }

    #[test]
    fn far_not_valid() {
        let s = Syndrome {
            esr: 0x9600_0410,
            far: 0,
            elr: 0,
        };
        assert!(!s.far_valid());
        assert_eq!(s.abort().unwrap().0, FaultStatus::External);
        let brk = Syndrome {
            esr: 0xf200_0000,
            far: 0,
            elr: 0,
        };
        assert_eq!(brk.class(), ExceptionClass::Brk);
        assert!(!brk.far_valid());
        assert!(brk.abort().is_none());
    }

    #[test]
    fn unknown_classes_keep_their_number() {
        assert_eq!(
            ExceptionClass::from_esr(0x3du64 << 26).to_string(),
            "other(ec=0x3d)"
        );
        assert_eq!(
            ExceptionClass::from_esr(0).to_string(),
            "unknown-reason (undefined instruction?)"
        );
    }

    #[test]
    fn vector_groups() {
        assert_eq!(decode_vector(0), (VectorOrigin::Kernel, VectorKind::Sync));
        assert_eq!(decode_vector(1), (VectorOrigin::Kernel, VectorKind::Irq));
        assert_eq!(decode_vector(7), (VectorOrigin::Nested, VectorKind::SError));
        assert_eq!(decode_vector(9), (VectorOrigin::LowerEl, VectorKind::Irq));
    }
}
