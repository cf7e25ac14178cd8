//! Device-level tests: every row of the sync policy applied through
//! recording fakes of the machine, bounce buffers, coherent allocations,
//! setup checks and the console lines.
//!
//! `unsafe` here only implements the boundary traits with fakes that touch
//! no real memory, and vouches for CPU buffers that name fake memory.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use std::collections::HashMap;

use tidepool_mm::{AddressMap, PAGE_SIZE, PhysAddr, PhysRange, Region, RegionKind, VirtAddr};

use crate::*;

mod grants;

const LINEAR_OFFSET: u64 = 0xffff_0000_0000_0000;
const RAM: PhysRange = PhysRange::new(0x4000_0000, 0x3800_0000);
/// A static host pool: Xen refuses flushes of it (EPERM).
const STATIC_POOL: &str = "/reserved-memory/dma@78000000";
const STATIC_PHYS: PhysRange = PhysRange::new(0x7800_0000, 0x40_0000);
const STATIC_WINDOW: u64 = 0xffff_f000_0000_0000;
/// A dynamic pool inside the guest's RAM: Xen accepts flushes of it.
const DYNAMIC_POOL: &str = "/reserved-memory/dma-dyn";
const DYNAMIC_PHYS: PhysRange = PhysRange::new(0x7c00_0000, 0x10_0000);
const DYNAMIC_WINDOW: u64 = 0xffff_f000_1000_0000;
/// A no-map pool whose window is write-back.
const WB_POOL: &str = "/reserved-memory/dma-wb@7d000000";
const WB_PHYS: PhysRange = PhysRange::new(0x7d00_0000, 0x10_0000);
const WB_WINDOW: u64 = 0xffff_f000_2000_0000;
/// A pool without no-map: in the linear map.
const MAPPED_POOL: &str = "/reserved-memory/dma-mapped@7e000000";
const MAPPED_PHYS: PhysRange = PhysRange::new(0x7e00_0000, 0x10_0000);
const KERNEL_NC_POOL: &str = "tidepool:nc-pool";
const KERNEL_NC_PHYS: PhysRange = PhysRange::new(0x7a00_0000, 0x10_0000);
const KERNEL_NC_WINDOW: u64 = 0xffff_f000_3000_0000;
const KERNEL_LINEAR_POOL: &str = "tidepool:linear-pool";
const KERNEL_LINEAR_PHYS: PhysRange = PhysRange::new(0x4800_0000, 0x10_0000);
const UART: &str = "/pl011@9000000";
const UART_WINDOW: u64 = 0xffff_e000_0000_0000;

const DEVICE: &str = "/virtio_mmio@a003e00";
const OTHER_DEVICE: &str = "/virtio_mmio@a003c00";

fn region(name: &str, phys: PhysRange, kind: RegionKind, window: Option<u64>) -> Region {
    Region {
        name: name.into(),
        phys,
        kind,
        window: window.map(VirtAddr),
    }
}

fn address_map() -> &'static AddressMap {
    let map = AddressMap::new(
        LINEAR_OFFSET,
        vec![
            region("/memory@40000000", RAM, RegionKind::LinearRam, None),
            region(
                STATIC_POOL,
                STATIC_PHYS,
                RegionKind::NoMapPool,
                Some(STATIC_WINDOW),
            ),
            region(
                DYNAMIC_POOL,
                DYNAMIC_PHYS,
                RegionKind::NoMapPool,
                Some(DYNAMIC_WINDOW),
            ),
            region(WB_POOL, WB_PHYS, RegionKind::NoMapPool, Some(WB_WINDOW)),
            region(MAPPED_POOL, MAPPED_PHYS, RegionKind::MappedPool, None),
            region(
                KERNEL_NC_POOL,
                KERNEL_NC_PHYS,
                RegionKind::NoMapPool,
                Some(KERNEL_NC_WINDOW),
            ),
            region(
                UART,
                PhysRange::new(0x0900_0000, 0x1000),
                RegionKind::Mmio,
                Some(UART_WINDOW),
            ),
        ],
    )
    .unwrap();
    Box::leak(Box::new(map))
}

/// Panics if `[va, va + len)` touches the linear alias of a no-map pool:
/// the DMA layer must reach pool memory only through the pool's window.
fn assert_not_pool_linear_alias(map: &AddressMap, va: VirtAddr, len: u64) {
    for region in map
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::NoMapPool)
    {
        let alias_start = region.phys.base.0 + map.linear_offset();
        let alias_end = region.phys.end() + map.linear_offset();
        assert!(
            va.0 + len <= alias_start || va.0 >= alias_end,
            "{va:?}+{len:#x} is the linear alias of {}",
            region.name
        );
    }
}

/// One maintenance by VA: operation, start, length.
type VaOp = (CacheOp, VirtAddr, u64);

/// Records every maintenance by VA.
struct RecordingCache {
    map: &'static AddressMap,
    ops: Vec<VaOp>,
}

// SAFETY: records; touches no memory.
unsafe impl CacheMaintenance for RecordingCache {
    fn maintain(&mut self, op: CacheOp, range: &OwnedVirtRange) {
        let (start, len) = (range.start(), range.len());
        assert_not_pool_linear_alias(self.map, start, len);
        self.ops.push((op, start, len));
    }
}

/// Xen's cache flush: records calls, refuses those touching chosen ranges.
#[derive(Default)]
struct FakeXen {
    calls: Vec<(CacheOp, PhysRange)>,
    refused: Vec<(PhysRange, FlushErrno)>,
}

// SAFETY: records; touches no memory.
unsafe impl PlatformFlush for FakeXen {
    fn flush(&mut self, op: CacheOp, range: &OwnedPhysRange) -> Result<FlushDone, FlushFailed> {
        let range = range.range();
        self.calls.push((op, range));
        if let Some((_, errno)) = self
            .refused
            .iter()
            .find(|(refused, _)| refused.overlaps(&range))
        {
            return Err(FlushFailed {
                errno: *errno,
                hypercalls: 1,
            });
        }
        let first_page = range.base.0 / PAGE_SIZE;
        let end_page = range.end().div_ceil(PAGE_SIZE);
        Ok(FlushDone {
            hypercalls: 1,
            pages: (end_page - first_page) as u32,
        })
    }
}

/// Sparse byte-addressed memory by virtual address.
struct FakeMemory {
    map: &'static AddressMap,
    pages: HashMap<u64, Box<[u8; PAGE_SIZE as usize]>>,
}

impl FakeMemory {
    fn read(&self, va: u64, len: u64) -> Vec<u8> {
        assert_not_pool_linear_alias(self.map, VirtAddr(va), len);
        (va..va + len)
            .map(|a| {
                self.pages
                    .get(&(a / PAGE_SIZE))
                    .map_or(0, |page| page[(a % PAGE_SIZE) as usize])
            })
            .collect()
    }

    fn write(&mut self, va: u64, bytes: &[u8]) {
        assert_not_pool_linear_alias(self.map, VirtAddr(va), bytes.len() as u64);
        for (a, byte) in (va..).zip(bytes) {
            let page = self
                .pages
                .entry(a / PAGE_SIZE)
                .or_insert_with(|| Box::new([0; PAGE_SIZE as usize]));
            page[(a % PAGE_SIZE) as usize] = *byte;
        }
    }
}

// SAFETY: copies within its own sparse fake memory only.
unsafe impl DmaMemory for FakeMemory {
    fn copy(&mut self, src: &OwnedVirtRange, dst: &OwnedVirtRange) {
        assert_eq!(src.len(), dst.len());
        let bytes = self.read(src.start().0, src.len());
        self.write(dst.start().0, &bytes);
    }

    fn zero(&mut self, dst: &OwnedVirtRange) {
        self.write(dst.start().0, &vec![0; dst.len() as usize]);
    }
}

impl WarningSink for Vec<String> {
    fn warn(&mut self, warning: &FlushRefusedWarning<'_>) {
        self.push(warning.to_string());
    }
}

/// How the machine under test behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Platform {
    /// No hypervisor.
    Bare,
    /// Xen that refuses flushes of the static pool (as 4.17 does).
    Xen,
}

struct Rig {
    pools: PoolSet<'static>,
    cache: RecordingCache,
    memory: FakeMemory,
    xen: Option<FakeXen>,
    warnings: Vec<String>,
    /// The grant table grant devices use (none until a test sets one).
    grants: Option<crate::fake_grants::FakeGrantTable>,
}

fn own_window(window: u64, attributes: WindowAttributes) -> PoolPlacement {
    PoolPlacement::OwnWindow {
        window: VirtAddr(window),
        attributes,
    }
}

impl Rig {
    fn new(platform: Platform) -> Self {
        let map = address_map();
        let mut rig = Rig {
            pools: PoolSet::new(
                map,
                if platform == Platform::Xen {
                    Host::Hypervisor
                } else {
                    Host::Bare
                },
            ),
            cache: RecordingCache {
                map,
                ops: Vec::new(),
            },
            memory: FakeMemory {
                map,
                pages: HashMap::new(),
            },
            xen: (platform == Platform::Xen).then(|| FakeXen {
                refused: vec![(STATIC_PHYS, FlushErrno::Eperm)],
                ..FakeXen::default()
            }),
            warnings: Vec::new(),
            grants: None,
        };
        let nc = WindowAttributes::NonCacheable;
        let specs = [
            (
                STATIC_POOL,
                STATIC_PHYS,
                own_window(STATIC_WINDOW, nc),
                PoolRole::DeviceTree,
            ),
            (
                DYNAMIC_POOL,
                DYNAMIC_PHYS,
                own_window(DYNAMIC_WINDOW, nc),
                PoolRole::DeviceTree,
            ),
            (
                WB_POOL,
                WB_PHYS,
                own_window(WB_WINDOW, WindowAttributes::WriteBack),
                PoolRole::DeviceTree,
            ),
            (
                MAPPED_POOL,
                MAPPED_PHYS,
                PoolPlacement::Linear,
                PoolRole::DeviceTree,
            ),
            (
                KERNEL_NC_POOL,
                KERNEL_NC_PHYS,
                own_window(KERNEL_NC_WINDOW, nc),
                PoolRole::KernelNonCacheable,
            ),
            (
                KERNEL_LINEAR_POOL,
                KERNEL_LINEAR_PHYS,
                PoolPlacement::Linear,
                PoolRole::KernelLinear,
            ),
        ];
        for (name, phys, placement, role) in specs {
            rig.add_pool(PoolSpec {
                name,
                phys,
                placement,
                role,
            })
            .unwrap();
        }
        rig.forget_setup();
        rig
    }

    fn add_pool(&mut self, spec: PoolSpec<'static>) -> Result<PoolId, SetupError<'static>> {
        let platform = self.xen.as_mut().map(|xen| xen as &mut dyn PlatformFlush);
        // SAFETY: fake memory, as for `fake_buffer`.
        unsafe { self.pools.add(spec, &mut self.cache, platform) }
    }

    /// Drops what setup recorded, so that tests see only their own calls.
    fn forget_setup(&mut self) {
        self.cache.ops.clear();
        if let Some(xen) = &mut self.xen {
            xen.calls.clear();
        }
    }

    fn env(&mut self) -> DmaEnv<'_, 'static> {
        DmaEnv {
            pools: &mut self.pools,
            cache: &mut self.cache,
            memory: &mut self.memory,
            platform: self.xen.as_mut().map(|xen| xen as &mut dyn PlatformFlush),
            warnings: &mut self.warnings,
            grants: self
                .grants
                .as_mut()
                .map(|grants| grants as &mut dyn PageGrants),
        }
    }

    fn device(
        &self,
        name: &'static str,
        coherent: bool,
        pool: Option<&'static str>,
    ) -> DmaDevice<'static> {
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

    fn pool(&self, name: &str) -> &Pool<'static> {
        self.pools.get(self.pools.find(name).unwrap()).unwrap()
    }

    fn hypercalls(&self) -> &[(CacheOp, PhysRange)] {
        &self.xen.as_ref().unwrap().calls
    }

    /// Fills a CPU buffer in linear RAM with a pattern and returns it.
    fn cpu_buffer(&mut self, phys: u64, len: u64, seed: u8) -> CpuBuffer {
        let virt = VirtAddr(phys + LINEAR_OFFSET);
        let pattern: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        self.memory.write(virt.0, &pattern);
        fake_buffer(virt, len)
    }
}

/// A CPU buffer in the rig's fake memory.
fn fake_buffer(virt: VirtAddr, len: u64) -> CpuBuffer {
    // SAFETY: the rig's memory is a fake that no real access reaches.
    unsafe { CpuBuffer::new(virt, len) }
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn window_of(rig: &Rig, pool: &str, dma: DmaAddr) -> u64 {
    rig.pool(pool).window_of(dma.phys()).unwrap().0
}

// ---- the policy rows, applied ----

#[test]
fn coherent_device_invalidates_a_non_cacheable_pool_for_itself_under_xen() {
    let mut rig = Rig::new(Platform::Xen);
    for pool in [STATIC_POOL, DYNAMIC_POOL] {
        rig.forget_setup();
        let mut dev = rig.device(DEVICE, true, Some(pool));
        let buf = rig.cpu_buffer(0x4010_0000, 0x2000, 1);
        let mapping = dev
            .map(&mut rig.env(), buf, DmaDirection::Bidirectional)
            .unwrap();
        let window = VirtAddr(window_of(&rig, pool, mapping.dma_addr()));
        let bounce = PhysRange {
            base: mapping.dma_addr().phys(),
            size: 0x2000,
        };
        dev.sync_for_cpu(&mut rig.env(), &mapping).unwrap();
        dev.sync_for_device(&mut rig.env(), &mapping).unwrap();
        dev.unmap(&mut rig.env(), mapping).unwrap();
        // Twice for the device (map, sync_for_device), never for the CPU.
        let stats = dev.stats();
        if pool == STATIC_POOL {
            assert_eq!(rig.cache.ops, [(CacheOp::Invalidate, window, 0x2000); 2]);
            assert_eq!(rig.hypercalls(), []);
            assert_eq!(
                (stats.syncs, stats.hypercalls, stats.va_ops, stats.fallbacks),
                (4, 0, 2, 2)
            );
        } else {
            assert_eq!(rig.cache.ops, []);
            assert_eq!(rig.hypercalls(), [(CacheOp::Invalidate, bounce); 2]);
            assert_eq!(
                (stats.syncs, stats.hypercalls, stats.va_ops, stats.fallbacks),
                (4, 2, 0, 0)
            );
        }
    }
    rig.forget_setup();
    // A coherent device without a pool, on linear RAM.
    let mut dev = rig.device(DEVICE, true, None);
    let buf = rig.cpu_buffer(0x4010_0000, 0x2000, 1);
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::FromDevice)
        .unwrap();
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.cache.ops, []);
}

#[test]
fn non_coherent_linear_ram_is_maintained_by_linear_va_per_direction() {
    use CacheOp::{Clean, CleanInvalidate, Invalidate};
    for platform in [Platform::Bare, Platform::Xen] {
        let mut rig = Rig::new(platform);
        let mut dev = rig.device(DEVICE, false, None);
        let va = VirtAddr(0x4010_0100 + LINEAR_OFFSET);
        let expected: [(DmaDirection, Vec<VaOp>); 3] = [
            (
                DmaDirection::ToDevice,
                vec![(Clean, va, 0x1800), (Clean, va, 0x1800)],
            ),
            (
                DmaDirection::FromDevice,
                vec![
                    (CleanInvalidate, va, 0x1800),
                    (Invalidate, va, 0x1800),
                    (CleanInvalidate, va, 0x1800),
                    (Invalidate, va, 0x1800),
                ],
            ),
            (
                DmaDirection::Bidirectional,
                vec![
                    (CleanInvalidate, va, 0x1800),
                    (Invalidate, va, 0x1800),
                    (CleanInvalidate, va, 0x1800),
                    (Invalidate, va, 0x1800),
                ],
            ),
        ];
        for (dir, ops) in expected {
            rig.cache.ops.clear();
            // map (for device), sync for CPU, sync for device, unmap (for CPU).
            let buf = rig.cpu_buffer(0x4010_0100, 0x1800, 1);
            let mapping = dev.map(&mut rig.env(), buf, dir).unwrap();
            assert_eq!(mapping.dma_addr(), DmaAddr(0x4010_0100));
            assert!(!mapping.is_bounced());
            dev.sync_for_cpu(&mut rig.env(), &mapping).unwrap();
            dev.sync_for_device(&mut rig.env(), &mapping).unwrap();
            dev.unmap(&mut rig.env(), mapping).unwrap();
            assert_eq!(rig.cache.ops, ops, "{dir:?}");
        }
        if platform == Platform::Xen {
            assert_eq!(rig.hypercalls(), []);
        }
        assert_eq!(dev.stats().bounced, 0);
        assert_eq!(dev.stats().va_ops, 2 + 4 + 4);
    }
}

#[test]
fn mapped_pool_is_maintained_by_its_linear_address() {
    let mut rig = Rig::new(Platform::Xen);
    let mut dev = rig.device(DEVICE, false, Some(MAPPED_POOL));
    let buf = rig.cpu_buffer(0x4010_0000, 0x1000, 1);
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::ToDevice)
        .unwrap();
    assert!(MAPPED_PHYS.contains(mapping.dma_addr().phys()));
    let linear = VirtAddr(mapping.dma_addr().0 + LINEAR_OFFSET);
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.cache.ops, [(CacheOp::Clean, linear, 0x1000)]);
    assert_eq!(rig.hypercalls(), []);
}

#[test]
fn no_map_pool_accepted_by_xen_gets_one_hypercall_for_the_cpu_for_all_pages() {
    let mut rig = Rig::new(Platform::Xen);
    assert_eq!(
        rig.pool(DYNAMIC_POOL).flush_support(),
        Some(FlushSupport::Accepted)
    );
    let mut dev = rig.device(DEVICE, false, Some(DYNAMIC_POOL));
    let buf = rig.cpu_buffer(0x4010_0000, 0x2800, 1);
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::Bidirectional)
        .unwrap();
    let bounce = PhysRange {
        base: mapping.dma_addr().phys(),
        size: 0x2800,
    };
    assert!(DYNAMIC_PHYS.contains(bounce.base));
    dev.sync_for_cpu(&mut rig.env(), &mapping).unwrap();
    dev.unmap(&mut rig.env(), mapping).unwrap();
    // Nothing for the device (the pool holds no dirty line and the device
    // reads memory); one hypercall for every page of the mapping each time
    // the CPU takes it back (sync_for_cpu, unmap).
    assert_eq!(rig.hypercalls(), [(CacheOp::Invalidate, bounce); 2]);
    assert_eq!(rig.cache.ops, []);
    let stats = dev.stats();
    assert_eq!((stats.syncs, stats.hypercalls, stats.pages), (3, 2, 6));
    assert_eq!((stats.refusals, stats.fallbacks, stats.va_ops), (0, 0, 0));
    assert!(rig.warnings.is_empty());
}

#[test]
fn no_map_pool_refused_at_probe_uses_the_window_and_no_hypercall() {
    let mut rig = Rig::new(Platform::Xen);
    assert_eq!(
        rig.pool(STATIC_POOL).flush_support(),
        Some(FlushSupport::Refused(FlushErrno::Eperm))
    );
    let mut dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    let buf = rig.cpu_buffer(0x4010_0000, 0x1000, 1);
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::FromDevice)
        .unwrap();
    let window = VirtAddr(window_of(&rig, STATIC_POOL, mapping.dma_addr()));
    assert!(window.0 >= STATIC_WINDOW && window.0 < STATIC_WINDOW + STATIC_PHYS.size);
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.hypercalls(), []);
    assert_eq!(rig.cache.ops, [(CacheOp::Invalidate, window, 0x1000)]);
    let stats = dev.stats();
    assert_eq!(
        (
            stats.refusals,
            stats.fallbacks,
            stats.va_ops,
            stats.va_bytes
        ),
        (0, 1, 1, 0x1000)
    );
    assert!(rig.warnings.is_empty());
}

#[test]
fn refusal_during_a_sync_falls_back_counts_and_warns_once_per_pool() {
    let mut rig = Rig::new(Platform::Xen);
    assert_eq!(
        rig.pool(DYNAMIC_POOL).flush_support(),
        Some(FlushSupport::Accepted)
    );
    rig.xen
        .as_mut()
        .unwrap()
        .refused
        .push((DYNAMIC_PHYS, FlushErrno::Einval));
    let mut dev = rig.device(DEVICE, false, Some(DYNAMIC_POOL));
    let mut other = rig.device(OTHER_DEVICE, false, Some(DYNAMIC_POOL));
    let buf = rig.cpu_buffer(0x4010_0000, 0x1000, 1);

    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::FromDevice)
        .unwrap();
    let window = VirtAddr(window_of(&rig, DYNAMIC_POOL, mapping.dma_addr()));
    let bounce = PhysRange {
        base: mapping.dma_addr().phys(),
        size: 0x1000,
    };
    assert_eq!(rig.hypercalls(), []);
    dev.sync_for_cpu(&mut rig.env(), &mapping).unwrap();
    assert_eq!(rig.hypercalls(), [(CacheOp::Invalidate, bounce)]);
    assert_eq!(rig.cache.ops, [(CacheOp::Invalidate, window, 0x1000)]);
    assert_eq!(
        rig.warnings,
        [
            "dma: warning: pool /reserved-memory/dma-dyn xen-flush=refused(EINVAL) in a sync for \
          /virtio_mmio@a003e00 -> window VA maintenance from now on"
        ]
    );
    assert_eq!(
        rig.pool(DYNAMIC_POOL).flush_support(),
        Some(FlushSupport::Refused(FlushErrno::Einval))
    );
    let stats = *dev.stats();
    assert_eq!(
        (
            stats.hypercalls,
            stats.refusals,
            stats.fallbacks,
            stats.va_ops
        ),
        (1, 1, 1, 1)
    );

    // From now on: window maintenance without asking Xen again, and no second warning.
    dev.sync_for_device(&mut rig.env(), &mapping).unwrap();
    dev.unmap(&mut rig.env(), mapping).unwrap();
    let buf = rig.cpu_buffer(0x4010_0000, 0x1000, 1);
    let mapping = other
        .map(&mut rig.env(), buf, DmaDirection::FromDevice)
        .unwrap();
    other.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.hypercalls().len(), 1);
    assert_eq!(rig.warnings.len(), 1);
    let stats = *dev.stats();
    assert_eq!(
        (
            stats.hypercalls,
            stats.refusals,
            stats.fallbacks,
            stats.va_ops
        ),
        (1, 1, 2, 2)
    );
    let stats = *other.stats();
    assert_eq!(
        (
            stats.hypercalls,
            stats.refusals,
            stats.fallbacks,
            stats.va_ops
        ),
        (0, 0, 1, 1)
    );
}

#[test]
fn no_xen_and_a_non_cacheable_window_needs_nothing() {
    let mut rig = Rig::new(Platform::Bare);
    assert_eq!(rig.pool(STATIC_POOL).flush_support(), None);
    let mut dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    for dir in [
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    ] {
        let buf = rig.cpu_buffer(0x4010_0000, 0x3000, 1);
        let mapping = dev.map(&mut rig.env(), buf, dir).unwrap();
        dev.sync_for_cpu(&mut rig.env(), &mapping).unwrap();
        dev.sync_for_device(&mut rig.env(), &mapping).unwrap();
        dev.unmap(&mut rig.env(), mapping).unwrap();
    }
    assert_eq!(rig.cache.ops, []);
    assert_eq!(dev.stats().syncs, 12);
}

#[test]
fn no_xen_and_a_write_back_window_is_maintained_through_the_window() {
    let mut rig = Rig::new(Platform::Bare);
    let mut dev = rig.device(DEVICE, false, Some(WB_POOL));
    let buf = rig.cpu_buffer(0x4010_0000, 0x1000, 1);
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::Bidirectional)
        .unwrap();
    let window = VirtAddr(window_of(&rig, WB_POOL, mapping.dma_addr()));
    dev.unmap(&mut rig.env(), mapping).unwrap();
    // A cacheable window: the CPU side is maintained too.
    assert_eq!(
        rig.cache.ops,
        [
            (CacheOp::CleanInvalidate, window, 0x1000),
            (CacheOp::Invalidate, window, 0x1000)
        ]
    );
    assert_eq!(dev.stats().fallbacks, 0);
}

#[test]
fn a_pool_set_up_without_the_platform_is_probed_at_its_first_sync() {
    let map = address_map();
    let mut rig = Rig::new(Platform::Xen);
    let mut pools = PoolSet::new(map, Host::Hypervisor);
    let placement = own_window(DYNAMIC_WINDOW, WindowAttributes::NonCacheable);
    let spec = PoolSpec {
        name: DYNAMIC_POOL,
        phys: DYNAMIC_PHYS,
        placement,
        role: PoolRole::DeviceTree,
    };
    // SAFETY: fake memory, as for `fake_buffer`.
    let id = unsafe { pools.add(spec, &mut rig.cache, None) }.unwrap();
    assert_eq!(pools.get(id).unwrap().flush_support(), None);
    rig.pools = pools;
    rig.forget_setup();
    let mut dev = rig.device(DEVICE, false, Some(DYNAMIC_POOL));
    let buf = rig.cpu_buffer(0x4010_0000, 0x1000, 1);
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::FromDevice)
        .unwrap();
    let first_page = PhysRange {
        base: DYNAMIC_PHYS.base,
        size: PAGE_SIZE,
    };
    let bounce = PhysRange {
        base: mapping.dma_addr().phys(),
        size: 0x1000,
    };
    assert_eq!(rig.hypercalls(), [(CacheOp::Clean, first_page)]);
    assert_eq!(
        rig.pool(DYNAMIC_POOL).flush_support(),
        Some(FlushSupport::Accepted)
    );
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(
        rig.hypercalls(),
        [(CacheOp::Clean, first_page), (CacheOp::Invalidate, bounce)]
    );
}

// ---- bounce buffers ----

#[test]
fn bounce_copies_follow_the_direction() {
    let mut rig = Rig::new(Platform::Xen);
    let mut dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    let len = 0x1234;

    // To the device: copied in at map and at each sync for the device; never copied back.
    let buf = rig.cpu_buffer(0x4010_0000, len, 10);
    let buf_virt = buf.virt();
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::ToDevice)
        .unwrap();
    assert!(mapping.is_bounced());
    let window = window_of(&rig, STATIC_POOL, mapping.dma_addr());
    assert_eq!(rig.memory.read(window, len), pattern(len, 10));
    rig.memory.write(buf_virt.0, &pattern(len, 20));
    dev.sync_for_device(&mut rig.env(), &mapping).unwrap();
    assert_eq!(rig.memory.read(window, len), pattern(len, 20));
    rig.memory.write(window, &pattern(len, 99));
    dev.sync_for_cpu(&mut rig.env(), &mapping).unwrap();
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.memory.read(buf_virt.0, len), pattern(len, 20));
    assert_eq!(dev.stats().bounced, 2 * len);

    // From the device: copied in once at map (no stale pool data can reach the
    // CPU), copied out at each sync for the CPU and at unmap.
    let buf = rig.cpu_buffer(0x4020_0000, len, 30);
    let buf_virt = buf.virt();
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::FromDevice)
        .unwrap();
    let window = window_of(&rig, STATIC_POOL, mapping.dma_addr());
    assert_eq!(rig.memory.read(window, len), pattern(len, 30));
    rig.memory.write(window, &pattern(len, 40));
    dev.sync_for_cpu(&mut rig.env(), &mapping).unwrap();
    assert_eq!(rig.memory.read(buf_virt.0, len), pattern(len, 40));
    rig.memory.write(buf_virt.0, &pattern(len, 45));
    dev.sync_for_device(&mut rig.env(), &mapping).unwrap();
    assert_eq!(
        rig.memory.read(window, len),
        pattern(len, 40),
        "no copy in for the device's own buffer"
    );
    rig.memory.write(window, &pattern(len, 50));
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.memory.read(buf_virt.0, len), pattern(len, 50));
    assert_eq!(dev.stats().bounced, 2 * len + 3 * len);

    // Both ways.
    let buf = rig.cpu_buffer(0x4030_0000, len, 60);
    let buf_virt = buf.virt();
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::Bidirectional)
        .unwrap();
    let window = window_of(&rig, STATIC_POOL, mapping.dma_addr());
    assert_eq!(rig.memory.read(window, len), pattern(len, 60));
    rig.memory.write(window, &pattern(len, 70));
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.memory.read(buf_virt.0, len), pattern(len, 70));
    assert_eq!(dev.stats().bounced, 5 * len + 2 * len);
    assert_eq!(
        rig.pool(STATIC_POOL).usage(),
        PoolUsage {
            used_pages: 0,
            total_pages: 1024
        }
    );
}

#[test]
fn a_pool_buffer_is_synced_like_a_bounce_buffer_and_never_copied() {
    let mut rig = Rig::new(Platform::Xen);
    let mut dev = rig.device(DEVICE, false, Some(DYNAMIC_POOL));
    let free = rig.pool(DYNAMIC_POOL).usage();
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x2100).unwrap();
    assert_eq!(buffer.size(), 0x3000);
    assert!(DYNAMIC_PHYS.contains(buffer.dma_addr().phys()));
    assert_eq!(
        buffer.virt().0,
        window_of(&rig, DYNAMIC_POOL, buffer.dma_addr())
    );
    let (dma, window) = (buffer.dma_addr(), buffer.virt().0);
    rig.memory.write(window, &pattern(0x2011, 5));
    rig.forget_setup();
    // Only the bytes the device touches are mapped and flushed.
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x2011, DmaDirection::Bidirectional)
        .unwrap();
    assert_eq!((mapping.dma_addr(), mapping.size()), (dma, 0x2011));
    assert!(!mapping.is_bounced());
    rig.memory.write(window + 0x10, &pattern(0x2000, 9));
    let buffer = dev.unmap_in_pool(&mut rig.env(), mapping).unwrap();
    // One hypercall (what it does is the policy's), over exactly the
    // mapped bytes.
    let [(_, range)] = rig.hypercalls()[..] else {
        panic!("{:?}", rig.hypercalls());
    };
    assert_eq!(range, PhysRange::new(dma.0, 0x2011));
    assert_eq!(rig.memory.read(window + 0x10, 0x2000), pattern(0x2000, 9));
    let stats = *dev.stats();
    assert_eq!(
        (stats.maps, stats.unmaps, stats.syncs, stats.hypercalls),
        (1, 1, 2, 1)
    );
    assert_eq!(stats.bounced, 0, "nothing copied either way");
    // The same buffer again, then given up through `unmap`, which frees it.
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x1000, DmaDirection::FromDevice)
        .unwrap();
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(rig.pool(DYNAMIC_POOL).usage(), free);
    assert_eq!(dev.stats().hypercalls, 2);
}

#[test]
fn pool_buffers_are_refused_where_they_do_not_belong() {
    let mut rig = Rig::new(Platform::Xen);
    let mut dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    let mut other = rig.device(OTHER_DEVICE, false, Some(STATIC_POOL));
    let mut no_pool = rig.device(OTHER_DEVICE, false, None);
    assert!(matches!(
        no_pool.alloc_in_pool(&mut rig.env(), 0x1000),
        Err(DmaError::NoDevicePool {
            device: OTHER_DEVICE
        })
    ));
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x1000).unwrap();
    let dma = buffer.dma_addr();
    let (err, buffer) = other
        .map_in_pool(&mut rig.env(), buffer, 0x10, DmaDirection::ToDevice)
        .unwrap_err();
    assert!(matches!(err, DmaError::ForeignHandle { .. }), "{err}");
    let (err, buffer) = dev
        .map_in_pool(&mut rig.env(), buffer, 0x1001, DmaDirection::ToDevice)
        .unwrap_err();
    assert!(matches!(err, DmaError::BufferOutOfRange { .. }), "{err}");
    let (err, buffer) = dev
        .map_in_pool(&mut rig.env(), buffer, 0, DmaDirection::ToDevice)
        .unwrap_err();
    assert!(matches!(err, DmaError::ZeroLength { .. }), "{err}");
    assert_eq!(
        buffer.dma_addr(),
        dma,
        "every refusal gives the buffer back"
    );
    assert_eq!(dev.stats().syncs, 0);
    let cpu = rig.cpu_buffer(0x4010_0000, 0x100, 1);
    let bounced = dev
        .map(&mut rig.env(), cpu, DmaDirection::ToDevice)
        .unwrap();
    let bounce_dma = bounced.dma_addr();
    let err = dev.unmap_in_pool(&mut rig.env(), bounced).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("device {DEVICE}: the mapping at {bounce_dma} is not of a pool buffer")
    );
    assert!(other.free_in_pool(&mut rig.env(), buffer).is_err());
}

#[test]
fn a_buffer_inside_a_pool_window_is_not_linear_ram() {
    let mut rig = Rig::new(Platform::Xen);
    let mut dev = rig.device(DEVICE, false, None);
    let in_pool = fake_buffer(VirtAddr(STATIC_WINDOW + 0x10), 0x100);
    let err = dev
        .map(&mut rig.env(), in_pool, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003e00: buffer byte 0x78000010 is no-map pool \
         /reserved-memory/dma@78000000, not linear RAM"
    );
    let mmio = fake_buffer(VirtAddr(UART_WINDOW), 4);
    let err = dev
        .map(&mut rig.env(), mmio, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003e00: buffer byte 0x9000000 is MMIO /pl011@9000000, not linear RAM"
    );
    // A buffer that starts in RAM and runs into the pool is refused at the first pool byte.
    let straddling = fake_buffer(VirtAddr(0x77ff_f000 + LINEAR_OFFSET), 0x2000);
    let err = dev
        .map(&mut rig.env(), straddling, DmaDirection::ToDevice)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::NotLinearRam {
                phys: PhysAddr(0x7800_0000),
                ..
            }
        ),
        "{err:?}"
    );
    // The pool's linear alias is no kernel mapping at all.
    let alias = fake_buffer(VirtAddr(STATIC_PHYS.base.0 + LINEAR_OFFSET), 0x100);
    let err = dev
        .map(&mut rig.env(), alias, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003e00: buffer at 0xffff000078000000 is in no mapping of the address map"
    );
    assert_eq!(rig.cache.ops, []);
    assert_eq!(dev.stats().maps, 0);
}

// ---- coherent allocations ----

#[test]
fn coherent_memory_comes_from_the_right_pool_zeroed() {
    let mut rig = Rig::new(Platform::Xen);
    let cases = [
        (true, Some(STATIC_POOL), STATIC_POOL),
        (false, Some(STATIC_POOL), STATIC_POOL),
        (false, None, KERNEL_NC_POOL),
        (true, None, KERNEL_LINEAR_POOL),
    ];
    for (coherent, dt_pool, expected_pool) in cases {
        let mut dev = rig.device(DEVICE, coherent, dt_pool);
        assert_eq!(
            rig.pools.get(dev.coherent_pool()).unwrap().name(),
            expected_pool
        );
        let pool = rig.pool(expected_pool);
        let window = pool.window();
        let phys = pool.phys();
        rig.memory.write(window.0, &[0xaa; 0x3000]);
        let buffer = dev.alloc_coherent(&mut rig.env(), 0x2100, 0x2000).unwrap();
        assert_eq!(buffer.dma_addr().0 % 0x2000, 0);
        assert_eq!(buffer.size(), 0x3000);
        assert_eq!(
            buffer.virt().0 - window.0,
            buffer.dma_addr().0 - phys.base.0
        );
        assert_eq!(rig.memory.read(buffer.virt().0, 0x3000), vec![0; 0x3000]);
        assert_eq!(rig.pool(expected_pool).usage().used_pages, 3);
        dev.free_coherent(&mut rig.env(), buffer).unwrap();
        assert_eq!(rig.pool(expected_pool).usage().used_pages, 0);
        assert_eq!((dev.stats().allocs, dev.stats().frees), (1, 1));
    }
    // The linear pool hands out linear addresses.
    let mut dev = rig.device(DEVICE, true, None);
    let buffer = dev.alloc_coherent(&mut rig.env(), 0x1000, 1).unwrap();
    assert_eq!(buffer.virt().0, buffer.dma_addr().0 + LINEAR_OFFSET);
    dev.free_coherent(&mut rig.env(), buffer).unwrap();
    assert_eq!(rig.cache.ops, []);
}

#[test]
fn coherent_memory_is_synced_through_its_window_only_where_a_stale_line_could_be_read() {
    for platform in [Platform::Xen, Platform::Bare] {
        let xen = platform == Platform::Xen;
        let mut rig = Rig::new(platform);
        // (coherent, pool, invalidated for the CPU, for the device)
        let cases = [
            (false, Some(DYNAMIC_POOL), xen, false),
            (false, Some(STATIC_POOL), xen, false),
            (false, None, xen, false),
            (true, Some(DYNAMIC_POOL), false, xen),
            (true, None, false, false),
        ];
        for (coherent, pool, for_cpu, for_device) in cases {
            let mut dev = rig.device(DEVICE, coherent, pool);
            let buffer = dev.alloc_coherent(&mut rig.env(), 0x2000, 1).unwrap();
            rig.forget_setup();
            let part = VirtAddr(buffer.virt().0 + 0x1000);
            for (point, expected) in [
                (SyncPoint::ForCpu, for_cpu),
                (SyncPoint::ForDevice, for_device),
            ] {
                dev.sync_coherent(&mut rig.env(), &buffer, 0x1000, 0x40, point)
                    .unwrap();
                let ops = core::mem::take(&mut rig.cache.ops);
                let want = if expected {
                    vec![(CacheOp::Invalidate, part, 0x40)]
                } else {
                    vec![]
                };
                assert_eq!(ops, want, "{platform:?} {coherent} {pool:?} {point:?}");
            }
            // Never a hypercall, even on a pool Xen flushes.
            assert!(rig.xen.as_ref().is_none_or(|xen| xen.calls.is_empty()));
            let stats = dev.stats();
            assert_eq!((stats.coherent_syncs, stats.syncs, stats.va_ops), (2, 0, 0));
            assert_eq!(
                stats.coherent_va_ops,
                u64::from(for_cpu) + u64::from(for_device)
            );
            // Parts outside the buffer and other devices' buffers are refused.
            for (offset, len) in [(0x2000, 1), (0x1fc0, 0x41), (0, 0), (u64::MAX, 2)] {
                assert_eq!(
                    dev.sync_coherent(&mut rig.env(), &buffer, offset, len, SyncPoint::ForCpu),
                    Err(DmaError::OutsideCoherentBuffer {
                        device: DEVICE,
                        offset,
                        len,
                        size: 0x2000
                    })
                );
            }
            let mut other = rig.device(OTHER_DEVICE, coherent, pool);
            assert!(matches!(
                other.sync_coherent(&mut rig.env(), &buffer, 0, 1, SyncPoint::ForCpu),
                Err(DmaError::ForeignHandle { .. })
            ));
            assert_eq!(rig.cache.ops, []);
            dev.free_coherent(&mut rig.env(), buffer).unwrap();
        }
    }
    assert_eq!(
        DmaError::OutsideCoherentBuffer {
            device: DEVICE,
            offset: 0x1fc0,
            len: 0x41,
            size: 0x2000
        }
        .to_string(),
        "device /virtio_mmio@a003e00: sync of 0x41 bytes at 0x1fc0 of a coherent buffer of 0x2000 bytes"
    );
}

#[test]
fn coherent_memory_is_never_cacheable_for_a_non_coherent_device() {
    let mut rig = Rig::new(Platform::Bare);
    for pool in [WB_POOL, MAPPED_POOL] {
        let mut dev = rig.device(DEVICE, false, Some(pool));
        let err = dev.alloc_coherent(&mut rig.env(), 0x1000, 1).unwrap_err();
        assert_eq!(
            err,
            DmaError::CacheableCoherentPool {
                device: DEVICE,
                pool
            }
        );
        assert_eq!(rig.pool(pool).usage().used_pages, 0);
        // A coherent device may use it.
        let mut dev = rig.device(DEVICE, true, Some(pool));
        let buffer = dev.alloc_coherent(&mut rig.env(), 0x1000, 1).unwrap();
        dev.free_coherent(&mut rig.env(), buffer).unwrap();
    }
    assert_eq!(
        DmaError::CacheableCoherentPool {
            device: DEVICE,
            pool: WB_POOL
        }
        .to_string(),
        "device /virtio_mmio@a003e00 is not DMA-coherent and pool /reserved-memory/dma-wb@7d000000 \
         is mapped cacheable: no coherent memory there"
    );
}

#[test]
fn exhaustion_is_typed_and_leaves_nothing_allocated() {
    let mut rig = Rig::new(Platform::Xen);
    let mut dev = rig.device(DEVICE, false, Some(DYNAMIC_POOL));
    let most = dev
        .alloc_coherent(&mut rig.env(), DYNAMIC_PHYS.size - 0x1000, 1)
        .unwrap();
    let buf = rig.cpu_buffer(0x4010_0000, 0x2000, 1);
    let buf_virt = buf.virt();
    let err = dev
        .map(&mut rig.env(), buf, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(
        err,
        DmaError::Pool {
            device: DEVICE,
            error: PoolError::Exhausted {
                pool: DYNAMIC_POOL,
                requested: 0x2000,
                align: 0x1000,
                largest_free: 0x1000
            },
        }
    );
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003e00: pool /reserved-memory/dma-dyn exhausted: no free block of 0x2000 \
         bytes aligned to 0x1000 (largest free block 0x1000 bytes)"
    );
    assert_eq!(rig.pool(DYNAMIC_POOL).usage().used_pages, 255);
    assert_eq!(rig.hypercalls(), []);
    assert_eq!(dev.stats().maps, 0);
    let err = dev.map(
        &mut rig.env(),
        fake_buffer(buf_virt, 0x10_1000),
        DmaDirection::ToDevice,
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        "device /virtio_mmio@a003e00: pool /reserved-memory/dma-dyn holds 0x100000 bytes, not 0x101000"
    );
    dev.free_coherent(&mut rig.env(), most).unwrap();
    assert_eq!(rig.pool(DYNAMIC_POOL).usage().used_pages, 0);
    assert_eq!(rig.pool(DYNAMIC_POOL).largest_free(), DYNAMIC_PHYS.size);
}

// ---- handles ----

#[test]
fn handles_of_another_device_are_refused() {
    let mut rig = Rig::new(Platform::Bare);
    let mut dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    let mut other = rig.device(OTHER_DEVICE, false, Some(STATIC_POOL));
    let buf = rig.cpu_buffer(0x4010_0000, 0x1000, 1);
    let mapping = dev
        .map(&mut rig.env(), buf, DmaDirection::ToDevice)
        .unwrap();
    let err = other.sync_for_cpu(&mut rig.env(), &mapping).unwrap_err();
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003c00: DMA handle belongs to /virtio_mmio@a003e00"
    );
    dev.unmap(&mut rig.env(), mapping).unwrap();
    let buffer = dev.alloc_coherent(&mut rig.env(), 0x1000, 1).unwrap();
    assert!(matches!(
        other.free_coherent(&mut rig.env(), buffer),
        Err(DmaError::ForeignHandle {
            device: OTHER_DEVICE,
            owner: DEVICE
        })
    ));
    assert_eq!(other.stats().syncs, 0);
}

#[test]
fn bad_buffers_are_refused() {
    let mut rig = Rig::new(Platform::Bare);
    let mut dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    let empty = fake_buffer(VirtAddr(0x4010_0000 + LINEAR_OFFSET), 0);
    let err = dev
        .map(&mut rig.env(), empty, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003e00: DMA of zero bytes"
    );
    let wrapping = fake_buffer(VirtAddr(u64::MAX - 0xf), 0x20);
    let err = dev
        .map(&mut rig.env(), wrapping, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003e00: buffer at 0xfffffffffffffff0 of 0x20 bytes runs past the address space"
    );
    assert_eq!(rig.pool(STATIC_POOL).usage().used_pages, 0);
}

// ---- setup ----

#[test]
fn pool_setup_cleans_own_windows_once_and_probes_them() {
    let map = address_map();
    let mut cache = RecordingCache {
        map,
        ops: Vec::new(),
    };
    let mut xen = FakeXen {
        refused: vec![(STATIC_PHYS, FlushErrno::Eperm)],
        ..FakeXen::default()
    };
    let mut pools = PoolSet::new(map, Host::Bare);
    let static_spec = PoolSpec {
        name: STATIC_POOL,
        phys: STATIC_PHYS,
        placement: own_window(STATIC_WINDOW, WindowAttributes::NonCacheable),
        role: PoolRole::DeviceTree,
    };
    // SAFETY: fake memory, as for `fake_buffer`.
    unsafe { pools.add(static_spec, &mut cache, Some(&mut xen)) }.unwrap();
    let linear_spec = PoolSpec {
        name: KERNEL_LINEAR_POOL,
        phys: KERNEL_LINEAR_PHYS,
        placement: PoolPlacement::Linear,
        role: PoolRole::KernelLinear,
    };
    // SAFETY: fake memory, as for `fake_buffer`.
    unsafe { pools.add(linear_spec, &mut cache, Some(&mut xen)) }.unwrap();
    assert_eq!(
        cache.ops,
        [(
            CacheOp::CleanInvalidate,
            VirtAddr(STATIC_WINDOW),
            STATIC_PHYS.size
        )]
    );
    assert_eq!(
        xen.calls,
        [(
            CacheOp::Clean,
            PhysRange {
                base: STATIC_PHYS.base,
                size: PAGE_SIZE
            }
        )]
    );
}

#[test]
fn pool_setup_lines() {
    let xen = Rig::new(Platform::Xen);
    let lines: Vec<String> = xen
        .pools
        .iter()
        .map(|pool| pool.setup_line().to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "dma: pool /reserved-memory/dma@78000000 0x78000000+0x400000 window 0xfffff00000000000 nc \
             xen-flush=refused(EPERM) -> window VA maintenance",
            "dma: pool /reserved-memory/dma-dyn 0x7c000000+0x100000 window 0xfffff00010000000 nc \
             xen-flush=accepted -> xen cache flush",
            "dma: pool /reserved-memory/dma-wb@7d000000 0x7d000000+0x100000 window 0xfffff00020000000 wb \
             xen-flush=accepted -> xen cache flush",
            "dma: pool /reserved-memory/dma-mapped@7e000000 0x7e000000+0x100000 window 0xffff00007e000000 \
             linear xen-flush=none -> linear VA maintenance",
            "dma: pool tidepool:nc-pool 0x7a000000+0x100000 window 0xfffff00030000000 nc \
             xen-flush=accepted -> xen cache flush",
            "dma: pool tidepool:linear-pool 0x48000000+0x100000 window 0xffff000048000000 linear \
             xen-flush=none -> linear VA maintenance",
        ]
    );
    let bare = Rig::new(Platform::Bare);
    let lines: Vec<String> = bare
        .pools
        .iter()
        .take(3)
        .map(|pool| pool.setup_line().to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "dma: pool /reserved-memory/dma@78000000 0x78000000+0x400000 window 0xfffff00000000000 nc \
             xen-flush=none -> no CPU maintenance",
            "dma: pool /reserved-memory/dma-dyn 0x7c000000+0x100000 window 0xfffff00010000000 nc \
             xen-flush=none -> no CPU maintenance",
            "dma: pool /reserved-memory/dma-wb@7d000000 0x7d000000+0x100000 window 0xfffff00020000000 wb \
             xen-flush=none -> window VA maintenance",
        ]
    );
    assert_eq!(bare.pool(STATIC_POOL).usage().to_string(), "0/1024 pages");
}

#[test]
fn stats_line() {
    let mut rig = Rig::new(Platform::Xen);
    let mut dev = rig.device(DEVICE, false, Some(DYNAMIC_POOL));
    for i in 0..6 {
        let buf = rig.cpu_buffer(0x4010_0000 + i * 0x2000, 0x1000, 1);
        let mapping = dev
            .map(&mut rig.env(), buf, DmaDirection::FromDevice)
            .unwrap();
        dev.unmap(&mut rig.env(), mapping).unwrap();
    }
    let buffers: Vec<_> = (0..3)
        .map(|_| dev.alloc_coherent(&mut rig.env(), 0x1000, 1).unwrap())
        .collect();
    dev.sync_coherent(&mut rig.env(), &buffers[0], 0, 8, SyncPoint::ForCpu)
        .unwrap();
    assert_eq!(
        dev.stats_line().to_string(),
        "dma: stats /virtio_mmio@a003e00 syncs=12 hypercalls=6 pages=6 refusals=0 fallbacks=0 va_ops=0 \
         va_bytes=0 bounced=49152 maps=6 unmaps=6 allocs=3 frees=0 coherent_syncs=1 coherent_va_ops=1"
    );
    for buffer in buffers {
        dev.free_coherent(&mut rig.env(), buffer).unwrap();
    }
}

#[test]
fn pools_must_match_the_address_map() {
    let mut rig = Rig::new(Platform::Bare);
    let nc = WindowAttributes::NonCacheable;
    let spec = |name, phys, placement, role| PoolSpec {
        name,
        phys,
        placement,
        role,
    };
    let cases: [(PoolSpec<'static>, &str); 7] = [
        (
            spec(
                STATIC_POOL,
                STATIC_PHYS,
                own_window(STATIC_WINDOW, nc),
                PoolRole::DeviceTree,
            ),
            "pool /reserved-memory/dma@78000000 is set up twice",
        ),
        (
            spec(
                "/reserved-memory/x",
                STATIC_PHYS,
                PoolPlacement::Linear,
                PoolRole::DeviceTree,
            ),
            "pool /reserved-memory/x is declared in the linear map, but 0x78000000 is no-map pool \
             /reserved-memory/dma@78000000",
        ),
        (
            spec(
                "/reserved-memory/x",
                STATIC_PHYS,
                own_window(STATIC_WINDOW, nc),
                PoolRole::DeviceTree,
            ),
            "pool /reserved-memory/x is declared a no-map pool with its own window, but 0x78000000 is \
             no-map pool /reserved-memory/dma@78000000",
        ),
        (
            spec(
                "/reserved-memory/x",
                PhysRange::new(0x7000_0000, 0x10_0000),
                own_window(STATIC_WINDOW, nc),
                PoolRole::DeviceTree,
            ),
            "pool /reserved-memory/x is declared a no-map pool with its own window, but 0x70000000 is linear RAM",
        ),
        (
            spec(
                "/reserved-memory/x",
                PhysRange::new(0x77ff_f000, 0x2000),
                PoolPlacement::Linear,
                PoolRole::DeviceTree,
            ),
            "pool /reserved-memory/x is declared in the linear map, but 0x78000000 is no-map pool \
             /reserved-memory/dma@78000000",
        ),
        (
            spec(
                "/reserved-memory/x",
                PhysRange::new(0x4000_0800, 0x1000),
                PoolPlacement::Linear,
                PoolRole::DeviceTree,
            ),
            "pool /reserved-memory/x [0x40000800..0x40001800) is not a non-empty, page-aligned range",
        ),
        (
            spec(
                "tidepool:second-nc",
                PhysRange::new(0x4100_0000, 0x1000),
                PoolPlacement::Linear,
                PoolRole::KernelLinear,
            ),
            "pool tidepool:second-nc cannot be the kernel linear pool: tidepool:linear-pool is",
        ),
    ];
    for (spec, message) in cases {
        assert_eq!(rig.add_pool(spec).unwrap_err().to_string(), message);
    }
    // Same region, other window.
    let mut pools = PoolSet::new(address_map(), Host::Bare);
    let wrong_window = spec(
        STATIC_POOL,
        STATIC_PHYS,
        own_window(STATIC_WINDOW + 0x1000, nc),
        PoolRole::DeviceTree,
    );
    // SAFETY: fake memory, as for `fake_buffer`.
    let err = unsafe { pools.add(wrong_window, &mut rig.cache, None) }.unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool /reserved-memory/dma@78000000 is declared with window 0xfffff00000001000, but is mapped at \
         0xfffff00000000000"
    );
    assert_eq!(rig.pools.iter().count(), 6);
}

#[test]
fn devices_resolve_their_pools() {
    let rig = Rig::new(Platform::Bare);
    let dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    assert_eq!(dev.private_pool(), rig.pools.find(STATIC_POOL));
    assert_eq!(Some(dev.coherent_pool()), rig.pools.find(STATIC_POOL));
    assert!(!dev.is_coherent());
    assert_eq!(dev.name(), DEVICE);
    let err = DmaDevice::new(
        DeviceSpec {
            name: DEVICE,
            coherent: false,
            pool: Some("/reserved-memory/nope"),
            addressing: Addressing::Bus,
        },
        &rig.pools,
    );
    assert_eq!(
        err.err().unwrap().to_string(),
        "device /virtio_mmio@a003e00: memory-region /reserved-memory/nope is not a DMA pool that was set up"
    );
    let empty = PoolSet::new(address_map(), Host::Bare);
    for (coherent, message) in [
        (
            false,
            "device /virtio_mmio@a003e00 has no pool of its own and there is no kernel non-cacheable pool",
        ),
        (
            true,
            "device /virtio_mmio@a003e00 has no pool of its own and there is no kernel linear pool",
        ),
    ] {
        let err = DmaDevice::new(
            DeviceSpec {
                name: DEVICE,
                coherent,
                pool: None,
                addressing: Addressing::Bus,
            },
            &empty,
        );
        assert_eq!(err.err().unwrap().to_string(), message);
    }
    // A device that refers to a pool set it was not built from.
    let mut other = Rig::new(Platform::Bare);
    other.pools = PoolSet::new(address_map(), Host::Bare);
    let mut dev = rig.device(DEVICE, false, Some(STATIC_POOL));
    let err = dev.alloc_coherent(&mut other.env(), 0x1000, 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "device /virtio_mmio@a003e00: pool #0 is not in this pool set"
    );
}

#[test]
fn pool_errors_display() {
    let mut rig = Rig::new(Platform::Bare);
    let id = rig.pools.find(WB_POOL).unwrap();
    let pool = rig.pools.get_mut(id).unwrap();
    assert_eq!(
        pool.alloc(0, 1).unwrap_err().to_string(),
        "pool /reserved-memory/dma-wb@7d000000: allocation of zero bytes"
    );
    assert_eq!(
        pool.alloc(0x1000, 0x3000).unwrap_err().to_string(),
        "pool /reserved-memory/dma-wb@7d000000: alignment 0x3000 is not a power of two"
    );
    let block = pool.alloc(0x1000, 1).unwrap();
    pool.free(block).unwrap();
    assert_eq!(
        pool.free(block).unwrap_err().to_string(),
        "pool /reserved-memory/dma-wb@7d000000: free of [0x7d000000..0x7d001000) refused: already free"
    );
    assert_eq!(
        pool.free(PhysRange::new(0x1000, 0x1000))
            .unwrap_err()
            .to_string(),
        "pool /reserved-memory/dma-wb@7d000000: free of [0x1000..0x2000) refused: not a page-aligned range inside the pool"
    );
    let block = pool.alloc(0x2000, 1).unwrap();
    assert_eq!(
        pool.free(PhysRange {
            base: block.base,
            size: 0x1000
        })
        .unwrap_err()
        .to_string(),
        "pool /reserved-memory/dma-wb@7d000000: free of [0x7d000000..0x7d001000) refused: not exactly one allocation"
    );
    assert_eq!(pool.usage().used_pages, 2);
}

#[test]
fn xen_return_values() {
    assert_eq!(FlushErrno::from_xen_return(-1), FlushErrno::Eperm);
    assert_eq!(FlushErrno::from_xen_return(-22), FlushErrno::Einval);
    assert_eq!(FlushErrno::from_xen_return(-38), FlushErrno::Enosys);
    assert_eq!(FlushErrno::from_xen_return(-95), FlushErrno::Eopnotsupp);
    assert_eq!(FlushErrno::from_xen_return(-14), FlushErrno::Other(-14));
    assert_eq!(
        FlushFailed {
            errno: FlushErrno::Eopnotsupp,
            hypercalls: 2
        }
        .to_string(),
        "cache flush refused (EOPNOTSUPP) after 2 hypercalls"
    );
}
