//! Block requests: what the kernel asks for, the wire header, the status a
//! device answers with, and the handles of requests in flight.
//!
//! # One region per request
//!
//! Every request lives in one contiguous region (its slot's staging buffer,
//! or a buffer in the device's own pool):
//!
//! ```text
//! +------------------+---------------------------+--------+
//! | header, 16 bytes | data, 0..=256 KiB         | status |
//! | type, 0, sector  | (none for a flush)        | 1 byte |
//! +------------------+---------------------------+--------+
//!   descriptor 0:      descriptor 1:               descriptor 2 (1 for a flush):
//!   device reads       device writes (read) or     device writes
//!                      reads (write)
//! ```
//!
//! The three descriptors of the chain point into that one region, which is
//! mapped once (`Bidirectional`: the device reads the header and writes the
//! status) and unmapped once.

use core::fmt;

/// Bytes in a sector, the unit of `sector` in requests and of `capacity`.
pub const SECTOR_SIZE: u32 = 512;

/// The largest request the driver sends; larger transfers are split
/// ([`BlockDevice::read`](crate::BlockDevice::read) and
/// [`BlockDevice::write`](crate::BlockDevice::write)). A device's `size_max`
/// can lower it.
pub const MAX_REQUEST_BYTES: u32 = 256 * 1024;

/// Bytes of `struct virtio_blk_req`'s header: `type`, `reserved`, `sector`.
pub(crate) const HEADER_LEN: usize = 16;

/// `VIRTIO_BLK_T_IN`.
const T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`.
const T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
const T_FLUSH: u32 = 4;

/// `VIRTIO_BLK_S_OK`.
pub(crate) const S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
const S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
const S_UNSUPP: u8 = 2;
/// What the status byte holds until the device writes it: no status the
/// specification defines, so a device that never writes it is noticed.
pub(crate) const STATUS_UNWRITTEN: u8 = 0xff;

/// A request's operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// `VIRTIO_BLK_T_IN`.
    Read,
    /// `VIRTIO_BLK_T_OUT`.
    Write,
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush,
}

impl Op {
    /// The header's `type`.
    pub(crate) const fn request_type(self) -> u32 {
        match self {
            Self::Read => T_IN,
            Self::Write => T_OUT,
            Self::Flush => T_FLUSH,
        }
    }
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

/// A status other than `VIRTIO_BLK_S_OK` that a device answered with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceStatus {
    /// `VIRTIO_BLK_S_IOERR`.
    IoError,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupported,
    /// A value the specification does not define (`0xff`: the device did
    /// not write the status at all).
    Other(u8),
}

impl DeviceStatus {
    /// The outcome a status byte says.
    pub(crate) const fn check(status: u8) -> Result<(), Self> {
        match status {
            S_OK => Ok(()),
            S_IOERR => Err(Self::IoError),
            S_UNSUPP => Err(Self::Unsupported),
            other => Err(Self::Other(other)),
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoError => f.write_str("VIRTIO_BLK_S_IOERR"),
            Self::Unsupported => f.write_str("VIRTIO_BLK_S_UNSUPP"),
            Self::Other(value) => write!(f, "status {value:#04x}"),
        }
    }
}

/// The time by which a request must complete, in whatever unit the kernel's
/// clock counts (the driver only compares it with the `now` it is given).
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

/// The handle of a submitted request, until [`BlockDevice::finish`](crate::BlockDevice::finish)
/// has given its outcome.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Token {
    pub(crate) slot: u16,
    pub(crate) generation: u32,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {}.{}", self.slot, self.generation)
    }
}

/// A request that completed: what [`BlockDevice::finish`](crate::BlockDevice::finish)
/// gives back (the driver also keeps one per request in flight).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Completion {
    /// The operation.
    pub op: Op,
    /// Its first sector (0 for a flush).
    pub lba: u64,
    /// Data bytes moved (0 for a flush).
    pub bytes: u32,
}

/// The tokens one call of [`BlockDevice::handle_interrupt`](crate::BlockDevice::handle_interrupt),
/// [`BlockDevice::poll`](crate::BlockDevice::poll) or
/// [`BlockDevice::expire`](crate::BlockDevice::expire) found finished (no
/// allocation: at most one per slot).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Completions {
    tokens: [Token; MAX_IN_FLIGHT],
    len: usize,
}

/// The most requests in flight per device: three descriptors each in the
/// largest queue.
pub const MAX_IN_FLIGHT: usize = crate::queue::QUEUE_SIZE_LIMIT as usize / DESCRIPTORS_PER_REQUEST;

/// Descriptors a read or write takes (header, data, status).
pub(crate) const DESCRIPTORS_PER_REQUEST: usize = 3;

impl Completions {
    pub(crate) const fn new() -> Self {
        Self {
            tokens: [Token {
                slot: 0,
                generation: 0,
            }; MAX_IN_FLIGHT],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, token: Token) {
        // At most one per slot, and there are at most MAX_IN_FLIGHT slots.
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

impl<'c> IntoIterator for &'c Completions {
    type Item = &'c Token;
    type IntoIter = core::slice::Iter<'c, Token>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}
