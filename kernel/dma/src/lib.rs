//! tidepool's DMA layer, without hardware: per-device DMA contexts, DMA
//! pools and their allocator, streaming maps with bounce buffers, and the
//! policy that decides the cache maintenance of every sync.
//!
//! # Model
//!
//! - **DMA addresses are physical addresses** (identity): no IOMMU, no
//!   `dma-ranges` translation. Under Xen, dom0 is mapped 1:1, so they are
//!   machine addresses as well, which `GNTTABOP_cache_flush` needs.
//! - **Every physical address has a class** ([`tidepool_mm::AddressMap::classify`]):
//!   linear RAM, a no-map pool (which one), a mapped pool, MMIO or unknown.
//!   The DMA layer never computes a linear address for no-map pool memory:
//!   it reaches pools only through their own windows, and `phys_to_virt` of
//!   pool memory is refused by the address map with an error naming the pool.
//! - **A device** ([`DmaDevice`], from [`DeviceSpec`]: `dma-coherent` and the
//!   `memory-region` pool of its device-tree node) gets coherent memory from
//!   its device-tree pool, else from the kernel's non-cacheable pool if it is
//!   not coherent, else from the kernel's linear pool ([`PoolRole`]). Its
//!   streaming maps bounce through its device-tree pool; without one the
//!   device uses the CPU buffer directly, which must be linear RAM.
//! - **A sync** does what [`sync_action`] says for (device coherent?, memory
//!   class, Xen's answer for the pool, window cacheable?, sync point,
//!   direction, and [`Host`]: whether a hypervisor maps the memory too). In
//!   short: coherent devices need nothing for cacheable memory; linear
//!   memory is cleaned by linear VA for the device and invalidated for the
//!   CPU; a no-map pool behind a non-cacheable window, cleaned and
//!   invalidated once at setup, needs nothing before the device and, under
//!   Xen, one invalidate after the device wrote (by Xen when it accepts the
//!   pool, through the window otherwise). The policy is proven against a
//!   pessimistic model of caches and aliases by the `tidepool-dma-model`
//!   crate, whose tests run this crate's real code.
//! - **Coherent memory has sync points too** ([`DmaDevice::sync_coherent`],
//!   decided by [`coherent_sync_action`]): before the CPU reads part of it
//!   the device wrote, or the device reads part the CPU wrote. Under a
//!   hypervisor whose directmap may hold stale lines of non-cacheable
//!   memory, an invalidate of just that part through the window for the
//!   reader that could hit them (the CPU for a non-coherent device, the
//!   device for a coherent one); nothing otherwise; never a hypercall, so
//!   a ring costs no flush.
//! - **Two kinds of device address** ([`Addressing`]): a bus device is given
//!   [`DmaAddr`]s; a grant device (a Xen PV back end, another domain) is
//!   given a grant reference per page ([`DmaMapping::grant_refs`]), made
//!   through the [`PageGrants`] boundary. Its memory comes from its own
//!   pool (CPU buffers are refused). Its pool buffers
//!   ([`DmaDevice::alloc_in_pool`]) use persistent grants, as Linux's blkfront does with
//!   `feature-persistent`: a page is granted at the first map that covers
//!   it and stays granted while the buffer lives, so a later map is a reuse
//!   (counted, `grants_reused`), not a new grant (`grants_made`); freeing
//!   the buffer ends its grants. A grant the back end still maps cannot be
//!   ended: the buffer is then leaked on purpose, never freed (the other
//!   domain could still write it), and the free fails with
//!   [`DmaError::GrantsStillMapped`]. Grants are made lazily rather than
//!   when the buffer is allocated so that pages a workload never reaches
//!   (a 4 KiB request in a 128 KiB slot) hold no grant-table entry. Its
//!   coherent memory ([`DmaDevice::alloc_coherent`]: a ring both sides use
//!   at any time for its whole life) is granted whole, read-write, when it
//!   is allocated ([`CoherentBuffer::grant_refs`]), counted and ended at
//!   its free the same way, and leaked the same way. A grant device is
//!   coherent ([`snoops_cpu_caches`]): the other side is a CPU.
//! - **Xen's answer is learned once per pool** when the pool is set up, by
//!   cleaning its first page (`Pool::probe_platform_flush`). A refusal
//!   during a later sync (e.g. `EPERM`) falls back to window maintenance for
//!   that sync and all later ones, is counted, and is reported once per pool
//!   to the [`WarningSink`].
//!
//! # Boundaries
//!
//! The machine is behind five traits, implemented by the kernel on aarch64
//! and by recording fakes in the tests: [`CacheMaintenance`] (`DC` by VA),
//! [`PlatformFlush`] (`GNTTABOP_cache_flush`, one batched call per sync),
//! [`DmaMemory`] (copies for bounce buffers), [`PageGrants`] (grant-table
//! entries) and [`WarningSink`].
//!
//! # Soundness
//!
//! Safe code cannot make the layer, or a device it programs, touch memory
//! the layer does not own. Memory enters only through two `unsafe` doors
//! with written contracts: [`PoolSet::add`] (a pool's memory and the
//! address map its windows come from) and [`CpuBuffer::new`] (a CPU buffer
//! to map). Handles ([`CpuBuffer`], [`DmaMapping`], [`CoherentBuffer`]) are
//! neither `Clone` nor `Copy` and have private fields, so memory is never
//! handed out twice; the four memory-touching boundary traits are
//! `unsafe` to implement and take ranges only this crate builds (`src/boundary.rs`
//! says why both).
//!
//! # No allocation on the I/O path
//!
//! Pool metadata is allocated once, by [`PoolSet::add`]. Map, unmap, syncs
//! and coherent allocation and free use no heap (a test counts allocations
//! around them). A grant device's pool buffer or coherent buffer allocates
//! its list of page grants when it is allocated (once, at setup: its
//! buffers are kept).
//!
//! # Console lines
//!
//! Stable and greppable; tests match them.
//! - Pool setup ([`Pool::setup_line`]):
//!   `dma: pool /reserved-memory/dma@78000000 0x78000000+0x400000 window 0xfffff00000000000 nc xen-flush=refused(EPERM) -> window VA maintenance`
//! - Device counters ([`DmaDevice::stats_line`]):
//!   `dma: stats /virtio_mmio@a003e00 syncs=12 hypercalls=12 pages=24 refusals=0 fallbacks=0 va_ops=0 va_bytes=0 bounced=98304 maps=6 unmaps=6 allocs=3 frees=0 coherent_syncs=0 coherent_va_ops=0`;
//!   a grant device's adds `grants_made=N grants_reused=N grants_ended=N grants_leaked=N`
//! - A refusal after an accepted probe ([`FlushRefusedWarning`]):
//!   `dma: warning: pool /reserved-memory/dma@78000000 xen-flush=refused(EPERM) in a sync for /virtio_mmio@a003e00 -> window VA maintenance from now on`
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod allocator;
mod boundary;
mod device;
mod error;
#[cfg(any(test, feature = "fake-grants"))]
pub mod fake_grants;
mod policy;
mod pool;

#[cfg(test)]
mod tests;

pub use allocator::FreeFault;
pub use boundary::{
    CacheMaintenance, CacheOp, DmaMemory, FlushDone, FlushErrno, FlushFailed, OwnedPhysRange,
    OwnedVirtRange, PageGrants, PlatformFlush,
};
pub use device::{
    Addressing, CoherentBuffer, CpuBuffer, DeviceSpec, DmaAddr, DmaDevice, DmaEnv, DmaMapping,
    DmaStats, FlushRefusedWarning, PoolBuffer, StatsLine, WarningSink,
};
pub use error::{DmaError, SetupError};
pub use policy::{
    DmaDirection, FlushSupport, Host, MemoryClass, SyncAction, SyncPoint, cache_op_for,
    coherent_sync_action, snoops_cpu_caches, sync_action,
};
pub use pool::{
    Pool, PoolError, PoolId, PoolLine, PoolPlacement, PoolRole, PoolSet, PoolSpec, PoolUsage,
    WindowAttributes,
};
