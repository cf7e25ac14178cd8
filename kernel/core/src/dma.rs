//! The DMA layer's machine side: cache maintenance by VA, Xen's
//! `GNTTABOP_cache_flush`, copies for bounce buffers, grants (the grant
//! table, `crate::xen::grants`), warnings on the console, and the pools the
//! device tree and the memory plan give, and those the kernel sets aside
//! for a grant device ([`Dma::grant_device`]).
//!
//! The policy and the bookkeeping live in `tidepool-dma` (host-tested); this
//! module only implements its boundary traits for the running machine
//! and sets up the pools. DMA addresses are physical addresses: there is no
//! IOMMU, and under Xen dom0 is mapped 1:1 (see `tidepool_dma`).

use alloc::vec::Vec;
use core::fmt;

use log::info;
use tidepool_dma::{
    Addressing, CacheMaintenance, CacheOp, DeviceSpec, DmaDevice, DmaEnv, DmaMemory,
    FlushRefusedWarning, Host, OwnedVirtRange, PageGrants, PlatformFlush, PoolPlacement, PoolRole,
    PoolSet, PoolSpec, SetupError, WarningSink, WindowAttributes,
};
use tidepool_dt::{DeviceTree, ReservedRegion};
use tidepool_mm::{AddressMap, PAGE_SIZE, PhysRange, RegionKind};

use crate::arch::aarch64::cache::maintain_range;
use crate::memory_plan::{KERNEL_LINEAR_POOL, KERNEL_NC_POOL, MemorySetup, is_dma_pool};
use crate::xen::flush::XenFlush;
use crate::xen::grants::{self, KernelGrants};
use tidepool_xen_abi::DomId;

/// Data-cache maintenance by virtual address, to the point of coherency.
pub struct KernelCache;

// SAFETY: `maintain_range` does exactly `op` on every line overlapping the
// range, to the point of coherency, keeps partial lines of an invalidate
// (clean+invalidate), completes with `DSB` and keeps nothing.
unsafe impl CacheMaintenance for KernelCache {
    fn maintain(&mut self, op: CacheOp, range: &OwnedVirtRange) {
        // SAFETY: the DMA layer lends only memory it owns for this call.
        unsafe { maintain_range(op, range.start().0 as usize, range.len() as usize) };
    }
}

/// A device's DMA pool: the first of its `memory-region`s that is a DMA pool.
pub fn device_pool<'d>(
    dt: &'d DeviceTree,
    regions: &[alloc::string::String],
) -> Option<&'d ReservedRegion> {
    regions.iter().find_map(|region| {
        dt.plan
            .reserved()
            .iter()
            .find(|r| r.path == *region && is_dma_pool(r))
    })
}

/// Copies between kernel virtual addresses the DMA layer lends: CPU buffers
/// (vouched for by `CpuBuffer::new`) and blocks of pool windows (vouched for
/// by `PoolSet::add`).
pub struct KernelMemory;

// SAFETY: a plain copy or fill of exactly the lent ranges, complete on
// return; nothing is kept.
unsafe impl DmaMemory for KernelMemory {
    fn copy(&mut self, src: &OwnedVirtRange, dst: &OwnedVirtRange) {
        let len = src.len().min(dst.len()) as usize;
        // SAFETY: the DMA layer lends only memory it owns for this call,
        // mapped and valid for the length: a CPU buffer and a block of a pool
        // window, which never overlap (a pool is never a CPU buffer).
        unsafe {
            core::ptr::copy_nonoverlapping(
                src.start().0 as *const u8,
                dst.start().0 as *mut u8,
                len,
            )
        };
    }

    fn zero(&mut self, dst: &OwnedVirtRange) {
        // SAFETY: `dst` is a block of a pool window the DMA layer owns (just
        // allocated), mapped and valid for its length.
        unsafe { core::ptr::write_bytes(dst.start().0 as *mut u8, 0, dst.len() as usize) };
    }
}

/// Prints DMA warnings as their one-line `Display`.
pub struct ConsoleWarnings;

impl WarningSink for ConsoleWarnings {
    fn warn(&mut self, warning: &FlushRefusedWarning<'_>) {
        crate::console::write_line(format_args!("{warning}"));
    }
}

/// The kernel's DMA state: pools and the machine implementations.
pub struct Dma {
    pools: PoolSet<'static>,
    cache: KernelCache,
    memory: KernelMemory,
    flush: Option<XenFlush>,
    warnings: ConsoleWarnings,
    /// The grant table, once Xen's is set up (taken at the first
    /// [`Dma::env`] after that).
    grants: Option<KernelGrants>,
}

/// Why the DMA layer, or a device's DMA context, could not be set up.
#[derive(Debug)]
pub enum DmaSetupError {
    /// The DMA layer refused a pool or a device.
    Setup(SetupError<'static>),
    /// The heap has no room for a grant device's pool.
    NoMemory {
        /// The device.
        device: &'static str,
        /// Bytes asked for.
        bytes: usize,
    },
}

impl fmt::Display for DmaSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(error) => write!(f, "dma: {error}"),
            Self::NoMemory { device, bytes } => {
                write!(f, "dma: no heap for the pool of {device} ({bytes} bytes)")
            }
        }
    }
}

impl Dma {
    /// Sets up every pool: the device tree's DMA pools and the kernel's two.
    /// `host` says whether Xen maps the memory too (its directmap, which
    /// decides the maintenance of non-cacheable pools; see
    /// `tidepool_dma::sync_action`). With `flush` (a direct-mapped Xen
    /// domain), each own-window pool is probed once for
    /// `GNTTABOP_cache_flush` (one page), and the answer is printed and kept.
    pub fn new(
        dt: &'static DeviceTree,
        memory: &'static MemorySetup<'static>,
        flush: Option<XenFlush>,
    ) -> Result<Self, DmaSetupError> {
        let host = if dt.platform.xen {
            Host::Hypervisor
        } else {
            Host::Bare
        };
        let address_map = &memory.layout.address_map;
        let mut dma = Dma {
            pools: PoolSet::new(address_map, host),
            cache: KernelCache,
            memory: KernelMemory,
            flush,
            warnings: ConsoleWarnings,
            grants: None,
        };
        let own_window = |name: &str| {
            address_map
                .regions()
                .iter()
                .find(|r| r.kind == RegionKind::NoMapPool && r.name == name)
                .and_then(|r| r.window)
                .map(|window| PoolPlacement::OwnWindow {
                    window,
                    attributes: WindowAttributes::NonCacheable,
                })
        };
        let mut specs: Vec<PoolSpec<'static>> = dt
            .plan
            .reserved()
            .iter()
            .filter(|r| is_dma_pool(r))
            .map(|r| PoolSpec {
                name: &r.path,
                phys: PhysRange::new(r.range.base(), r.range.size()),
                placement: own_window(&r.path).unwrap_or(PoolPlacement::Linear),
                role: PoolRole::DeviceTree,
            })
            .collect();
        specs.push(PoolSpec {
            name: KERNEL_NC_POOL,
            phys: memory.kernel_nc_pool,
            placement: own_window(KERNEL_NC_POOL).unwrap_or(PoolPlacement::Linear),
            role: PoolRole::KernelNonCacheable,
        });
        specs.push(PoolSpec {
            name: KERNEL_LINEAR_POOL,
            phys: memory.kernel_linear_pool,
            placement: PoolPlacement::Linear,
            role: PoolRole::KernelLinear,
        });
        for spec in specs {
            let platform = dma.flush.as_mut().map(|f| f as &mut dyn PlatformFlush);
            // SAFETY: the address map is the memory bring-up's, which built
            // the live page tables from it (windows and linear map) for the
            // kernel's lifetime; every pool is a device-tree DMA pool or one
            // of the kernel's two, carved for DMA alone from linear RAM clear
            // of the image, the heap and every other region.
            let id = unsafe { dma.pools.add(spec, &mut dma.cache, platform) }
                .map_err(DmaSetupError::Setup)?;
            if let Some(pool) = dma.pools.get(id) {
                info!("{}", pool.setup_line());
            }
        }
        Ok(dma)
    }

    /// Counter ticks spent in `GNTTABOP_cache_flush` for the DMA layer so
    /// far (0 without the Xen flush).
    pub fn flush_ticks(&self) -> u64 {
        self.flush.as_ref().map_or(0, XenFlush::ticks)
    }

    /// The address map every DMA operation classifies addresses with.
    pub fn address_map(&self) -> &'static AddressMap {
        self.pools.address_map()
    }

    /// The environment DMA operations run in.
    pub fn env(&mut self) -> DmaEnv<'_, 'static> {
        if self.grants.is_none() {
            self.grants = grants::page_grants();
        }
        DmaEnv {
            pools: &mut self.pools,
            cache: &mut self.cache,
            memory: &mut self.memory,
            platform: self.flush.as_mut().map(|f| f as &mut dyn PlatformFlush),
            warnings: &mut self.warnings,
            grants: self
                .grants
                .as_mut()
                .map(|grants| grants as &mut dyn PageGrants),
        }
    }

    /// Prints every pool's usage, labelled (e.g. `baseline` and `now`, so
    /// that a leak shows as a difference).
    pub fn print_usage(&self, label: &str) {
        for pool in self.pools.iter() {
            let usage = pool.usage();
            info!(
                "dma: pool {} usage {}/{} pages largest_free={:#x} ({label})",
                pool.name(),
                usage.used_pages,
                usage.total_pages,
                pool.largest_free()
            );
        }
    }

    /// Prints each pool's set-up line (window, attributes, Xen's answer to
    /// its flush probe) with its users (`users_of` gives a pool's device
    /// paths; the kernel's own pools are used by `kernel`).
    pub fn print_pools<'u>(
        &self,
        users_of: impl Fn(&str) -> Option<&'u [tidepool_dt::RegionUser]>,
    ) {
        for pool in self.pools.iter() {
            match users_of(pool.name()) {
                Some(users) => {
                    let mut list = alloc::string::String::new();
                    for (i, user) in users.iter().enumerate() {
                        if i > 0 {
                            list.push(',');
                        }
                        list.push_str(&user.path);
                    }
                    if list.is_empty() {
                        list.push_str("none");
                    }
                    info!("{} users={list}", pool.setup_line());
                }
                None => info!("{} users=kernel", pool.setup_line()),
            }
        }
    }

    /// A DMA context for the device at `path`, from its device-tree node:
    /// `dma-coherent`, and the first `memory-region` that is a DMA pool.
    pub fn device(
        &self,
        dt: &'static DeviceTree,
        path: &'static str,
        coherent: bool,
        regions: &'static [alloc::string::String],
    ) -> Result<DmaDevice<'static>, DmaSetupError> {
        let pool = device_pool(dt, regions).map(|region| region.path.as_str());
        let device = DmaDevice::new(
            DeviceSpec {
                name: path,
                coherent,
                pool,
                addressing: Addressing::Bus,
            },
            &self.pools,
        )
        .map_err(DmaSetupError::Setup)?;
        self.print_device(&device);
        Ok(device)
    }

    /// A DMA context for `name`, a device that is another domain (`domid`,
    /// a PV back end) and is given grant references: its own pool of
    /// `bytes` (whole pages) of linear RAM from the heap, set aside for
    /// good, named `tidepool:grants-<name>`, from which both its pool
    /// buffers and its coherent memory (a ring) come. Prints the pool's and
    /// the device's lines.
    pub fn grant_device(
        &mut self,
        name: &'static str,
        domid: DomId,
        bytes: usize,
    ) -> Result<DmaDevice<'static>, DmaSetupError> {
        let no_memory = || DmaSetupError::NoMemory {
            device: name,
            bytes,
        };
        let layout = core::alloc::Layout::from_size_align(bytes, PAGE_SIZE as usize)
            .ok()
            .filter(|layout| layout.size() != 0)
            .ok_or_else(no_memory)?;
        // Zeroed: its pages are granted to another domain, which must not
        // read what earlier heap users left there.
        // SAFETY: `layout` has a non-zero size (checked above).
        let pointer = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if pointer.is_null() {
            return Err(no_memory());
        }
        let base = self
            .address_map()
            .virt_to_phys(tidepool_mm::VirtAddr(pointer as u64))
            .map_err(|_| no_memory())?;
        let pool: &'static str =
            alloc::string::String::leak(alloc::format!("tidepool:grants-{name}"));
        let spec = PoolSpec {
            name: pool,
            phys: PhysRange::new(base.0, bytes as u64),
            placement: PoolPlacement::Linear,
            role: PoolRole::DevicePrivate,
        };
        // SAFETY: a fresh heap allocation, never freed (it is set aside for
        // the pool for good), in linear RAM the address map and the live
        // page tables describe for the kernel's lifetime; nothing but the
        // pool's allocations will reach it.
        let id =
            unsafe { self.pools.add(spec, &mut self.cache, None) }.map_err(DmaSetupError::Setup)?;
        if let Some(pool) = self.pools.get(id) {
            info!("{}", pool.setup_line());
        }
        let device = DmaDevice::new(
            DeviceSpec {
                name,
                coherent: true,
                pool: Some(pool),
                addressing: Addressing::Grant { domid },
            },
            &self.pools,
        )
        .map_err(DmaSetupError::Setup)?;
        self.print_device(&device);
        Ok(device)
    }

    /// A new device's `dma: device` line: its coherence, private pool,
    /// where its coherent memory comes from and what its addresses are.
    fn print_device(&self, device: &DmaDevice<'static>) {
        let pool_name = |id| self.pools.get(id).map_or("?", |p| p.name());
        info!(
            "dma: device {} coherent={} pool={} coherent-allocs={} dma-addr={}",
            device.name(),
            if device.is_coherent() { "yes" } else { "no" },
            device.private_pool().map_or("none", pool_name),
            pool_name(device.coherent_pool()),
            device.addressing()
        );
    }
}
