//! The machine under the driver, on the host: an address map whose memory
//! is real host memory, and recording fakes of the DMA layer's boundaries.
//!
//! - Linear RAM is identity-mapped (linear offset 0) over the part of the
//!   host's address space where its heap lives, so the driver's staging
//!   buffers (ordinary heap allocations) are "linear RAM" whose physical
//!   address is their host address, exactly as in the kernel.
//! - The pools sit at low physical addresses, below 4 GiB, with windows that
//!   are leaked host allocations. Their linear aliases (the same low
//!   addresses, with offset 0) are unmapped in the host process: touching
//!   one would fault, and every fake checks it never is.
//! - The kernel's linear pool is a leaked host allocation, so identity too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::string::{String, ToString};
use std::sync::Once;
use std::vec::Vec;

use tidepool_dma::{
    Addressing, CacheMaintenance, CacheOp, DeviceSpec, DmaDevice, DmaEnv, DmaMemory, FlushDone,
    FlushErrno, FlushFailed, FlushRefusedWarning, Host, OwnedPhysRange, OwnedVirtRange,
    PlatformFlush, PoolPlacement, PoolRole, PoolSet, PoolSpec, PoolUsage, WarningSink,
    WindowAttributes,
};
use tidepool_mm::{AddressMap, PAGE_SIZE, PhysRange, Region, RegionKind, VirtAddr};

/// Where the host's heap must lie for linear RAM to cover it.
const HOST_RAM: PhysRange = PhysRange::new(0x1_0000_0000, (1 << 47) - 0x1_0000_0000);

/// A static host pool (Xen refuses flushes of it, as 4.17 does).
pub const STATIC_POOL: &str = "/reserved-memory/dma@78000000";
pub const STATIC_PHYS: PhysRange = PhysRange::new(0x7800_0000, 0x40_0000);
/// A dynamic pool in the guest's own RAM (Xen accepts flushes of it).
pub const DYNAMIC_POOL: &str = "/reserved-memory/dma-pool-dynamic";
pub const DYNAMIC_PHYS: PhysRange = PhysRange::new(0x7c00_0000, 0x40_0000);
/// The kernel's non-cacheable pool.
const NC_POOL: &str = "tidepool:nc-pool";
pub const NC_PHYS: PhysRange = PhysRange::new(0x7a00_0000, 0x10_0000);
/// The kernel's linear pool.
const LINEAR_POOL: &str = "tidepool:linear-pool";
const LINEAR_POOL_SIZE: u64 = 0x10_0000;

/// The device name every test uses.
pub const DEVICE: &str = "/virtio_mmio@a003e00";

/// A page of host memory, for page-aligned leaked allocations.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// `size` bytes of zeroed, page-aligned host memory that lives as long as
/// the test process; its address.
fn arena(size: u64) -> u64 {
    let pages = vec![Page([0; PAGE_SIZE as usize]); (size / PAGE_SIZE) as usize];
    let leaked: &'static mut [Page] = Box::leak(pages.into_boxed_slice());
    leaked.as_mut_ptr().expose_provenance() as u64
}

/// The physical ranges of the no-map pools, whose linear aliases must never
/// be touched.
const NO_MAP: [PhysRange; 3] = [STATIC_PHYS, DYNAMIC_PHYS, NC_PHYS];

/// Panics if `[va, va + len)` touches the linear alias of a no-map pool
/// (with a linear offset of 0, the pool's physical range).
fn assert_not_pool_alias(va: u64, len: u64) {
    for pool in NO_MAP {
        assert!(
            va + len <= pool.base.0 || va >= pool.end(),
            "{va:#x}+{len:#x} is the linear alias of no-map pool memory {pool}"
        );
    }
}

/// One maintenance by VA: operation, start, length.
pub type VaOp = (CacheOp, VirtAddr, u64);

/// Records every maintenance by VA (capacity reserved: recording does not
/// allocate until thousands of operations).
pub struct RecordingCache {
    pub ops: Vec<VaOp>,
}

// SAFETY: records; touches no memory.
unsafe impl CacheMaintenance for RecordingCache {
    fn maintain(&mut self, op: CacheOp, range: &OwnedVirtRange) {
        let (start, len) = (range.start(), range.len());
        assert_not_pool_alias(start.0, len);
        self.ops.push((op, start, len));
    }
}

/// Xen's `GNTTABOP_cache_flush`: one hypercall per batched flush, refused
/// for the static pool.
pub struct FakeXen {
    pub calls: Vec<(CacheOp, PhysRange)>,
}

// SAFETY: records; touches no memory.
unsafe impl PlatformFlush for FakeXen {
    fn flush(&mut self, op: CacheOp, range: &OwnedPhysRange) -> Result<FlushDone, FlushFailed> {
        let range = range.range();
        self.calls.push((op, range));
        if range.overlaps(&STATIC_PHYS) {
            return Err(FlushFailed {
                errno: FlushErrno::Eperm,
                hypercalls: 1,
            });
        }
        let pages = range.end().div_ceil(PAGE_SIZE) - range.base.0 / PAGE_SIZE;
        Ok(FlushDone {
            hypercalls: 1,
            pages: pages as u32,
        })
    }
}

/// Copies between host addresses, as the kernel's raw copy does.
pub struct HostMemory {
    /// Bytes copied or zeroed.
    pub bytes: u64,
}

// SAFETY: a plain copy or fill of exactly the lent ranges; nothing kept.
unsafe impl DmaMemory for HostMemory {
    fn copy(&mut self, src: &OwnedVirtRange, dst: &OwnedVirtRange) {
        assert_eq!(src.len(), dst.len());
        let (src, dst, len) = (src.start(), dst.start(), dst.len());
        assert_not_pool_alias(src.0, len);
        assert_not_pool_alias(dst.0, len);
        self.bytes += len;
        // SAFETY: the DMA layer lends pool windows (leaked arenas that live
        // as long as the process) and CPU buffers the driver built from its
        // live staging allocation; the two never overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(
                core::ptr::with_exposed_provenance::<u8>(src.0 as usize),
                core::ptr::with_exposed_provenance_mut::<u8>(dst.0 as usize),
                len as usize,
            );
        }
    }

    fn zero(&mut self, dst: &OwnedVirtRange) {
        let (dst, len) = (dst.start(), dst.len());
        assert_not_pool_alias(dst.0, len);
        self.bytes += len;
        // SAFETY: as for `copy`.
        unsafe {
            core::ptr::write_bytes(
                core::ptr::with_exposed_provenance_mut::<u8>(dst.0 as usize),
                0,
                len as usize,
            )
        }
    }
}

/// Keeps every warning line.
pub struct Warnings(pub Vec<String>);

impl WarningSink for Warnings {
    fn warn(&mut self, warning: &FlushRefusedWarning<'_>) {
        self.0.push(warning.to_string());
    }
}

/// How a test device does DMA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceKind {
    /// `dma-coherent`, no pool: ring in the kernel's linear pool.
    Coherent,
    /// Not coherent, no pool: ring in the kernel's NC pool, staging mapped
    /// directly (cache maintenance by linear VA).
    NonCoherent,
    /// Not coherent, the dynamic no-map pool (Xen accepts flushes).
    DynamicPool,
    /// Not coherent, the static no-map pool (Xen refuses flushes).
    StaticPool,
    /// `dma-coherent`, the dynamic no-map pool: its ring is non-cacheable
    /// memory a snooping device reads.
    CoherentPool,
}

/// The DMA world of one test.
pub struct Rig {
    pub map: &'static AddressMap,
    pub pools: PoolSet<'static>,
    pub cache: RecordingCache,
    pub memory: HostMemory,
    pub xen: Option<FakeXen>,
    pub warnings: Warnings,
}

impl Rig {
    /// Every pool set up, under Xen (`xen`) or bare.
    pub fn new(xen: bool) -> Self {
        let probe = Box::new(0_u8);
        let heap = (&raw const *probe).expose_provenance() as u64;
        assert!(
            HOST_RAM.contains(tidepool_mm::PhysAddr(heap)),
            "the host heap at {heap:#x} is outside the range these tests treat as linear RAM"
        );
        let linear_pool = PhysRange::new(arena(LINEAR_POOL_SIZE), LINEAR_POOL_SIZE);
        let windows = [
            (
                STATIC_POOL,
                STATIC_PHYS,
                arena(STATIC_PHYS.size),
                PoolRole::DeviceTree,
            ),
            (
                DYNAMIC_POOL,
                DYNAMIC_PHYS,
                arena(DYNAMIC_PHYS.size),
                PoolRole::DeviceTree,
            ),
            (
                NC_POOL,
                NC_PHYS,
                arena(NC_PHYS.size),
                PoolRole::KernelNonCacheable,
            ),
        ];
        let mut regions = vec![Region {
            name: "host-ram".into(),
            phys: HOST_RAM,
            kind: RegionKind::LinearRam,
            window: None,
        }];
        regions.extend(windows.iter().map(|&(name, phys, window, _)| Region {
            name: name.into(),
            phys,
            kind: RegionKind::NoMapPool,
            window: Some(VirtAddr(window)),
        }));
        let map: &'static AddressMap = Box::leak(Box::new(AddressMap::new(0, regions).unwrap()));
        let mut rig = Rig {
            map,
            pools: PoolSet::new(map, if xen { Host::Hypervisor } else { Host::Bare }),
            cache: RecordingCache {
                ops: Vec::with_capacity(1 << 16),
            },
            memory: HostMemory { bytes: 0 },
            xen: xen.then(|| FakeXen {
                calls: Vec::with_capacity(1 << 16),
            }),
            warnings: Warnings(Vec::new()),
        };
        let mut specs: Vec<PoolSpec<'static>> = windows
            .iter()
            .map(|&(name, phys, window, role)| PoolSpec {
                name,
                phys,
                placement: PoolPlacement::OwnWindow {
                    window: VirtAddr(window),
                    attributes: WindowAttributes::NonCacheable,
                },
                role,
            })
            .collect();
        specs.push(PoolSpec {
            name: LINEAR_POOL,
            phys: linear_pool,
            placement: PoolPlacement::Linear,
            role: PoolRole::KernelLinear,
        });
        for spec in specs {
            let platform = rig.xen.as_mut().map(|xen| xen as &mut dyn PlatformFlush);
            // SAFETY: the map describes this process's memory as the rig set
            // it up: the windows are leaked arenas and the linear pool a
            // leaked allocation, each used by its pool alone.
            unsafe { rig.pools.add(spec, &mut rig.cache, platform) }.unwrap();
        }
        rig.forget();
        rig
    }

    /// Drops what was recorded so far (capacity stays).
    pub fn forget(&mut self) {
        self.cache.ops.clear();
        if let Some(xen) = &mut self.xen {
            xen.calls.clear();
        }
        self.memory.bytes = 0;
    }

    /// The DMA environment for one call.
    pub fn env(&mut self) -> DmaEnv<'_, 'static> {
        DmaEnv {
            pools: &mut self.pools,
            cache: &mut self.cache,
            memory: &mut self.memory,
            platform: self.xen.as_mut().map(|xen| xen as &mut dyn PlatformFlush),
            warnings: &mut self.warnings,
            grants: None,
        }
    }

    /// A DMA context for [`DEVICE`] of `kind`.
    pub fn dma_device(&self, kind: DeviceKind) -> DmaDevice<'static> {
        self.dma_device_named(kind, DEVICE)
    }

    /// A DMA context for the device `name` of `kind`.
    pub fn dma_device_named(&self, kind: DeviceKind, name: &'static str) -> DmaDevice<'static> {
        let (coherent, pool) = match kind {
            DeviceKind::Coherent => (true, None),
            DeviceKind::NonCoherent => (false, None),
            DeviceKind::DynamicPool => (false, Some(DYNAMIC_POOL)),
            DeviceKind::StaticPool => (false, Some(STATIC_POOL)),
            DeviceKind::CoherentPool => (true, Some(DYNAMIC_POOL)),
        };
        DmaDevice::new(
            DeviceSpec {
                name,
                coherent,
                pool,
                addressing: Addressing::Bus,
            },
            &self.pools,
        )
        .unwrap()
    }

    /// Pages in use in every pool, in the order they were added.
    pub fn usage(&self) -> Vec<PoolUsage> {
        self.pools.iter().map(|pool| pool.usage()).collect()
    }

    /// Hypercalls made since the last [`Self::forget`].
    pub fn hypercalls(&self) -> &[(CacheOp, PhysRange)] {
        self.xen.as_ref().map_or(&[], |xen| &xen.calls)
    }
}

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static FREED: Cell<u64> = const { Cell::new(0) };
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The test binary's global allocator: the system's, counting this thread's
/// allocations (tests run on threads of their own, so counts do not mix).
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds the `GlobalAlloc` contract; counting touches only a const-initialised
// thread-local `Cell` without a destructor, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's guarantees for `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREED.with(|freed| freed.set(freed.get() + layout.size() as u64));
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller
        // guarantees `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations this thread has made so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Bytes this thread has freed so far.
pub fn freed_bytes() -> u64 {
    FREED.with(Cell::get)
}

/// Keeps every log line of the thread that logs it (tests run on threads of
/// their own).
struct ThreadLog;

impl log::Log for ThreadLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        LOG.with(|lines| lines.borrow_mut().push(record.args().to_string()));
    }

    fn flush(&self) {}
}

static THREAD_LOG: ThreadLog = ThreadLog;

/// The driver's log lines on this thread since the last call (the console
/// lines the kernel would print).
pub fn take_log() -> Vec<String> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&THREAD_LOG).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
    LOG.with(|lines| core::mem::take(&mut *lines.borrow_mut()))
}
