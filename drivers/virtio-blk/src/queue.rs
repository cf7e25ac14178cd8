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
//! | 16 × size                       | available ring: flags, idx, ring[size], used_event |
//! | next multiple of 4096           | used ring: flags, idx, ring[size] of (id, len), avail_event |
//!
//! That is the legacy layout with `QueueAlign` = 4096 (§2.7 "Legacy
//! Interfaces"), and it meets the modern alignments (16, 2, 4) too.
//!
//! # Ordering
//!
//! The ring is coherent memory (non-cacheable for a non-coherent device), so
//! it needs ordering, never cache maintenance. `VIRTIO_F_ORDER_PLATFORM` is
//! not negotiated, so the device counts as software on a CPU of the same SMP
//! system (§6.1), and `core::sync::atomic::fence` (a `DMB ISH` family
//! barrier on aarch64) is the barrier the specification asks for:
//! - descriptors and the ring entry are written, then a release fence, then
//!   `avail.idx` (§2.7.13.3: the device must see the entry before the index);
//! - `used.idx` is read, then an acquire fence, then the used entry and the
//!   request's buffers (§2.7.14: the device wrote them before the index).
//!
//! The driver adds a full fence between publishing `avail.idx` and writing
//! `QueueNotify` (in [`crate::BlockDevice`]).
//!
//! The free list and the length of every chain live in driver memory, not in
//! the descriptors: a device that scribbles on the table cannot corrupt the
//! driver's view of which descriptors are free, and every used entry is
//! checked against the chains actually in flight.

use core::sync::atomic::{Ordering, fence};

use tidepool_dma::DmaAddr;

use crate::error::DeviceFault;
use tidepool_block::SharedMemory;

/// The largest queue the driver sets up (it takes the device's maximum if
/// that is smaller).
pub const QUEUE_SIZE_LIMIT: u16 = 64;

/// Alignment of the allocation and of the used ring.
pub(crate) const RING_ALIGN: usize = 4096;

const DESCRIPTOR_SIZE: usize = 16;
/// `VIRTQ_DESC_F_NEXT`: the chain continues in `next`.
const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the device writes this buffer.
const DESC_F_WRITE: u16 = 2;
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
    /// The layout of a queue of `size` entries.
    pub(crate) const fn new(size: u16) -> Self {
        let entries = size as usize;
        let avail = DESCRIPTOR_SIZE * entries;
        // flags, idx, ring[size], used_event.
        let avail_end = avail + RING_ENTRIES + 2 * entries + 2;
        let used = avail_end.next_multiple_of(RING_ALIGN);
        // flags, idx, ring[size], avail_event.
        let bytes = used + RING_ENTRIES + USED_ENTRY_SIZE * entries + 2;
        Self {
            size,
            avail,
            used,
            bytes,
        }
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
    /// The `used.idx` up to which entries have been taken.
    last_used: u16,
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
            last_used: 0,
        }
    }

    /// Queue size (entries).
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
    /// ring and returns its head. The caller notifies the device.
    pub(crate) fn push(&mut self, chain: &[Buffer]) -> Result<u16, QueueFull> {
        let count = u16::try_from(chain.len()).unwrap_or(u16::MAX);
        if count == 0 || count > self.free_count {
            return Err(QueueFull {
                free: self.free_count,
            });
        }
        let head = self.free_head;
        let mut index = head;
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
                self.free_head = link;
            } else {
                index = link;
            }
        }
        self.free_count -= count;
        self.chain_len[usize::from(head)] = count;
        let slot = usize::from(self.avail_idx % self.layout.size);
        self.memory
            .write_u16(self.layout.avail + RING_ENTRIES + 2 * slot, head);
        // The device must see the descriptors and the entry before the index
        // that hands them over.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.memory
            .write_u16(self.layout.avail + RING_IDX, self.avail_idx);
        Ok(head)
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
    pub(crate) fn pop_used(&mut self) -> Option<Result<Used, DeviceFault>> {
        let published = self.memory.read_u16(self.layout.used + RING_IDX);
        if published == self.last_used {
            return None;
        }
        let ahead = published.wrapping_sub(self.last_used);
        if ahead > self.layout.size {
            return Some(Err(DeviceFault::UsedIndexJump {
                taken: self.last_used,
                published,
            }));
        }
        // Read the entry (and, after this returns, the request's buffers)
        // only after the index that says the device wrote them.
        fence(Ordering::Acquire);
        let entry = self.layout.used
            + RING_ENTRIES
            + USED_ENTRY_SIZE * usize::from(self.last_used % self.layout.size);
        let id = self.memory.read_u32(entry);
        let len = self.memory.read_u32(entry + 4);
        self.last_used = self.last_used.wrapping_add(1);
        let Some(head) = u16::try_from(id).ok().filter(|&id| id < self.layout.size) else {
            return Some(Err(DeviceFault::UsedIdOutOfRange {
                id,
                size: self.layout.size,
            }));
        };
        let count = self.chain_len[usize::from(head)];
        if count == 0 {
            return Some(Err(DeviceFault::UsedIdNotInFlight { id: head }));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::vec::Vec;

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
        let head = q.push(&request(0x4000_0000)).unwrap();
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
        assert!(q.pop_used().is_none());
        device.complete(&mut q, u32::from(head), 513);
        assert_eq!(q.pop_used(), Some(Ok(Used { head, len: 513 })));
        assert_eq!(q.free_descriptors(), 8);
        assert!(q.pop_used().is_none());
    }

    #[test]
    fn free_list_exhaustion_refuses_without_side_effects_and_recovers() {
        let mut q = queue(8);
        let mut device = Device::new();
        let first = q.push(&request(0x1000)).unwrap();
        let second = q.push(&request(0x2000)).unwrap();
        assert_eq!(q.push(&request(0x3000)), Err(QueueFull { free: 2 }));
        assert_eq!(q.push(&[]), Err(QueueFull { free: 2 }));
        // Two descriptors still fit a flush (header and status).
        let flush = q
            .push(&[buffer(0x3000, 16, false), buffer(0x3010, 1, true)])
            .unwrap();
        assert_eq!(q.free_descriptors(), 0);
        assert_eq!(
            q.push(&[buffer(0x4000, 16, false)]),
            Err(QueueFull { free: 0 })
        );
        // Only three chains were published.
        assert_eq!(device.take(&q), Some(first));
        assert_eq!(device.take(&q), Some(second));
        assert_eq!(device.take(&q), Some(flush));
        assert_eq!(device.take(&q), None);
        device.complete(&mut q, u32::from(second), 1);
        assert_eq!(q.pop_used().unwrap().unwrap().head, second);
        assert_eq!(q.free_descriptors(), 3);
        let again = q.push(&request(0x5000)).unwrap();
        assert_eq!(device.take(&q), Some(again));
        assert_eq!(Device::chain(&q, again)[0], (0x5000, 16, DESC_F_NEXT));
    }

    #[test]
    fn out_of_order_completion_frees_exactly_the_completed_chains() {
        let mut q = queue(16);
        let mut device = Device::new();
        let heads: Vec<u16> = (0..5)
            .map(|i| q.push(&request(0x10_0000 * (i + 1))).unwrap())
            .collect();
        assert_eq!(q.free_descriptors(), 1);
        for _ in 0..5 {
            device.take(&q).unwrap();
        }
        for &i in &[3, 0, 4] {
            device.complete(&mut q, u32::from(heads[i]), 1);
        }
        let popped: Vec<u16> = core::iter::from_fn(|| q.pop_used())
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
            .map(|i| q.push(&request(0x100_0000 * (i + 1))).unwrap())
            .collect();
        assert_eq!(q.free_descriptors(), 1);
        for head in new {
            assert_eq!(device.take(&q), Some(head));
            assert_eq!(Device::chain(&q, head).len(), 3);
        }
        for &i in &[2, 1] {
            device.complete(&mut q, u32::from(heads[i]), 1);
        }
        assert_eq!(q.pop_used().unwrap().unwrap().head, heads[2]);
        assert_eq!(q.pop_used().unwrap().unwrap().head, heads[1]);
    }

    #[test]
    fn sixteen_bit_indices_wrap_around() {
        let mut q = queue(4);
        let mut device = Device::new();
        // Two chains stay in flight across the wrap of both indices.
        let mut outstanding = std::collections::VecDeque::new();
        for round in 0..70_000_u32 {
            let head = q
                .push(&[
                    buffer(u64::from(round) << 12, 16, false),
                    buffer(1, 1, true),
                ])
                .unwrap();
            assert_eq!(device.take(&q), Some(head));
            outstanding.push_back(head);
            if outstanding.len() == 2 {
                let oldest = outstanding.pop_front().unwrap();
                device.complete(&mut q, u32::from(oldest), 1);
                assert_eq!(
                    q.pop_used(),
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
        let head = q.push(&request(0x1000)).unwrap();
        device.take(&q).unwrap();
        device.complete(&mut q, 8, 1);
        assert_eq!(
            q.pop_used(),
            Some(Err(DeviceFault::UsedIdOutOfRange { id: 8, size: 8 }))
        );
        device.complete(&mut q, u32::from(head) + 1, 1);
        assert_eq!(
            q.pop_used(),
            Some(Err(DeviceFault::UsedIdNotInFlight { id: head + 1 }))
        );
        device.complete(&mut q, u32::from(head), 1);
        assert_eq!(q.pop_used(), Some(Ok(Used { head, len: 1 })));
        // Returned twice.
        device.complete(&mut q, u32::from(head), 1);
        assert_eq!(
            q.pop_used(),
            Some(Err(DeviceFault::UsedIdNotInFlight { id: head }))
        );
        assert_eq!(q.free_descriptors(), 8);
        // An index more than a queue ahead.
        q.memory.write_u16(q.layout.used + RING_IDX, 4 + 9);
        assert_eq!(
            q.pop_used(),
            Some(Err(DeviceFault::UsedIndexJump {
                taken: 4,
                published: 13
            }))
        );
    }
}
