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

/// Words [`Checksum::update`] takes at a time.
const LANES: usize = 8;

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
    ///
    /// The same value as adding word by word (`a += w; b += a`), computed
    /// eight words at a time in eight independent lanes (vector registers)
    /// when `bytes` starts on an 8-byte boundary, as every read's data
    /// does. The benchmark checksums every byte it reads inside its
    /// timing, so this loop is most of a sequential read's CPU time: the
    /// kernel's target is `+strict-align`, where a word assembled from a
    /// byte array is eight byte loads, so aligned words are read as `u64`s.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), usize> {
        if !bytes.len().is_multiple_of(8) {
            return Err(bytes.len());
        }
        match bytemuck::pod_align_to::<u8, [u64; LANES]>(bytes) {
            ([], blocks, tail) => {
                self.add_blocks(blocks);
                self.add_words(tail);
            }
            _ => self.add_words(bytes),
        }
        Ok(())
    }

    /// Adds whole blocks of [`LANES`] words. Lane i of block g (N = 8G
    /// words in all) adds w to `a` and, from then on, to `b` once per
    /// word: `b` gains N*a + sum((N - 8g - i) * w). Each lane keeps sum(w)
    /// and its running sum of sums, sum((G - g) * w); the totals fold in
    /// at the end.
    fn add_blocks(&mut self, blocks: &[[u64; LANES]]) {
        let mut sums = [0u64; LANES];
        let mut sums_of_sums = [0u64; LANES];
        for block in blocks {
            for lane in 0..LANES {
                sums[lane] = sums[lane].wrapping_add(u64::from_le(block[lane]));
                sums_of_sums[lane] = sums_of_sums[lane].wrapping_add(sums[lane]);
            }
        }
        let words = (blocks.len() as u64).wrapping_mul(LANES as u64);
        let mut a = self.sum;
        let mut b = self.sum_of_sums.wrapping_add(words.wrapping_mul(a));
        for lane in 0..LANES {
            a = a.wrapping_add(sums[lane]);
            b = b
                .wrapping_add(sums_of_sums[lane].wrapping_mul(LANES as u64))
                .wrapping_sub(sums[lane].wrapping_mul(lane as u64));
        }
        (self.sum, self.sum_of_sums) = (a, b);
    }

    /// Adds little-endian words one at a time (`bytes` is whole words).
    fn add_words(&mut self, bytes: &[u8]) {
        let (mut a, mut b) = (self.sum, self.sum_of_sums);
        for word in bytes.as_chunks::<8>().0 {
            a = a.wrapping_add(u64::from_le_bytes(*word));
            b = b.wrapping_add(a);
        }
        (self.sum, self.sum_of_sums) = (a, b);
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
    fn checksum_is_the_word_by_word_fletcher_sum() {
        // The definition: a += w; b += a, for every little-endian word.
        let reference = |bytes: &[u8]| {
            let (mut a, mut b) = (0u64, 0u64);
            for word in bytes.as_chunks::<8>().0 {
                a = a.wrapping_add(u64::from_le_bytes(*word));
                b = b.wrapping_add(a);
            }
            a ^ b.rotate_left(32)
        };
        // Large words, so every wrapping product and sum is exercised.
        // Aligned (a Vec<u64>'s bytes) and not (one byte further).
        let words: Vec<u64> = random_blocks(3, 4097, u64::MAX).collect();
        let all = bytemuck::cast_slice::<u64, u8>(&words);
        for bytes in [&all[..4096 * 8], &all[1..4096 * 8 + 1]] {
            for len in (0..=bytes.len()).step_by(8).filter(|l| l % 520 < 80) {
                for split in [0, 8, 64, 72, len / 2 / 8 * 8] {
                    let split = split.min(len);
                    let mut sum = Checksum::new();
                    sum.update(&bytes[..split]).unwrap();
                    sum.update(&bytes[split..len]).unwrap();
                    assert_eq!(sum.value(), reference(&bytes[..len]), "{len} {split}");
                }
            }
        }
        // A known value: what xtask and earlier runs printed is stable.
        let mut one = Checksum::new();
        one.update(&1u64.to_le_bytes().repeat(9)).unwrap();
        assert_eq!((one.sum, one.sum_of_sums), (9, 45));
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
