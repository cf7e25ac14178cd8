//! Fatal exception and panic reports: printed without locks or allocation,
//! then a crash shutdown.

use crate::fault::{Syndrome, VectorKind, VectorOrigin};
use crate::xen::ShutdownReason;

macro_rules! fatal {
    ($($arg:tt)*) => { crate::console::write_line(format_args!($($arg)*)) };
}

/// Reports an exception the kernel cannot handle and shuts down.
pub fn fatal_exception(
    origin: VectorOrigin,
    kind: VectorKind,
    s: &Syndrome,
    sp: u64,
    lr: u64,
) -> ! {
    let origin = match origin {
        VectorOrigin::Kernel => "kernel",
        VectorOrigin::Nested => "exception handler (nested)",
        VectorOrigin::LowerEl => "lower EL",
    };
    match kind {
        VectorKind::Sync | VectorKind::SError => {
            let what = if kind == VectorKind::Sync {
                "synchronous exception"
            } else {
                "SError"
            };
            fatal!(
                "fault: {what} in {origin}: class={} esr={:#x} far={:#x} elr={:#x}",
                s.class(),
                s.esr,
                s.far,
                s.elr
            );
            if let Some((status, write)) = s.abort() {
                let access = match write {
                    Some(true) => "write",
                    Some(false) => "read",
                    None => "instruction fetch",
                };
                fatal!("fault: {status}, {access}");
            }
            if s.far_valid() {
                fatal!(
                    "fault: address {:#x} is {}",
                    s.far,
                    crate::memory::describe_virt(s.far)
                );
            }
        }
        VectorKind::Irq | VectorKind::Fiq => {
            let what = if kind == VectorKind::Irq {
                "IRQ"
            } else {
                "FIQ"
            };
            fatal!("fault: unhandled {what} in {origin} elr={:#x}", s.elr);
        }
    }
    fatal!("fault: sp={sp:#x} lr={lr:#x}");
    crate::shutdown::shutdown(ShutdownReason::Crash)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(loc) => fatal!(
            "panic: {} at {}:{}:{}",
            info.message(),
            loc.file(),
            loc.line(),
            loc.column()
        ),
        None => fatal!("panic: {}", info.message()),
    }
    crate::shutdown::shutdown(ShutdownReason::Crash)
}
