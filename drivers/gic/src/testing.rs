//! Plain memory standing in for register blocks in host tests.

#![allow(unsafe_code)]

use std::boxed::Box;
use std::vec;

/// A leaked, zeroed, 8-byte-aligned allocation that a driver under test
/// treats as its registers, and that the test reads and writes at register
/// offsets with volatile accesses.
pub(crate) struct FakeRegisters {
    base: *mut u8,
    len: usize,
}

impl FakeRegisters {
    /// `len` bytes of zeroed memory, valid for the rest of the test process.
    pub(crate) fn new(len: usize) -> Self {
        let memory: &'static mut [u64] = Box::leak(vec![0_u64; len.div_ceil(8)].into_boxed_slice());
        Self {
            base: memory.as_mut_ptr().cast(),
            len,
        }
    }

    /// Address to hand to a register block's constructor.
    pub(crate) fn base(&self) -> usize {
        self.base as usize
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + size_of::<T>() <= self.len && offset.is_multiple_of(align_of::<T>()),
            "bad offset {offset:#x}"
        );
        self.base.wrapping_add(offset).cast()
    }

    /// Reads the byte at `offset`.
    pub(crate) fn read8(&self, offset: usize) -> u8 {
        // SAFETY: `at` checked bounds and alignment in the leaked allocation.
        unsafe { self.at::<u8>(offset).read_volatile() }
    }

    /// Writes the byte at `offset`.
    pub(crate) fn write8(&self, offset: usize, value: u8) {
        // SAFETY: as for `read8`.
        unsafe { self.at::<u8>(offset).write_volatile(value) }
    }

    /// Reads the 32-bit word at `offset`.
    pub(crate) fn read32(&self, offset: usize) -> u32 {
        // SAFETY: as for `read8`.
        unsafe { self.at::<u32>(offset).read_volatile() }
    }

    /// Writes the 32-bit word at `offset`.
    pub(crate) fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as for `read8`.
        unsafe { self.at::<u32>(offset).write_volatile(value) }
    }

    /// Reads the 64-bit word at `offset`.
    pub(crate) fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as for `read8`.
        unsafe { self.at::<u64>(offset).read_volatile() }
    }

    /// Writes the 64-bit word at `offset`.
    pub(crate) fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as for `read8`.
        unsafe { self.at::<u64>(offset).write_volatile(value) }
    }
}
