//! Host memory standing in for a device's 32-bit registers, for the UART
//! drivers' tests: the driver under test gets [`FakeRegisters::base`] as its
//! register block and accesses it with volatile loads and stores, while the
//! test reads and sets registers through the same words.

use core::sync::atomic::{AtomicU32, Ordering};

/// A leaked, zeroed block of registers. The words are atomics, so the test's
/// accesses and the driver's volatile ones through [`Self::base`] share the
/// memory without `unsafe` here (single-threaded tests: no race).
pub struct FakeRegisters {
    words: &'static [AtomicU32],
}

impl FakeRegisters {
    /// A block of `bytes` bytes (a multiple of 4), all registers zero.
    pub fn new(bytes: usize) -> Self {
        assert!(
            bytes.is_multiple_of(4),
            "a register block is whole 32-bit words"
        );
        let words = (0..bytes / 4)
            .map(|_| AtomicU32::new(0))
            .collect::<Vec<_>>();
        Self {
            words: Box::leak(words.into_boxed_slice()),
        }
    }

    /// The block's address, 4-byte aligned, valid for the life of the test
    /// process (the memory is never freed).
    pub fn base(&self) -> usize {
        self.words.as_ptr() as usize
    }

    /// The register at byte `offset`; out of bounds panics.
    pub fn read(&self, offset: usize) -> u32 {
        self.words[offset / 4].load(Ordering::SeqCst)
    }

    /// Sets the register at byte `offset`; out of bounds panics.
    pub fn write(&self, offset: usize, value: u32) {
        self.words[offset / 4].store(value, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_start_zero_and_keep_what_is_written() {
        let fake = FakeRegisters::new(0x10);
        assert_eq!(fake.base() % 4, 0);
        assert_eq!(fake.read(0xc), 0);
        fake.write(0xc, 7);
        assert_eq!(fake.read(0xc), 7);
        assert_eq!(fake.read(0x8), 0);
    }

    #[test]
    #[should_panic]
    fn an_offset_past_the_block_panics() {
        FakeRegisters::new(0x10).read(0x10);
    }
}
