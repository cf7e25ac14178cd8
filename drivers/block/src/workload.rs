//! The benchmark workload tidepool (`bench=`) and the harness (`cargo xtask
//! bench`, which feeds the same list to Linux's `fio`) share: the 4 KiB
//! blocks the random reads visit, and the checksum of the bytes read.
//!
//! Both are defined here once so that the two sides cannot drift: the
//! harness writes the list out for `fio`'s `read_iolog`, the kernel walks
//! it from the same seed, and the harness recomputes the checksum from the
//! disk image to compare with the kernel's.

/// Bytes of one random read.
pub const BLOCK_BYTES: u64 = 4096;

/// The seed of the random reads of `cargo xtask bench`.
pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 4 KiB block indices of the random reads: `count` of them, uniform
/// over the first `span_blocks` blocks (an xorshift64 sequence from `seed`;
/// a zero seed is replaced by [`SEED`], since xorshift never leaves 0).
/// Empty when `span_blocks` is 0.
pub fn random_blocks(seed: u64, count: u64, span_blocks: u64) -> impl Iterator<Item = u64> {
    let mut state = if seed == 0 { SEED } else { seed };
    (0..count)
        .take_while(move |_| span_blocks > 0)
        .map(move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % span_blocks
        })
}

/// A 64-bit checksum of a byte stream, order-sensitive and cheap enough to
/// run on every byte a benchmark reads (two additions per 8-byte word, a
/// Fletcher sum over little-endian words): a read of the wrong block, or of
/// stale memory, changes it. Chunks must be multiples of 8 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    sum: u64,
    sum_of_sums: u64,
}

impl Checksum {
    /// A checksum of nothing.
    pub const fn new() -> Self {
        Self {
            sum: 0,
            sum_of_sums: 0,
        }
    }

    /// Adds `bytes`, whose length must be a multiple of 8 (a trailing
    /// partial word is refused with its length).
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let (words, rest) = bytes.as_chunks::<8>();
        if !rest.is_empty() {
            return Err(bytes.len());
        }
        let (mut a, mut b) = (self.sum, self.sum_of_sums);
        for word in words {
            a = a.wrapping_add(u64::from_le_bytes(*word));
            b = b.wrapping_add(a);
        }
        (self.sum, self.sum_of_sums) = (a, b);
        Ok(())
    }

    /// The value, as printed: 16 hex digits.
    pub const fn value(&self) -> u64 {
        self.sum ^ self.sum_of_sums.rotate_left(32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_deterministic_in_range_and_spread() {
        let a: Vec<u64> = random_blocks(SEED, 4096, 16384).collect();
        let b: Vec<u64> = random_blocks(SEED, 4096, 16384).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 4096);
        assert!(a.iter().all(|&x| x < 16384));
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 3500, "{}", distinct.len());
        assert_ne!(a, random_blocks(SEED + 1, 4096, 16384).collect::<Vec<_>>());
        assert_eq!(
            random_blocks(0, 3, 10).collect::<Vec<_>>(),
            a_of(SEED, 3, 10)
        );
        assert_eq!(random_blocks(SEED, 10, 0).count(), 0);
        // The first values are part of the interface (fio replays them).
        assert_eq!(a_of(SEED, 3, 16384), [a[0], a[1], a[2]]);
        assert_eq!(a[..3], [3501, 8310, 8502]);
    }

    fn a_of(seed: u64, count: u64, span: u64) -> Vec<u64> {
        random_blocks(seed, count, span).collect()
    }

    #[test]
    fn checksum_is_order_sensitive_and_chunking_blind() {
        let bytes: Vec<u8> = random_blocks(7, 4096, 251).map(|x| x as u8).collect();
        let mut whole = Checksum::new();
        whole.update(&bytes).unwrap();
        let mut parts = Checksum::new();
        for chunk in bytes.chunks(512) {
            parts.update(chunk).unwrap();
        }
        assert_eq!(whole, parts);
        let mut swapped = Checksum::new();
        swapped.update(&bytes[2048..]).unwrap();
        swapped.update(&bytes[..2048]).unwrap();
        assert_ne!(whole.value(), swapped.value());
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        let mut other = Checksum::new();
        other.update(&flipped).unwrap();
        assert_ne!(whole.value(), other.value());
        assert_eq!(Checksum::new().update(&[0; 12]), Err(12));
        assert_eq!(Checksum::new().value(), 0);
    }
}
