//! The GICv3 CPU interface system registers, as `tock-registers` interfaces.
//!
//! aarch64-cpu 11 provides none of these for writing (ICC_CTLR_EL1 is
//! read-only there, and is read through it), so the accesses are written
//! here with `mrs`/`msr`. None of them touches memory; each changes GIC
//! CPU-interface state only. At EL1 they either reach the physical CPU
//! interface or, under a hypervisor, its virtual one (ICV_*); an access the
//! hypervisor traps is emulated by it.

use core::arch::asm;

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;

register_bitfields! {u64,
    /// System Register Enable Register (EL1).
    pub(crate) ICC_SRE_EL1 [
        /// Use the system-register interface (rather than memory-mapped).
        SRE OFFSET(0) NUMBITS(1) []
    ],
    /// Interrupt Priority Mask Register.
    pub(crate) ICC_PMR_EL1 [
        /// Only interrupts more urgent (lower) than this are signalled.
        Priority OFFSET(0) NUMBITS(8) []
    ],
    /// Interrupt Controller Control Register (EL1).
    pub(crate) ICC_CTLR_EL1 [
        /// What a write to ICC_EOIR1_EL1 does.
        EOImode OFFSET(1) NUMBITS(1) [
            /// Priority drop and deactivation together.
            DropAndDeactivate = 0
        ]
    ],
    /// Interrupt Group 1 Enable Register.
    pub(crate) ICC_IGRPEN1_EL1 [
        /// Signal Group 1 interrupts.
        Enable OFFSET(0) NUMBITS(1) []
    ],
    /// Interrupt Acknowledge Register 1.
    pub(crate) ICC_IAR1_EL1 [
        /// The acknowledged INTID (1020–1023: spurious).
        INTID OFFSET(0) NUMBITS(24) []
    ],
    /// End Of Interrupt Register 1.
    pub(crate) ICC_EOIR1_EL1 [
        /// The INTID being completed.
        INTID OFFSET(0) NUMBITS(24) []
    ]
}

/// Defines a unit struct giving `Readable` access to a system register.
macro_rules! readable {
    ($register:ident, $fields:ident, $name:literal) => {
        impl Readable for $register {
            type T = u64;
            type R = $fields::Register;

            fn get(&self) -> u64 {
                let value;
                // SAFETY: reading this GIC CPU-interface register has no
                // effect on memory (ICC_IAR1_EL1 acknowledges an interrupt,
                // a change of GIC state the caller completes with an EOI).
                // The asm is not `nomem`, so it also orders the compiler's
                // memory accesses around the interrupt state change.
                unsafe { asm!(concat!("mrs {value}, ", $name), value = out(reg) value, options(nostack)) };
                value
            }
        }
    };
}

/// Defines a unit struct giving `Writeable` access to a system register.
macro_rules! writeable {
    ($register:ident, $fields:ident, $name:literal) => {
        impl Writeable for $register {
            type T = u64;
            type R = $fields::Register;

            fn set(&self, value: u64) {
                // SAFETY: writing this GIC CPU-interface register changes
                // interrupt delivery to this CPU, not memory. The asm is not
                // `nomem`: memory writes made before (by an interrupt
                // handler before its EOI) are not moved after it.
                unsafe { asm!(concat!("msr ", $name, ", {value}"), value = in(reg) value, options(nostack)) };
            }
        }
    };
}

/// ICC_SRE_EL1.
pub(crate) struct IccSre;
readable!(IccSre, ICC_SRE_EL1, "ICC_SRE_EL1");
writeable!(IccSre, ICC_SRE_EL1, "ICC_SRE_EL1");
/// The ICC_SRE_EL1 register.
pub(crate) const ICC_SRE: IccSre = IccSre;

/// ICC_PMR_EL1.
pub(crate) struct IccPmr;
writeable!(IccPmr, ICC_PMR_EL1, "ICC_PMR_EL1");
/// The ICC_PMR_EL1 register.
pub(crate) const ICC_PMR: IccPmr = IccPmr;

/// ICC_CTLR_EL1, read through aarch64-cpu and written here.
pub(crate) struct IccCtlr;

impl Readable for IccCtlr {
    type T = u64;
    type R = ICC_CTLR_EL1::Register;

    fn get(&self) -> u64 {
        aarch64_cpu::registers::ICC_CTLR_EL1.get()
    }
}

writeable!(IccCtlr, ICC_CTLR_EL1, "ICC_CTLR_EL1");
/// The ICC_CTLR_EL1 register.
pub(crate) const ICC_CTLR: IccCtlr = IccCtlr;

/// ICC_IGRPEN1_EL1.
pub(crate) struct IccIgrpen1;
writeable!(IccIgrpen1, ICC_IGRPEN1_EL1, "ICC_IGRPEN1_EL1");
/// The ICC_IGRPEN1_EL1 register.
pub(crate) const ICC_IGRPEN1: IccIgrpen1 = IccIgrpen1;

/// ICC_IAR1_EL1.
pub(crate) struct IccIar1;
readable!(IccIar1, ICC_IAR1_EL1, "ICC_IAR1_EL1");
/// The ICC_IAR1_EL1 register.
pub(crate) const ICC_IAR1: IccIar1 = IccIar1;

/// ICC_EOIR1_EL1.
pub(crate) struct IccEoir1;
writeable!(IccEoir1, ICC_EOIR1_EL1, "ICC_EOIR1_EL1");
/// The ICC_EOIR1_EL1 register.
pub(crate) const ICC_EOIR1: IccEoir1 = IccEoir1;

/// Waits until earlier system-register writes take effect for the
/// instructions that follow (ISB).
pub(crate) fn instruction_barrier() {
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
