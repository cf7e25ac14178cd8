//! The I/O path (map, sync, unmap, coherent alloc and free) never touches
//! the heap: counted with a global allocator that counts this thread's
//! allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tidepool_dma::{
    Addressing, CacheMaintenance, CacheOp, CpuBuffer, DeviceSpec, DmaDevice, DmaDirection, DmaEnv,
    DmaMemory, FlushDone, FlushErrno, FlushFailed, FlushRefusedWarning, Host, OwnedPhysRange,
    OwnedVirtRange, PlatformFlush, PoolPlacement, PoolRole, PoolSet, PoolSpec, WarningSink,
    WindowAttributes,
};
use tidepool_mm::{AddressMap, PhysRange, Region, RegionKind, VirtAddr};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds the `GlobalAlloc` contract; counting touches only a const-initialised
// thread-local `Cell` without a destructor, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's guarantees for `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
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

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[derive(Default)]
struct CountingCache(u64);

// SAFETY: counts; touches no memory.
unsafe impl CacheMaintenance for CountingCache {
    fn maintain(&mut self, _op: CacheOp, _range: &OwnedVirtRange) {
        self.0 += 1;
    }
}

#[derive(Default)]
struct CountingMemory(u64);

// SAFETY: counts; touches no memory.
unsafe impl DmaMemory for CountingMemory {
    fn copy(&mut self, _src: &OwnedVirtRange, dst: &OwnedVirtRange) {
        self.0 += dst.len();
    }

    fn zero(&mut self, dst: &OwnedVirtRange) {
        self.0 += dst.len();
    }
}

/// Accepts flushes until told to refuse them.
struct ScriptedXen {
    refuse: bool,
    calls: u64,
}

// SAFETY: counts; touches no memory.
unsafe impl PlatformFlush for ScriptedXen {
    fn flush(&mut self, _op: CacheOp, range: &OwnedPhysRange) -> Result<FlushDone, FlushFailed> {
        let range = range.range();
        self.calls += 1;
        if self.refuse {
            Err(FlushFailed {
                errno: FlushErrno::Eperm,
                hypercalls: 1,
            })
        } else {
            Ok(FlushDone {
                hypercalls: 1,
                pages: range.size.div_ceil(4096) as u32,
            })
        }
    }
}

#[derive(Default)]
struct CountingWarnings(u64);

impl WarningSink for CountingWarnings {
    fn warn(&mut self, _warning: &FlushRefusedWarning<'_>) {
        self.0 += 1;
    }
}

#[test]
fn map_sync_unmap_and_coherent_allocation_do_not_allocate() {
    const LINEAR: u64 = 0xffff_0000_0000_0000;
    let pool_phys = PhysRange::new(0x7800_0000, 0x40_0000);
    let nc_phys = PhysRange::new(0x7a00_0000, 0x10_0000);
    let map = AddressMap::new(
        LINEAR,
        vec![
            Region {
                name: "/memory@40000000".into(),
                phys: PhysRange::new(0x4000_0000, 0x3800_0000),
                kind: RegionKind::LinearRam,
                window: None,
            },
            Region {
                name: "/reserved-memory/dma@78000000".into(),
                phys: pool_phys,
                kind: RegionKind::NoMapPool,
                window: Some(VirtAddr(0xffff_f000_0000_0000)),
            },
            Region {
                name: "tidepool:nc-pool".into(),
                phys: nc_phys,
                kind: RegionKind::NoMapPool,
                window: Some(VirtAddr(0xffff_f000_1000_0000)),
            },
        ],
    )
    .unwrap();
    let mut cache = CountingCache::default();
    let mut memory = CountingMemory::default();
    let mut xen = ScriptedXen {
        refuse: false,
        calls: 0,
    };
    let mut warnings = CountingWarnings::default();
    let mut pools = PoolSet::new(&map, Host::Hypervisor);
    let nc = WindowAttributes::NonCacheable;
    for (name, phys, window, role) in [
        (
            "/reserved-memory/dma@78000000",
            pool_phys,
            0xffff_f000_0000_0000,
            PoolRole::DeviceTree,
        ),
        (
            "tidepool:nc-pool",
            nc_phys,
            0xffff_f000_1000_0000,
            PoolRole::KernelNonCacheable,
        ),
    ] {
        let placement = PoolPlacement::OwnWindow {
            window: VirtAddr(window),
            attributes: nc,
        };
        // SAFETY: nothing here touches memory: the fakes only count.
        unsafe {
            pools.add(
                PoolSpec {
                    name,
                    phys,
                    placement,
                    role,
                },
                &mut cache,
                Some(&mut xen),
            )
        }
        .unwrap();
    }
    let spec = |name, pool| DeviceSpec {
        name,
        coherent: false,
        pool,
        addressing: Addressing::Bus,
    };
    let mut pooled = DmaDevice::new(
        spec(
            "/virtio_mmio@a003e00",
            Some("/reserved-memory/dma@78000000"),
        ),
        &pools,
    )
    .unwrap();
    let mut direct = DmaDevice::new(spec("/virtio_mmio@a003c00", None), &pools).unwrap();
    let buf = VirtAddr(0x4010_0000 + LINEAR);
    // SAFETY: nothing here touches memory: the fakes only count.
    let buffer = |len| unsafe { CpuBuffer::new(buf, len) };

    let before = allocations();
    for round in 0..4 {
        // From the third round on Xen refuses (refusal, warning and fallback paths).
        xen.refuse = round >= 2;
        let mut env = DmaEnv {
            pools: &mut pools,
            cache: &mut cache,
            memory: &mut memory,
            platform: Some(&mut xen),
            warnings: &mut warnings,
            grants: None,
        };
        for device in [&mut pooled, &mut direct] {
            for dir in [
                DmaDirection::ToDevice,
                DmaDirection::FromDevice,
                DmaDirection::Bidirectional,
            ] {
                let mapping = device.map(&mut env, buffer(0x3000), dir).unwrap();
                device.sync_for_cpu(&mut env, &mapping).unwrap();
                device.sync_for_device(&mut env, &mapping).unwrap();
                device.unmap(&mut env, mapping).unwrap();
            }
            let coherent = device.alloc_coherent(&mut env, 0x2000, 0x1000).unwrap();
            device.free_coherent(&mut env, coherent).unwrap();
            // Failure paths build their errors without the heap too.
            assert!(
                device
                    .map(&mut env, buffer(0), DmaDirection::ToDevice)
                    .is_err()
            );
        }
    }
    let after = allocations();

    assert_eq!(after - before, 0);
    // The paths ran: hypercalls, a refusal warned about once, VA maintenance, copies.
    assert!(pooled.stats().hypercalls > 0);
    assert_eq!(warnings.0, 1);
    assert_eq!(pooled.stats().refusals, 1);
    assert!(pooled.stats().fallbacks > 1);
    assert!(direct.stats().va_ops > 0 && cache.0 > 0 && memory.0 > 0);
}
