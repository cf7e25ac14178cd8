//! Everything that names an arm64 register or instruction. Generic code calls
//! the safe functions here and never touches system registers itself.

pub mod cache;
pub mod cpu;
pub mod exception;
pub mod hypercall;
pub mod linker;
pub mod mmu;
pub mod psci;
pub mod timer;
