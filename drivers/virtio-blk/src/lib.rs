//! tidepool's virtio-mmio block driver (legacy and modern transports, one
//! split virtqueue), all of whose DMA — allocation, mapping and every sync —
//! goes through the device's [`DmaDevice`](tidepool_dma::DmaDevice).
//!
//! # Why not `virtio-drivers`
//!
//! `virtio-drivers`' `Hal` is a trait of static functions: `dma_alloc`,
//! `share` and `unshare` get no device, so they cannot reach the per-device
//! DMA context (the device's pool, its coherence, its counters) that
//! tidepool's DMA layer is built around. And its block driver shares a
//! request's header, data and status as three separate buffers: three
//! `share` calls, so three `ForDevice` syncs, which for a device whose pool
//! Xen flushes are three `GNTTABOP_cache_flush` hypercalls per request (and
//! as many `unshare` syncs after). This driver has its own transport and
//! queue so that a request is **one** region, **one** map and **one**
//! unmap, and costs at most one cache-flush hypercall.
//!
//! # What a request costs
//!
//! A request is one region, `[16-byte header | data | status byte]`,
//! contiguous. For a device without a pool of its own it is the slot's
//! staging buffer in linear RAM, allocated once at setup; for a device with
//! a pool it is built in place in that pool, in the slot's region (a
//! [`PoolBuffer`](tidepool_dma::PoolBuffer) for the largest request, from
//! the DMA layer, allocated once at setup: as many slots as the pool holds,
//! so no request allocates or waits for pool room), mapped for exactly the
//! request's bytes, so nothing is bounced and only the request's pages are
//! synced. The CPU writes the header,
//! the status byte and a write's data there (a read's data area is left to
//! the device), maps the region once, `Bidirectional` (the device reads the
//! header and writes the status; a read's data too), and hands the device a
//! chain of three descriptors pointing into it: header (device reads), data
//! (device writes for a read, reads for a write), status (device writes). A
//! flush has no data descriptor. Completion unmaps it once; `finish` lends
//! a read's data to its caller in place, as a slice of the region that
//! lives only during the call (the caller checksums or verifies it there:
//! no copy), and only then frees the slot or gives a pool region back. The
//! virtqueue itself is
//! coherent memory, synced only through the DMA layer's coherent sync
//! points (see *Ordering*), never with a hypercall.
//!
//! So a request is exactly two sync points, whatever its size: the map's
//! `ForDevice` and the unmap's `ForCpu`. What they cost follows the DMA
//! layer's policy (`tidepool_dma::sync_action`; proven on a cache model by
//! `tidepool-dma-model`):
//!
//! | device                                   | `ForDevice` (submit)                  | `ForCpu` (completion) |
//! |------------------------------------------|---------------------------------------|-----------------------|
//! | coherent, linear RAM                     | nothing                               | nothing               |
//! | coherent, no-map pool under Xen          | 1 invalidate (hypercall, or through the window if Xen refuses) | nothing |
//! | non-coherent, no pool (linear RAM)       | 1 `DC CIVAC` range by linear VA       | 1 `DC IVAC` range by linear VA |
//! | non-coherent, no-map pool, Xen accepts   | nothing                               | **1 hypercall** (invalidate, one batch, every page of the region) |
//! | non-coherent, no-map pool, Xen refuses   | nothing                               | 1 `DC IVAC` range through the pool window (the refusal was learned once, at setup) |
//! | any, no-map pool, no Xen                 | nothing                               | nothing               |
//!
//! A no-map pool behind a non-cacheable window holds no dirty line (it was
//! cleaned and invalidated once at setup and is only written non-cacheable
//! since), so the device reads what the CPU wrote; only Xen's
//! write-back directmap can allocate (clean, possibly stale) lines of it,
//! which the completion's invalidate drops before the CPU reads the
//! region. So under Xen a request through a pool costs one
//! `GNTTABOP_cache_flush` hypercall, where `virtio-drivers`' three separate
//! shares would cost three. The driver
//! only ever syncs its one mapping; the policy decides the rest. A region
//! starts on a page (slots and pool regions are page-aligned) and is at
//! most 16 + 256 KiB + 1 bytes, so 65 pages: one batch of the kernel's
//! `GNTTABOP_cache_flush` (up to 128 entries,
//! `tidepool_xen_abi::CACHE_FLUSH_MAX_BATCH`).
//!
//! Bytes copied per request are therefore the same on every path: the
//! header and status, and a write's data in; a read's data is not copied
//! at all. Bouncing the
//! region through the pool (the DMA layer's [`map`](tidepool_dma::DmaDevice::map))
//! would copy the whole region in and out again, whatever the direction;
//! issue 15's `cargo xtask bench` run measured that path at 0.43x of the
//! coherent one for sequential reads. Every sync decision stays the DMA layer's: a pool
//! buffer is synced exactly as a bounce buffer at the same address.
//!
//! # Using it
//!
//! ```text
//! // Once per device, at boot (setup allocates):
//! let transport = unsafe { MmioTransport::new(mmio_va) };          // the register block
//! let mut disk = BlockDevice::new(transport, dma_device, &mut env, Options::default())?;
//! console!("{}", disk.info_line());
//! // Blocking, for early use (polls; splits large transfers):
//! disk.read(&mut env, lba, &mut buffer, &mut || now(), timeout)?;
//! // Asynchronous:
//! let token = disk.submit(&mut env, Request::Read { lba, sectors }, Deadline::after(now(), timeout))?;
//! // ... more submissions; the batch ends with one notification, before any wait:
//! disk.kick(&mut env);
//! //   or, waiting at most `timeout` for a free slot (`tidepool_block::BlockDriver`):
//! let token = disk.submit_waiting(&mut env, request, &mut || now(), timeout, &mut |disk, env| { /* sleep, then take what came back */ })?;
//! //   interrupts: the GIC SPI handler of the transport's `interrupts` runs
//! //   `handler.handle()` (it acknowledges and notes), with
//! let handler = disk.interrupt_handler(&PENDING).unwrap();
//! //   and after it (disk.interrupt_noted()), outside interrupt context:
//! let outcome = disk.handle_interrupt(&mut env);
//! for token in &outcome.completions { /* ready: finish it */ }
//! //   outcome.capacity: report it; outcome.fault: the device failed, its requests fail
//! //   or, without interrupts: disk.poll(&mut env);
//! //   from a timer: for token in &disk.expire(now()) { /* timed out */ }
//! match disk.finish(&mut env, token, &mut |data| read_in_place(data)) { Poll::Ready(result) => ..., Poll::Pending => ... }
//! console!("{}", disk.stats_line());
//! ```
//!
//! The kernel supplies time: deadlines are plain numbers in its clock's
//! units, compared with the `now` it passes to [`BlockDevice::expire`]. A
//! request that timed out is reported once; its slot stays with the device
//! (which may still write its region) until the device returns it, and
//! [`BlockDevice::shutdown`] resets the device and reclaims everything.
//!
//! # Ordering
//!
//! The ring is coherent memory (non-cacheable for a non-coherent device).
//! It needs barriers, and, where the DMA layer's policy says so, its sync
//! points (`DmaDevice::sync_coherent`, decided by
//! `tidepool_dma::coherent_sync_action`): under Xen, whose write-back
//! directmap may allocate clean, stale lines of it at any moment, the
//! lines about to be read are invalidated through the window first. For a
//! non-coherent device that is `used.idx` before the driver reads it and
//! the entries it publishes after (the CPU's non-cacheable reads could hit
//! a stale line); for a coherent device in a non-cacheable pool, the
//! descriptors and available ring before `avail.idx` is written and
//! `avail.idx` after (its snooping reads could). Each is a `DC IVAC` of a
//! line or a few, counted as `coherent_va_ops` in the `dma: stats` line;
//! a request through a pool Xen flushes keeps its one hypercall.
//!
//! `VIRTIO_F_ORDER_PLATFORM` is not negotiated, but the barriers are the
//! ones a device that is not a CPU needs (a real DMA master as well as a
//! QEMU or Xen backend): outer shareable, as Linux's `dma_wmb`/`dma_rmb` and
//! the barriers inside `writel`/`readl`. They are the transport's
//! ([`Transport::barrier`], `DMB OSHST`/`DMB OSHLD` in [`MmioTransport`]):
//! a [`Barrier::DmaWrite`] between the descriptors and ring entry and
//! `avail.idx`; a [`Barrier::DmaFull`] between the last `avail.idx` of a
//! batch and the read of the device's `VIRTQ_USED_F_NO_NOTIFY` (a store
//! then a load), which also orders the index before the `QueueNotify`
//! write; a
//! [`Barrier::DmaRead`] after the interrupt's causes were read and before
//! the used ring is, and between `used.idx` and the entries and request
//! regions it publishes. A request's region is synced by `map` (whose
//! cache maintenance or hypercall, where it has one, has completed when it
//! returns) before its descriptors are written.
//!
//! # Features
//!
//! Accepted when offered, and nothing else: `VIRTIO_BLK_F_RO` (writes are
//! refused with [`BlkError::ReadOnly`] before the device is touched),
//! `VIRTIO_BLK_F_BLK_SIZE` (transfers must be whole blocks),
//! `VIRTIO_BLK_F_FLUSH`, `VIRTIO_BLK_F_SIZE_MAX` (lowers the request size),
//! and on a modern transport `VIRTIO_F_VERSION_1` (required) and
//! `VIRTIO_F_ACCESS_PLATFORM` (every address comes from the DMA layer).
//! Not indirect descriptors, not event indices, not packed rings.
//!
//! # No allocation on the I/O path
//!
//! Setup allocates the staging buffers (devices without a pool), the slot
//! table and (through the DMA layer) the ring and a pool device's request
//! regions, one per slot, kept until shutdown. Submission, interrupt handling, polling, expiry,
//! finishing and the blocking helpers allocate nothing (a test counts).
//!
//! # `unsafe`
//!
//! The crate is `#![deny(unsafe_code)]` except for `mmio` (the one
//! constructor of the register block, [`MmioTransport::new`]) and these
//! places in `device`: the ring's window address and a pool device's
//! request regions (`PoolBuffer`s) become
//! [`tidepool_block::SharedMemory`]s (bounds-checked volatile and copying
//! accesses to memory shared with the device; vouched for by the DMA
//! layer's `PoolSet::add` contract), a request slot of the staging
//! buffers becomes a `CpuBuffer` to map, and `finish` lends a finished
//! read's data as a slice (`SharedMemory::bytes`: the slot is done, its
//! mapping gone, and it is not mapped again while `&mut self` is held).
//!
//! # Console lines
//!
//! - [`BlockDevice::info_line`]:
//!   `blk: /virtio_mmio@a003e00 virtio-mmio modern capacity=2048 block_size=512 max_request=262144 queue=128 slots=16 read_only=no flush=yes features=0x300000240 (blk-size,flush,version-1,access-platform)`
//! - [`BlockDevice::stats_line`]:
//!   `blk: stats /virtio_mmio@a003e00 reads=12 writes=3 flushes=1 errors=0 timeouts=0 bytes_read=49152 bytes_written=12288 notifies=4`
//! - [`CapacityChange`] (from [`BlockDevice::handle_interrupt`]):
//!   `blk: /virtio_mmio@a003e00 capacity=16384 was=8192`
//!
//! Logged by the driver itself (the `log` crate), when memory is kept from
//! a device that may still use it or a device is dropped without
//! [`BlockDevice::shutdown`]:
//! - `blk: /virtio_mmio@a003e00 reset incomplete: staging buffers leaked bytes=4259840 (the device may still write them)`
//! - `blk: /virtio_mmio@a003e00 reset incomplete: its ring stays allocated (the device may still write it)`
//! - `blk: /virtio_mmio@a003e00 dropped without shutdown: reset; its ring and bounce buffers stay allocated`
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod device;
mod error;
#[allow(unsafe_code)]
mod mmio;
mod queue;
mod request;
pub mod transport;

pub use device::{
    BlockDevice, CapacityChange, InfoLine, InterruptHandler, InterruptOutcome, Options,
};
pub use error::{BlkError, DeviceFault, InitError};
pub use mmio::{MmioInterrupt, MmioTransport};
pub use queue::QUEUE_SIZE_LIMIT;
pub use request::{
    Completion, Completions, Deadline, DeviceStatus, MAX_IN_FLIGHT, MAX_REQUEST_BYTES, Op, Request,
    SECTOR_SIZE, Token,
};
pub use transport::{Barrier, FeatureSet, InterruptRegisters, Transport, TransportVersion};
