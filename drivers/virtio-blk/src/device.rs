//! The block device: setup, submission, completion (interrupt or polling),
//! timeouts, the blocking helpers and shutdown.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Poll;

use tidepool_dma::{
    CoherentBuffer, CpuBuffer, DmaAddr, DmaDevice, DmaDirection, DmaEnv, DmaError, DmaMapping,
    PoolBuffer, PoolError, SyncPoint,
};
use tidepool_mm::{PAGE_SIZE, VirtAddr};

use crate::error::{BlkError, DeviceFault, InitError};
use crate::queue::{
    Buffer, PushError, QUEUE_SIZE_LIMIT, RING_ALIGN, RingAccess, RingLayout, SplitQueue, UsedError,
};
use crate::request::{
    Completion, Completions, DESCRIPTORS_PER_REQUEST, Deadline, DeviceStatus, HEADER_LEN,
    MAX_IN_FLIGHT, MAX_REQUEST_BYTES, Op, Request, SECTOR_SIZE, STATUS_UNWRITTEN, Token,
};
use crate::transport::{
    self, BLOCK_DEVICE_ID, Barrier, ConfigWord, FeatureSet, InterruptRegisters, InterruptStatus,
    InterruptValue, LEGACY_PAGE_SIZE, MAGIC, ReadRegister, Status, Transport, TransportVersion,
    WriteRegister, feature,
};
use tidepool_block::SharedMemory;
use tidepool_block::{BlkStats, BlockDriver, DiskLimits, Notice, StatsLine};

/// Bytes of one slot's staging buffer: header, the largest data and the
/// status, rounded up to whole pages so that no two slots share a cache line
/// (or a bounce page).
const SLOT_STRIDE: usize =
    (HEADER_LEN + MAX_REQUEST_BYTES as usize + 1).next_multiple_of(PAGE_SIZE as usize);

/// Largest `blk_size` the driver takes (a request's data is whole blocks).
const MAX_BLOCK_SIZE: u32 = MAX_REQUEST_BYTES;

/// Choices the kernel makes per device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Options {
    /// Requests in flight at most (request slots). For a device without a
    /// pool of its own each slot holds a staging buffer of the largest
    /// request (260 KiB of heap), allocated at setup (halved, down to one
    /// slot, while the heap cannot give them all); a pool device's slot
    /// holds a region of its pool instead, allocated at setup too (as many
    /// slots as the pool holds). Capped at [`MAX_IN_FLIGHT`] and at a third
    /// of the queue (a request takes three descriptors).
    pub in_flight: usize,
}

impl Default for Options {
    /// 16 requests in flight (4160 KiB of staging buffers).
    fn default() -> Self {
        Self { in_flight: 16 }
    }
}

/// What the configuration space and the negotiated features say.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Geometry {
    /// Sectors.
    capacity: u64,
    /// Bytes per logical block (512 unless `VIRTIO_BLK_F_BLK_SIZE`).
    block_size: u32,
    /// Bytes per request at most.
    max_request: u32,
    read_only: bool,
    flush: bool,
}

/// Why a request that came back did not succeed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Failure<'a> {
    /// The device's status.
    Status(DeviceStatus),
    /// The DMA layer refused the unmap.
    Dma(DmaError<'a>),
    /// Its deadline had passed.
    Expired,
}

enum SlotState<'a> {
    Free,
    /// The device holds the request.
    InFlight {
        mapping: DmaMapping<'a>,
        request: Completion,
        deadline: Deadline,
        /// The deadline passed (counted and reported once).
        expired: bool,
        /// Finished as a timeout: the token is dead, the slot comes back
        /// when the device returns the request.
        abandoned: bool,
    },
    /// The device returned it; the kernel has not finished it yet.
    Done {
        request: Completion,
        outcome: Result<(), Failure<'a>>,
        /// A pool device's request region, back from the device, until
        /// `finish` has lent a read's data from it.
        region: Option<PoolBuffer<'a>>,
    },
}

struct Slot<'a> {
    /// Bumped at every submission, so a token outlives its request only as
    /// an unknown token.
    generation: u32,
    state: SlotState<'a>,
    /// Its staging region has been zeroed (on first use, not at setup:
    /// 32 slots are 8 MiB of heap to clear).
    staged: bool,
    /// A pool device's request region, allocated in its pool at setup and
    /// kept for the device's life: here while the slot is free (mapped
    /// while it is in flight, in `Done` until finished). A slot of a pool
    /// device without one (its unmap was refused) takes no more requests.
    region: Option<PoolBuffer<'a>>,
}

/// What the device reaches outside the DMA pools, and the one way to stop
/// it: its registers (the transport) and the staging buffers (heap; none
/// for a pool device, whose requests live in its pool).
///
/// The staging buffers go back to the heap only after a reset completed:
/// until then the device may still write them. Dropping the hold resets the
/// device unless that was done; if a reset did not complete, the buffers are
/// leaked on purpose, and the console says so. The ring and the bounce
/// buffers need no such care: they are pool memory, which stays allocated
/// until the DMA layer is told to free it.
struct Hold<'a, T: Transport> {
    device: &'a str,
    transport: T,
    version: TransportVersion,
    staging: Option<SharedMemory>,
    state: HoldState,
}

/// Whether the device has been stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HoldState {
    /// Set up; it may use its memory.
    Running,
    /// A reset completed: it uses no memory.
    Stopped,
    /// A reset did not complete: it may still use its memory.
    Unresponsive,
}

impl<T: Transport> Hold<'_, T> {
    /// Resets the device and returns whether the reset completed; marks it
    /// `FAILED` when it did not.
    fn reset(&mut self) -> bool {
        let stopped = transport::reset(&mut self.transport, self.version);
        if stopped {
            self.state = HoldState::Stopped;
        } else {
            self.state = HoldState::Unresponsive;
            transport::add_status(&mut self.transport, Status::FAILED::SET.value);
        }
        stopped
    }
}

impl<T: Transport> Drop for Hold<'_, T> {
    fn drop(&mut self) {
        if self.state == HoldState::Running {
            log::warn!(
                "blk: {} dropped without shutdown: reset; its ring and bounce buffers stay allocated",
                self.device
            );
            self.reset();
        }
        if self.state == HoldState::Unresponsive
            && let Some(staging) = &mut self.staging
        {
            let bytes = staging.leak();
            log::error!(
                "blk: {} reset incomplete: staging buffers leaked bytes={bytes} (the device may still write them)",
                self.device
            );
        }
    }
}

/// A virtio-mmio block device, all of whose DMA goes through its
/// [`DmaDevice`].
///
/// Dropping it without [`Self::shutdown`] resets the device first; its
/// staging buffers are freed only if that reset completes.
pub struct BlockDevice<'a, T: Transport> {
    hold: Hold<'a, T>,
    dma: DmaDevice<'a>,
    features: u64,
    geometry: Geometry,
    queue: SplitQueue,
    ring: CoherentBuffer<'a>,
    slots: Vec<Slot<'a>>,
    /// Where the interrupt handler notes the causes it acknowledged, once
    /// [`Self::interrupt_handler`] handed it the interrupt registers.
    interrupts: Option<&'a AtomicU32>,
    /// The slot of the chain headed by each descriptor in flight.
    head_slot: [u16; QUEUE_SIZE_LIMIT as usize],
    stats: BlkStats,
    fault: Option<DeviceFault>,
}

/// What setup builds before the device is told `DRIVER_OK`.
struct Parts<'a> {
    features: u64,
    geometry: Geometry,
    queue: SplitQueue,
    ring: CoherentBuffer<'a>,
    staging: Option<SharedMemory>,
    /// A pool device's request regions, one per slot.
    regions: Vec<PoolBuffer<'a>>,
    slots: usize,
}

impl<'a, T: Transport> BlockDevice<'a, T> {
    /// Sets up the block device behind `transport`, whose DMA context is
    /// `dma`: checks the transport, resets the device, negotiates features,
    /// reads the configuration, allocates the virtqueue (coherent, from
    /// `dma`'s pool) and, for a device without a pool of its own, the
    /// staging buffers (heap), programs the queue and sets `DRIVER_OK`.
    ///
    /// This is setup: it allocates. On error the device is reset and marked
    /// `FAILED` (once the handshake began) and nothing stays allocated, but
    /// for the ring of a device whose reset does not complete (said on the
    /// console: it may still write it).
    ///
    /// Safe: the ring is reached at the address the DMA layer gives for the
    /// coherent allocation, which [`PoolSet::add`](tidepool_dma::PoolSet::add)'s
    /// contract makes mapped, read-write normal memory owned by that
    /// allocation alone.
    pub fn new(
        mut transport: T,
        mut dma: DmaDevice<'a>,
        env: &mut DmaEnv<'_, 'a>,
        options: Options,
    ) -> Result<Self, InitError<'a>> {
        let device = dma.name();
        let magic = transport.read(ReadRegister::MagicValue);
        if magic != MAGIC {
            return Err(InitError::BadMagic {
                device,
                found: magic,
            });
        }
        let found = transport.read(ReadRegister::Version);
        let version = TransportVersion::from_register(found)
            .ok_or(InitError::UnsupportedVersion { device, found })?;
        match transport.read(ReadRegister::DeviceId) {
            0 => return Err(InitError::NoDevice { device }),
            BLOCK_DEVICE_ID => {}
            device_id => return Err(InitError::NotBlock { device, device_id }),
        }
        if options.in_flight == 0 {
            return Err(InitError::NoSlots { device });
        }
        match Self::bring_up(&mut transport, &mut dma, env, version, options) {
            Ok(parts) => Ok(Self {
                hold: Hold {
                    device,
                    transport,
                    version,
                    staging: parts.staging,
                    state: HoldState::Running,
                },
                dma,
                features: parts.features,
                geometry: parts.geometry,
                queue: parts.queue,
                ring: parts.ring,
                slots: {
                    let mut regions = parts.regions.into_iter();
                    (0..parts.slots)
                        .map(|_| Slot {
                            generation: 0,
                            state: SlotState::Free,
                            staged: false,
                            region: regions.next(),
                        })
                        .collect()
                },
                interrupts: None,
                head_slot: [0; QUEUE_SIZE_LIMIT as usize],
                stats: BlkStats::default(),
                fault: None,
            }),
            Err((error, ring)) => {
                // Stop the device before its ring goes back to the pool; one
                // that does not stop keeps it (it may still write it).
                let stopped = transport::reset(&mut transport, version);
                transport::add_status(&mut transport, Status::FAILED::SET.value);
                match ring {
                    Some(ring) if stopped => {
                        let freed = dma.free_coherent(env, ring);
                        // The buffer was allocated by this device just before and
                        // is live: the DMA layer cannot refuse to free it.
                        debug_assert!(freed.is_ok(), "{freed:?}");
                    }
                    Some(_) => log::error!(
                        "blk: {device} reset incomplete: its ring stays allocated (the device may still write it)"
                    ),
                    None => {}
                }
                Err(error)
            }
        }
    }

    /// The handshake up to `DRIVER_OK`. An error comes with the ring if it
    /// was already allocated, for the caller to free (a large error, once
    /// per device at setup).
    #[allow(clippy::result_large_err)]
    fn bring_up(
        transport: &mut T,
        dma: &mut DmaDevice<'a>,
        env: &mut DmaEnv<'_, 'a>,
        version: TransportVersion,
        options: Options,
    ) -> Result<Parts<'a>, (InitError<'a>, Option<CoherentBuffer<'a>>)> {
        let device = dma.name();
        let (features, geometry) =
            negotiate(transport, version, device).map_err(|error| (error, None))?;
        let size = queue_size(transport, version, device).map_err(|error| (error, None))?;
        let slots = options
            .in_flight
            .min(MAX_IN_FLIGHT)
            .min(usize::from(size) / DESCRIPTORS_PER_REQUEST);
        // A pool device builds each request in its pool, in its slot's
        // region (allocated below): no staging in linear RAM, and no copy
        // between the two.
        // A heap too small for every slot's staging gets half as many
        // slots, down to one: fewer requests in flight rather than no disk.
        let mut slots = slots;
        let staging = match dma.private_pool() {
            Some(_) => None,
            None => loop {
                let bytes = slots * SLOT_STRIDE;
                // Zeroed a slot at a time, at its first request.
                match SharedMemory::allocate_unzeroed(bytes, PAGE_SIZE as usize) {
                    Some(memory) => break Some(memory),
                    None if slots > 1 => slots /= 2,
                    None => return Err((InitError::OutOfMemory { device, bytes }, None)),
                }
            },
        };
        let layout = RingLayout::new(size);
        let ring = dma
            .alloc_coherent(env, layout.bytes as u64, RING_ALIGN as u64)
            .map_err(|error| (InitError::Dma { error }, None))?;
        // SAFETY: `ring.virt()` is where the CPU reaches the coherent
        // allocation just made for this device, of at least `layout.bytes`
        // bytes. Its pool was vouched for to `PoolSet::add` (the only way a
        // pool, and so a `CoherentBuffer`, comes to be): its window is
        // mapped read-write normal memory (so not at 0, where no memory is
        // valid) that the pool gave to this allocation only, which the queue
        // owns until `shutdown` frees it. `alloc_coherent` zeroed it.
        #[allow(unsafe_code)]
        let memory = unsafe { SharedMemory::window(ring.virt(), layout.bytes) };
        let queue = SplitQueue::new(memory, ring.dma_addr(), layout);
        // The allocation's zeroing is the CPU's write of the whole ring,
        // which the device reads from now on (and the CPU reads back where
        // the device has not written yet: the used ring).
        if let Err(error) =
            dma.sync_coherent(env, &ring, 0, layout.bytes as u64, SyncPoint::ForDevice)
        {
            return Err((InitError::Dma { error }, Some(ring)));
        }
        if let Err(error) = program_queue(transport, version, &queue, device) {
            return Err((error, Some(ring)));
        }
        transport::add_status(transport, Status::DRIVER_OK::SET.value);
        let status = transport::status(transport);
        if status.is_set(Status::FAILED) || status.is_set(Status::DEVICE_NEEDS_RESET) {
            let error = InitError::DeviceFailed {
                device,
                status: status.get(),
            };
            return Err((error, Some(ring)));
        }
        // A pool device's request regions: one per slot, each for the
        // largest request, allocated once here (the device touches none
        // before a request is published) and kept, so that no request
        // allocates, or waits for pool room; as many slots as the pool
        // holds. Taking the pool whole is right for a device's own pool
        // (`private_pool`), which nothing else allocates from.
        let regions = match dma.private_pool() {
            Some(_) => {
                let bytes = (HEADER_LEN + geometry.max_request as usize + 1)
                    .next_multiple_of(PAGE_SIZE as usize);
                match alloc_regions(dma, env, slots, bytes as u64) {
                    Ok(regions) => regions,
                    Err(error) => return Err((InitError::Dma { error }, Some(ring))),
                }
            }
            None => Vec::new(),
        };
        if !regions.is_empty() {
            slots = regions.len();
        }
        Ok(Parts {
            features,
            geometry,
            queue,
            ring,
            staging,
            regions,
            slots,
        })
    }

    /// The device's name (its DMA context's, the device-tree path).
    pub fn name(&self) -> &'a str {
        self.dma.name()
    }

    /// The transport's interface version.
    pub fn version(&self) -> TransportVersion {
        self.hold.version
    }

    /// The negotiated features.
    pub fn features(&self) -> FeatureSet {
        FeatureSet(self.features)
    }

    /// Capacity in 512-byte sectors (read again when the device signals a
    /// configuration change).
    pub fn capacity(&self) -> u64 {
        self.geometry.capacity
    }

    /// Logical block size in bytes: every transfer is whole blocks.
    pub fn block_size(&self) -> u32 {
        self.geometry.block_size
    }

    /// The largest single request in bytes.
    pub fn max_request_bytes(&self) -> u32 {
        self.geometry.max_request
    }

    /// Whether the device is read-only.
    pub fn is_read_only(&self) -> bool {
        self.geometry.read_only
    }

    /// Whether the device takes flush requests (it has a write cache).
    pub fn has_flush(&self) -> bool {
        self.geometry.flush
    }

    /// Entries of the virtqueue.
    pub fn queue_size(&self) -> u16 {
        self.queue.size()
    }

    /// Request slots (requests in flight at most).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Requests the device holds, timed-out ones included.
    pub fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| matches!(slot.state, SlotState::InFlight { .. }))
            .count()
    }

    /// The fault that stopped the device, if any.
    pub fn fault(&self) -> Option<DeviceFault> {
        self.fault
    }

    /// Its counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// Its counters as a console line.
    pub fn stats_line(&self) -> StatsLine<'_> {
        StatsLine::new(self.name(), &self.stats)
    }

    /// What was set up, as a console line.
    pub fn info_line(&self) -> InfoLine<'_> {
        InfoLine {
            device: self.name(),
            version: self.hold.version,
            geometry: self.geometry,
            queue_size: self.queue.size(),
            slots: self.slots.len(),
            features: FeatureSet(self.features),
        }
    }

    /// Asks the device to interrupt when it completes requests (the
    /// default) or not, for a caller that polls ([`Self::poll`]). A hint:
    /// a device may interrupt anyway.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.queue.suppress_interrupts(!enabled);
    }

    /// Its DMA context (for its counters).
    pub fn dma(&self) -> &DmaDevice<'a> {
        &self.dma
    }

    /// Submits a request due by `deadline`: publishes it in the available
    /// ring, without notifying the device ([`Self::kick`] does, once per
    /// batch).
    ///
    /// Refused without touching the device: a write to a read-only device,
    /// sectors beyond the capacity, transfers that are empty, not whole
    /// blocks or larger than [`Self::max_request_bytes`], a flush to a device
    /// without one, a full queue, a broken device. Otherwise the request's
    /// region is mapped once (the one `ForDevice` sync) and published.
    pub fn submit(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Token, BlkError<'a>> {
        let device = self.name();
        if let Some(fault) = self.fault {
            return Err(BlkError::Broken { device, fault });
        }
        let (completion, data) = self.check(request)?;
        let Completion { op, lba, bytes } = completion;
        // Slots are at most a third of the queue, so a free slot always finds
        // its descriptors (the queue's refusal is still handled below).
        // A pool device's slot takes a request only with its region.
        let staged = self.hold.staging.is_some();
        let Some(index) = self.slots.iter().position(|slot| {
            matches!(slot.state, SlotState::Free) && (staged || slot.region.is_some())
        }) else {
            return Err(BlkError::QueueFull {
                device,
                in_flight: self.in_flight(),
            });
        };
        let bytes_len = bytes as usize;
        let region_len = HEADER_LEN + bytes_len + 1;
        // Only the header, a write's data and the status byte are written:
        // a read's data area is the device's to fill.
        let fill = |memory: &mut SharedMemory, base: usize| {
            memory.write_u32(base, crate::request::request_type(op));
            memory.write_u32(base + 4, 0);
            memory.write_u64(base + 8, lba);
            if let Some(data) = data {
                memory.write_bytes(base + HEADER_LEN, data);
            }
            memory.write_u8(base + HEADER_LEN + bytes_len, STATUS_UNWRITTEN);
        };
        let dma_error = |error| BlkError::Dma { op, lba, error };
        let mapping = match &mut self.hold.staging {
            Some(staging) => {
                let base = index * SLOT_STRIDE;
                let slot = &mut self.slots[index];
                if !slot.staged {
                    staging.zero(base, SLOT_STRIDE);
                    slot.staged = true;
                }
                fill(staging, base);
                // SAFETY: the bytes are this free slot's part of the staging
                // allocation, mapped linear RAM that only this device (the CPU
                // side while the slot is free, the DMA layer and the device
                // while it is mapped) touches; the slot is marked in flight
                // until its one mapping is unmapped, and the allocation is
                // freed only once the device is reset (or never: see
                // `shutdown`).
                #[allow(unsafe_code)]
                let cpu = unsafe {
                    CpuBuffer::new(VirtAddr(staging.virt().0 + base as u64), region_len as u64)
                };
                self.dma
                    .map(env, cpu, DmaDirection::Bidirectional)
                    .map_err(dma_error)?
            }
            None => {
                let slot = &mut self.slots[index];
                let Some(region) = slot.region.take() else {
                    // Chosen above for having one.
                    return Err(BlkError::QueueFull {
                        device,
                        in_flight: self.in_flight(),
                    });
                };
                fill(&mut pool_memory(&region), 0);
                // Only the request's bytes are mapped, so only they are
                // synced (a 4 KiB read's region is two pages, not 65).
                match self.dma.map_in_pool(
                    env,
                    region,
                    region_len as u64,
                    DmaDirection::Bidirectional,
                ) {
                    Ok(mapping) => mapping,
                    Err((error, region)) => {
                        self.slots[index].region = Some(region);
                        return Err(dma_error(error));
                    }
                }
            }
        };
        let region = mapping.dma_addr().0;
        let header = Buffer {
            addr: mapping.dma_addr(),
            len: HEADER_LEN as u32,
            device_writes: false,
        };
        let status = Buffer {
            addr: DmaAddr(region + (HEADER_LEN + bytes_len) as u64),
            len: 1,
            device_writes: true,
        };
        let data = Buffer {
            addr: DmaAddr(region + HEADER_LEN as u64),
            len: bytes,
            device_writes: op == Op::Read,
        };
        let chain_storage = [header, data, status];
        let chain: &[Buffer] = if op == Op::Flush {
            &[header, status]
        } else {
            &chain_storage
        };
        let mut ring = RingSync {
            transport: &self.hold.transport,
            dma: &mut self.dma,
            env,
            ring: &self.ring,
        };
        let refused = match self.queue.push(chain, &mut ring) {
            Ok(head) => {
                self.head_slot[usize::from(head)] = index as u16;
                None
            }
            Err(PushError::Full(_)) => Some(BlkError::QueueFull {
                device,
                in_flight: self.in_flight(),
            }),
            Err(PushError::Sync(error)) => Some(BlkError::Dma { op, lba, error }),
        };
        if let Some(refused) = refused {
            if staged {
                self.dma.unmap(env, mapping).map_err(dma_error)?;
            } else {
                self.slots[index].region =
                    Some(self.dma.unmap_in_pool(env, mapping).map_err(dma_error)?);
            }
            return Err(refused);
        }
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = SlotState::InFlight {
            mapping,
            request: completion,
            deadline,
            expired: false,
            abandoned: false,
        };
        Ok(Token::new(index as u16, slot.generation))
    }

    /// Notifies the device of the requests [`Self::submit`] published since
    /// the last kick: one `QueueNotify` write for the whole batch, none if
    /// nothing was published or the device asked not to be notified
    /// (`VIRTQ_USED_F_NO_NOTIFY`: it is looking at the queue anyway). The
    /// notification is where a device learns of new requests (QEMU's model
    /// takes the queue inside that MMIO write: 60-130 us of TCG time each,
    /// measured), so a caller kicks before it waits for any request it
    /// submitted.
    pub fn kick(&mut self, env: &mut DmaEnv<'_, 'a>) {
        let mut ring = RingSync {
            transport: &self.hold.transport,
            dma: &mut self.dma,
            env,
            ring: &self.ring,
        };
        // The available index reached the device before it is told to look
        // at it (§2.7.13.4): `needs_notify`'s `DmaFull` barrier orders it
        // before this write too.
        if self.queue.needs_notify(&mut ring) {
            self.hold.transport.write(WriteRegister::QueueNotify, 0);
            self.stats.notifies += 1;
        }
    }

    /// Requests the device holds past their deadline.
    fn timed_out(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| matches!(slot.state, SlotState::InFlight { expired: true, .. }))
            .count()
    }

    /// What `request` is, or why it is refused before the device sees it.
    fn check<'d>(
        &self,
        request: Request<'d>,
    ) -> Result<(Completion, Option<&'d [u8]>), BlkError<'a>> {
        let device = self.name();
        let (op, lba, bytes, data) = match request {
            Request::Flush => {
                if !self.geometry.flush {
                    return Err(BlkError::FlushNotSupported { device });
                }
                return Ok((
                    Completion {
                        op: Op::Flush,
                        lba: 0,
                        bytes: 0,
                    },
                    None,
                ));
            }
            Request::Read { lba, sectors } => (
                Op::Read,
                lba,
                u64::from(sectors) * u64::from(SECTOR_SIZE),
                None,
            ),
            Request::Write { lba, data } => (Op::Write, lba, data.len() as u64, Some(data)),
        };
        self.check_transfer(op, lba, bytes, self.geometry.max_request.into())?;
        // `check_transfer` refused more than `max_request`, a `u32`.
        let bytes = bytes as u32;
        Ok((Completion { op, lba, bytes }, data))
    }

    /// The checks of a read or write of `bytes` bytes from `lba`, at most
    /// `max_bytes` of them: a write needs a writable device, and the bytes
    /// must fit the device (whole blocks of its block size, starting on
    /// one).
    fn check_transfer(
        &self,
        op: Op,
        lba: u64,
        bytes: u64,
        max_bytes: u64,
    ) -> Result<(), BlkError<'a>> {
        let device = self.name();
        if op == Op::Write && self.geometry.read_only {
            return Err(BlkError::ReadOnly { device, lba });
        }
        let limits = DiskLimits {
            block_sectors: self.geometry.block_size / SECTOR_SIZE,
            max_bytes,
            capacity: self.geometry.capacity,
        };
        match limits.check(lba, bytes) {
            Ok(_) => Ok(()),
            Err(error) => Err(BlkError::Extent { device, op, error }),
        }
    }

    /// The interrupt registers, for the kernel's interrupt handler: from now
    /// on the handler acknowledges the device's interrupts
    /// ([`InterruptHandler::handle`]) and notes their causes in `pending`,
    /// and [`Self::handle_interrupt`] acts on what it noted instead of
    /// reading the registers. So the driver's state is never touched in
    /// interrupt context, and no second transport aliases the registers.
    /// Handed out once: `None` after.
    pub fn interrupt_handler(
        &mut self,
        pending: &'a AtomicU32,
    ) -> Option<InterruptHandler<'a, T::Interrupt>> {
        if self.interrupts.is_some() {
            return None;
        }
        self.interrupts = Some(pending);
        Some(InterruptHandler {
            registers: self.hold.transport.interrupt_registers(),
            pending,
        })
    }

    /// Whether the [`InterruptHandler`] noted an interrupt that
    /// [`Self::handle_interrupt`] has not handled yet: what a waiter waits
    /// for.
    pub fn interrupt_noted(&self) -> bool {
        self.interrupts
            .is_some_and(|noted| noted.load(Ordering::Acquire) != 0)
    }

    /// Acts on the device's interrupt: takes what the device returned (one
    /// unmap per request: the `ForCpu` sync) and acts on a configuration
    /// change: the capacity is read again, and `DEVICE_NEEDS_RESET` fails
    /// the device (marked `FAILED`; its requests in flight fail, new ones
    /// are refused). Returns what the interrupt brought; nothing for an
    /// interrupt that was not this device's.
    ///
    /// The causes are those the [`InterruptHandler`] noted, once there is
    /// one; before, this reads and acknowledges `InterruptStatus` itself.
    pub fn handle_interrupt(&mut self, env: &mut DmaEnv<'_, 'a>) -> InterruptOutcome<'a> {
        let mut outcome = InterruptOutcome {
            completions: Completions::new(),
            capacity: None,
            fault: None,
        };
        let pending = InterruptValue::new(match self.interrupts {
            Some(noted) => noted.swap(0, Ordering::Acquire),
            None => self.acknowledge_interrupt(),
        });
        if pending.get() == 0 {
            return outcome;
        }
        let healthy = self.fault.is_none();
        if pending.is_set(InterruptStatus::CONFIG_CHANGE) {
            outcome.capacity = self.config_changed();
        }
        if pending.is_set(InterruptStatus::USED_BUFFER) {
            // The used ring is read after the interrupt's cause was.
            self.hold.transport.barrier(Barrier::DmaRead);
            self.harvest(env, &mut outcome.completions);
        }
        if healthy {
            outcome.fault = self.fault;
        }
        outcome
    }

    /// The polling path (before interrupts are wired, or instead of them):
    /// takes what the device returned, like [`Self::handle_interrupt`]
    /// without touching the interrupt registers.
    pub fn poll(&mut self, env: &mut DmaEnv<'_, 'a>) -> Completions {
        let mut completions = Completions::new();
        self.harvest(env, &mut completions);
        completions
    }

    /// Marks the requests whose deadline is at or before `now` as timed out
    /// and returns their tokens ([`Self::finish`] gives
    /// [`BlkError::Timeout`]). Their slots stay with the device until it
    /// returns them.
    pub fn expire(&mut self, now: u64) -> Completions {
        let mut completions = Completions::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let SlotState::InFlight {
                deadline, expired, ..
            } = &mut slot.state
                && !*expired
                && deadline.0 <= now
            {
                *expired = true;
                self.stats.timeouts += 1;
                completions.push(Token::new(index as u16, slot.generation));
            }
        }
        completions
    }

    /// The outcome of a request, once: `Pending` while the device holds it,
    /// its deadline has not passed and the device has not failed (then it
    /// is [`BlkError::Broken`]). A successful read's data is lent to
    /// `data`, in place in the request's region (the slot's staging buffer,
    /// or its pool region through the pool's window), which the device
    /// returned and [`Self::poll`]/[`Self::handle_interrupt`] unmapped (the
    /// `ForCpu` sync) before the token became ready; the borrow ends before
    /// the slot is free again. Nothing goes back to the DMA layer here (a
    /// pool region stays its slot's), so `_env` is unused; it is the
    /// [`BlockDriver::finish`] signature, whose other drivers need it.
    pub fn finish(
        &mut self,
        _env: &mut DmaEnv<'_, 'a>,
        token: Token,
        data: &mut dyn FnMut(&[u8]),
    ) -> Poll<Result<Completion, BlkError<'a>>> {
        let device = self.name();
        let unknown = Poll::Ready(Err(BlkError::UnknownToken { device, token }));
        let Some(slot) = self
            .slots
            .get_mut(usize::from(token.slot()))
            .filter(|slot| slot.generation == token.generation())
        else {
            return unknown;
        };
        let (request, outcome) = match &mut slot.state {
            SlotState::Free
            | SlotState::InFlight {
                abandoned: true, ..
            } => return unknown,
            SlotState::InFlight { expired: false, .. } if self.fault.is_none() => {
                return Poll::Pending;
            }
            SlotState::InFlight {
                request,
                abandoned,
                expired,
                ..
            } => {
                // Timed out, or the device failed: the request is over for
                // its owner, while its memory stays with the device.
                *abandoned = true;
                return Poll::Ready(Err(match self.fault {
                    Some(fault) if !*expired => BlkError::Broken { device, fault },
                    _ => BlkError::Timeout {
                        device,
                        op: request.op,
                        lba: request.lba,
                    },
                }));
            }
            SlotState::Done {
                request, outcome, ..
            } => (*request, *outcome),
        };
        let Completion { op, lba, bytes } = request;
        let lend = outcome.is_ok() && op == Op::Read;
        let data_at = HEADER_LEN..HEADER_LEN + bytes as usize;
        // The slot stays `Done` (so never mapped again) while its data is
        // lent: `&mut self` is held for the whole call.
        let SlotState::Done { region, .. } = &slot.state else {
            unreachable!("only a done slot gets here");
        };
        match (&self.hold.staging, region) {
            (Some(staging), _) if lend => {
                let base = usize::from(token.slot()) * SLOT_STRIDE;
                // SAFETY: the slot is done: the device returned its region
                // and it was unmapped (the `ForCpu` sync) before the slot
                // became `Done`; it is mapped again only by a submission
                // into a free slot, which cannot happen while `self` is
                // borrowed here, and the slice does not outlive this call.
                #[allow(unsafe_code)]
                data(unsafe { staging.bytes(base + data_at.start, data_at.len()) });
            }
            (None, Some(region)) if lend => {
                let memory = pool_memory(region);
                // SAFETY: as for the staging buffer: the region came back
                // from the device and was unmapped before the slot became
                // `Done`, and it goes back to the pool only below, after
                // the slice is gone.
                #[allow(unsafe_code)]
                data(unsafe { memory.bytes(data_at.start, data_at.len()) });
            }
            _ => {}
        }
        let SlotState::Done { region, .. } = core::mem::replace(&mut slot.state, SlotState::Free)
        else {
            unreachable!("only a done slot gets here");
        };
        // The region stays the slot's, for its next request.
        if region.is_some() {
            slot.region = region;
        }
        Poll::Ready(match outcome {
            Ok(()) => Ok(request),
            Err(Failure::Status(status)) => Err(BlkError::Device {
                device,
                op,
                lba,
                status,
            }),
            Err(Failure::Dma(error)) => Err(BlkError::Dma { op, lba, error }),
            Err(Failure::Expired) => Err(BlkError::Timeout { device, op, lba }),
        })
    }

    /// Takes every used entry: unmaps the request's region and records its
    /// outcome. A protocol fault stops the device.
    fn harvest(&mut self, env: &mut DmaEnv<'_, 'a>, completions: &mut Completions) {
        while self.fault.is_none() {
            let mut ring = RingSync {
                transport: &self.hold.transport,
                dma: &mut self.dma,
                env,
                ring: &self.ring,
            };
            let used = match self.queue.pop_used(&mut ring) {
                None => return,
                Some(Ok(used)) => used,
                Some(Err(UsedError::Fault(fault))) => {
                    self.fault = Some(fault);
                    return;
                }
                Some(Err(UsedError::Sync(error))) => {
                    log::error!("blk: {} used ring sync refused: {error}", self.name());
                    self.fault = Some(DeviceFault::RingSyncRefused);
                    return;
                }
            };
            let index = usize::from(self.head_slot[usize::from(used.head)]);
            let slot = &mut self.slots[index];
            let SlotState::InFlight {
                mapping,
                request,
                expired,
                abandoned,
                ..
            } = core::mem::replace(&mut slot.state, SlotState::Free)
            else {
                // The queue returns only chains in flight, each of which is a
                // slot in flight.
                unreachable!("used chain {} of a slot not in flight", used.head);
            };
            let status_at = HEADER_LEN + request.bytes as usize;
            let (outcome, region) = match &self.hold.staging {
                Some(staging) => match self.dma.unmap(env, mapping) {
                    Err(error) => (Err(Failure::Dma(error)), None),
                    Ok(()) => (Ok(staging.read_u8(index * SLOT_STRIDE + status_at)), None),
                },
                None => match self.dma.unmap_in_pool(env, mapping) {
                    Err(error) => (Err(Failure::Dma(error)), None),
                    Ok(region) => (Ok(pool_memory(&region).read_u8(status_at)), Some(region)),
                },
            };
            let outcome =
                outcome.and_then(|status| DeviceStatus::check(status).map_err(Failure::Status));
            let slot = &mut self.slots[index];
            if abandoned || expired {
                // Back with its slot: nothing of it is lent.
                if region.is_some() {
                    slot.region = region;
                }
                if expired && !abandoned {
                    slot.state = SlotState::Done {
                        request,
                        outcome: Err(Failure::Expired),
                        region: None,
                    };
                }
                continue;
            }
            match outcome {
                Ok(()) => self.stats.count_success(request),
                Err(_) => self.stats.errors += 1,
            }
            let slot = &mut self.slots[index];
            slot.state = SlotState::Done {
                request,
                outcome,
                region,
            };
            completions.push(Token::new(index as u16, slot.generation));
        }
    }

    /// Reads `InterruptStatus` and acknowledges it first: a completion after
    /// this raises a new interrupt rather than being lost.
    fn acknowledge_interrupt(&mut self) -> u32 {
        let pending = self.hold.transport.read(ReadRegister::InterruptStatus);
        if pending != 0 {
            self.hold
                .transport
                .write(WriteRegister::InterruptAck, pending);
        }
        pending
    }

    /// Acts on a configuration change: `DEVICE_NEEDS_RESET` fails the
    /// device; otherwise the capacity is read again, and returned when it
    /// changed.
    fn config_changed(&mut self) -> Option<CapacityChange<'a>> {
        if self.hold.version == TransportVersion::Modern
            && transport::status(&self.hold.transport).is_set(Status::DEVICE_NEEDS_RESET)
        {
            self.fault.get_or_insert(DeviceFault::NeedsReset);
            transport::add_status(&mut self.hold.transport, Status::FAILED::SET.value);
            return None;
        }
        let after = transport::read_capacity(&self.hold.transport, self.hold.version)?;
        let before = core::mem::replace(&mut self.geometry.capacity, after);
        (before != after).then_some(CapacityChange {
            device: self.name(),
            before,
            after,
        })
    }

    /// Reads `buffer.len()` bytes from sector `lba`, splitting into requests
    /// of at most [`Self::max_request_bytes`] kept in flight together, and
    /// polls until all are done. `clock` gives the time [`Deadline`]s count
    /// in; every request must complete within `timeout` of its submission.
    ///
    /// On an error, the requests already in flight are still waited for
    /// (or timed out) before the first error is returned; a device that
    /// breaks the protocol ends the wait at once ([`BlkError::Broken`]).
    pub fn read(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        lba: u64,
        buffer: &mut [u8],
        clock: &mut dyn FnMut() -> u64,
        timeout: u64,
    ) -> Result<(), BlkError<'a>> {
        self.transfer(env, lba, Transfer::Read(buffer), clock, timeout)
    }

    /// Writes `data` at sector `lba`, as [`Self::read`] reads.
    pub fn write(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        lba: u64,
        data: &[u8],
        clock: &mut dyn FnMut() -> u64,
        timeout: u64,
    ) -> Result<(), BlkError<'a>> {
        self.transfer(env, lba, Transfer::Write(data), clock, timeout)
    }

    /// Flushes the device's write cache and waits; without
    /// `VIRTIO_BLK_F_FLUSH` completed writes are already durable and this
    /// returns at once.
    pub fn flush(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        clock: &mut dyn FnMut() -> u64,
        timeout: u64,
    ) -> Result<(), BlkError<'a>> {
        if !self.geometry.flush {
            return Ok(());
        }
        let token = self.submit(env, Request::Flush, Deadline::after(clock(), timeout))?;
        self.kick(env);
        loop {
            self.poll(env);
            if let Some(fault) = self.fault {
                return Err(BlkError::Broken {
                    device: self.name(),
                    fault,
                });
            }
            self.expire(clock());
            if let Poll::Ready(result) = self.finish(env, token, &mut |_| {}) {
                return result.map(|_| ());
            }
        }
    }

    fn transfer(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        lba: u64,
        mut transfer: Transfer<'_>,
        clock: &mut dyn FnMut() -> u64,
        timeout: u64,
    ) -> Result<(), BlkError<'a>> {
        let (op, total) = match &transfer {
            Transfer::Read(buffer) => (Op::Read, buffer.len()),
            Transfer::Write(data) => (Op::Write, data.len()),
        };
        // Nothing is submitted for a transfer that cannot complete; it is
        // split into requests of at most `max_request` below.
        self.check_transfer(op, lba, total as u64, u64::MAX)?;
        let chunk = self.geometry.max_request as usize;
        let mut in_flight: [Option<(Token, usize, usize)>; MAX_IN_FLIGHT] = [None; MAX_IN_FLIGHT];
        let mut next = 0;
        let mut first_error = None;
        loop {
            while first_error.is_none() && next < total {
                let Some(entry) = in_flight.iter().position(Option::is_none) else {
                    break;
                };
                let len = chunk.min(total - next);
                let chunk_lba = lba + (next / SECTOR_SIZE as usize) as u64;
                let request = match &transfer {
                    Transfer::Read(_) => Request::Read {
                        lba: chunk_lba,
                        sectors: (len / SECTOR_SIZE as usize) as u32,
                    },
                    Transfer::Write(data) => Request::Write {
                        lba: chunk_lba,
                        data: &data[next..next + len],
                    },
                };
                match self.submit(env, request, Deadline::after(clock(), timeout)) {
                    Ok(token) => {
                        in_flight[entry] = Some((token, next, len));
                        next += len;
                    }
                    Err(BlkError::QueueFull { .. }) if in_flight.iter().any(Option::is_some) => {
                        break;
                    }
                    Err(error) => first_error = Some(error),
                }
            }
            // The batch just submitted, before waiting for any of it.
            self.kick(env);
            if in_flight.iter().all(Option::is_none) {
                return first_error.map_or(Ok(()), Err);
            }
            self.poll(env);
            if let Some(fault) = self.fault {
                // Nothing more comes back; shutdown reclaims what is in flight.
                return Err(first_error.unwrap_or(BlkError::Broken {
                    device: self.name(),
                    fault,
                }));
            }
            self.expire(clock());
            for entry in &mut in_flight {
                let Some((token, offset, len)) = *entry else {
                    continue;
                };
                let mut copy_out = |bytes: &[u8]| {
                    if let Transfer::Read(buffer) = &mut transfer {
                        buffer[offset..offset + len].copy_from_slice(bytes);
                    }
                };
                if let Poll::Ready(result) = self.finish(env, token, &mut copy_out) {
                    *entry = None;
                    if let Err(error) = result {
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
    }

    /// Resets the device (it stops all DMA), unmaps the regions of requests
    /// it still held, frees a pool device's request regions and the ring,
    /// and gives back the DMA context (whose
    /// pools are then as before [`Self::new`]). Staging buffers go back to
    /// the heap.
    ///
    /// If the reset does not complete, the device may still write all of
    /// that memory, so none of it is given back: the ring, the bounce
    /// buffers and a pool device's request regions stay allocated in their
    /// pools, the staging buffers are leaked
    /// (said on the console), and the error is
    /// [`DeviceFault::ResetIncomplete`].
    pub fn shutdown(self, env: &mut DmaEnv<'_, 'a>) -> Result<DmaDevice<'a>, BlkError<'a>> {
        let Self {
            mut hold,
            mut dma,
            ring,
            slots,
            ..
        } = self;
        let device = dma.name();
        if !hold.reset() {
            // Dropping the handles frees nothing; `hold` leaks the staging
            // buffers when it goes.
            return Err(BlkError::Broken {
                device,
                fault: DeviceFault::ResetIncomplete,
            });
        }
        let mut first_error = None;
        for slot in slots {
            // A pool device's region, while its slot is free or done.
            if let Some(region) = slot.region
                && let Err(error) = dma.free_in_pool(env, region)
            {
                first_error.get_or_insert(BlkError::Dma {
                    op: Op::Flush,
                    lba: 0,
                    error,
                });
            }
            let (request, result) = match slot.state {
                SlotState::InFlight {
                    mapping, request, ..
                } => (request, dma.unmap(env, mapping)),
                SlotState::Done {
                    request,
                    region: Some(region),
                    ..
                } => (request, dma.free_in_pool(env, region)),
                _ => continue,
            };
            if let Err(error) = result {
                first_error.get_or_insert(BlkError::Dma {
                    op: request.op,
                    lba: request.lba,
                    error,
                });
            }
        }
        if let Err(error) = dma.free_coherent(env, ring) {
            first_error.get_or_insert(BlkError::Dma {
                op: Op::Flush,
                lba: 0,
                error,
            });
        }
        first_error.map_or(Ok(dma), Err)
    }
}

/// A pool device's request regions: `wanted` of `bytes` each, or as many
/// as its pool holds (at least one). Nothing stays allocated on an error.
fn alloc_regions<'a>(
    dma: &mut DmaDevice<'a>,
    env: &mut DmaEnv<'_, 'a>,
    wanted: usize,
    bytes: u64,
) -> Result<Vec<PoolBuffer<'a>>, DmaError<'a>> {
    let mut regions = Vec::with_capacity(wanted);
    while regions.len() < wanted {
        match dma.alloc_in_pool(env, bytes) {
            Ok(region) => regions.push(region),
            Err(DmaError::Pool {
                error: PoolError::Exhausted { .. },
                ..
            }) if !regions.is_empty() => break,
            Err(error) => {
                for region in regions {
                    // Ours, just allocated: the pool takes it back.
                    let freed = dma.free_in_pool(env, region);
                    debug_assert!(freed.is_ok(), "{freed:?}");
                }
                return Err(error);
            }
        }
    }
    Ok(regions)
}

/// The CPU's access to a pool buffer, through its pool's window.
#[allow(unsafe_code)]
fn pool_memory(region: &PoolBuffer<'_>) -> SharedMemory {
    // SAFETY: the DMA layer gives the buffer's address in its pool's
    // window; the pool was vouched for to `PoolSet::add` (the only way a
    // pool, and so a `PoolBuffer`, comes to be), so that window is mapped
    // read-write normal memory (not at 0) for the kernel's lifetime. The pool
    // gave these pages to this buffer alone, and the caller holds it (not
    // mapped for the device) for as long as it uses the returned value.
    unsafe { SharedMemory::window(region.virt(), region.size() as usize) }
}

/// The queue's way to the transport's barriers and the DMA layer's sync
/// points of the ring, for one push or pop.
struct RingSync<'r, 'e, 'a, T> {
    transport: &'r T,
    dma: &'r mut DmaDevice<'a>,
    env: &'r mut DmaEnv<'e, 'a>,
    ring: &'r CoherentBuffer<'a>,
}

impl<'a, T: Transport> RingAccess<'a> for RingSync<'_, '_, 'a, T> {
    fn barrier(&mut self, barrier: Barrier) {
        self.transport.barrier(barrier);
    }

    fn sync(&mut self, offset: usize, len: usize, point: SyncPoint) -> Result<(), DmaError<'a>> {
        self.dma
            .sync_coherent(self.env, self.ring, offset as u64, len as u64, point)
    }

    fn sync_published(&mut self, offset: usize, len: usize) {
        if let Err(error) = self.sync(offset, len, SyncPoint::ForDevice) {
            log::error!(
                "blk: {} available index sync refused: {error} (the request may time out)",
                self.dma.name()
            );
        }
    }
}

/// The data of a blocking transfer.
enum Transfer<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
}

/// Resets the device, acknowledges it, negotiates features and reads the
/// configuration.
fn negotiate<'a, T: Transport>(
    transport: &mut T,
    version: TransportVersion,
    device: &'a str,
) -> Result<(u64, Geometry), InitError<'a>> {
    if !transport::reset(transport, version) {
        return Err(InitError::ResetTimeout {
            device,
            status: transport::status(transport).get(),
        });
    }
    transport::add_status(transport, Status::ACKNOWLEDGE::SET.value);
    transport::add_status(transport, Status::DRIVER::SET.value);
    let offered = transport::device_features(transport);
    if version == TransportVersion::Modern && offered & feature::VERSION_1 == 0 {
        return Err(InitError::MissingVersion1 {
            device,
            offered: FeatureSet(offered),
        });
    }
    let accepted = offered & version.supported_features();
    transport::set_driver_features(transport, accepted);
    if version == TransportVersion::Modern {
        transport::add_status(transport, Status::FEATURES_OK::SET.value);
        if !transport::status(transport).is_set(Status::FEATURES_OK) {
            return Err(InitError::FeaturesRejected {
                device,
                accepted: FeatureSet(accepted),
            });
        }
    }
    let capacity =
        transport::read_capacity(transport, version).ok_or(InitError::ConfigUnstable { device })?;
    let block_size = if accepted & feature::BLK_BLK_SIZE != 0 {
        let blk_size = transport.read_config(ConfigWord::BlkSize);
        if !blk_size.is_power_of_two() || !(SECTOR_SIZE..=MAX_BLOCK_SIZE).contains(&blk_size) {
            return Err(InitError::BadBlockSize { device, blk_size });
        }
        blk_size
    } else {
        SECTOR_SIZE
    };
    let max_request = if accepted & feature::BLK_SIZE_MAX != 0 {
        let size_max = transport.read_config(ConfigWord::SizeMax);
        if size_max < block_size {
            return Err(InitError::SegmentTooSmall {
                device,
                size_max,
                block_size,
            });
        }
        let limit = size_max.min(MAX_REQUEST_BYTES);
        limit - limit % block_size
    } else {
        MAX_REQUEST_BYTES
    };
    Ok((
        accepted,
        Geometry {
            capacity,
            block_size,
            max_request,
            read_only: accepted & feature::BLK_RO != 0,
            flush: accepted & feature::BLK_FLUSH != 0,
        },
    ))
}

/// Selects queue 0 and chooses its size: the device's maximum, at most
/// [`QUEUE_SIZE_LIMIT`], rounded down to a power of two (which legacy
/// devices require).
fn queue_size<'a, T: Transport>(
    transport: &mut T,
    version: TransportVersion,
    device: &'a str,
) -> Result<u16, InitError<'a>> {
    transport.write(WriteRegister::QueueSel, 0);
    let in_use = match version {
        TransportVersion::Legacy => transport.read(ReadRegister::QueuePfn),
        TransportVersion::Modern => transport.read(ReadRegister::QueueReady),
    };
    if in_use != 0 {
        return Err(InitError::QueueInUse { device });
    }
    let max = transport.read(ReadRegister::QueueNumMax);
    if max == 0 {
        return Err(InitError::QueueUnavailable { device });
    }
    let size = 1_u32 << max.min(u32::from(QUEUE_SIZE_LIMIT)).ilog2();
    if size < DESCRIPTORS_PER_REQUEST as u32 {
        return Err(InitError::QueueTooSmall { device, max });
    }
    // A power of two no larger than QUEUE_SIZE_LIMIT fits in u16.
    Ok(size as u16)
}

/// Tells the device where queue 0 is.
fn program_queue<'a, T: Transport>(
    transport: &mut T,
    version: TransportVersion,
    queue: &SplitQueue,
    device: &'a str,
) -> Result<(), InitError<'a>> {
    match version {
        TransportVersion::Legacy => {
            let ring = queue.descriptor_table();
            let pfn = u32::try_from(ring.0 / u64::from(LEGACY_PAGE_SIZE))
                .map_err(|_| InitError::RingUnreachable { device, ring })?;
            transport.write(WriteRegister::GuestPageSize, LEGACY_PAGE_SIZE);
            transport.write(WriteRegister::QueueNum, u32::from(queue.size()));
            transport.write(WriteRegister::QueueAlign, LEGACY_PAGE_SIZE);
            transport.write(WriteRegister::QueuePfn, pfn);
        }
        TransportVersion::Modern => {
            transport.write(WriteRegister::QueueNum, u32::from(queue.size()));
            let addresses = [
                (
                    (WriteRegister::QueueDescLow, WriteRegister::QueueDescHigh),
                    queue.descriptor_table(),
                ),
                (
                    (
                        WriteRegister::QueueDriverLow,
                        WriteRegister::QueueDriverHigh,
                    ),
                    queue.available_ring(),
                ),
                (
                    (
                        WriteRegister::QueueDeviceLow,
                        WriteRegister::QueueDeviceHigh,
                    ),
                    queue.used_ring(),
                ),
            ];
            for (registers, address) in addresses {
                transport::write_address(transport, registers, address.0);
            }
            transport.write(WriteRegister::QueueReady, 1);
        }
    }
    Ok(())
}

/// The device's half of its interrupt, for the interrupt handler
/// ([`BlockDevice::interrupt_handler`]).
pub struct InterruptHandler<'a, I> {
    registers: I,
    pending: &'a AtomicU32,
}

impl<I: InterruptRegisters> InterruptHandler<'_, I> {
    /// In the interrupt handler: acknowledges the device's interrupt (a
    /// level-triggered line drops) and notes its causes for
    /// [`BlockDevice::handle_interrupt`]. Two accesses of device registers;
    /// nothing else is touched. An interrupt that was not the device's
    /// notes nothing.
    pub fn handle(&self) {
        let causes = self.registers.acknowledge();
        if causes != 0 {
            self.pending.fetch_or(causes, Ordering::Release);
        }
    }
}

/// What one interrupt of the device brought ([`BlockDevice::handle_interrupt`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InterruptOutcome<'a> {
    /// Requests that became ready to [`BlockDevice::finish`].
    pub completions: Completions,
    /// The capacity, when a configuration change changed it.
    pub capacity: Option<CapacityChange<'a>>,
    /// The fault that stopped the device during this interrupt (e.g.
    /// [`DeviceFault::NeedsReset`]).
    pub fault: Option<DeviceFault>,
}

/// The device changed its capacity. Display (a console line):
///
/// `blk: <device> capacity=<sectors> was=<sectors>`
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CapacityChange<'a> {
    /// The device.
    pub device: &'a str,
    /// Sectors before.
    pub before: u64,
    /// Sectors now.
    pub after: u64,
}

impl fmt::Display for CapacityChange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "blk: {} capacity={} was={}",
            self.device, self.after, self.before
        )
    }
}

/// The console line describing a device after setup:
///
/// `blk: <device> virtio-mmio <legacy|modern> capacity=<sectors> block_size=<bytes> max_request=<bytes> queue=<entries> slots=<n> read_only=<yes|no> flush=<yes|no> features=<hex> (<names>)`
pub struct InfoLine<'d> {
    device: &'d str,
    version: TransportVersion,
    geometry: Geometry,
    queue_size: u16,
    slots: usize,
    features: FeatureSet,
}

impl fmt::Display for InfoLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |flag: bool| if flag { "yes" } else { "no" };
        let g = &self.geometry;
        write!(
            f,
            "blk: {} virtio-mmio {} capacity={} block_size={} max_request={} queue={} slots={} read_only={} flush={} features={}",
            self.device,
            self.version,
            g.capacity,
            g.block_size,
            g.max_request,
            self.queue_size,
            self.slots,
            yes_no(g.read_only),
            yes_no(g.flush),
            self.features
        )
    }
}

impl<'a, T: Transport> BlockDriver<'a> for BlockDevice<'a, T> {
    type Error = BlkError<'a>;

    fn name(&self) -> &'a str {
        BlockDevice::name(self)
    }

    fn capacity(&self) -> u64 {
        BlockDevice::capacity(self)
    }

    fn max_request_bytes(&self) -> u32 {
        BlockDevice::max_request_bytes(self)
    }

    fn slots(&self) -> usize {
        BlockDevice::slots(self)
    }

    fn in_flight(&self) -> usize {
        BlockDevice::in_flight(self)
    }

    fn submit(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Token, BlkError<'a>> {
        BlockDevice::submit(self, env, request, deadline)
    }

    fn kick(&mut self, env: &mut DmaEnv<'_, 'a>) {
        BlockDevice::kick(self, env);
    }

    /// Every slot taken, some by requests in flight (slots held by requests
    /// done but not finished come back only through `finish`): a pool
    /// device's requests use their slots' regions, allocated at setup, so
    /// its pool is never the reason.
    fn is_busy(&self, error: &BlkError<'a>) -> bool {
        matches!(error, BlkError::QueueFull { .. }) && BlockDevice::in_flight(self) > 0
    }

    fn is_full(&self, error: &BlkError<'a>) -> bool {
        matches!(error, BlkError::QueueFull { .. })
    }

    fn no_free_slot(&self) -> BlkError<'a> {
        BlkError::NoFreeSlot {
            device: BlockDevice::name(self),
            in_flight: BlockDevice::in_flight(self),
            timed_out: self.timed_out(),
        }
    }

    fn interrupt_noted(&self) -> bool {
        BlockDevice::interrupt_noted(self)
    }

    /// A capacity change is an informational notice
    /// (`blk: <device> capacity=N was=M`), a device that failed an error.
    fn handle_interrupt(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        notice: &mut dyn FnMut(Notice<'_>),
    ) -> Completions {
        let outcome = BlockDevice::handle_interrupt(self, env);
        if let Some(change) = outcome.capacity {
            notice(Notice::Info(&change));
        }
        if let Some(fault) = outcome.fault {
            notice(Notice::Error(&format_args!(
                "blk: {} failed: {fault}; its requests in flight fail, new ones are refused",
                BlockDevice::name(self)
            )));
        }
        outcome.completions
    }

    fn has_completions(&self) -> bool {
        self.queue.has_used()
    }

    fn poll(&mut self, env: &mut DmaEnv<'_, 'a>) -> Completions {
        BlockDevice::poll(self, env)
    }

    fn expire(&mut self, now: u64) -> Completions {
        BlockDevice::expire(self, now)
    }

    fn set_interrupts(&mut self, enabled: bool) {
        BlockDevice::set_interrupts(self, enabled);
    }

    fn finish(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        token: Token,
        data: &mut dyn FnMut(&[u8]),
    ) -> Poll<Result<Completion, BlkError<'a>>> {
        BlockDevice::finish(self, env, token, data)
    }

    fn stats(&self) -> &BlkStats {
        BlockDevice::stats(self)
    }

    fn dma(&self) -> &DmaDevice<'a> {
        BlockDevice::dma(self)
    }
}
