//! A simulated virtio-blk device behind a virtio-mmio transport, legacy or
//! modern. It implements the driver's [`Transport`] register by register,
//! finds the rings where the driver programmed them, reads requests from
//! memory through the address map (as a device's DMA would), and completes
//! them when the test says so, in any order.
//!
//! Every request is checked against the driver's contract: a chain of
//! header (device-readable, 16 bytes), data and status (device-writable, 1
//! byte), all three in one contiguous region.

use std::cell::{Ref, RefCell};
use std::rc::Rc;
use std::sync::atomic::{Ordering, fence};
use std::vec::Vec;

use tidepool_mm::{AddressClass, AddressMap, PhysAddr};
use tidepool_virtio_blk::transport::{ConfigWord, MAGIC, ReadRegister, WriteRegister, feature};
use tidepool_virtio_blk::{Barrier, InterruptRegisters, Transport};

/// `Status` bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_S_IOERR`.
pub const S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const S_UNSUPP: u8 = 2;

/// What the simulated device is and offers.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub magic: u32,
    pub version: u32,
    pub device_id: u32,
    pub features: u64,
    pub queue_num_max: u32,
    pub capacity: u64,
    pub blk_size: u32,
    pub size_max: u32,
    /// Clear `FEATURES_OK` whatever the driver accepts.
    pub reject_features: bool,
    /// Set `DEVICE_NEEDS_RESET` when the driver sets `DRIVER_OK`.
    pub fail_on_driver_ok: bool,
    /// Complete every request as soon as it is notified.
    pub auto_complete: bool,
    /// Once `DRIVER_OK` is set, ignore resets: `Status` keeps its value
    /// when the driver writes 0 (a live device that may go on using its
    /// memory).
    pub stuck_reset: bool,
}

impl SimConfig {
    /// [`Self::modern`], holding every request until the test completes
    /// it (`Sim::complete_all`): requests stay in flight.
    pub fn held() -> Self {
        Self {
            auto_complete: false,
            ..Self::modern()
        }
    }

    /// A modern device offering more than the driver implements.
    pub fn modern() -> Self {
        Self {
            magic: MAGIC,
            version: 2,
            device_id: 2,
            features: feature::BLK_SIZE_MAX
                | feature::BLK_SEG_MAX
                | feature::BLK_BLK_SIZE
                | feature::BLK_FLUSH
                | 1 << 4 // VIRTIO_BLK_F_GEOMETRY
                | 1 << 10 // VIRTIO_BLK_F_TOPOLOGY
                | 1 << 13 // VIRTIO_BLK_F_DISCARD
                | feature::RING_INDIRECT_DESC
                | feature::RING_EVENT_IDX
                | feature::VERSION_1
                | feature::ACCESS_PLATFORM
                | 1 << 34 // VIRTIO_F_RING_PACKED
                | feature::ORDER_PLATFORM,
            queue_num_max: 1024,
            capacity: 8192,
            blk_size: 512,
            size_max: 1 << 20,
            reject_features: false,
            fail_on_driver_ok: false,
            auto_complete: true,
            stuck_reset: false,
        }
    }

    /// A legacy device (QEMU's `virtio-mmio` default).
    pub fn legacy() -> Self {
        Self {
            version: 1,
            features: feature::BLK_SEG_MAX
                | feature::BLK_BLK_SIZE
                | feature::BLK_FLUSH
                | feature::RING_INDIRECT_DESC
                | feature::RING_EVENT_IDX
                | 1 << 27, // VIRTIO_F_ANY_LAYOUT
            queue_num_max: 1024,
            ..Self::modern()
        }
    }
}

/// A request the device took from the available ring.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub head: u16,
    pub request_type: u32,
    pub sector: u64,
    /// Data buffer: address, length.
    pub data: Option<(u64, u32)>,
    pub status_addr: u64,
}

/// The device's state.
pub struct SimState {
    pub config: SimConfig,
    map: &'static AddressMap,
    pub disk: Vec<u8>,
    pub status: u32,
    /// Every value written to `Status`, in order.
    pub status_writes: Vec<u32>,
    device_features_sel: u32,
    driver_features_sel: u32,
    pub driver_features: u64,
    pub guest_page_size: u32,
    queue_sel: u32,
    pub queue_num: u32,
    pub queue_align: u32,
    pub queue_pfn: u32,
    pub queue_ready: u32,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    pub interrupt_status: u32,
    config_generation: u32,
    next_avail: u16,
    used_idx: u16,
    pub pending: Vec<Pending>,
    pub notifications: u32,
    /// `Barrier::DmaWrite`s and `Barrier::DmaRead`s executed.
    pub write_barriers: u32,
    pub read_barriers: u32,
    /// `Barrier::DmaFull`s executed.
    pub full_barriers: u32,
    /// A `Barrier::DmaWrite` came after the last register write: a
    /// `QueueNotify` now is ordered after the ring the driver wrote.
    notify_ordered: bool,
    /// Statuses to answer for requests at these sectors.
    pub errors: Vec<(u64, u8)>,
    pub flushes: u32,
    /// The host address and length of each read's data, where the device
    /// wrote it.
    pub reads_at: Vec<(usize, u32)>,
}

/// A handle on the simulated device; the driver owns one as its transport,
/// the test keeps a clone.
#[derive(Clone)]
pub struct Sim(Rc<RefCell<SimState>>);

impl Sim {
    pub fn new(config: SimConfig, map: &'static AddressMap) -> Self {
        let disk = vec![0; (config.capacity * 512) as usize];
        Self(Rc::new(RefCell::new(SimState {
            config,
            map,
            disk,
            status: 0,
            status_writes: Vec::new(),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            guest_page_size: 0,
            queue_sel: 0,
            queue_num: 0,
            queue_align: 0,
            queue_pfn: 0,
            queue_ready: 0,
            desc: 0,
            driver: 0,
            device: 0,
            interrupt_status: 0,
            config_generation: 0,
            next_avail: 0,
            used_idx: 0,
            pending: Vec::with_capacity(1024),
            notifications: 0,
            write_barriers: 0,
            read_barriers: 0,
            full_barriers: 0,
            notify_ordered: false,
            errors: Vec::new(),
            flushes: 0,
            reads_at: Vec::with_capacity(1 << 14),
        })))
    }

    pub fn state(&self) -> Ref<'_, SimState> {
        self.0.borrow()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut SimState) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }

    /// Completes the request taken `index`-th among those pending.
    pub fn complete(&self, index: usize) {
        self.with(|s| {
            let pending = s.pending.remove(index);
            s.execute(pending);
        });
    }

    /// Completes every pending request, oldest first.
    pub fn complete_all(&self) {
        self.with(|s| {
            while !s.pending.is_empty() {
                let pending = s.pending.remove(0);
                s.execute(pending);
            }
        });
    }

    /// Requests taken and not completed.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Changes the capacity and signals a configuration change.
    pub fn set_capacity(&self, capacity: u64) {
        self.with(|s| {
            s.config.capacity = capacity;
            s.disk.resize((capacity * 512) as usize, 0);
            s.config_generation += 1;
            s.interrupt_status |= 2;
        });
    }

    /// Sets `DEVICE_NEEDS_RESET` and signals a configuration change.
    pub fn need_reset(&self) {
        self.with(|s| {
            s.status |= status::DEVICE_NEEDS_RESET;
            s.interrupt_status |= 2;
        });
    }

    /// Sets or clears `VIRTQ_USED_F_NO_NOTIFY` in the used ring, as a device
    /// that polls its queue does.
    pub fn suppress_notifications(&self, suppress: bool) {
        self.with(|s| {
            let (_, _, used) = s.rings();
            s.write(used, &u16::from(suppress).to_le_bytes());
        });
    }

    /// The device looks at its queue unprompted (a device that polls it).
    pub fn look(&self) {
        self.with(SimState::look);
    }

    /// Publishes a used entry naming `id`, which the driver never submitted.
    pub fn return_bogus(&self, id: u32) {
        self.with(|s| s.push_used(id, 1));
    }
}

impl SimState {
    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queue_num = 0;
        self.queue_pfn = 0;
        self.queue_ready = 0;
        self.desc = 0;
        self.driver = 0;
        self.device = 0;
        self.interrupt_status = 0;
        self.next_avail = 0;
        self.used_idx = 0;
        self.pending.clear();
    }

    /// The rings' physical addresses: descriptors, available, used.
    fn rings(&self) -> (u64, u64, u64) {
        let num = u64::from(self.queue_num);
        if self.config.version == 1 {
            let desc = u64::from(self.queue_pfn) * u64::from(self.guest_page_size);
            let avail = desc + 16 * num;
            let used = (avail + 6 + 2 * num).next_multiple_of(u64::from(self.queue_align));
            (desc, avail, used)
        } else {
            (self.desc, self.driver, self.device)
        }
    }

    fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && (self.config.version == 1 && self.queue_pfn != 0
                || self.config.version == 2 && self.queue_ready != 0)
    }

    /// The host address of `len` bytes of guest memory at `pa`, as the
    /// device's DMA reaches it: linear RAM and pools, nothing else.
    fn host(&self, pa: u64, len: usize) -> *mut u8 {
        let class = self.map.classify(PhysAddr(pa));
        let region = self.map.region_of(PhysAddr(pa)).map(|r| r.phys);
        assert!(
            region.is_some_and(|r| pa + len as u64 <= r.end()),
            "device DMA of {len} bytes at {pa:#x} leaves its region"
        );
        let va = match class {
            AddressClass::LinearRam { virt } | AddressClass::MappedPool { virt, .. } => virt,
            AddressClass::NoMapPool {
                window: Some(window),
                ..
            } => window,
            other => panic!("device DMA to {pa:#x}, which is {other}"),
        };
        std::ptr::with_exposed_provenance_mut(va.0 as usize)
    }

    fn read(&self, pa: u64, bytes: &mut [u8]) {
        let source = self.host(pa, bytes.len());
        // SAFETY: `host` returned the host address of guest memory the test
        // owns: a leaked pool window, or linear RAM in one of the driver's
        // live staging buffers (a request's region, which the driver keeps
        // until the device returns it).
        unsafe { std::ptr::copy_nonoverlapping(source, bytes.as_mut_ptr(), bytes.len()) }
    }

    fn write(&self, pa: u64, bytes: &[u8]) {
        let destination = self.host(pa, bytes.len());
        // SAFETY: as for `read`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), destination, bytes.len()) }
    }

    fn read_u16(&self, pa: u64) -> u16 {
        let mut bytes = [0; 2];
        self.read(pa, &mut bytes);
        u16::from_le_bytes(bytes)
    }

    fn read_u32(&self, pa: u64) -> u32 {
        let mut bytes = [0; 4];
        self.read(pa, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn read_u64(&self, pa: u64) -> u64 {
        let mut bytes = [0; 8];
        self.read(pa, &mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// Takes every newly available chain.
    fn take_available(&mut self) {
        let (desc, avail, _) = self.rings();
        let num = self.queue_num as u16;
        let published = self.read_u16(avail + 2);
        while self.next_avail != published {
            let head = self.read_u16(avail + 4 + 2 * u64::from(self.next_avail % num));
            self.next_avail = self.next_avail.wrapping_add(1);
            let mut chain = [(0_u64, 0_u32, 0_u16); 3];
            let mut count = 0;
            let mut index = head;
            loop {
                assert!(index < num, "descriptor {index} beyond the queue");
                assert!(count < 3, "chain at {head} longer than three descriptors");
                let at = desc + 16 * u64::from(index);
                let flags = self.read_u16(at + 12);
                chain[count] = (self.read_u64(at), self.read_u32(at + 8), flags);
                count += 1;
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                index = self.read_u16(at + 14);
            }
            let (header, status_desc) = (chain[0], chain[count - 1]);
            assert!(count >= 2, "chain at {head} has no status");
            assert_eq!(
                (header.1, header.2 & DESC_F_WRITE),
                (16, 0),
                "header descriptor"
            );
            assert_eq!(
                (status_desc.1, status_desc.2 & DESC_F_WRITE),
                (1, DESC_F_WRITE),
                "status descriptor"
            );
            let request_type = self.read_u32(header.0);
            let sector = self.read_u64(header.0 + 8);
            let data = (count == 3).then(|| {
                let data = chain[1];
                let device_writes = data.2 & DESC_F_WRITE != 0;
                assert_eq!(
                    device_writes,
                    request_type == T_IN,
                    "data direction of type {request_type}"
                );
                assert_eq!(data.0, header.0 + 16, "data right after the header");
                (data.0, data.1)
            });
            let data_len = data.map_or(0, |(_, len)| u64::from(len));
            assert_eq!(
                status_desc.0,
                header.0 + 16 + data_len,
                "status right after the data"
            );
            self.pending.push(Pending {
                head,
                request_type,
                sector,
                data,
                status_addr: status_desc.0,
            });
        }
    }

    fn execute(&mut self, pending: Pending) {
        let injected = self
            .errors
            .iter()
            .find(|(sector, _)| *sector == pending.sector)
            .map(|&(_, status)| status);
        let (status, written) = match (injected, pending.request_type, pending.data) {
            (Some(status), _, _) => (status, 1),
            (None, T_IN, Some((addr, len))) => match self.disk_range(pending.sector, len) {
                Some(range) => {
                    self.write(addr, &self.disk[range]);
                    let at = self.host(addr, len as usize).expose_provenance();
                    self.reads_at.push((at, len));
                    (0, len + 1)
                }
                None => (S_IOERR, 1),
            },
            (None, T_OUT, Some((addr, len))) => match self.disk_range(pending.sector, len) {
                Some(range) if self.config.features & feature::BLK_RO == 0 => {
                    let mut data = std::mem::take(&mut self.disk);
                    self.read(addr, &mut data[range]);
                    self.disk = data;
                    (0, 1)
                }
                _ => (S_IOERR, 1),
            },
            (None, T_FLUSH, None) => {
                self.flushes += 1;
                (0, 1)
            }
            _ => (S_UNSUPP, 1),
        };
        self.write(pending.status_addr, &[status]);
        self.push_used(u32::from(pending.head), written);
    }

    /// Takes every newly available chain and, with `auto_complete`,
    /// completes it: what the device does when notified, or when it looks
    /// at its queue unprompted.
    fn look(&mut self) {
        self.take_available();
        if self.config.auto_complete {
            while !self.pending.is_empty() {
                let pending = self.pending.remove(0);
                self.execute(pending);
            }
        }
    }

    fn disk_range(&self, sector: u64, len: u32) -> Option<std::ops::Range<usize>> {
        let start = sector.checked_mul(512)? as usize;
        let end = start.checked_add(len as usize)?;
        (end <= self.disk.len()).then_some(start..end)
    }

    fn push_used(&mut self, id: u32, len: u32) {
        let (_, _, used) = self.rings();
        let entry = used + 4 + 8 * u64::from(self.used_idx % self.queue_num as u16);
        let mut bytes = [0; 8];
        bytes[..4].copy_from_slice(&id.to_le_bytes());
        bytes[4..].copy_from_slice(&len.to_le_bytes());
        self.write(entry, &bytes);
        fence(Ordering::Release);
        self.used_idx = self.used_idx.wrapping_add(1);
        self.write(used + 2, &self.used_idx.to_le_bytes());
        // As QEMU does without VIRTIO_F_EVENT_IDX: no interrupt while the
        // driver's available ring says VIRTQ_AVAIL_F_NO_INTERRUPT.
        let (_, avail, _) = self.rings();
        if self.read_u16(avail) & AVAIL_F_NO_INTERRUPT == 0 {
            self.interrupt_status |= 1;
        }
    }
}

impl Transport for Sim {
    type Interrupt = Sim;

    fn read(&self, register: ReadRegister) -> u32 {
        let s = self.0.borrow();
        match register {
            ReadRegister::MagicValue => s.config.magic,
            ReadRegister::Version => s.config.version,
            ReadRegister::DeviceId => s.config.device_id,
            ReadRegister::DeviceFeatures => match s.device_features_sel {
                0 => s.config.features as u32,
                1 => (s.config.features >> 32) as u32,
                _ => 0,
            },
            ReadRegister::QueueNumMax => {
                if s.queue_sel == 0 {
                    s.config.queue_num_max
                } else {
                    0
                }
            }
            ReadRegister::QueuePfn => s.queue_pfn,
            ReadRegister::QueueReady => s.queue_ready,
            ReadRegister::InterruptStatus => s.interrupt_status,
            ReadRegister::Status => s.status,
            ReadRegister::ConfigGeneration => {
                assert_eq!(
                    s.config.version, 2,
                    "ConfigGeneration read on a legacy device"
                );
                s.config_generation
            }
        }
    }

    fn write(&mut self, register: WriteRegister, value: u32) {
        let mut guard = self.0.borrow_mut();
        let s = &mut *guard;
        let legacy = s.config.version == 1;
        let ordered = core::mem::take(&mut s.notify_ordered);
        match register {
            WriteRegister::DeviceFeaturesSel => s.device_features_sel = value,
            WriteRegister::DriverFeaturesSel => s.driver_features_sel = value,
            WriteRegister::DriverFeatures => {
                let shift = 32 * u64::from(s.driver_features_sel);
                s.driver_features =
                    s.driver_features & !(0xffff_ffff << shift) | u64::from(value) << shift;
            }
            WriteRegister::GuestPageSize => {
                assert!(legacy, "GuestPageSize on a modern device");
                s.guest_page_size = value;
            }
            WriteRegister::QueueSel => s.queue_sel = value,
            WriteRegister::QueueNum => {
                assert!(value <= s.config.queue_num_max && value.is_power_of_two());
                s.queue_num = value;
            }
            WriteRegister::QueueAlign => {
                assert!(legacy, "QueueAlign on a modern device");
                s.queue_align = value;
            }
            WriteRegister::QueuePfn => {
                assert!(legacy, "QueuePFN on a modern device");
                s.queue_pfn = value;
            }
            WriteRegister::QueueReady => {
                assert!(!legacy, "QueueReady on a legacy device");
                s.queue_ready = value;
            }
            WriteRegister::QueueNotify => {
                assert_eq!(value, 0, "notify of a queue other than 0");
                assert!(s.live(), "notify before the device is live");
                assert!(
                    ordered,
                    "QueueNotify without a DmaWrite barrier after the ring was written"
                );
                s.notifications += 1;
                s.look();
            }
            WriteRegister::InterruptAck => s.interrupt_status &= !value,
            WriteRegister::Status => {
                s.status_writes.push(value);
                if value == 0 {
                    if !(s.config.stuck_reset && s.status & status::DRIVER_OK != 0) {
                        s.reset();
                    }
                    return;
                }
                let mut value = value;
                let newly = value & !s.status;
                if newly & status::FEATURES_OK != 0 {
                    assert!(!legacy, "FEATURES_OK on a legacy device");
                    if s.config.reject_features || s.driver_features & !s.config.features != 0 {
                        value &= !status::FEATURES_OK;
                    }
                }
                if newly & status::DRIVER_OK != 0 && s.config.fail_on_driver_ok {
                    value |= status::DEVICE_NEEDS_RESET;
                }
                s.status = value | s.status & status::DEVICE_NEEDS_RESET;
            }
            WriteRegister::QueueDescLow => s.desc = s.desc & !0xffff_ffff | u64::from(value),
            WriteRegister::QueueDescHigh => s.desc = s.desc & 0xffff_ffff | u64::from(value) << 32,
            WriteRegister::QueueDriverLow => s.driver = s.driver & !0xffff_ffff | u64::from(value),
            WriteRegister::QueueDriverHigh => {
                s.driver = s.driver & 0xffff_ffff | u64::from(value) << 32
            }
            WriteRegister::QueueDeviceLow => s.device = s.device & !0xffff_ffff | u64::from(value),
            WriteRegister::QueueDeviceHigh => {
                s.device = s.device & 0xffff_ffff | u64::from(value) << 32
            }
        }
    }

    fn read_config(&self, word: ConfigWord) -> u32 {
        let s = self.0.borrow();
        match word {
            ConfigWord::CapacityLow => s.config.capacity as u32,
            ConfigWord::CapacityHigh => (s.config.capacity >> 32) as u32,
            ConfigWord::SizeMax => s.config.size_max,
            ConfigWord::BlkSize => s.config.blk_size,
        }
    }

    fn barrier(&self, barrier: Barrier) {
        self.with(|s| match barrier {
            Barrier::DmaWrite => {
                s.write_barriers += 1;
                s.notify_ordered = true;
            }
            Barrier::DmaRead => s.read_barriers += 1,
            // Orders the driver's writes before its later writes too.
            Barrier::DmaFull => {
                s.full_barriers += 1;
                s.notify_ordered = true;
            }
        });
    }

    fn interrupt_registers(&self) -> Sim {
        self.clone()
    }
}

impl InterruptRegisters for Sim {
    fn acknowledge(&self) -> u32 {
        self.with(|s| core::mem::take(&mut s.interrupt_status))
    }
}
