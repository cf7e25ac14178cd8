//! The DMA context of one device: coherent allocations, streaming maps and
//! syncs, with per-device counters.
//!
//! Nothing here touches the heap: map, unmap, sync and coherent allocation
//! run on the I/O path. All state they change was allocated at setup (the
//! pools' bitmaps) or lives in the device itself (the counters).

use alloc::vec::Vec;
use core::fmt;

use tidepool_mm::{AddressClass, AddressMap, PAGE_SIZE, PhysAddr, PhysRange, VirtAddr};
use tidepool_xen_abi::{Grant, GrantRef};

use crate::boundary::{
    CacheMaintenance, CacheOp, DmaMemory, FlushErrno, OwnedPhysRange, OwnedVirtRange, PageGrants,
    PlatformFlush,
};
use crate::error::{DmaError, SetupError};
use crate::policy::{
    DmaDirection, FlushSupport, MemoryClass, SyncAction, SyncPoint, coherent_sync_action,
    snoops_cpu_caches, sync_action,
};
use crate::pool::{Pool, PoolId, PoolRole, PoolSet, first_rejected_byte};

mod grant;

pub use grant::Addressing;

/// A DMA address: what a device is given to reach memory.
///
/// DMA addresses are physical addresses (identity): tidepool uses no IOMMU
/// and no `dma-ranges` translation. Under Xen, dom0 is mapped 1:1, so they
/// are machine addresses too.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DmaAddr(pub u64);

impl DmaAddr {
    /// The DMA address of a physical address (identity).
    pub const fn from_phys(pa: PhysAddr) -> Self {
        Self(pa.0)
    }

    /// The physical address behind a DMA address (identity).
    pub const fn phys(self) -> PhysAddr {
        PhysAddr(self.0)
    }
}

impl fmt::Display for DmaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What the device tree (or, for a grant device, the PV protocol) says
/// about a device's DMA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceSpec<'a> {
    /// The device node's path, e.g. `/virtio_mmio@a003e00`, or a PV
    /// device's name (`xvda`).
    pub name: &'a str,
    /// Whether the node has `dma-coherent` (a grant device is coherent
    /// whatever this says).
    pub coherent: bool,
    /// The pool its memory comes from, by name: the `shared-dma-pool` its
    /// `memory-region` points at, or a grant device's private pool.
    pub pool: Option<&'a str>,
    /// The kind of address the device is given.
    pub addressing: Addressing,
}

/// A CPU buffer to map for streaming DMA, by kernel virtual address.
///
/// It is the mapping's to use: [`DmaDevice::map`] consumes it, the device and
/// the layer's copies use its memory while the mapping lives, and it is
/// neither `Clone` nor `Copy`, so one buffer is never mapped twice at once.
///
/// ```compile_fail,E0133
/// // Building one is `unsafe`: its creator vouches for the memory.
/// let buffer = tidepool_dma::CpuBuffer::new(tidepool_mm::VirtAddr(0x1000), 8);
/// ```
///
/// ```compile_fail,E0451
/// let buffer = tidepool_dma::CpuBuffer { virt: tidepool_mm::VirtAddr(0x1000), len: 8 };
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct CpuBuffer {
    virt: VirtAddr,
    len: u64,
}

impl CpuBuffer {
    /// The `len` bytes at `virt`, to be mapped for streaming DMA.
    ///
    /// Zero or wrapping lengths are accepted here and refused by
    /// [`DmaDevice::map`] with a typed error.
    ///
    /// # Safety
    ///
    /// `[virt, virt + len)` is mapped, readable and writable normal memory,
    /// and from now until the mapping made from this buffer is unmapped
    /// (or, if it is dropped instead, until no device can still use the
    /// address it gave: the device was reset) nothing but the DMA layer and
    /// the device reads or writes it, and it stays mapped and allocated: the
    /// layer copies to and from it, and the device may reach it by its
    /// physical address.
    #[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
    pub const unsafe fn new(virt: VirtAddr, len: u64) -> Self {
        Self { virt, len }
    }

    /// First byte.
    pub const fn virt(&self) -> VirtAddr {
        self.virt
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer is empty (which [`DmaDevice::map`] refuses).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as a range the layer lends to its boundary traits.
    fn owned(&self) -> OwnedVirtRange {
        OwnedVirtRange::new(self.virt, self.len)
    }
}

/// Told once per pool when Xen refuses a flush during a sync that the
/// one-time probe had accepted.
pub trait WarningSink {
    /// Reports the warning (the kernel prints its `Display` line).
    fn warn(&mut self, warning: &FlushRefusedWarning<'_>);
}

/// Xen refused a flush of a pool it had accepted flushes for.
///
/// Display (one console line):
/// `dma: warning: pool <pool> xen-flush=refused(<ERRNO>) in a sync for <device> -> window VA maintenance from now on`
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlushRefusedWarning<'a> {
    /// The device whose sync saw it.
    pub device: &'a str,
    /// The pool.
    pub pool: &'a str,
    /// What Xen said.
    pub errno: FlushErrno,
}

impl fmt::Display for FlushRefusedWarning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dma: warning: pool {} xen-flush=refused({}) in a sync for {} -> window VA maintenance from now on",
            self.pool, self.errno, self.device
        )
    }
}

/// Everything a DMA operation uses besides the device itself.
///
/// The pools carry the address map they were checked against, so an
/// operation cannot be given another one.
pub struct DmaEnv<'e, 'a> {
    /// All pools.
    pub pools: &'e mut PoolSet<'a>,
    /// Cache maintenance by VA.
    pub cache: &'e mut dyn CacheMaintenance,
    /// Copies to and from pool windows.
    pub memory: &'e mut dyn DmaMemory,
    /// The hypervisor's flush by physical address; `None` without Xen (or
    /// where guest-physical is not machine-physical).
    pub platform: Option<&'e mut dyn PlatformFlush>,
    /// Where warnings go.
    pub warnings: &'e mut dyn WarningSink,
    /// This domain's grant table, for grant devices; `None` outside Xen.
    pub grants: Option<&'e mut dyn PageGrants>,
}

/// Where a mapping's device-visible memory is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MappingTarget {
    /// The CPU buffer itself, in linear RAM.
    Direct { linear: VirtAddr },
    /// A bounce buffer in the device's pool.
    Bounce {
        pool: PoolId,
        block: PhysRange,
        window: VirtAddr,
    },
    /// A [`PoolBuffer`] the CPU filled in place: nothing is copied.
    InPool {
        pool: PoolId,
        block: PhysRange,
        window: VirtAddr,
    },
}

impl MappingTarget {
    /// The pool memory the device is given, if it is pool memory.
    fn pool_block(&self) -> Option<(PoolId, PhysRange, VirtAddr)> {
        match *self {
            Self::Direct { .. } => None,
            Self::Bounce {
                pool,
                block,
                window,
            }
            | Self::InPool {
                pool,
                block,
                window,
            } => Some((pool, block, window)),
        }
    }
}

/// A live streaming mapping. Unmapping consumes it; it cannot be copied.
#[derive(PartialEq, Eq, Debug)]
pub struct DmaMapping<'a> {
    device: &'a str,
    dma: DmaAddr,
    cpu: CpuBuffer,
    dir: DmaDirection,
    target: MappingTarget,
    /// A grant device's page grants (those of its pool buffer); empty for
    /// a bus device.
    grants: Vec<Option<Grant>>,
}

impl<'a> DmaMapping<'a> {
    /// The address to give a bus device. A grant device is given
    /// [`Self::grant_refs`] instead (this is then the guest-physical
    /// address, which the other domain cannot use).
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// What a grant device is given: the grant reference of each page of
    /// the mapping, in order (none for a bus device).
    pub fn grant_refs(&self) -> impl Iterator<Item = GrantRef> + '_ {
        let pages = self.cpu.len.div_ceil(PAGE_SIZE) as usize;
        self.grants
            .iter()
            .take(pages)
            .map_while(|grant| grant.as_ref().map(Grant::gref))
    }

    /// The mapped length in bytes.
    pub fn size(&self) -> u64 {
        self.cpu.len
    }

    /// The direction it was mapped for.
    pub fn direction(&self) -> DmaDirection {
        self.dir
    }

    /// Whether the device sees a bounce buffer in its pool rather than the
    /// CPU buffer itself.
    pub fn is_bounced(&self) -> bool {
        matches!(self.target, MappingTarget::Bounce { .. })
    }

    /// The device that made it.
    pub fn device(&self) -> &'a str {
        self.device
    }

    /// The pool buffer a mapping of [`DmaDevice::map_in_pool`] was made
    /// from, with its grants.
    fn into_pool_buffer(self, pool: PoolId, block: PhysRange) -> PoolBuffer<'a> {
        PoolBuffer {
            device: self.device,
            pool,
            block,
            window: self.cpu.virt,
            grants: self.grants,
        }
    }
}

/// A coherent DMA buffer. Freeing consumes it; it cannot be copied.
///
/// A grant device's coherent buffer is memory shared with the other domain
/// for as long as the buffer lives (a PV ring): every page is granted, read
/// and write, when it is allocated ([`Self::grant_refs`]), and freeing it
/// ends those grants, or leaks it for good if the other domain still maps
/// one ([`DmaDevice::free_coherent`]).
#[derive(PartialEq, Eq, Debug)]
pub struct CoherentBuffer<'a> {
    device: &'a str,
    pool: PoolId,
    dma: DmaAddr,
    virt: VirtAddr,
    size: u64,
    /// A grant device's page grants, one per page, all made; empty for a
    /// bus device.
    grants: Vec<Option<Grant>>,
}

impl<'a> CoherentBuffer<'a> {
    /// The address to give a bus device. A grant device is given
    /// [`Self::grant_refs`].
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// The grant references of a grant device's buffer, one per page in
    /// order; none for a bus device.
    pub fn grant_refs(&self) -> impl Iterator<Item = GrantRef> + '_ {
        self.grants.iter().flatten().map(Grant::gref)
    }

    /// Where the CPU reaches it: the pool's window (linear for a linear pool).
    pub fn virt(&self) -> VirtAddr {
        self.virt
    }

    /// Its size in bytes (whole pages).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The pool it came from.
    pub fn pool(&self) -> PoolId {
        self.pool
    }

    /// The device that allocated it.
    pub fn device(&self) -> &'a str {
        self.device
    }
}

/// Streaming memory in the device's own pool, which the CPU fills and reads
/// in place through the pool's window and the device is given directly: no
/// bounce copy either way. Its syncs are the DMA layer's, the same as a
/// bounce buffer's at that address. Mapping it hands it to the device
/// ([`DmaDevice::map_in_pool`] consumes it and [`DmaDevice::unmap_in_pool`]
/// gives it back), so it cannot be freed or refilled while the device may
/// use it; freeing consumes it. Its contents are not zeroed: a fresh buffer
/// holds what this pool's earlier users left.
///
/// A grant device's buffer carries its pages' grants: made at the first map
/// that covers a page, kept while the buffer lives, ended when it is freed.
#[derive(PartialEq, Eq, Debug)]
pub struct PoolBuffer<'a> {
    device: &'a str,
    pool: PoolId,
    block: PhysRange,
    window: VirtAddr,
    /// One entry per page for a grant device (its grant, once made); empty
    /// for a bus device.
    grants: Vec<Option<Grant>>,
}

impl<'a> PoolBuffer<'a> {
    /// Where the CPU reaches it: the pool's window.
    pub fn virt(&self) -> VirtAddr {
        self.window
    }

    /// Its DMA address (a bus device's; a grant device is given the
    /// mapping's [`DmaMapping::grant_refs`]).
    pub fn dma_addr(&self) -> DmaAddr {
        DmaAddr::from_phys(self.block.base)
    }

    /// Pages granted so far (a grant device's buffer; 0 otherwise).
    pub fn granted_pages(&self) -> usize {
        self.grants.iter().flatten().count()
    }

    /// Its size in bytes (whole pages).
    pub fn size(&self) -> u64 {
        self.block.size
    }

    /// The device that allocated it.
    pub fn device(&self) -> &'a str {
        self.device
    }
}

/// Per-device counters. Every sync path adds to them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DmaStats {
    /// Sync points: explicit syncs plus the one in every map and unmap.
    pub syncs: u64,
    /// Platform flush hypercalls made (refused ones included).
    pub hypercalls: u64,
    /// Pages flushed by those hypercalls.
    pub pages: u64,
    /// Platform flushes refused during syncs.
    pub refusals: u64,
    /// Syncs that did window VA maintenance because Xen refused the pool
    /// (at its probe or during the sync).
    pub fallbacks: u64,
    /// Cache maintenance calls by VA (linear or window).
    pub va_ops: u64,
    /// Bytes covered by those calls.
    pub va_bytes: u64,
    /// Bytes copied between CPU buffers and bounce buffers, both ways.
    pub bounced: u64,
    /// Streaming maps.
    pub maps: u64,
    /// Streaming unmaps.
    pub unmaps: u64,
    /// Coherent allocations.
    pub allocs: u64,
    /// Coherent frees.
    pub frees: u64,
    /// Sync points of coherent memory ([`DmaDevice::sync_coherent`]); not
    /// in `syncs`, which counts those of streaming mappings.
    pub coherent_syncs: u64,
    /// Cache maintenance calls by VA they made; not in `va_ops`.
    pub coherent_va_ops: u64,
    /// Grants made (a grant device's pages, each at the first map that
    /// covers it).
    pub grants_made: u64,
    /// Pages mapped that were already granted (no new grant).
    pub grants_reused: u64,
    /// Grants ended (their buffers freed).
    pub grants_ended: u64,
    /// Grants that could not be ended (the other domain still mapped them)
    /// and whose pages are leaked on purpose.
    pub grants_leaked: u64,
}

/// The console line of a device's counters:
///
/// `dma: stats <device> syncs=N hypercalls=N pages=N refusals=N fallbacks=N va_ops=N va_bytes=N bounced=N maps=N unmaps=N allocs=N frees=N coherent_syncs=N coherent_va_ops=N`
///
/// Keys are the [`DmaStats`] fields, in that order, in decimal; the four
/// `grants_*` keys only for a grant device, after the others:
/// ` grants_made=N grants_reused=N grants_ended=N grants_leaked=N`.
pub struct StatsLine<'d, 'a>(&'d DmaDevice<'a>);

impl fmt::Display for StatsLine<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.0.stats;
        write!(
            f,
            "dma: stats {} syncs={} hypercalls={} pages={} refusals={} fallbacks={} va_ops={} va_bytes={} \
             bounced={} maps={} unmaps={} allocs={} frees={} coherent_syncs={} coherent_va_ops={}",
            self.0.name,
            s.syncs,
            s.hypercalls,
            s.pages,
            s.refusals,
            s.fallbacks,
            s.va_ops,
            s.va_bytes,
            s.bounced,
            s.maps,
            s.unmaps,
            s.allocs,
            s.frees,
            s.coherent_syncs,
            s.coherent_va_ops
        )?;
        if let Addressing::Grant { .. } = self.0.addressing {
            write!(
                f,
                " grants_made={} grants_reused={} grants_ended={} grants_leaked={}",
                s.grants_made, s.grants_reused, s.grants_ended, s.grants_leaked
            )?;
        }
        Ok(())
    }
}

/// The DMA context of one device.
///
/// - Coherent memory comes from its device-tree pool if it has one, else
///   from the kernel's non-cacheable pool if the device is not coherent, else
///   from the kernel's linear pool.
/// - Streaming maps bounce through its device-tree pool if it has one;
///   otherwise the device is given the CPU buffer's own physical address,
///   which must be linear RAM.
/// - Syncs follow [`sync_action`].
/// - A grant device ([`Addressing::Grant`]) is given only buffers of its
///   pool, granted page by page ([`Self::map_in_pool`]).
pub struct DmaDevice<'a> {
    name: &'a str,
    addressing: Addressing,
    coherent: bool,
    private_pool: Option<PoolId>,
    coherent_pool: PoolId,
    stats: DmaStats,
}

impl<'a> DmaDevice<'a> {
    /// The context of the device `spec` describes, with its pools resolved.
    pub fn new(spec: DeviceSpec<'a>, pools: &PoolSet<'a>) -> Result<Self, SetupError<'a>> {
        let device = spec.name;
        let private_pool = match spec.pool {
            Some(pool) => Some(
                pools
                    .find(pool)
                    .ok_or(SetupError::UnknownPool { device, pool })?,
            ),
            None => None,
        };
        if matches!(spec.addressing, Addressing::Grant { .. }) && private_pool.is_none() {
            return Err(SetupError::GrantDeviceWithoutPool { device });
        }
        let coherent = snoops_cpu_caches(spec.addressing, spec.coherent);
        let coherent_pool = match private_pool {
            Some(pool) => pool,
            None => {
                let role = if coherent {
                    PoolRole::KernelLinear
                } else {
                    PoolRole::KernelNonCacheable
                };
                pools
                    .kernel_pool(role)
                    .ok_or(SetupError::NoKernelPool { device, role })?
            }
        };
        Ok(Self {
            name: device,
            addressing: spec.addressing,
            coherent,
            private_pool,
            coherent_pool,
            stats: DmaStats::default(),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The kind of address it is given.
    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    /// Whether the device is DMA-coherent (always, for a grant device).
    pub fn is_coherent(&self) -> bool {
        self.coherent
    }

    /// Its device-tree pool, if any.
    pub fn private_pool(&self) -> Option<PoolId> {
        self.private_pool
    }

    /// The pool its coherent memory comes from.
    pub fn coherent_pool(&self) -> PoolId {
        self.coherent_pool
    }

    /// Its counters.
    pub fn stats(&self) -> &DmaStats {
        &self.stats
    }

    /// Its counters as a console line.
    pub fn stats_line(&self) -> StatsLine<'_, 'a> {
        StatsLine(self)
    }

    fn pool<'p>(&self, pools: &'p PoolSet<'a>, id: PoolId) -> Result<&'p Pool<'a>, DmaError<'a>> {
        pools.get(id).ok_or(DmaError::UnknownPoolId {
            device: self.name,
            pool: id,
        })
    }

    fn pool_mut<'p>(
        &self,
        pools: &'p mut PoolSet<'a>,
        id: PoolId,
    ) -> Result<&'p mut Pool<'a>, DmaError<'a>> {
        pools.get_mut(id).ok_or(DmaError::UnknownPoolId {
            device: self.name,
            pool: id,
        })
    }

    fn check_owner(&self, owner: &'a str) -> Result<(), DmaError<'a>> {
        if owner == self.name {
            Ok(())
        } else {
            Err(DmaError::ForeignHandle {
                device: self.name,
                owner,
            })
        }
    }

    /// Allocates `size` bytes (whole pages) of zeroed coherent memory at a
    /// DMA address that is a multiple of `align` (a power of two).
    ///
    /// A grant device's coherent memory comes from its pool and every page
    /// of it is granted now, read-write ([`CoherentBuffer::grant_refs`]):
    /// it is the memory both sides use at any time for the buffer's whole
    /// life, with no hand-over between them (a PV ring), which is what
    /// coherent memory is, and unlike a pool buffer there is no map at
    /// which to grant it later (nor anything to gain: the back end maps
    /// every page of a ring when it connects). Its list of grants is the
    /// one heap allocation (a grant device allocates at setup only). If a
    /// grant is refused, the grants made for it are ended and the memory
    /// freed before the refusal is returned (or kept for good, counted in
    /// `grants_leaked`, if one could not be ended).
    pub fn alloc_coherent(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        size: u64,
        align: u64,
    ) -> Result<CoherentBuffer<'a>, DmaError<'a>> {
        let device = self.name;
        let pool_id = self.coherent_pool;
        let pool = self.pool_mut(env.pools, pool_id)?;
        if !self.coherent && pool.window_cacheable() {
            return Err(DmaError::CacheableCoherentPool {
                device,
                pool: pool.name(),
            });
        }
        let block = pool
            .alloc(size, align)
            .map_err(|error| DmaError::Pool { device, error })?;
        let virt = window_address(pool, block.base);
        env.memory.zero(&OwnedVirtRange::new(virt, block.size));
        let grants = self.grant_coherent(env, pool_id, block)?;
        self.stats.allocs += 1;
        Ok(CoherentBuffer {
            device,
            pool: pool_id,
            dma: DmaAddr::from_phys(block.base),
            virt,
            size: block.size,
            grants,
        })
    }

    /// Frees a coherent buffer of this device. A grant device's grants of
    /// it are ended first; if the other domain still maps any, the buffer
    /// is not freed but leaked, for good, with
    /// [`DmaError::GrantsStillMapped`], as [`Self::free_in_pool`] does.
    pub fn free_coherent(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        buffer: CoherentBuffer<'a>,
    ) -> Result<(), DmaError<'a>> {
        self.check_owner(buffer.device)?;
        let block = PhysRange {
            base: buffer.dma.phys(),
            size: buffer.size,
        };
        self.release_block(env, buffer.pool, block, buffer.grants)?;
        self.stats.frees += 1;
        Ok(())
    }

    /// Allocates `size` bytes (whole pages, not zeroed) of streaming memory
    /// in the device's own pool, for requests built in place
    /// ([`Self::map_in_pool`]). Refused for a device without a pool: its
    /// streaming memory is its CPU buffers ([`Self::map`]).
    ///
    /// A grant device's buffer is the memory it will grant; it grants
    /// nothing yet, but allocates its list of page grants here (a grant
    /// device's buffers are allocated once, at setup, and kept).
    pub fn alloc_in_pool(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        size: u64,
    ) -> Result<PoolBuffer<'a>, DmaError<'a>> {
        let device = self.name;
        let pool_id = self.private_pool.ok_or(DmaError::NoDevicePool { device })?;
        let pool = self.pool_mut(env.pools, pool_id)?;
        let block = pool
            .alloc(size, PAGE_SIZE)
            .map_err(|error| DmaError::Pool { device, error })?;
        let grants = self.no_grants_yet(block);
        Ok(PoolBuffer {
            device,
            pool: pool_id,
            window: window_address(pool, block.base),
            block,
            grants,
        })
    }

    /// Frees a pool buffer of this device. A grant device's grants of it
    /// are ended first; if the other domain still maps any, the buffer is
    /// not freed but leaked, for good, with [`DmaError::GrantsStillMapped`]
    /// (that domain may still write it).
    pub fn free_in_pool(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        buffer: PoolBuffer<'a>,
    ) -> Result<(), DmaError<'a>> {
        self.check_owner(buffer.device)?;
        self.release_block(env, buffer.pool, buffer.block, buffer.grants)
    }

    /// Ends a grant device's `grants` of `block`, then frees the block; a
    /// grant that cannot be ended leaves the block allocated for good.
    fn release_block(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        pool: PoolId,
        block: PhysRange,
        grants: Vec<Option<Grant>>,
    ) -> Result<(), DmaError<'a>> {
        let device = self.name;
        self.end_grants(env, block, grants)?;
        self.pool_mut(env.pools, pool)?
            .free(block)
            .map_err(|error| DmaError::Pool { device, error })
    }

    /// Maps the first `len` bytes of `buffer` for streaming DMA in direction
    /// `dir` and syncs them for the device, copying nothing: the device is
    /// given the buffer itself. Only the mapped bytes are synced, now and at
    /// unmap. On a refusal (another device's buffer, `len` zero or past the
    /// buffer, a grant the table refused) the buffer comes back with the
    /// error.
    ///
    /// A grant device is given the grant of each mapped page
    /// ([`DmaMapping::grant_refs`]): made now for a page never granted,
    /// reused (and counted so) for one granted by an earlier map.
    #[allow(clippy::result_large_err)]
    pub fn map_in_pool(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        buffer: PoolBuffer<'a>,
        len: u64,
        dir: DmaDirection,
    ) -> Result<DmaMapping<'a>, (DmaError<'a>, PoolBuffer<'a>)> {
        if let Err(error) = self.check_owner(buffer.device) {
            return Err((error, buffer));
        }
        if len == 0 {
            return Err((DmaError::ZeroLength { device: self.name }, buffer));
        }
        if len > buffer.block.size {
            let error = DmaError::BufferOutOfRange {
                device: self.name,
                virt: buffer.window,
                len,
            };
            return Err((error, buffer));
        }
        let mut buffer = buffer;
        if let Err(error) = self.grant_pages(env, buffer.block, &mut buffer.grants, len) {
            return Err((error, buffer));
        }
        let mapping = DmaMapping {
            device: self.name,
            dma: buffer.dma_addr(),
            cpu: CpuBuffer {
                virt: buffer.window,
                len,
            },
            dir,
            target: MappingTarget::InPool {
                pool: buffer.pool,
                block: buffer.block,
                window: buffer.window,
            },
            grants: buffer.grants,
        };
        if let Err(error) = self.cache_sync(env, &mapping, SyncPoint::ForDevice) {
            return Err((error, mapping.into_pool_buffer(buffer.pool, buffer.block)));
        }
        self.stats.maps += 1;
        Ok(mapping)
    }

    /// Syncs a mapping made by [`Self::map_in_pool`] for the CPU and gives
    /// its buffer back, whose bytes the CPU may then read in place. Any
    /// other mapping is refused (and consumed: [`Self::unmap`] is its way
    /// back).
    pub fn unmap_in_pool(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        mapping: DmaMapping<'a>,
    ) -> Result<PoolBuffer<'a>, DmaError<'a>> {
        self.check_owner(mapping.device)?;
        let MappingTarget::InPool { pool, block, .. } = mapping.target else {
            return Err(DmaError::NotInPool {
                device: self.name,
                dma: mapping.dma,
            });
        };
        if !self.pool(env.pools, pool)?.is_allocation(block) {
            return Err(DmaError::NoSuchMapping {
                device: self.name,
                dma: mapping.dma,
                len: mapping.cpu.len,
            });
        }
        self.cache_sync(env, &mapping, SyncPoint::ForCpu)?;
        self.stats.unmaps += 1;
        Ok(mapping.into_pool_buffer(pool, block))
    }

    /// The sync point of coherent memory: `len` bytes at `offset` of
    /// `buffer`, before the CPU reads what the device wrote there
    /// ([`SyncPoint::ForCpu`]) or before the device reads what the CPU wrote
    /// there ([`SyncPoint::ForDevice`]). Does what [`coherent_sync_action`]
    /// says: nothing unless a hypervisor's cacheable alias may hold stale
    /// lines the reader could hit, then an invalidate of just those lines
    /// through the window (never a hypercall).
    ///
    /// The device must have finished writing the part before a `ForCpu`
    /// sync (it said so, e.g. by an index the CPU read before the sync);
    /// the CPU reads it after.
    pub fn sync_coherent(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        buffer: &CoherentBuffer<'a>,
        offset: u64,
        len: u64,
        point: SyncPoint,
    ) -> Result<(), DmaError<'a>> {
        self.check_owner(buffer.device)?;
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > buffer.size) {
            return Err(DmaError::OutsideCoherentBuffer {
                device: self.name,
                offset,
                len,
                size: buffer.size,
            });
        }
        let pool = self.pool(env.pools, buffer.pool)?;
        let action = coherent_sync_action(
            self.coherent,
            pool.memory_class(),
            pool.host(),
            pool.window_cacheable(),
            point,
        );
        self.stats.coherent_syncs += 1;
        match action {
            SyncAction::None => {}
            SyncAction::LinearVa { op }
            | SyncAction::WindowVa { op }
            | SyncAction::Platform { op } => {
                // Coherent memory is reached at its window address (the
                // linear one for a linear pool).
                let start = VirtAddr(buffer.virt.0 + offset);
                env.cache.maintain(op, &OwnedVirtRange::new(start, len));
                self.stats.coherent_va_ops += 1;
            }
        }
        Ok(())
    }

    /// The physical and linear addresses of a CPU buffer the device uses
    /// directly; refused unless every byte is linear RAM.
    fn direct_buffer(
        &self,
        map: &'a AddressMap,
        cpu: &CpuBuffer,
    ) -> Result<(PhysAddr, VirtAddr), DmaError<'a>> {
        let device = self.name;
        let phys = map
            .virt_to_phys(cpu.virt)
            .map_err(|_| DmaError::BufferNotMapped {
                device,
                virt: cpu.virt,
            })?;
        let range = PhysRange {
            base: phys,
            size: cpu.len,
        };
        if let Some((phys, class)) = first_rejected_byte(map, range, |_, class| {
            matches!(class, AddressClass::LinearRam { .. })
        }) {
            return Err(DmaError::NotLinearRam {
                device,
                phys,
                class,
            });
        }
        Ok((phys, VirtAddr(phys.0.wrapping_add(map.linear_offset()))))
    }

    fn check_buffer(&self, cpu: &CpuBuffer) -> Result<(), DmaError<'a>> {
        if cpu.len == 0 {
            return Err(DmaError::ZeroLength { device: self.name });
        }
        if cpu.virt.checked_add(cpu.len).is_none() {
            return Err(DmaError::BufferOutOfRange {
                device: self.name,
                virt: cpu.virt,
                len: cpu.len,
            });
        }
        Ok(())
    }

    /// Maps `cpu` for streaming DMA in direction `dir` and syncs it for the
    /// device.
    ///
    /// With a device-tree pool, the device gets a bounce buffer in the pool
    /// and the CPU buffer is copied into it whatever the direction: a device
    /// that writes less than the whole buffer must not leave stale pool
    /// contents to be copied back at unmap (Linux's swiotlb does the same).
    /// Without one, the device gets the buffer's own physical address, which
    /// must be linear RAM.
    pub fn map(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        cpu: CpuBuffer,
        dir: DmaDirection,
    ) -> Result<DmaMapping<'a>, DmaError<'a>> {
        self.refuse_grant_device()?;
        self.check_buffer(&cpu)?;
        let device = self.name;
        let mapping = match self.private_pool {
            Some(pool_id) => {
                let pool = self.pool_mut(env.pools, pool_id)?;
                let block = pool
                    .alloc(cpu.len, PAGE_SIZE)
                    .map_err(|error| DmaError::Pool { device, error })?;
                let window = window_address(pool, block.base);
                env.memory
                    .copy(&cpu.owned(), &OwnedVirtRange::new(window, cpu.len));
                self.stats.bounced += cpu.len;
                let target = MappingTarget::Bounce {
                    pool: pool_id,
                    block,
                    window,
                };
                DmaMapping {
                    device,
                    dma: DmaAddr::from_phys(block.base),
                    cpu,
                    dir,
                    target,
                    grants: Vec::new(),
                }
            }
            None => {
                let (phys, linear) = self.direct_buffer(env.pools.address_map(), &cpu)?;
                let target = MappingTarget::Direct { linear };
                DmaMapping {
                    device,
                    dma: DmaAddr::from_phys(phys),
                    cpu,
                    dir,
                    target,
                    grants: Vec::new(),
                }
            }
        };
        self.cache_sync(env, &mapping, SyncPoint::ForDevice)?;
        self.stats.maps += 1;
        Ok(mapping)
    }

    /// Syncs for the CPU, copies a bounce buffer back to the CPU buffer when
    /// the device wrote it, and frees the bounce buffer.
    ///
    /// A mapping of [`Self::map_in_pool`] is synced and its pool buffer
    /// freed, its grants ended as [`Self::free_in_pool`] does (for a caller
    /// giving up on it; [`Self::unmap_in_pool`] keeps it).
    ///
    /// A mapping of another device is refused; it is consumed all the same
    /// and its bounce buffer stays allocated (a caller bug, visible in the
    /// pool's usage). A bounce buffer that is no longer allocated is refused
    /// before any copy.
    pub fn unmap(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        mapping: DmaMapping<'a>,
    ) -> Result<(), DmaError<'a>> {
        self.check_owner(mapping.device)?;
        if let Some((pool, block, _)) = mapping.target.pool_block()
            && !self.pool(env.pools, pool)?.is_allocation(block)
        {
            return Err(DmaError::NoSuchMapping {
                device: self.name,
                dma: mapping.dma,
                len: mapping.cpu.len,
            });
        }
        self.sync_for_cpu(env, &mapping)?;
        if let Some((pool, block, _)) = mapping.target.pool_block() {
            self.release_block(env, pool, block, mapping.grants)?;
        }
        self.stats.unmaps += 1;
        Ok(())
    }

    /// Hands the buffer (back) to the device: copies the CPU buffer into the
    /// bounce buffer when the device reads it, then does the cache
    /// maintenance [`sync_action`] asks for.
    pub fn sync_for_device(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        mapping: &DmaMapping<'a>,
    ) -> Result<(), DmaError<'a>> {
        self.check_owner(mapping.device)?;
        if let MappingTarget::Bounce { window, .. } = mapping.target
            && mapping.dir.device_reads()
        {
            env.memory.copy(
                &mapping.cpu.owned(),
                &OwnedVirtRange::new(window, mapping.cpu.len),
            );
            self.stats.bounced += mapping.cpu.len;
        }
        self.cache_sync(env, mapping, SyncPoint::ForDevice)
    }

    /// Hands the buffer (back) to the CPU: does the cache maintenance
    /// [`sync_action`] asks for, then copies the bounce buffer into the CPU
    /// buffer when the device wrote it.
    pub fn sync_for_cpu(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        mapping: &DmaMapping<'a>,
    ) -> Result<(), DmaError<'a>> {
        self.check_owner(mapping.device)?;
        self.cache_sync(env, mapping, SyncPoint::ForCpu)?;
        if let MappingTarget::Bounce { window, .. } = mapping.target
            && mapping.dir.device_writes()
        {
            env.memory.copy(
                &OwnedVirtRange::new(window, mapping.cpu.len),
                &mapping.cpu.owned(),
            );
            self.stats.bounced += mapping.cpu.len;
        }
        Ok(())
    }

    /// Decides and does the cache maintenance of one sync point.
    fn cache_sync(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        mapping: &DmaMapping<'a>,
        point: SyncPoint,
    ) -> Result<(), DmaError<'a>> {
        self.stats.syncs += 1;
        let len = mapping.cpu.len;
        let (pool_id, block, window) = match mapping.target {
            MappingTarget::Bounce {
                pool,
                block,
                window,
            }
            | MappingTarget::InPool {
                pool,
                block,
                window,
            } => (pool, block, window),
            MappingTarget::Direct { linear } => {
                let action = sync_action(
                    self.coherent,
                    MemoryClass::LinearRam,
                    env.pools.host(),
                    None,
                    true,
                    point,
                    mapping.dir,
                );
                if let SyncAction::LinearVa { op } = action {
                    self.maintain_by_va(env.cache, op, linear, len);
                }
                return Ok(());
            }
        };
        let pool = self.pool_mut(env.pools, pool_id)?;
        let mut platform = env.platform.as_deref_mut();
        let support = match platform.as_deref_mut() {
            // Learned once: at setup, or here if the pool was set up without the platform.
            Some(flush) if pool.memory_class() == MemoryClass::NoMapPool => Some(
                pool.flush_support()
                    .unwrap_or_else(|| pool.probe_platform_flush(flush)),
            ),
            Some(_) => pool.flush_support(),
            None => None,
        };
        let action = sync_action(
            self.coherent,
            pool.memory_class(),
            pool.host(),
            support,
            pool.window_cacheable(),
            point,
            mapping.dir,
        );
        match (action, platform) {
            (SyncAction::None, _) => {}
            (SyncAction::Platform { op }, Some(flush)) => {
                match flush.flush(
                    op,
                    &OwnedPhysRange::new(PhysRange {
                        base: block.base,
                        size: len,
                    }),
                ) {
                    Ok(done) => {
                        self.stats.hypercalls += u64::from(done.hypercalls);
                        self.stats.pages += u64::from(done.pages);
                    }
                    Err(failed) => {
                        self.stats.hypercalls += u64::from(failed.hypercalls);
                        self.stats.refusals += 1;
                        self.stats.fallbacks += 1;
                        if pool.record_sync_refusal(FlushSupport::Refused(failed.errno)) {
                            env.warnings.warn(&FlushRefusedWarning {
                                device: self.name,
                                pool: pool.name(),
                                errno: failed.errno,
                            });
                        }
                        self.maintain_by_va(env.cache, op, window, len);
                    }
                }
            }
            (SyncAction::WindowVa { op }, _) => {
                if let Some(FlushSupport::Refused(_)) = support {
                    self.stats.fallbacks += 1;
                }
                self.maintain_by_va(env.cache, op, window, len);
            }
            // Linear VA of a pool in the linear map is its window address.
            (SyncAction::LinearVa { op } | SyncAction::Platform { op }, _) => {
                self.maintain_by_va(env.cache, op, window, len);
            }
        }
        Ok(())
    }

    fn maintain_by_va(
        &mut self,
        cache: &mut dyn CacheMaintenance,
        op: CacheOp,
        start: VirtAddr,
        len: u64,
    ) {
        cache.maintain(op, &OwnedVirtRange::new(start, len));
        self.stats.va_ops += 1;
        self.stats.va_bytes += len;
    }
}

/// The window address of `pa`, a byte of `pool`.
fn window_address(pool: &Pool<'_>, pa: PhysAddr) -> VirtAddr {
    VirtAddr(pool.window().0 + (pa.0 - pool.phys().base.0))
}
