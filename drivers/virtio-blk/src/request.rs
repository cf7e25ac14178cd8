//! Block requests: what the kernel asks for, the wire header, the status a
//! device answers with, and the handles of requests in flight.
//!
//! # One region per request
//!
//! Every request lives in one contiguous staging buffer of its slot:
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

pub use tidepool_block::{Completion, Completions, Deadline, Op, Request, SECTOR_SIZE, Token};

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

/// The header's `type` of an operation.
pub(crate) const fn request_type(op: Op) -> u32 {
    match op {
        Op::Read => T_IN,
        Op::Write => T_OUT,
        Op::Flush => T_FLUSH,
    }
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

/// The most requests in flight per device: three descriptors each in the
/// largest queue.
pub const MAX_IN_FLIGHT: usize = crate::queue::QUEUE_SIZE_LIMIT as usize / DESCRIPTORS_PER_REQUEST;

// Every request in flight fits the shared completion list.
const _: () = assert!(MAX_IN_FLIGHT <= tidepool_block::MAX_IN_FLIGHT);

/// Descriptors a read or write takes (header, data, status).
pub(crate) const DESCRIPTORS_PER_REQUEST: usize = 3;
