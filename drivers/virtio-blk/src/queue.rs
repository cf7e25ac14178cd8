//! The split virtqueue (virtio 1.2 §2.7): descriptor table, available ring
//! and used ring in one coherent DMA allocation, with the driver's
//! bookkeeping (descriptor free list, ring indices) kept out of that memory.
//!
//! # Layout
//!
//! One allocation, page-aligned, used by both transport versions:
//!
//! | offset                          | what                                   |
//! |---------------------------------|----------------------------------------|
//! | 0                               | descriptor table, 16 bytes × size      |
//! | 16 × size                       | available ring: flags, idx, ring\[size\], used_event |
//! | next multiple of 4096           | used ring: flags, idx, ring\[size\] of (id, len), avail_event |
//!
//! That is the legacy layout with `QueueAlign` = 4096 (§2.7 "Legacy
//! Interfaces"), and it meets the modern alignments (16, 2, 4) too.
//!
//! # Ordering and sync points
//!
//! The ring is coherent memory, non-cacheable for a non-coherent device, so
//! it needs ordering and, where the DMA layer's policy says so, a sync of
//! the lines about to be read (`tidepool_dma::coherent_sync_action`: under
//! Xen, whose write-back directmap may hold stale lines of it, an
//! invalidate of just those lines through the window). Both go through
//! [`RingAccess`]: barriers are the transport's ([`Barrier`], outer
//! shareable, for a device that is not a CPU), syncs the DMA layer's.
//! - Publishing: descriptors and the ring entry are written, synced for the
//!   device, a [`Barrier::DmaWrite`], then `avail.idx`, synced for the
//!   device (§2.7.13.3: the device must see the entry before the index).
//! - Taking: `used.idx` is synced for the CPU and read, then a
//!   [`Barrier::DmaRead`], then the entries it publishes are synced for the
//!   CPU and read (§2.7.14: the device wrote them before the index). The
//!   second sync is needed: a line of an entry allocated after the first
//!   one but before the device wrote the entry would be stale.
//!
//! - Notifying (once per batch, [`crate::BlockDevice::kick`]): a
//!   [`Barrier::DmaFull`] after the last `avail.idx`, then the used ring's
//!   `flags` synced for the CPU and read; `QueueNotify` is written only if
//!   the device did not set `VIRTQ_USED_F_NO_NOTIFY`, and the full barrier
//!   orders the index before that write too.
//!
//! The free list and the length of every chain live in driver memory, not in
//! the descriptors: a device that scribbles on the table cannot corrupt the
//! driver's view of which descriptors are free, and every used entry is
//! checked against the chains actually in flight.

use tidepool_dma::{DmaAddr, DmaError, SyncPoint};

use crate::error::DeviceFault;
use tidepool_block::SharedMemory;

use crate::transport::Barrier;

/// The largest queue the driver sets up (it takes the device's maximum if
/// that is smaller).
pub const QUEUE_SIZE_LIMIT: u16 = 128;

/// Alignment of the allocation and of the used ring.
pub(crate) const RING_ALIGN: usize = 4096;

const DESCRIPTOR_SIZE: usize = 16;
/// `VIRTQ_DESC_F_NEXT`: the chain continues in `next`.
const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the device writes this buffer.
const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver asks not to be interrupted.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY`: the device asks not to be notified.
const USED_F_NO_NOTIFY: u16 = 1;
/// Offset of `idx` in both rings (after `flags`).
const RING_IDX: usize = 2;
/// Offset of the first entry in both rings.
const RING_ENTRIES: usize = 4;
/// Size of one used-ring entry (`id`, `len`).
const USED_ENTRY_SIZE: usize = 8;

/// Where the parts of a queue of `size` entries lie in its allocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct RingLayout {
    /// Queue size (entries).
    pub(crate) size: u16,
    /// Offset of the available ring.
    pub(crate) avail: usize,
    /// Offset of the used ring.
    pub(crate) used: usize,
    /// Bytes in all.
    pub(crate) bytes: usize,
}

impl RingLayout {
    /// End of the available ring: the descriptor table and the available
    /// ring are `[0, avail_end)`, the part the driver writes.
    pub(crate) const fn avail_end(&self) -> usize {
        // flags, idx, ring[size], used_event.
        self.avail + RING_ENTRIES + 2 * self.size as usize + 2
    }

    /// The layout of a queue of `size` entries.
    pub(crate) const fn new(size: u16) -> Self {
        let entries = size as usize;
        let avail = DESCRIPTOR_SIZE * entries;
        let mut layout = Self {
            size,
            avail,
            used: 0,
            bytes: 0,
        };
        let used = layout.avail_end().next_multiple_of(RING_ALIGN);
        // flags, idx, ring[size], avail_event.
        layout.used = used;
        layout.bytes = used + RING_ENTRIES + USED_ENTRY_SIZE * entries + 2;
        layout
    }
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Buffer {
    /// Its DMA address.
    pub(crate) addr: DmaAddr,
    /// Its length in bytes.
    pub(crate) len: u32,
    /// Whether the device writes it (else it reads it).
    pub(crate) device_writes: bool,
}

/// A chain the device returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Used {
    /// The chain's first descriptor.
    pub(crate) head: u16,
    /// Bytes the device says it wrote.
    pub(crate) len: u32,
}

/// Not enough free descriptors for a chain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct QueueFull {
    /// Free descriptors.
    pub(crate) free: u16,
}

/// What the queue needs besides its memory: the transport's barriers and
/// the DMA layer's sync points of the ring's coherent allocation.
pub(crate) trait RingAccess<'a> {
    /// Executes `barrier` ([`crate::Transport::barrier`]).
    fn barrier(&mut self, barrier: Barrier);
    /// Syncs `len` bytes at `offset` of the ring for `point`
    /// (`DmaDevice::sync_coherent`).
    fn sync(&mut self, offset: usize, len: usize, point: SyncPoint) -> Result<(), DmaError<'a>>;
    /// Syncs `len` bytes at `offset` of the ring for the device, after they
    /// were published: nothing can be taken back, so a refusal (which the
    /// sync of a range around them just before rules out) is reported, not
    /// returned.
    fn sync_published(&mut self, offset: usize, len: usize);
}

/// Why a used entry could not be taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum UsedError<'a> {
    /// The device broke the protocol.
    Fault(DeviceFault),
    /// The DMA layer refused to sync the used ring.
    Sync(DmaError<'a>),
}

/// A split virtqueue and the driver's bookkeeping of it.
pub(crate) struct SplitQueue {
    memory: SharedMemory,
    dma: DmaAddr,
    layout: RingLayout,
    /// First free descriptor (meaningless when none is free).
    free_head: u16,
    free_count: u16,
    /// Free-list links, and the links of chains in flight.
    next: [u16; QUEUE_SIZE_LIMIT as usize],
    /// Descriptors in the chain starting here; 0 if no chain in flight starts here.
    chain_len: [u16; QUEUE_SIZE_LIMIT as usize],
    /// The next `avail.idx` to publish.
    avail_idx: u16,
    /// The `avail.idx` the device was last told about (or chose not to be).
    notified_idx: u16,
    /// The `used.idx` up to which entries have been taken.
    last_used: u16,
    /// The `used.idx` last read, whose entries are synced for the CPU.
    seen_used: u16,
}

impl SplitQueue {
    /// A queue of `layout.size` entries (at most [`QUEUE_SIZE_LIMIT`]) in
    /// `memory`, which the device reaches at `dma` and which is zeroed.
    pub(crate) fn new(memory: SharedMemory, dma: DmaAddr, layout: RingLayout) -> Self {
        assert!(
            (1..=QUEUE_SIZE_LIMIT).contains(&layout.size),
            "queue size {}",
            layout.size
        );
        let mut next = [0; QUEUE_SIZE_LIMIT as usize];
        for (i, link) in (1..).zip(next.iter_mut()) {
            *link = i;
        }
        Self {
            memory,
            dma,
            layout,
            free_head: 0,
            free_count: layout.size,
            next,
            chain_len: [0; QUEUE_SIZE_LIMIT as usize],
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            seen_used: 0,
        }
    }

    /// Queue size (entries).
    /// Asks the device not to interrupt when it returns buffers, or to
    /// again (the available ring's `flags`; a hint the device may ignore,
    /// virtio 1.2 §2.7.7).
    pub(crate) fn suppress_interrupts(&mut self, suppress: bool) {
        let flags = if suppress { AVAIL_F_NO_INTERRUPT } else { 0 };
        self.memory.write_u16(self.layout.avail, flags);
    }

    pub(crate) fn size(&self) -> u16 {
        self.layout.size
    }

    /// DMA address of the descriptor table (and of the whole allocation).
    pub(crate) fn descriptor_table(&self) -> DmaAddr {
        self.dma
    }

    /// DMA address of the available ring.
    pub(crate) fn available_ring(&self) -> DmaAddr {
        DmaAddr(self.dma.0 + self.layout.avail as u64)
    }

    /// DMA address of the used ring.
    pub(crate) fn used_ring(&self) -> DmaAddr {
        DmaAddr(self.dma.0 + self.layout.used as u64)
    }

    /// Free descriptors.
    #[cfg(test)]
    fn free_descriptors(&self) -> u16 {
        self.free_count
    }

    /// Puts `chain` on the free descriptors, publishes it in the available
    /// ring and returns its head. The caller notifies the device when its
    /// batch ends ([`Self::needs_notify`]).
    pub(crate) fn push<'a>(
        &mut self,
        chain: &[Buffer],
        ring: &mut dyn RingAccess<'a>,
    ) -> Result<u16, PushError<'a>> {
        let count = u16::try_from(chain.len()).unwrap_or(u16::MAX);
        if count == 0 || count > self.free_count {
            return Err(PushError::Full(QueueFull {
                free: self.free_count,
            }));
        }
        let head = self.free_head;
        let mut index = head;
        let mut free_head = self.free_head;
        for (position, buffer) in chain.iter().enumerate() {
            let last = position + 1 == chain.len();
            let mut flags = if buffer.device_writes {
                DESC_F_WRITE
            } else {
                0
            };
            let link = self.next[usize::from(index)];
            if !last {
                flags |= DESC_F_NEXT;
            }
            let at = DESCRIPTOR_SIZE * usize::from(index);
            self.memory.write_u64(at, buffer.addr.0);
            self.memory.write_u32(at + 8, buffer.len);
            self.memory.write_u16(at + 12, flags);
            self.memory.write_u16(at + 14, if last { 0 } else { link });
            if last {
                free_head = link;
            } else {
                index = link;
            }
        }
        let slot = usize::from(self.avail_idx % self.layout.size);
        self.memory
            .write_u16(self.layout.avail + RING_ENTRIES + 2 * slot, head);
        // Nothing is taken from the free list until the chain is published:
        // a refused sync leaves the queue as it was.
        ring.sync(0, self.layout.avail_end(), SyncPoint::ForDevice)
            .map_err(PushError::Sync)?;
        // The device must see the descriptors and the entry before the index
        // that hands them over.
        ring.barrier(Barrier::DmaWrite);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.memory
            .write_u16(self.layout.avail + RING_IDX, self.avail_idx);
        self.free_head = free_head;
        self.free_count -= count;
        self.chain_len[usize::from(head)] = count;
        ring.sync_published(self.layout.avail + RING_IDX, 2);
        Ok(head)
    }

    /// Whether the device must be notified now: chains were published since
    /// the last call, and the device has not asked not to be
    /// (`VIRTQ_USED_F_NO_NOTIFY`, §2.7.10; event indices are not
    /// negotiated). The flag is read after a [`Barrier::DmaFull`]: the
    /// published index must reach the device before the flag is read, or
    /// a device clearing the flag after its last look at the ring would
    /// be neither notified nor see the new chains (Linux's
    /// `virtqueue_kick_prepare`). A refused sync of the flag counts as
    /// "notify": a notification too many is always allowed.
    pub(crate) fn needs_notify<'a>(&mut self, ring: &mut dyn RingAccess<'a>) -> bool {
        if self.notified_idx == self.avail_idx {
            return false;
        }
        self.notified_idx = self.avail_idx;
        ring.barrier(Barrier::DmaFull);
        let flags = self.layout.used;
        ring.sync(flags, 2, SyncPoint::ForCpu).is_err()
            || self.memory.read_u16(flags) & USED_F_NO_NOTIFY == 0
    }

    /// Whether the device returned a chain not yet taken (one read of the
    /// used index, no side effect).
    pub(crate) fn has_used(&self) -> bool {
        self.memory.read_u16(self.layout.used + RING_IDX) != self.last_used
    }

    /// Takes the next chain the device returned, if any, and puts its
    /// descriptors back on the free list.
    ///
    /// A used entry that names no chain in flight, or a used index that ran
    /// more than a queue's worth ahead, is a [`DeviceFault`]; the entry is
    /// skipped (an index jump is not).
    pub(crate) fn pop_used<'a>(
        &mut self,
        ring: &mut dyn RingAccess<'a>,
    ) -> Option<Result<Used, UsedError<'a>>> {
        if self.last_used == self.seen_used {
            let at = self.layout.used + RING_IDX;
            if let Err(error) = ring.sync(at, 2, SyncPoint::ForCpu) {
                return Some(Err(UsedError::Sync(error)));
            }
            let published = self.memory.read_u16(at);
            if published == self.last_used {
                return None;
            }
            let ahead = published.wrapping_sub(self.last_used);
            if ahead > self.layout.size {
                return Some(Err(UsedError::Fault(DeviceFault::UsedIndexJump {
                    taken: self.last_used,
                    published,
                })));
            }
            // Read the entries (and, after this returns, the request's
            // buffers) only after the index that says the device wrote them.
            ring.barrier(Barrier::DmaRead);
            let (offset, len) = self.used_entries(self.last_used, ahead);
            if let Err(error) = ring.sync(offset, len, SyncPoint::ForCpu) {
                return Some(Err(UsedError::Sync(error)));
            }
            self.seen_used = published;
        }
        let entry = self.layout.used
            + RING_ENTRIES
            + USED_ENTRY_SIZE * usize::from(self.last_used % self.layout.size);
        let id = self.memory.read_u32(entry);
        let len = self.memory.read_u32(entry + 4);
        self.last_used = self.last_used.wrapping_add(1);
        let Some(head) = u16::try_from(id).ok().filter(|&id| id < self.layout.size) else {
            return Some(Err(UsedError::Fault(DeviceFault::UsedIdOutOfRange {
                id,
                size: self.layout.size,
            })));
        };
        let count = self.chain_len[usize::from(head)];
        if count == 0 {
            return Some(Err(UsedError::Fault(DeviceFault::UsedIdNotInFlight {
                id: head,
            })));
        }
        let mut last = head;
        for _ in 1..count {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.free_count += count;
        self.chain_len[usize::from(head)] = 0;
        Some(Ok(Used { head, len }))
    }

    /// Offset and length of the `count` used entries from index `first`:
    /// just those, or every entry when they wrap around the ring.
    fn used_entries(&self, first: u16, count: u16) -> (usize, usize) {
        let entries = self.layout.used + RING_ENTRIES;
        let start = usize::from(first % self.layout.size);
        let count = usize::from(count);
        if start + count <= usize::from(self.layout.size) {
            (entries + USED_ENTRY_SIZE * start, USED_ENTRY_SIZE * count)
        } else {
            (entries, USED_ENTRY_SIZE * usize::from(self.layout.size))
        }
    }
}

/// Why a chain was not published.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PushError<'a> {
    /// Not enough free descriptors.
    Full(QueueFull),
    /// The DMA layer refused to sync the ring.
    Sync(DmaError<'a>),
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::vec::Vec;

    /// What the queue asked of the transport and the DMA layer.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Access {
        Barrier(Barrier),
        Sync(usize, usize, SyncPoint),
    }

    #[derive(Default)]
    struct Recorder {
        accesses: Vec<Access>,
    }

    impl<'a> RingAccess<'a> for Recorder {
        fn barrier(&mut self, barrier: Barrier) {
            self.accesses.push(Access::Barrier(barrier));
        }

        fn sync(
            &mut self,
            offset: usize,
            len: usize,
            point: SyncPoint,
        ) -> Result<(), DmaError<'a>> {
            self.accesses.push(Access::Sync(offset, len, point));
            Ok(())
        }

        fn sync_published(&mut self, offset: usize, len: usize) {
            self.accesses
                .push(Access::Sync(offset, len, SyncPoint::ForDevice));
        }
    }

    fn push(q: &mut SplitQueue, chain: &[Buffer]) -> Result<u16, QueueFull> {
        q.push(chain, &mut Recorder::default())
            .map_err(|error| match error {
                PushError::Full(full) => full,
                PushError::Sync(error) => panic!("{error}"),
            })
    }

    fn pop(q: &mut SplitQueue) -> Option<Result<Used, DeviceFault>> {
        q.pop_used(&mut Recorder::default()).map(|result| {
            result.map_err(|error| match error {
                UsedError::Fault(fault) => fault,
                UsedError::Sync(error) => panic!("{error}"),
            })
        })
    }

    /// A queue in plain memory at a made-up DMA address.
    fn queue(size: u16) -> SplitQueue {
        let layout = RingLayout::new(size);
        let memory = SharedMemory::allocate(layout.bytes, RING_ALIGN).unwrap();
        SplitQueue::new(memory, DmaAddr(0x7a00_0000), layout)
    }

    fn buffer(addr: u64, len: u32, device_writes: bool) -> Buffer {
        Buffer {
            addr: DmaAddr(addr),
            len,
            device_writes,
        }
    }

    /// A request's chain: header, data, status.
    fn request(base: u64) -> [Buffer; 3] {
        [
            buffer(base, 16, false),
            buffer(base + 16, 512, true),
            buffer(base + 528, 1, true),
        ]
    }

    /// The device side, reading and writing the rings as a device would.
    struct Device {
        next_avail: u16,
        used_idx: u16,
    }

    impl Device {
        fn new() -> Self {
            Self {
                next_avail: 0,
                used_idx: 0,
            }
        }

        /// Takes the next available head, if any.
        fn take(&mut self, q: &SplitQueue) -> Option<u16> {
            let idx = q.memory.read_u16(q.layout.avail + RING_IDX);
            (idx != self.next_avail).then(|| {
                let slot = usize::from(self.next_avail % q.layout.size);
                self.next_avail = self.next_avail.wrapping_add(1);
                q.memory.read_u16(q.layout.avail + RING_ENTRIES + 2 * slot)
            })
        }

        /// The descriptors of the chain at `head`: (addr, len, flags).
        fn chain(q: &SplitQueue, head: u16) -> Vec<(u64, u32, u16)> {
            let mut out = Vec::new();
            let mut index = head;
            loop {
                let at = DESCRIPTOR_SIZE * usize::from(index);
                let addr =
                    u64::from(q.memory.read_u32(at)) | u64::from(q.memory.read_u32(at + 4)) << 32;
                let len = q.memory.read_u32(at + 8);
                let flags = q.memory.read_u16(at + 12);
                out.push((addr, len, flags));
                if flags & DESC_F_NEXT == 0 {
                    return out;
                }
                index = q.memory.read_u16(at + 14);
            }
        }

        /// Returns the chain at `head` (any id, for the fault tests).
        fn complete(&mut self, q: &mut SplitQueue, id: u32, len: u32) {
            let entry = q.layout.used
                + RING_ENTRIES
                + USED_ENTRY_SIZE * usize::from(self.used_idx % q.layout.size);
            q.memory.write_u32(entry, id);
            q.memory.write_u32(entry + 4, len);
            self.used_idx = self.used_idx.wrapping_add(1);
            q.memory.write_u16(q.layout.used + RING_IDX, self.used_idx);
        }
    }

    #[test]
    fn layout_puts_the_used_ring_on_its_own_page() {
        let layout = RingLayout::new(64);
        assert_eq!(
            (layout.avail, layout.used, layout.bytes),
            (1024, 4096, 4096 + 4 + 512 + 2)
        );
        let small = RingLayout::new(4);
        assert_eq!(
            (small.avail, small.used, small.bytes),
            (64, 4096, 4096 + 4 + 32 + 2)
        );
        let q = queue(64);
        assert_eq!(q.available_ring(), DmaAddr(0x7a00_0000 + 1024));
        assert_eq!(q.used_ring(), DmaAddr(0x7a00_1000));
        assert_eq!(q.descriptor_table(), DmaAddr(0x7a00_0000));
    }

    #[test]
    fn a_chain_is_written_as_linked_descriptors_and_published() {
        let mut q = queue(8);
        let mut device = Device::new();
        let head = push(&mut q, &request(0x4000_0000)).unwrap();
        assert_eq!(q.free_descriptors(), 5);
        assert_eq!(device.take(&q), Some(head));
        assert_eq!(
            Device::chain(&q, head),
            [
                (0x4000_0000, 16, DESC_F_NEXT),
                (0x4000_0010, 512, DESC_F_NEXT | DESC_F_WRITE),
                (0x4000_0210, 1, DESC_F_WRITE),
            ]
        );
        assert_eq!(device.take(&q), None);
        assert!(pop(&mut q).is_none());
        device.complete(&mut q, u32::from(head), 513);
        assert_eq!(pop(&mut q), Some(Ok(Used { head, len: 513 })));
        assert_eq!(q.free_descriptors(), 8);
        assert!(pop(&mut q).is_none());
    }

    #[test]
    fn free_list_exhaustion_refuses_without_side_effects_and_recovers() {
        let mut q = queue(8);
        let mut device = Device::new();
        let first = push(&mut q, &request(0x1000)).unwrap();
        let second = push(&mut q, &request(0x2000)).unwrap();
        assert_eq!(push(&mut q, &request(0x3000)), Err(QueueFull { free: 2 }));
        assert_eq!(push(&mut q, &[]), Err(QueueFull { free: 2 }));
        // Two descriptors still fit a flush (header and status).
        let flush = push(
            &mut q,
            &[buffer(0x3000, 16, false), buffer(0x3010, 1, true)],
        )
        .unwrap();
        assert_eq!(q.free_descriptors(), 0);
        assert_eq!(
            push(&mut q, &[buffer(0x4000, 16, false)]),
            Err(QueueFull { free: 0 })
        );
        // Only three chains were published.
        assert_eq!(device.take(&q), Some(first));
        assert_eq!(device.take(&q), Some(second));
        assert_eq!(device.take(&q), Some(flush));
        assert_eq!(device.take(&q), None);
        device.complete(&mut q, u32::from(second), 1);
        assert_eq!(pop(&mut q).unwrap().unwrap().head, second);
        assert_eq!(q.free_descriptors(), 3);
        let again = push(&mut q, &request(0x5000)).unwrap();
        assert_eq!(device.take(&q), Some(again));
        assert_eq!(Device::chain(&q, again)[0], (0x5000, 16, DESC_F_NEXT));
    }

    #[test]
    fn out_of_order_completion_frees_exactly_the_completed_chains() {
        let mut q = queue(16);
        let mut device = Device::new();
        let heads: Vec<u16> = (0..5)
            .map(|i| push(&mut q, &request(0x10_0000 * (i + 1))).unwrap())
            .collect();
        assert_eq!(q.free_descriptors(), 1);
        for _ in 0..5 {
            device.take(&q).unwrap();
        }
        for &i in &[3, 0, 4] {
            device.complete(&mut q, u32::from(heads[i]), 1);
        }
        let popped: Vec<u16> = core::iter::from_fn(|| pop(&mut q))
            .map(|u| u.unwrap().head)
            .collect();
        assert_eq!(popped, [heads[3], heads[0], heads[4]]);
        assert_eq!(q.free_descriptors(), 10);
        // The survivors are intact and the freed descriptors are reused.
        assert_eq!(Device::chain(&q, heads[1])[0].0, 0x20_0000);
        assert_eq!(
            Device::chain(&q, heads[2])[2],
            (0x30_0000 + 528, 1, DESC_F_WRITE)
        );
        let new: Vec<u16> = (0..3)
            .map(|i| push(&mut q, &request(0x100_0000 * (i + 1))).unwrap())
            .collect();
        assert_eq!(q.free_descriptors(), 1);
        for head in new {
            assert_eq!(device.take(&q), Some(head));
            assert_eq!(Device::chain(&q, head).len(), 3);
        }
        for &i in &[2, 1] {
            device.complete(&mut q, u32::from(heads[i]), 1);
        }
        assert_eq!(pop(&mut q).unwrap().unwrap().head, heads[2]);
        assert_eq!(pop(&mut q).unwrap().unwrap().head, heads[1]);
    }

    #[test]
    fn interrupt_suppression_is_the_available_rings_flag() {
        let mut q = queue(8);
        let avail = q.layout.avail;
        assert_eq!(q.memory.read_u16(avail), 0);
        q.suppress_interrupts(true);
        assert_eq!(q.memory.read_u16(avail), AVAIL_F_NO_INTERRUPT);
        q.suppress_interrupts(false);
        assert_eq!(q.memory.read_u16(avail), 0);
    }

    #[test]
    fn sixteen_bit_indices_wrap_around() {
        let mut q = queue(4);
        let mut device = Device::new();
        // Two chains stay in flight across the wrap of both indices.
        let mut outstanding = std::collections::VecDeque::new();
        for round in 0..70_000_u32 {
            let head = push(
                &mut q,
                &[
                    buffer(u64::from(round) << 12, 16, false),
                    buffer(1, 1, true),
                ],
            )
            .unwrap();
            assert_eq!(device.take(&q), Some(head));
            outstanding.push_back(head);
            if outstanding.len() == 2 {
                let oldest = outstanding.pop_front().unwrap();
                device.complete(&mut q, u32::from(oldest), 1);
                assert_eq!(
                    pop(&mut q),
                    Some(Ok(Used {
                        head: oldest,
                        len: 1
                    }))
                );
            }
        }
        assert_eq!(
            q.memory.read_u16(q.layout.avail + RING_IDX),
            (70_000 % 65_536) as u16
        );
        assert_eq!(
            q.memory.read_u16(q.layout.used + RING_IDX),
            (69_999 % 65_536) as u16
        );
        assert_eq!(q.free_descriptors(), 2);
    }

    #[test]
    fn used_entries_naming_no_chain_in_flight_are_faults() {
        let mut q = queue(8);
        let mut device = Device::new();
        let head = push(&mut q, &request(0x1000)).unwrap();
        device.take(&q).unwrap();
        device.complete(&mut q, 8, 1);
        assert_eq!(
            pop(&mut q),
            Some(Err(DeviceFault::UsedIdOutOfRange { id: 8, size: 8 }))
        );
        device.complete(&mut q, u32::from(head) + 1, 1);
        assert_eq!(
            pop(&mut q),
            Some(Err(DeviceFault::UsedIdNotInFlight { id: head + 1 }))
        );
        device.complete(&mut q, u32::from(head), 1);
        assert_eq!(pop(&mut q), Some(Ok(Used { head, len: 1 })));
        // Returned twice.
        device.complete(&mut q, u32::from(head), 1);
        assert_eq!(
            pop(&mut q),
            Some(Err(DeviceFault::UsedIdNotInFlight { id: head }))
        );
        assert_eq!(q.free_descriptors(), 8);
        // An index more than a queue ahead.
        q.memory.write_u16(q.layout.used + RING_IDX, 4 + 9);
        assert_eq!(
            pop(&mut q),
            Some(Err(DeviceFault::UsedIndexJump {
                taken: 4,
                published: 13
            }))
        );
    }

    /// Publishing: the descriptors and the entry synced for the device, a
    /// write barrier, then the index (written after the barrier) synced.
    #[test]
    fn a_chain_is_synced_and_ordered_before_its_index() {
        let mut q = queue(8);
        let mut ring = Recorder::default();
        let head = q.push(&request(0x1000), &mut ring).unwrap();
        let avail_end = q.layout.avail_end();
        assert_eq!(avail_end, 128 + 4 + 16 + 2);
        assert_eq!(
            ring.accesses,
            [
                Access::Sync(0, avail_end, SyncPoint::ForDevice),
                Access::Barrier(Barrier::DmaWrite),
                Access::Sync(q.layout.avail + RING_IDX, 2, SyncPoint::ForDevice),
            ]
        );
        assert_eq!(Device::new().take(&q), Some(head));
    }

    /// Taking: the index synced for the CPU and read, a read barrier, then
    /// just the entries it published synced (all of them when they wrap),
    /// once for all of them; an unchanged index is synced and read again.
    #[test]
    fn used_entries_are_synced_after_the_index_that_publishes_them() {
        let mut q = queue(4);
        let mut device = Device::new();
        let used = q.layout.used;
        let mut ring = Recorder::default();
        assert!(q.pop_used(&mut ring).is_none());
        assert_eq!(
            ring.accesses,
            [Access::Sync(used + RING_IDX, 2, SyncPoint::ForCpu)]
        );
        let mut wrapped = [false, false];
        for round in 0..4 {
            let heads: Vec<u16> = (0..3)
                .map(|i| push(&mut q, &[buffer(0x1000 * (i + 1), 16, true)]).unwrap())
                .collect();
            for &head in &heads {
                device.take(&q).unwrap();
                device.complete(&mut q, u32::from(head), 1);
            }
            // Entries 3 * round .. 3 * round + 3, of a ring of four.
            let first = (3 * round) % 4;
            let mut ring = Recorder::default();
            for &head in &heads {
                assert_eq!(q.pop_used(&mut ring), Some(Ok(Used { head, len: 1 })));
            }
            let wraps = first + 3 > 4;
            wrapped[usize::from(wraps)] = true;
            let entries = if wraps {
                (used + RING_ENTRIES, 32)
            } else {
                (used + RING_ENTRIES + 8 * first, 24)
            };
            assert_eq!(
                ring.accesses,
                [
                    Access::Sync(used + RING_IDX, 2, SyncPoint::ForCpu),
                    Access::Barrier(Barrier::DmaRead),
                    Access::Sync(entries.0, entries.1, SyncPoint::ForCpu),
                ],
                "round {round}"
            );
            assert!(pop(&mut q).is_none());
        }
        assert_eq!(wrapped, [true, true]);
    }

    /// Notifying: nothing published since the last notification, none;
    /// otherwise a full barrier, then the used ring's `flags` synced and
    /// read, and the device's `VIRTQ_USED_F_NO_NOTIFY` suppresses it; a
    /// refused sync of the flags notifies.
    #[test]
    fn a_notification_follows_a_full_barrier_and_honours_no_notify() {
        let mut q = queue(16);
        let mut ring = Recorder::default();
        assert!(!q.needs_notify(&mut ring));
        assert!(ring.accesses.is_empty());
        push(&mut q, &request(0x1000)).unwrap();
        push(&mut q, &request(0x2000)).unwrap();
        assert!(q.needs_notify(&mut ring), "one notification for both");
        assert_eq!(
            ring.accesses,
            [
                Access::Barrier(Barrier::DmaFull),
                Access::Sync(q.layout.used, 2, SyncPoint::ForCpu),
            ]
        );
        assert!(!q.needs_notify(&mut Recorder::default()), "told already");
        q.memory.write_u16(q.layout.used, USED_F_NO_NOTIFY);
        push(&mut q, &request(0x3000)).unwrap();
        assert!(
            !q.needs_notify(&mut Recorder::default()),
            "the device polls"
        );
        push(&mut q, &request(0x4000)).unwrap();
        assert!(q.needs_notify(&mut Refusing));
    }

    /// A ring the DMA layer refuses to sync.
    struct Refusing;

    impl<'a> RingAccess<'a> for Refusing {
        fn barrier(&mut self, _: Barrier) {}

        fn sync(&mut self, _: usize, _: usize, _: SyncPoint) -> Result<(), DmaError<'a>> {
            Err(DmaError::ZeroLength { device: "dev" })
        }

        fn sync_published(&mut self, _: usize, _: usize) {
            unreachable!("a refused sync publishes nothing");
        }
    }

    /// A refused sync publishes nothing and takes nothing: the chain's
    /// descriptors stay free, the device sees no new index, and a used
    /// entry stays to be taken once syncs work again.
    #[test]
    fn a_refused_sync_publishes_and_takes_nothing() {
        let mut q = queue(8);
        let mut device = Device::new();
        assert_eq!(
            q.push(&request(0x1000), &mut Refusing),
            Err(PushError::Sync(DmaError::ZeroLength { device: "dev" }))
        );
        assert_eq!((q.free_descriptors(), device.take(&q)), (8, None));
        let head = push(&mut q, &request(0x1000)).unwrap();
        device.take(&q).unwrap();
        device.complete(&mut q, u32::from(head), 1);
        assert_eq!(
            q.pop_used(&mut Refusing),
            Some(Err(UsedError::Sync(DmaError::ZeroLength { device: "dev" })))
        );
        assert_eq!(pop(&mut q), Some(Ok(Used { head, len: 1 })));
    }
}
