//! Requests, their handles and their outcomes, the same for every driver.

use core::fmt;

/// Bytes in a sector, the unit of `lba` in requests and of capacities.
pub const SECTOR_SIZE: u32 = 512;

/// The most requests one device keeps in flight ([`Completions`] holds one
/// token per request, without allocating).
pub const MAX_IN_FLIGHT: usize = 42;

/// A request's operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// Read sectors.
    Read,
    /// Write sectors.
    Write,
    /// Make completed writes durable.
    Flush,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
        })
    }
}

/// A request to submit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Request<'d> {
    /// Read `sectors` sectors from `lba`.
    Read {
        /// First sector.
        lba: u64,
        /// Sectors to read.
        sectors: u32,
    },
    /// Write `data` (whole sectors) at `lba`; copied at submission.
    Write {
        /// First sector.
        lba: u64,
        /// The bytes to write.
        data: &'d [u8],
    },
    /// Make every completed write durable.
    Flush,
}

/// Splits the `sectors` sectors from `lba` into requests' ranges of at
/// most `max` sectors each, in order, as (first sector, sectors): every
/// range but the last has `max` sectors, the last has the rest. Nothing
/// when `sectors` is 0; a `max` of 0 counts as 1 (never an endless or
/// empty split); a range past the last sector number (`u64::MAX`) ends
/// there (a driver refuses such sectors anyway).
pub fn sector_chunks(lba: u64, sectors: u64, max: u32) -> impl Iterator<Item = (u64, u32)> {
    let max = max.max(1);
    let sectors = sectors.min(u64::MAX - lba);
    (0..sectors.div_ceil(max.into())).map(move |i| {
        let at = i * u64::from(max);
        let left = sectors - at;
        (
            lba + at,
            u32::try_from(left).map_or(max, |left| left.min(max)),
        )
    })
}

/// The time by which a request must complete, in whatever unit the kernel's
/// clock counts (drivers only compare it with the `now` they are given).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Deadline(pub u64);

impl Deadline {
    /// No deadline.
    pub const NEVER: Self = Self(u64::MAX);

    /// `timeout` after `now`, saturating.
    pub const fn after(now: u64, timeout: u64) -> Self {
        Self(now.saturating_add(timeout))
    }
}

/// The handle of a submitted request, until the driver's `finish` has given
/// its outcome: a slot and that slot's generation (so a stale token is
/// recognised).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Token {
    slot: u16,
    generation: u32,
}

impl Token {
    /// The token of `slot` at `generation` (drivers make these).
    pub const fn new(slot: u16, generation: u32) -> Self {
        Self { slot, generation }
    }

    /// The driver's slot.
    pub const fn slot(self) -> u16 {
        self.slot
    }

    /// The slot's generation when the request was submitted.
    pub const fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {}.{}", self.slot, self.generation)
    }
}

/// A request that completed successfully.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Completion {
    /// The operation.
    pub op: Op,
    /// Its first sector (0 for a flush).
    pub lba: u64,
    /// Data bytes moved (0 for a flush).
    pub bytes: u32,
}

/// The tokens one call of a driver's `handle_interrupt`, `poll` or `expire`
/// found finished (no allocation: at most [`MAX_IN_FLIGHT`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Completions {
    tokens: [Token; MAX_IN_FLIGHT],
    len: usize,
}

impl Completions {
    /// None yet.
    pub const fn new() -> Self {
        Self {
            tokens: [Token::new(0, 0); MAX_IN_FLIGHT],
            len: 0,
        }
    }

    /// Adds one. A driver pushes at most one token per request in flight,
    /// and keeps at most [`MAX_IN_FLIGHT`] of them.
    pub fn push(&mut self, token: Token) {
        self.tokens[self.len] = token;
        self.len += 1;
    }

    /// The tokens.
    pub fn as_slice(&self) -> &[Token] {
        &self.tokens[..self.len]
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Completions {
    fn default() -> Self {
        Self::new()
    }
}

impl<'c> IntoIterator for &'c Completions {
    type Item = &'c Token;
    type IntoIter = core::slice::Iter<'c, Token>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(lba: u64, sectors: u64, max: u32) -> Vec<(u64, u32)> {
        sector_chunks(lba, sectors, max).collect()
    }

    #[test]
    fn a_range_splits_into_whole_requests_and_a_shorter_last() {
        assert_eq!(split(100, 10, 4), [(100, 4), (104, 4), (108, 2)]);
        assert_eq!(
            split(0, 8, 4),
            [(0, 4), (4, 4)],
            "a multiple: no short last"
        );
        assert_eq!(split(7, 3, 4), [(7, 3)], "shorter than one request");
    }

    #[test]
    fn one_sector_is_one_request() {
        assert_eq!(split(42, 1, 512), [(42, 1)]);
        assert_eq!(split(42, 1, 1), [(42, 1)]);
    }

    #[test]
    fn the_last_chunk_ends_at_the_range_end() {
        let chunks = split(3, 1_000_001, 512);
        assert_eq!(chunks.len(), 1954);
        assert_eq!(
            chunks.last(),
            Some(&(3 + 1953 * 512, 1_000_001 - 1953 * 512))
        );
        let covered: u64 = chunks.iter().map(|&(_, n)| u64::from(n)).sum();
        assert_eq!(covered, 1_000_001);
        assert!(
            chunks
                .windows(2)
                .all(|w| w[0].0 + u64::from(w[0].1) == w[1].0)
        );
    }

    #[test]
    fn degenerate_ranges_end() {
        assert_eq!(split(5, 0, 4), []);
        assert_eq!(split(5, 2, 0), [(5, 1), (6, 1)], "max 0 counts as 1");
        assert_eq!(
            split(u64::MAX - 3, 10, 2),
            [(u64::MAX - 3, 2), (u64::MAX - 1, 1)],
            "ends at the last sector number"
        );
        let large = split(0, u64::from(u32::MAX) * 2 + 1, u32::MAX);
        assert_eq!(
            large,
            [
                (0, u32::MAX),
                (u64::from(u32::MAX), u32::MAX),
                (u64::from(u32::MAX) * 2, 1)
            ]
        );
    }
}
