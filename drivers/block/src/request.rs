//! Requests, their handles and their outcomes, the same for every driver.

use core::fmt;

/// Bytes in a sector, the unit of `lba` in requests and of capacities.
pub const SECTOR_SIZE: u32 = 512;

/// The most requests one device keeps in flight ([`Completions`] holds one
/// token per request, without allocating).
pub const MAX_IN_FLIGHT: usize = 21;

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
