//! The Xen hypercall instruction.
//!
//! `xen-sys` supplies the hypercall numbers, but its trampolines declare x1-x4
//! and x16 as inputs only, while Xen may clobber them (debug builds write
//! 0xDEADBEEF into every argument register a hypercall did not use, see
//! xen-abi.md section 5). This one tells the compiler the truth.

/// `HVC #0xEA1` with hypercall number `nr` and arguments in x0-x4; returns x0.
///
/// # Safety
/// The caller must pass arguments that are valid for hypercall `nr`: every
/// pointer argument refers to memory of the right type and size that Xen may
/// read or write for the duration of the call.
pub unsafe fn hypercall(nr: u32, args: [u64; 5]) -> i64 {
    let ret: i64;
    // SAFETY: the caller guarantees the arguments are valid for `nr`; all
    // registers Xen may change are declared as clobbered.
    unsafe {
        core::arch::asm!(
            "hvc #0xea1",
            inlateout("x0") args[0] => ret,
            inlateout("x1") args[1] => _,
            inlateout("x2") args[2] => _,
            inlateout("x3") args[3] => _,
            inlateout("x4") args[4] => _,
            inlateout("x16") u64::from(nr) => _,
            options(nostack),
        );
    }
    ret
}
