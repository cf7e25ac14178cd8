//! Symbols defined by linker/tidepool.ld: the one place the kernel names them.
//!
//! All are addresses only (their "values" must never be read); they describe
//! the image as loaded, so they are run-time physical addresses until the MMU
//! is on, and the same values after (the image is identity-mapped).

use core::ptr::addr_of;

unsafe extern "C" {
    /// First byte of the image (the Image header).
    static __image_start: u8;
    /// End of text, page-aligned: `[__image_start, __text_end)` is executable.
    static __text_end: u8;
    /// End of read-only data (including relocations), page-aligned.
    static __rodata_end: u8;
    /// Guard page under the kernel stack (never mapped).
    static __boot_stack_guard: u8;
    /// Lowest byte of the kernel stack.
    static __boot_stack_bottom: u8;
    /// Top of the kernel stack (SP_EL0 at entry).
    static __boot_stack_top: u8;
    /// Guard page under the exception stack (never mapped).
    static __exception_stack_guard: u8;
    /// Lowest byte of the exception stack.
    static __exception_stack_bottom: u8;
    /// Top of the exception stack (SP_EL1).
    static __exception_stack_top: u8;
    /// One past the last byte of the image, BSS and stacks included.
    static __image_end: u8;
}

/// A half-open address range `[start, end)` of the loaded image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: usize) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// The image's sections, as loaded.
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    /// The whole image including BSS and stacks.
    pub image: Span,
    /// Code.
    pub text: Span,
    /// Read-only data and relocations.
    pub rodata: Span,
    /// Data, BSS and page-table/heap reservations (read-write).
    pub data: Span,
    /// Kernel-stack guard page.
    pub stack_guard: Span,
    /// Kernel stack.
    pub stack: Span,
    /// Exception-stack guard page.
    pub exception_stack_guard: Span,
    /// Exception stack.
    pub exception_stack: Span,
}

fn at(sym: &u8) -> usize {
    addr_of!(*sym) as usize
}

/// The layout of the running image.
pub fn image_layout() -> ImageLayout {
    // SAFETY: only the addresses of linker-defined symbols are taken; nothing is read.
    unsafe {
        let span = |start: &u8, end: &u8| Span {
            start: at(start),
            end: at(end),
        };
        ImageLayout {
            image: span(&__image_start, &__image_end),
            text: span(&__image_start, &__text_end),
            rodata: span(&__text_end, &__rodata_end),
            data: span(&__rodata_end, &__boot_stack_guard),
            stack_guard: span(&__boot_stack_guard, &__boot_stack_bottom),
            stack: span(&__boot_stack_bottom, &__boot_stack_top),
            exception_stack_guard: span(&__exception_stack_guard, &__exception_stack_bottom),
            exception_stack: span(&__exception_stack_bottom, &__exception_stack_top),
        }
    }
}
