//! Typed errors of device setup, of requests, and of a device that broke the
//! protocol.

use core::fmt;

use tidepool_block::ExtentError;
use tidepool_dma::{DmaAddr, DmaError};

use crate::request::{DeviceStatus, Op, Token};
use crate::transport::FeatureSet;

/// Why a device could not be set up. Where the handshake had begun, the
/// driver has also set `FAILED` in the device status and freed what it had
/// allocated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InitError<'a> {
    /// `MagicValue` is not "virt": not a virtio-mmio transport.
    BadMagic {
        /// The device.
        device: &'a str,
        /// What it reads.
        found: u32,
    },
    /// A `Version` the driver does not know (1 is legacy, 2 modern).
    UnsupportedVersion {
        /// The device.
        device: &'a str,
        /// What it reads.
        found: u32,
    },
    /// `DeviceID` 0: a transport with no device behind it.
    NoDevice {
        /// The device.
        device: &'a str,
    },
    /// Another kind of virtio device.
    NotBlock {
        /// The device.
        device: &'a str,
        /// Its `DeviceID`.
        device_id: u32,
    },
    /// A modern device whose `Status` did not read 0 after the reset.
    ResetTimeout {
        /// The device.
        device: &'a str,
        /// What it read last.
        status: u32,
    },
    /// A modern transport whose device does not offer `VIRTIO_F_VERSION_1`.
    MissingVersion1 {
        /// The device.
        device: &'a str,
        /// What it offers.
        offered: FeatureSet,
    },
    /// The device cleared `FEATURES_OK`: it does not accept the features the
    /// driver chose.
    FeaturesRejected {
        /// The device.
        device: &'a str,
        /// What the driver accepted.
        accepted: FeatureSet,
    },
    /// A `blk_size` that is not a power of two from 512 to the largest request.
    BadBlockSize {
        /// The device.
        device: &'a str,
        /// Its `blk_size`.
        blk_size: u32,
    },
    /// A `size_max` below the block size: no request would fit.
    SegmentTooSmall {
        /// The device.
        device: &'a str,
        /// Its `size_max`.
        size_max: u32,
        /// Its block size.
        block_size: u32,
    },
    /// The configuration kept changing while the driver read it.
    ConfigUnstable {
        /// The device.
        device: &'a str,
    },
    /// Queue 0 is already set up (`QueuePFN` or `QueueReady` not 0).
    QueueInUse {
        /// The device.
        device: &'a str,
    },
    /// Queue 0 does not exist (`QueueNumMax` 0).
    QueueUnavailable {
        /// The device.
        device: &'a str,
    },
    /// Queue 0 cannot hold one request's three descriptors (in a queue of a
    /// power of two entries).
    QueueTooSmall {
        /// The device.
        device: &'a str,
        /// Its `QueueNumMax`.
        max: u32,
    },
    /// A legacy device addresses its queue by a 32-bit page number; the
    /// ring's coherent memory lies above what that reaches.
    RingUnreachable {
        /// The device.
        device: &'a str,
        /// The ring's DMA address.
        ring: DmaAddr,
    },
    /// [`Options::in_flight`](crate::Options::in_flight) is 0.
    NoSlots {
        /// The device.
        device: &'a str,
    },
    /// The heap could not give the staging buffers.
    OutOfMemory {
        /// The device.
        device: &'a str,
        /// Bytes asked for.
        bytes: usize,
    },
    /// The device set `FAILED` or `DEVICE_NEEDS_RESET` during setup.
    DeviceFailed {
        /// The device.
        device: &'a str,
        /// Its status.
        status: u32,
    },
    /// The DMA layer refused the ring's coherent allocation.
    Dma {
        /// What it said (names the device).
        error: DmaError<'a>,
    },
}

impl fmt::Display for InitError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic { device, found } => {
                write!(
                    f,
                    "blk {device}: magic {found:#010x} is not a virtio-mmio transport"
                )
            }
            Self::UnsupportedVersion { device, found } => {
                write!(
                    f,
                    "blk {device}: virtio-mmio version {found} is neither 1 (legacy) nor 2"
                )
            }
            Self::NoDevice { device } => write!(f, "blk {device}: no device behind the transport"),
            Self::NotBlock { device, device_id } => {
                write!(
                    f,
                    "blk {device}: device id {device_id} is not a block device (2)"
                )
            }
            Self::ResetTimeout { device, status } => {
                write!(
                    f,
                    "blk {device}: status {status:#x} did not read 0 after reset"
                )
            }
            Self::MissingVersion1 { device, offered } => write!(
                f,
                "blk {device}: modern transport without VIRTIO_F_VERSION_1 (offered {offered})"
            ),
            Self::FeaturesRejected { device, accepted } => {
                write!(f, "blk {device}: device cleared FEATURES_OK for {accepted}")
            }
            Self::BadBlockSize { device, blk_size } => {
                write!(
                    f,
                    "blk {device}: blk_size {blk_size} is not a power of two in 512..=262144"
                )
            }
            Self::SegmentTooSmall {
                device,
                size_max,
                block_size,
            } => write!(
                f,
                "blk {device}: size_max {size_max} is below the block size {block_size}"
            ),
            Self::ConfigUnstable { device } => {
                write!(f, "blk {device}: configuration kept changing while read")
            }
            Self::QueueInUse { device } => write!(f, "blk {device}: queue 0 is already in use"),
            Self::QueueUnavailable { device } => {
                write!(f, "blk {device}: queue 0 is not available")
            }
            Self::QueueTooSmall { device, max } => {
                write!(
                    f,
                    "blk {device}: queue 0 of at most {max} entries cannot hold a request's 3 descriptors"
                )
            }
            Self::RingUnreachable { device, ring } => write!(
                f,
                "blk {device}: ring at {ring} is beyond a legacy device's 32-bit page number"
            ),
            Self::NoSlots { device } => write!(f, "blk {device}: no request slots asked for"),
            Self::OutOfMemory { device, bytes } => {
                write!(
                    f,
                    "blk {device}: no heap for {bytes} bytes of staging buffers"
                )
            }
            Self::DeviceFailed { device, status } => {
                write!(
                    f,
                    "blk {device}: device failed during setup (status {status:#x})"
                )
            }
            Self::Dma { error } => write!(f, "blk: ring allocation refused: {error}"),
        }
    }
}

/// A device that broke the virtqueue protocol, or asked to be reset. The
/// driver stops using it: requests in flight fail with
/// [`BlkError::Broken`] when finished (their memory stays with the device),
/// new ones are refused, and [`BlockDevice::shutdown`](crate::BlockDevice::shutdown)
/// resets it and releases everything.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceFault {
    /// A used entry names a descriptor beyond the queue.
    UsedIdOutOfRange {
        /// The id.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used entry names a descriptor that heads no chain in flight.
    UsedIdNotInFlight {
        /// The id.
        id: u16,
    },
    /// `used.idx` ran more than a queue's worth ahead of what was taken.
    UsedIndexJump {
        /// The index up to which entries were taken.
        taken: u16,
        /// The index the device published.
        published: u16,
    },
    /// The device set `DEVICE_NEEDS_RESET`.
    NeedsReset,
    /// `Status` did not read 0 after a reset: the device may still use its
    /// memory, which is therefore not given back.
    ResetIncomplete,
    /// The DMA layer refused to sync the used ring for the CPU, so what the
    /// device returned cannot be read safely (the refusal is logged).
    RingSyncRefused,
}

impl fmt::Display for DeviceFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UsedIdOutOfRange { id, size } => {
                write!(f, "used entry names descriptor {id} of a queue of {size}")
            }
            Self::UsedIdNotInFlight { id } => {
                write!(
                    f,
                    "used entry names descriptor {id}, which heads no request in flight"
                )
            }
            Self::UsedIndexJump { taken, published } => {
                write!(f, "used index jumped from {taken} to {published}")
            }
            Self::NeedsReset => f.write_str("device needs a reset"),
            Self::ResetIncomplete => f.write_str("device did not complete its reset"),
            Self::RingSyncRefused => f.write_str("the used ring could not be synced for the CPU"),
        }
    }
}

/// A request that was refused or failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlkError<'a> {
    /// A write to a read-only device (`VIRTIO_BLK_F_RO`); the device was not
    /// touched.
    ReadOnly {
        /// The device.
        device: &'a str,
        /// The write's first sector.
        lba: u64,
    },
    /// A read or write that does not fit the device: empty, not whole
    /// blocks of its block size or not starting on one, larger than one
    /// request (use
    /// [`BlockDevice::read`](crate::BlockDevice::read)/[`write`](crate::BlockDevice::write),
    /// which split), or beyond its capacity.
    Extent {
        /// The device.
        device: &'a str,
        /// The operation.
        op: Op,
        /// How it does not fit.
        error: ExtentError,
    },
    /// A flush request to a device without `VIRTIO_BLK_F_FLUSH` (whose
    /// completed writes are already durable).
    FlushNotSupported {
        /// The device.
        device: &'a str,
    },
    /// No free request slot or descriptors.
    QueueFull {
        /// The device.
        device: &'a str,
        /// Requests the device holds (including timed-out ones it has not
        /// returned).
        in_flight: usize,
    },
    /// [`BlockDriver::submit_waiting`](tidepool_block::BlockDriver::submit_waiting)
    /// waited a whole request timeout and no slot (or pool room) came free:
    /// by then every request holding one was past its deadline, and the
    /// device had not returned them.
    NoFreeSlot {
        /// The device.
        device: &'a str,
        /// Requests the device holds.
        in_flight: usize,
        /// How many of them timed out.
        timed_out: usize,
    },
    /// The device answered with an error status.
    Device {
        /// The device.
        device: &'a str,
        /// The operation.
        op: Op,
        /// Its first sector.
        lba: u64,
        /// What the device said.
        status: DeviceStatus,
    },
    /// The request's deadline passed before it completed. Its slot stays
    /// with the device until the device returns it.
    Timeout {
        /// The device.
        device: &'a str,
        /// The operation.
        op: Op,
        /// Its first sector.
        lba: u64,
    },
    /// A token that names no request waiting to be finished (already
    /// finished, or timed out and finished).
    UnknownToken {
        /// The device.
        device: &'a str,
        /// The token.
        token: Token,
    },
    /// The DMA layer refused a map or unmap of the request's region.
    Dma {
        /// The operation.
        op: Op,
        /// Its first sector.
        lba: u64,
        /// What it said (names the device).
        error: DmaError<'a>,
    },
    /// The device broke the protocol or needs a reset; nothing more is
    /// submitted.
    Broken {
        /// The device.
        device: &'a str,
        /// What it did.
        fault: DeviceFault,
    },
}

impl fmt::Display for BlkError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadOnly { device, lba } => {
                write!(
                    f,
                    "blk {device}: write at sector {lba} to a read-only device"
                )
            }
            Self::Extent { device, op, error } => write!(f, "blk {device}: {op}: {error}"),
            Self::FlushNotSupported { device } => {
                write!(f, "blk {device}: flush without VIRTIO_BLK_F_FLUSH")
            }
            Self::QueueFull { device, in_flight } => {
                write!(
                    f,
                    "blk {device}: queue full ({in_flight} requests in flight)"
                )
            }
            Self::Device {
                device,
                op,
                lba,
                status,
            } => write!(f, "blk {device}: {op} at sector {lba} failed: {status}"),
            Self::Timeout { device, op, lba } => {
                write!(f, "blk {device}: {op} at sector {lba} timed out")
            }
            Self::UnknownToken { device, token } => {
                write!(f, "blk {device}: {token} is not waiting to be finished")
            }
            Self::Dma { op, lba, error } => write!(f, "blk: {op} at sector {lba}: {error}"),
            Self::NoFreeSlot {
                device,
                in_flight,
                timed_out,
            } => write!(
                f,
                "blk {device}: no request slot came free within a request timeout: the device holds \
                 {in_flight} requests, {timed_out} of them timed out"
            ),
            Self::Broken { device, fault } => write!(f, "blk {device}: device broken: {fault}"),
        }
    }
}
