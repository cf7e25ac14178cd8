//! The Rust side of the exception vectors (boot/src/vectors.S).

use crate::fault::{Syndrome, VectorKind, VectorOrigin, decode_vector};

/// The register file saved by the vectors. Layout shared with vectors.S.
#[repr(C)]
pub struct TrapFrame {
    /// x0-x30.
    pub x: [u64; 31],
    /// The interrupted stack pointer (SP_EL0).
    pub sp_el0: u64,
    /// ELR_EL1: where to return.
    pub elr: u64,
    /// SPSR_EL1.
    pub spsr: u64,
    /// ESR_EL1 at entry.
    pub esr: u64,
    /// FAR_EL1 at entry.
    pub far: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 288);

/// Called by the vectors for every exception. Returns only for interrupts
/// that were handled; everything else is reported and shuts the system down.
#[unsafe(no_mangle)]
extern "C" fn tidepool_exception(frame: &mut TrapFrame, vector: u64) {
    let (origin, kind) = decode_vector(vector);
    if origin == VectorOrigin::Kernel && kind == VectorKind::Irq && crate::irq::dispatch() {
        return;
    }
    let syndrome = Syndrome {
        esr: frame.esr,
        far: frame.far,
        elr: frame.elr,
    };
    crate::report::fatal_exception(origin, kind, &syndrome, frame.sp_el0, frame.x[30])
}
