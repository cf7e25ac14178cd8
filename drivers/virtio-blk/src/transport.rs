//! The virtio-mmio transport as the driver sees it: a register-level
//! boundary ([`Transport`]), the status and interrupt bit fields, the feature
//! bits, and the handshake steps every transport version shares.
//!
//! The boundary is one register read or write: the real implementation
//! ([`MmioTransport`](crate::MmioTransport)) is `tock-registers` over the
//! mapped register block, and the tests implement it with a simulated device.
//! Everything above it — reset, status handshake, feature negotiation, queue
//! programming, configuration reads — is ordinary code that runs unchanged
//! against both.

use core::fmt;

use tidepool_block::write_names;
use tock_registers::{LocalRegisterCopy, register_bitfields};

register_bitfields! {u32,
    /// Device Status (virtio 1.2 §2.1), register `Status`.
    pub(crate) Status [
        /// The guest found the device.
        ACKNOWLEDGE OFFSET(0) NUMBITS(1) [],
        /// The guest knows how to drive it.
        DRIVER OFFSET(1) NUMBITS(1) [],
        /// The driver is set up and ready.
        DRIVER_OK OFFSET(2) NUMBITS(1) [],
        /// Feature negotiation is complete (modern only).
        FEATURES_OK OFFSET(3) NUMBITS(1) [],
        /// The device hit an error it cannot recover from without a reset
        /// (modern only).
        DEVICE_NEEDS_RESET OFFSET(6) NUMBITS(1) [],
        /// The driver gave up on the device.
        FAILED OFFSET(7) NUMBITS(1) []
    ],
    /// `InterruptStatus` and `InterruptACK` (virtio 1.2 §4.2.2).
    pub(crate) InterruptStatus [
        /// The device used a buffer of a virtqueue.
        USED_BUFFER OFFSET(0) NUMBITS(1) [],
        /// The device configuration changed.
        CONFIG_CHANGE OFFSET(1) NUMBITS(1) []
    ]
}

/// A value of the `Status` register.
pub(crate) type StatusValue = LocalRegisterCopy<u32, Status::Register>;

/// A value of the `InterruptStatus` register.
pub(crate) type InterruptValue = LocalRegisterCopy<u32, InterruptStatus::Register>;

/// `MagicValue`: "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;

/// `DeviceID` of a block device.
pub const BLOCK_DEVICE_ID: u32 = 2;

/// The page size the driver announces to a legacy device (`GuestPageSize`),
/// and the alignment of the used ring it announces (`QueueAlign`).
pub const LEGACY_PAGE_SIZE: u32 = 4096;

/// Feature bits the driver knows of (virtio 1.2 §5.2.3 and §6).
pub mod feature {
    /// `VIRTIO_BLK_F_SIZE_MAX`: `size_max` bounds the size of any one
    /// buffer (segment).
    pub const BLK_SIZE_MAX: u64 = 1 << 1;
    /// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` bounds the data buffers of a
    /// request. Not negotiated: a request has exactly one data buffer, which
    /// every device accepts.
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    /// `VIRTIO_BLK_F_RO`: the device is read-only.
    pub const BLK_RO: u64 = 1 << 5;
    /// `VIRTIO_BLK_F_BLK_SIZE`: `blk_size` is the logical block size.
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    /// `VIRTIO_BLK_F_FLUSH`: the device has a write cache and takes flush
    /// requests. Without it, a completed write is already durable.
    pub const BLK_FLUSH: u64 = 1 << 9;
    /// `VIRTIO_F_INDIRECT_DESC`: not negotiated (three direct descriptors
    /// per request fit the queue).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_F_EVENT_IDX`: not negotiated (the driver notifies after every
    /// submission and takes every interrupt).
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// `VIRTIO_F_VERSION_1`: the device follows virtio 1.x, not the legacy
    /// interface. Required on a modern (version 2) transport.
    pub const VERSION_1: u64 = 1 << 32;
    /// `VIRTIO_F_ACCESS_PLATFORM`: the device reaches memory through the
    /// platform's DMA view. Accepted when offered: every address the driver
    /// gives comes from the DMA layer, which is that view.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    /// `VIRTIO_F_ORDER_PLATFORM`: not negotiated, since the driver orders
    /// for the platform anyway: its barriers ([`Barrier`](crate::transport::Barrier)) are outer
    /// shareable, what a device that is not a CPU needs (see the crate
    /// documentation).
    pub const ORDER_PLATFORM: u64 = 1 << 36;
}

/// The transport's interface version (`Version` register).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransportVersion {
    /// Version 1: the legacy interface (`GuestPageSize`, `QueuePFN`,
    /// `QueueAlign`; no `FEATURES_OK`).
    Legacy,
    /// Version 2: virtio 1.x (`QueueDesc*`/`QueueDriver*`/`QueueDevice*`,
    /// `QueueReady`, `FEATURES_OK`, `VIRTIO_F_VERSION_1`).
    Modern,
}

impl TransportVersion {
    /// The version `Version` reads as, if the driver knows it.
    pub const fn from_register(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Legacy),
            2 => Some(Self::Modern),
            _ => None,
        }
    }

    /// The feature bits the driver implements on this version; it accepts
    /// the offered subset of these and nothing else.
    pub const fn supported_features(self) -> u64 {
        let block =
            feature::BLK_SIZE_MAX | feature::BLK_RO | feature::BLK_BLK_SIZE | feature::BLK_FLUSH;
        match self {
            Self::Legacy => block,
            Self::Modern => block | feature::VERSION_1 | feature::ACCESS_PLATFORM,
        }
    }
}

impl fmt::Display for TransportVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Legacy => "legacy",
            Self::Modern => "modern",
        })
    }
}

/// A register the driver reads (virtio 1.2 §4.2.2, legacy §4.2.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadRegister {
    /// `MagicValue` (0x000).
    MagicValue,
    /// `Version` (0x004).
    Version,
    /// `DeviceID` (0x008).
    DeviceId,
    /// `DeviceFeatures` (0x010), the word `DeviceFeaturesSel` selects.
    DeviceFeatures,
    /// `QueueNumMax` (0x034) of the selected queue.
    QueueNumMax,
    /// `QueuePFN` (0x040) of the selected queue, legacy only.
    QueuePfn,
    /// `QueueReady` (0x044) of the selected queue, modern only.
    QueueReady,
    /// `InterruptStatus` (0x060).
    InterruptStatus,
    /// `Status` (0x070).
    Status,
    /// `ConfigGeneration` (0x0fc), modern only.
    ConfigGeneration,
}

/// A register the driver writes (virtio 1.2 §4.2.2, legacy §4.2.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteRegister {
    /// `DeviceFeaturesSel` (0x014).
    DeviceFeaturesSel,
    /// `DriverFeatures` (0x020), the word `DriverFeaturesSel` selects.
    DriverFeatures,
    /// `DriverFeaturesSel` (0x024).
    DriverFeaturesSel,
    /// `GuestPageSize` (0x028), legacy only.
    GuestPageSize,
    /// `QueueSel` (0x030).
    QueueSel,
    /// `QueueNum` (0x038) of the selected queue.
    QueueNum,
    /// `QueueAlign` (0x03c) of the selected queue, legacy only.
    QueueAlign,
    /// `QueuePFN` (0x040) of the selected queue, legacy only.
    QueuePfn,
    /// `QueueReady` (0x044) of the selected queue, modern only.
    QueueReady,
    /// `QueueNotify` (0x050).
    QueueNotify,
    /// `InterruptACK` (0x064).
    InterruptAck,
    /// `Status` (0x070).
    Status,
    /// `QueueDescLow` (0x080), modern only.
    QueueDescLow,
    /// `QueueDescHigh` (0x084), modern only.
    QueueDescHigh,
    /// `QueueDriverLow` (0x090): the available ring, modern only.
    QueueDriverLow,
    /// `QueueDriverHigh` (0x094), modern only.
    QueueDriverHigh,
    /// `QueueDeviceLow` (0x0a0): the used ring, modern only.
    QueueDeviceLow,
    /// `QueueDeviceHigh` (0x0a4), modern only.
    QueueDeviceHigh,
}

/// A 32-bit word of the block device's configuration space (virtio 1.2
/// §5.2.4, `struct virtio_blk_config`), at 0x100 of the transport.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigWord {
    /// `capacity`, low half: the size in 512-byte sectors.
    CapacityLow,
    /// `capacity`, high half.
    CapacityHigh,
    /// `size_max` (with `VIRTIO_BLK_F_SIZE_MAX`).
    SizeMax,
    /// `blk_size` (with `VIRTIO_BLK_F_BLK_SIZE`).
    BlkSize,
}

pub use tidepool_block::Barrier;

/// One virtio-mmio transport, register by register.
///
/// Every call of `read`, `write` and `read_config` is exactly one 32-bit
/// access of the named register, with no ordering of its own beyond what a
/// device access has; the driver asks for the ordering it needs between
/// memory and registers with [`Transport::barrier`] (see the crate
/// documentation).
pub trait Transport {
    /// The interrupt registers, apart from the rest.
    type Interrupt: InterruptRegisters;

    /// Reads `register`.
    fn read(&self, register: ReadRegister) -> u32;
    /// Writes `value` to `register`.
    fn write(&mut self, register: WriteRegister, value: u32);
    /// Reads one word of the device configuration space.
    fn read_config(&self, word: ConfigWord) -> u32;
    /// Executes `barrier`.
    fn barrier(&self, barrier: Barrier);
    /// `InterruptStatus` and `InterruptACK` as a value of their own, for an
    /// interrupt handler. Only the driver asks for them, once
    /// ([`BlockDevice::interrupt_handler`](crate::BlockDevice::interrupt_handler)),
    /// and from then on leaves those two registers to them.
    fn interrupt_registers(&self) -> Self::Interrupt;
}

/// `InterruptStatus` and `InterruptACK` of a transport: all an interrupt
/// handler touches.
pub trait InterruptRegisters {
    /// Reads `InterruptStatus`, acknowledges every bit it has set
    /// (`InterruptACK`), and returns them (0: not this device's interrupt).
    fn acknowledge(&self) -> u32;
}

/// How many times the driver reads `Status` waiting for a modern device to
/// finish its reset, and reads a changing configuration again, before giving
/// up with an error.
pub const WAIT_LIMIT: u32 = 1000;

/// The device's current status.
pub(crate) fn status<T: Transport>(transport: &T) -> StatusValue {
    StatusValue::new(transport.read(ReadRegister::Status))
}

/// Adds `bits` to the device status (the handshake only ever adds bits).
pub(crate) fn add_status<T: Transport>(transport: &mut T, bits: u32) {
    let value = status(transport).get() | bits;
    transport.write(WriteRegister::Status, value);
}

/// Resets the device: writes 0 to `Status`; a modern device has finished
/// when `Status` reads 0 again. Returns whether it did within
/// [`WAIT_LIMIT`] reads (a legacy device resets on the write).
pub(crate) fn reset<T: Transport>(transport: &mut T, version: TransportVersion) -> bool {
    transport.write(WriteRegister::Status, 0);
    match version {
        TransportVersion::Legacy => true,
        TransportVersion::Modern => (0..WAIT_LIMIT).any(|_| status(transport).get() == 0),
    }
}

/// The 64 feature bits the device offers.
pub(crate) fn device_features<T: Transport>(transport: &mut T) -> u64 {
    transport.write(WriteRegister::DeviceFeaturesSel, 0);
    let low = transport.read(ReadRegister::DeviceFeatures);
    transport.write(WriteRegister::DeviceFeaturesSel, 1);
    let high = transport.read(ReadRegister::DeviceFeatures);
    u64::from(high) << 32 | u64::from(low)
}

/// Writes the 64 feature bits the driver accepts.
pub(crate) fn set_driver_features<T: Transport>(transport: &mut T, features: u64) {
    for (select, word) in [(0, features as u32), (1, (features >> 32) as u32)] {
        transport.write(WriteRegister::DriverFeaturesSel, select);
        transport.write(WriteRegister::DriverFeatures, word);
    }
}

/// Reads the 64-bit capacity consistently: a modern device's
/// `ConfigGeneration` must not change across the two halves, a legacy
/// device's high half must read the same before and after the low half.
/// `None` if the configuration kept changing for [`WAIT_LIMIT`] tries.
pub(crate) fn read_capacity<T: Transport>(transport: &T, version: TransportVersion) -> Option<u64> {
    (0..WAIT_LIMIT).find_map(|_| {
        let (before, after, low, high) = match version {
            TransportVersion::Modern => {
                let before = transport.read(ReadRegister::ConfigGeneration);
                let low = transport.read_config(ConfigWord::CapacityLow);
                let high = transport.read_config(ConfigWord::CapacityHigh);
                (
                    before,
                    transport.read(ReadRegister::ConfigGeneration),
                    low,
                    high,
                )
            }
            TransportVersion::Legacy => {
                let before = transport.read_config(ConfigWord::CapacityHigh);
                let low = transport.read_config(ConfigWord::CapacityLow);
                let after = transport.read_config(ConfigWord::CapacityHigh);
                (before, after, low, after)
            }
        };
        (before == after).then_some(u64::from(high) << 32 | u64::from(low))
    })
}

/// Splits a 64-bit value into the two registers of a 64-bit address.
pub(crate) fn write_address<T: Transport>(
    transport: &mut T,
    (low_register, high_register): (WriteRegister, WriteRegister),
    value: u64,
) {
    transport.write(low_register, value as u32);
    transport.write(high_register, (value >> 32) as u32);
}

/// A feature set, shown as `0x...` with the names of the bits the driver knows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FeatureSet(pub u64);

impl fmt::Display for FeatureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)?;
        let names = [
            (feature::BLK_SIZE_MAX, "size-max"),
            (feature::BLK_SEG_MAX, "seg-max"),
            (feature::BLK_RO, "ro"),
            (feature::BLK_BLK_SIZE, "blk-size"),
            (feature::BLK_FLUSH, "flush"),
            (feature::RING_INDIRECT_DESC, "indirect-desc"),
            (feature::RING_EVENT_IDX, "event-idx"),
            (feature::VERSION_1, "version-1"),
            (feature::ACCESS_PLATFORM, "access-platform"),
            (feature::ORDER_PLATFORM, "order-platform"),
        ];
        let set = names.into_iter().filter(|&(bit, _)| self.0 & bit != 0);
        write_names(f, set.map(|(_, name)| name))
    }
}
