//! The disk pattern shared by the kernel and xtask: a deterministic,
//! verifiable content for every 512-byte sector, from a seed and the
//! sector's number.
//!
//! xtask writes it into disk images; the kernel reads sectors back and
//! verifies them (and writes it to check writes). A sector is:
//!
//! | bytes    | content                                               |
//! |----------|-------------------------------------------------------|
//! | 0..8     | [`MAGIC`]                                             |
//! | 8..16    | the seed, little-endian                               |
//! | 16..24   | the sector number (LBA), little-endian                |
//! | 24..512  | 61 words of a xorshift64 stream keyed by (seed, LBA), little-endian |
//!
//! The header makes a misdirected read visible as such: a mismatch names
//! the sector whose pattern was found instead ([`PatternMismatch::holds`]).

use core::fmt;

/// Bytes in a pattern sector.
pub const SECTOR_BYTES: usize = crate::SECTOR_SIZE as usize;

/// The first eight bytes of every pattern sector.
pub const MAGIC: [u8; 8] = *b"TIDEPOOL";

const HEADER_BYTES: usize = 24;

/// The pattern of sector `lba` under `seed`.
pub fn sector(seed: u64, lba: u64) -> [u8; SECTOR_BYTES] {
    let mut sector = [0; SECTOR_BYTES];
    fill(seed, lba, &mut sector);
    sector
}

/// Writes the pattern of sector `lba` under `seed` into `sector`.
pub fn fill(seed: u64, lba: u64, sector: &mut [u8; SECTOR_BYTES]) {
    sector[..8].copy_from_slice(&MAGIC);
    sector[8..16].copy_from_slice(&seed.to_le_bytes());
    sector[16..24].copy_from_slice(&lba.to_le_bytes());
    let mut state = stream_key(seed, lba);
    for word in sector[HEADER_BYTES..].chunks_exact_mut(8) {
        state = xorshift64(state);
        word.copy_from_slice(&state.to_le_bytes());
    }
}

/// Writes the patterns of consecutive sectors from `first_lba`.
pub fn fill_sectors(seed: u64, first_lba: u64, sectors: &mut [[u8; SECTOR_BYTES]]) {
    for (lba, sector) in (first_lba..).zip(sectors) {
        fill(seed, lba, sector);
    }
}

/// Checks that `sector` holds the pattern of sector `lba` under `seed`;
/// the error names the first byte that differs.
pub fn verify(seed: u64, lba: u64, sector: &[u8; SECTOR_BYTES]) -> Result<(), PatternMismatch> {
    let expected = self::sector(seed, lba);
    match expected.iter().zip(sector).position(|(e, f)| e != f) {
        None => Ok(()),
        Some(offset) => Err(PatternMismatch {
            lba,
            offset,
            expected: expected[offset],
            found: sector[offset],
            holds: origin(sector),
        }),
    }
}

/// Checks consecutive sectors from `first_lba`; the error is the first
/// mismatch.
pub fn verify_sectors(
    seed: u64,
    first_lba: u64,
    sectors: &[[u8; SECTOR_BYTES]],
) -> Result<(), PatternMismatch> {
    (first_lba..)
        .zip(sectors)
        .try_for_each(|(lba, sector)| verify(seed, lba, sector))
}

/// The (seed, sector) whose pattern a sector's header claims.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PatternOrigin {
    /// The seed in the header.
    pub seed: u64,
    /// The sector number in the header.
    pub lba: u64,
}

/// A sector that does not hold its pattern.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PatternMismatch {
    /// The sector checked.
    pub lba: u64,
    /// The first byte that differs.
    pub offset: usize,
    /// What that byte should be.
    pub expected: u8,
    /// What it is.
    pub found: u8,
    /// Whose pattern the sector's header claims, if it has the magic: a
    /// different sector here means a misdirected transfer.
    pub holds: Option<PatternOrigin>,
}

impl fmt::Display for PatternMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pattern mismatch in sector {} at byte {}: expected {:#04x}, found {:#04x}",
            self.lba, self.offset, self.expected, self.found
        )?;
        match self.holds {
            Some(PatternOrigin { seed, lba }) => {
                write!(f, " (header of sector {lba} seed {seed:#x})")
            }
            None => f.write_str(" (no pattern header)"),
        }
    }
}

fn origin(sector: &[u8; SECTOR_BYTES]) -> Option<PatternOrigin> {
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&sector[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    (sector[..8] == MAGIC).then(|| PatternOrigin {
        seed: word(8),
        lba: word(16),
    })
}

/// splitmix64's finaliser: spreads every input bit over the output.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stream's starting state for (seed, lba); never 0, which xorshift
/// would never leave.
const fn stream_key(seed: u64, lba: u64) -> u64 {
    let key = mix(seed ^ mix(lba.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    if key == 0 { 0x9e37_79b9_7f4a_7c15 } else { key }
}

const fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Sectors holding the disk pattern of one seed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SectorRange {
    /// The pattern's seed.
    pub seed: u64,
    /// First sector.
    pub lba: u64,
    /// Sectors.
    pub count: u64,
}

/// What a whole disk should hold: the pattern of `seed`, except `written`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DiskPattern {
    /// The seed of every sector outside `written`.
    pub seed: u64,
    /// A range holding another seed's pattern.
    pub written: Option<SectorRange>,
}

impl DiskPattern {
    /// The seed sector `lba` should hold.
    pub fn seed_of(&self, lba: u64) -> u64 {
        match self.written {
            Some(range) if (range.lba..range.lba.saturating_add(range.count)).contains(&lba) => {
                range.seed
            }
            _ => self.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashSet;
    use std::string::ToString;

    #[test]
    fn a_sector_verifies_as_itself_only() {
        let s = sector(7, 42);
        assert_eq!(&s[..8], b"TIDEPOOL");
        assert_eq!(u64::from_le_bytes(s[8..16].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(s[16..24].try_into().unwrap()), 42);
        assert_eq!(verify(7, 42, &s), Ok(()));
        // Another sector, or another seed, differs already in the header.
        let other_lba = verify(7, 43, &s).unwrap_err();
        assert_eq!(other_lba.offset, 16);
        assert_eq!(other_lba.holds, Some(PatternOrigin { seed: 7, lba: 42 }));
        assert_eq!(verify(8, 42, &s).unwrap_err().offset, 8);
    }

    #[test]
    fn the_pattern_is_deterministic_and_keyed() {
        assert_eq!(sector(1, 0), sector(1, 0));
        // Known answers (from an independent implementation): these words
        // never change, or disk images written by an older xtask would stop
        // verifying.
        let word = |s: &[u8; SECTOR_BYTES], at: usize| {
            u64::from_le_bytes(s[at..at + 8].try_into().unwrap())
        };
        let first = sector(0, 0);
        assert_eq!(
            (word(&first, 24), word(&first, 504)),
            (0x5660_59ba_22cc_62d6, 0xcba1_b39a_41a6_10a8)
        );
        let other = sector(0x1234, 77);
        assert_eq!(
            (word(&other, 24), word(&other, 504)),
            (0x0547_2803_6b74_f06f, 0xc06b_ebd1_9cdb_eca1)
        );
        // Bodies differ between sectors and seeds: no two of these share a word.
        let mut words = HashSet::new();
        for seed in 0..4 {
            for lba in 0..64 {
                let s = sector(seed, lba);
                for chunk in s[HEADER_BYTES..].chunks_exact(8) {
                    assert!(words.insert(u64::from_le_bytes(chunk.try_into().unwrap())));
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_reported_with_its_offset_and_values() {
        let mut s = sector(0xfeed, 1000);
        let good = s[300];
        s[300] ^= 0x40;
        let mismatch = verify(0xfeed, 1000, &s).unwrap_err();
        assert_eq!(
            mismatch,
            PatternMismatch {
                lba: 1000,
                offset: 300,
                expected: good,
                found: good ^ 0x40,
                holds: Some(PatternOrigin {
                    seed: 0xfeed,
                    lba: 1000
                }),
            }
        );
        assert_eq!(
            mismatch.to_string(),
            std::format!(
                "pattern mismatch in sector 1000 at byte 300: expected {:#04x}, found {:#04x} (header of sector 1000 seed 0xfeed)",
                good,
                good ^ 0x40
            )
        );
        let zeroes = verify(1, 2, &[0; SECTOR_BYTES]).unwrap_err();
        assert_eq!(
            (zeroes.offset, zeroes.expected, zeroes.found, zeroes.holds),
            (0, b'T', 0, None)
        );
        assert!(zeroes.to_string().ends_with("(no pattern header)"));
    }

    #[test]
    fn runs_of_sectors_fill_and_verify_from_their_first_lba() {
        let mut sectors = [[0; SECTOR_BYTES]; 8];
        fill_sectors(3, 100, &mut sectors);
        assert_eq!(verify_sectors(3, 100, &sectors), Ok(()));
        assert_eq!(sectors[5], sector(3, 105));
        sectors.swap(2, 3);
        let mismatch = verify_sectors(3, 100, &sectors).unwrap_err();
        assert_eq!(mismatch.lba, 102);
        assert_eq!(mismatch.holds.unwrap().lba, 103);
    }
}
