//! Register blocks held by reference for the kernel's lifetime.

use core::ops::Deref;

/// Marks the `register_structs!` types that describe device registers, the
/// only types [`Mmio`] may wrap.
pub(crate) trait DeviceRegisters {}

impl<T: DeviceRegisters> DeviceRegisters for [T] {}

/// A device register block (or an array of them), mapped for the rest of the
/// kernel's life. Built only by the `unsafe` constructors of the public
/// register-block types, which carry the proof obligation.
pub(crate) struct Mmio<T: ?Sized + DeviceRegisters + 'static>(&'static T);

impl<T: DeviceRegisters> Mmio<T> {
    /// The register block at virtual address `base`.
    ///
    /// # Safety
    ///
    /// `base` maps a `T` register block as Device memory for the rest of
    /// the kernel's life, and only this driver uses it.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn at(base: usize) -> Self {
        // SAFETY: guaranteed by the caller; every field is an
        // `UnsafeCell`-based register, so a shared reference permits the
        // device's own changes.
        Self(unsafe { &*(base as *const T) })
    }
}

impl<T: ?Sized + DeviceRegisters> Mmio<T> {
    /// Wraps a register block reference.
    pub(crate) const fn new(registers: &'static T) -> Self {
        Self(registers)
    }

    /// The register block, for the kernel's lifetime.
    pub(crate) const fn get(&self) -> &'static T {
        self.0
    }
}

impl<T: ?Sized + DeviceRegisters> Deref for Mmio<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0
    }
}

// SAFETY: the register types are `UnsafeCell`-based and so not `Sync` to the
// compiler, but every access through them is one volatile load or store of
// device memory, which the interrupt controller itself serialises between
// CPUs. No method relies on a value staying unchanged between two accesses
// for memory safety: a read-modify-write racing with another CPU's can lose a
// configuration update (documented on the methods), never corrupt memory.
unsafe impl<T: ?Sized + DeviceRegisters> Send for Mmio<T> {}

// SAFETY: as for `Send` above.
unsafe impl<T: ?Sized + DeviceRegisters> Sync for Mmio<T> {}
