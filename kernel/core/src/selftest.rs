//! Self-tests selected with `selftest=NAME,...`: deliberate faults whose
//! console reports the boot tests check.

use log::info;

use crate::bootargs::Bootargs;

/// Runs every self-test `args` asks for. Fault self-tests do not return.
pub fn run_requested(args: &Bootargs<'_>) {
    if args.selftest("panic") {
        info!("selftest: panic");
        panic!("selftest: deliberate panic");
    }
    if args.selftest("undef") {
        info!("selftest: undefined instruction");
        // SAFETY: deliberately executes a permanently undefined instruction;
        // the exception handler reports it and shuts down.
        unsafe { core::arch::asm!("udf #0x7e1") };
    }
    if args.selftest("brk") {
        info!("selftest: brk");
        // SAFETY: deliberately raises a breakpoint exception, reported as fatal.
        unsafe { core::arch::asm!("brk #0x7e1") };
    }
}
