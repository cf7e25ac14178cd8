//! From the device-tree plan to the kernel's address-space layout: which
//! ranges are linear RAM, DMA pools, reserved memory and device windows, and
//! where the heap goes. Pure logic, tested on the host; the MMU code only
//! installs the result.
//!
//! - Linear RAM: the plan's `linear_map` (every no-map region already cut
//!   out, static or dynamic, even where a `memory` node covers it).
//! - Pools: `/reserved-memory` regions compatible with `shared-dma-pool` or
//!   `restricted-dma-pool`; no-map ones, and those outside memory (board
//!   memory the `memory` nodes do not list, never in the linear map), get a
//!   window of their own.
//! - Other no-map regions in memory are classified (a fault there names
//!   them) but not mapped.
//! - Windows (Device-nGnRE): every UART the kernel drives (the console, and
//!   under Xen the vpl011 a dom0less domU reads its input from, are among
//!   them), the GIC's distributor, CPU interface and redistributors, and every
//!   virtio-mmio transport. Under Xen, the grant-table region and the page
//!   chosen for the shared-info frame are windows of Normal write-back memory
//!   (Xen's Arm ABI requires that type for memory it shares), as are the
//!   pages the toolstack shares with an `xl` guest (PV console, xenstore),
//!   which lie outside its RAM.
//! - The kernel's own DMA pools, carved from RAM like the heap: a
//!   non-cacheable pool ([`KERNEL_NC_POOL`], cut out of the linear map and
//!   given a window, for coherent allocations of non-coherent devices
//!   without a pool of their own) and a linear pool ([`KERNEL_LINEAR_POOL`],
//!   for those of coherent devices).
//! - The heap: carved from linear RAM by [`tidepool_mm::carve()`] (the highest
//!   fit), clear of the image, the device tree, `/memreserve/` entries,
//!   every reserved region and the kernel pools.

use alloc::vec::Vec;
use core::fmt;

use tidepool_dt::{AddrRange, DeviceTree, ReservedRegion};
use tidepool_mm::{
    CarveError, ImageSections, KernelLayout, MemoryType, MmioSpec, NamedRange, PAGE_SIZE,
    PhysRange, PlanError, PlanInput, PoolSpec, carve, plan_layout,
};

/// Name of linear RAM in the address map.
const RAM: &str = "RAM";
/// Name of the shared-info frame's window.
const SHARED_INFO: &str = "xen shared info";
/// Name of the kernel's non-cacheable DMA pool.
pub const KERNEL_NC_POOL: &str = "tidepool:nc-pool";
/// Name of the kernel's linear DMA pool.
pub const KERNEL_LINEAR_POOL: &str = "tidepool:linear-pool";
/// Size of each kernel DMA pool: virtqueue rings and request headers of a
/// few devices.
pub const KERNEL_POOL_SIZE: u64 = 256 * 1024;

/// The kernel image as loaded (physical addresses; the image runs
/// identity-mapped).
#[derive(Clone, Copy, Debug)]
pub struct ImageSpans {
    /// The whole image, BSS and stacks included.
    pub image: PhysRange,
    /// Code.
    pub text: PhysRange,
    /// Read-only data.
    pub rodata: PhysRange,
    /// Data and BSS (with the page-table arena and the boot heap).
    pub data: PhysRange,
    /// The kernel stack (its guard page is below it).
    pub stack: PhysRange,
    /// The exception stack (its guard page is below it).
    pub exception_stack: PhysRange,
}

/// What the kernel will map, and where its heap is.
#[derive(Debug)]
pub struct MemorySetup<'a> {
    /// Mappings and address map.
    pub layout: KernelLayout<'a>,
    /// The heap's physical range (in linear RAM).
    pub heap: PhysRange,
    /// The page where Xen's shared-info frame goes, if running under Xen.
    pub shared_info: Option<PhysRange>,
    /// The kernel's non-cacheable DMA pool (out of the linear map, in a window).
    pub kernel_nc_pool: PhysRange,
    /// The kernel's linear DMA pool (in the linear map).
    pub kernel_linear_pool: PhysRange,
}

/// Why the memory setup failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// The layout is inconsistent (overlaps, alignment, reach).
    Layout(PlanError),
    /// No room for a kernel DMA pool.
    KernelPool {
        /// The pool.
        pool: &'static str,
        /// Why.
        error: CarveError,
    },
    /// No room for the heap.
    Heap {
        /// Requested size.
        size: u64,
        /// Why.
        error: CarveError,
    },
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layout(error) => write!(f, "memory layout: {error}"),
            Self::KernelPool { pool, error } => write!(f, "{pool}: {error}"),
            Self::Heap { size, error } => write!(f, "heap of {size:#x} bytes: {error}"),
        }
    }
}

fn phys(range: AddrRange) -> PhysRange {
    PhysRange::new(range.base(), range.size())
}

/// Whether `region` is a DMA pool.
pub fn is_dma_pool(region: &ReservedRegion) -> bool {
    region.is_compatible("shared-dma-pool") || region.is_compatible("restricted-dma-pool")
}

/// Plans the kernel's memory from the device tree (see the module docs);
/// `xen_pages` are further pages Xen shares (named by `HVM_PARAM_*`, not in
/// the device tree).
pub fn plan_memory<'a>(
    dt: &'a DeviceTree,
    image: &ImageSpans,
    dtb: PhysRange,
    heap_size: Option<u64>,
    xen_pages: &[NamedRange<'a>],
) -> Result<MemorySetup<'a>, MemoryError> {
    let plan = &dt.plan;
    let ram: Vec<PhysRange> = plan.linear_map().iter().map(|r| phys(*r)).collect();
    let mut avoid: Vec<PhysRange> = alloc::vec![image.image, dtb];
    avoid.extend(plan.memreserve().iter().map(|r| phys(*r)));
    avoid.extend(plan.reserved().iter().map(|r| phys(r.range)));
    let mut carve_pool = |pool: &'static str| {
        let range = carve(&ram, &avoid, KERNEL_POOL_SIZE, PAGE_SIZE)
            .map_err(|error| MemoryError::KernelPool { pool, error })?;
        avoid.push(range);
        Ok(range)
    };
    let kernel_nc_pool = carve_pool(KERNEL_NC_POOL)?;
    let kernel_linear_pool = carve_pool(KERNEL_LINEAR_POOL)?;
    let heap_size = heap_size.unwrap_or_else(|| default_heap_size(&ram));
    let heap = carve(&ram, &avoid, heap_size, PAGE_SIZE).map_err(|error| MemoryError::Heap {
        size: heap_size,
        error,
    })?;

    let linear: Vec<NamedRange<'a>> = ram
        .iter()
        .flat_map(|r| subtract(*r, kernel_nc_pool))
        .map(|phys| NamedRange { name: RAM, phys })
        .collect();
    let pools: Vec<PoolSpec<'a>> = plan
        .reserved()
        .iter()
        .filter(|r| is_dma_pool(r))
        .map(|r| PoolSpec {
            name: &r.path,
            phys: phys(r.range),
            // A pool outside memory has no linear alias either.
            no_map: !r.is_linear(),
        })
        .chain([PoolSpec {
            name: KERNEL_NC_POOL,
            phys: kernel_nc_pool,
            no_map: true,
        }])
        .collect();
    // Regions outside memory are not RAM, and may overlap each other: the
    // address map names only those in memory.
    let reserved: Vec<NamedRange<'a>> = plan
        .reserved()
        .iter()
        .filter(|r| r.no_map && r.in_memory && !is_dma_pool(r))
        .map(|r| NamedRange {
            name: &r.path,
            phys: phys(r.range),
        })
        .collect();

    let platform = &dt.platform;
    let device = |name: &'a str, range: AddrRange| MmioSpec {
        name,
        phys: phys(range),
        memory: MemoryType::Device,
    };
    let mut mmio: Vec<MmioSpec<'a>> = Vec::new();
    // Every UART the kernel drives, not only stdout-path's: Xen removes
    // stdout-path from dom0's tree, where `console-uart=` names the console,
    // and a dom0less domU reads what its user types from Xen's vpl011.
    mmio.extend(platform.uarts.iter().map(|u| device(&u.path, u.reg)));
    if let Some(gic) = &platform.gic {
        mmio.push(device(&gic.path, gic.distributor));
        mmio.extend(gic.cpu_interface.map(|r| device(&gic.path, r)));
        mmio.extend(gic.redistributors.iter().map(|r| device(&gic.path, *r)));
    }
    mmio.extend(platform.virtio_mmio.iter().map(|v| device(&v.path, v.reg)));
    mmio.extend(
        platform
            .usdhc
            .iter()
            .map(|u| device(&u.device.path, u.device.reg)),
    );
    let mut shared_info = None;
    if let Some(xen) = &platform.hypervisor {
        let shared = |name: &'a str, phys: PhysRange| MmioSpec {
            name,
            phys,
            memory: MemoryType::NormalWriteBack,
        };
        mmio.push(shared(&xen.path, phys(xen.grant_table)));
        // The first whole page of the first extended region: guest-physical
        // space Xen guarantees unused, where XENMEM_add_to_physmap puts it.
        shared_info = xen.extended_regions.iter().find_map(|r| {
            let base = r.base().checked_next_multiple_of(PAGE_SIZE)?;
            (base.checked_add(PAGE_SIZE)? <= r.end()).then(|| PhysRange::new(base, PAGE_SIZE))
        });
        mmio.extend(shared_info.map(|page| shared(SHARED_INFO, page)));
        mmio.extend(xen_pages.iter().map(|page| shared(page.name, page.phys)));
    }

    let stacks = [
        NamedRange {
            name: "kernel stack",
            phys: image.stack,
        },
        NamedRange {
            name: "exception stack",
            phys: image.exception_stack,
        },
    ];
    let input = PlanInput {
        image: ImageSections {
            text: image.text,
            rodata: image.rodata,
            data: image.data,
            stacks: &stacks,
        },
        linear: &linear,
        pools: &pools,
        reserved: &reserved,
        mmio: &mmio,
    };
    let layout = plan_layout(&input).map_err(MemoryError::Layout)?;
    Ok(MemorySetup {
        layout,
        heap,
        shared_info,
        kernel_nc_pool,
        kernel_linear_pool,
    })
}

/// The heap size without `heap=`: an eighth of linear RAM, between 1 MiB
/// (an 8 MiB domU) and 32 MiB (a block device's 16 request slots take
/// 4 MiB of staging buffers; a few devices and the transfers' buffers fit).
pub fn default_heap_size(ram: &[PhysRange]) -> u64 {
    const MIB: u64 = 1 << 20;
    let total: u64 = ram.iter().map(|r| r.size).sum();
    (total / 8).clamp(MIB, 32 * MIB) & !(PAGE_SIZE - 1)
}

/// `range` minus `hole`: zero, one or two ranges.
fn subtract(range: PhysRange, hole: PhysRange) -> impl Iterator<Item = PhysRange> {
    let below = PhysRange::new(
        range.base.0,
        hole.base.0.saturating_sub(range.base.0).min(range.size),
    );
    let above_base = hole.end().max(range.base.0).min(range.end());
    let above = PhysRange::new(above_base, range.end() - above_base);
    let (below, above) = if range.overlaps(&hole) {
        (below, above)
    } else {
        (range, PhysRange::new(0, 0))
    };
    [below, above].into_iter().filter(|r| r.size != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_mm::{AddressClass, MappingKind, PhysAddr, TranslationError, VirtAddr};
    use vm_fdt::FdtWriter;

    const MIB: u64 = 1 << 20;

    fn image() -> ImageSpans {
        let base = 0x4008_0000;
        ImageSpans {
            image: PhysRange::new(base, 0x40000),
            text: PhysRange::new(base, 0x10000),
            rodata: PhysRange::new(base + 0x10000, 0x8000),
            data: PhysRange::new(base + 0x18000, 0x10000),
            stack: PhysRange::new(base + 0x29000, 0x10000),
            exception_stack: PhysRange::new(base + 0x3a000, 0x4000),
        }
    }

    /// Xen 4.17's dom0 shape: the pool is also covered by a memory node
    /// (unless `pool_in_memory` is false: then it is board memory outside
    /// every bank, like Arm FVP's VRAM).
    fn xen_dom0_dtb(pool_no_map: bool, pool_in_memory: bool) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_u32("interrupt-parent", 2).unwrap();
        let gic = w.begin_node("intc@8000000").unwrap();
        w.property_string("compatible", "arm,gic-v3").unwrap();
        w.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000])
            .unwrap();
        w.property_null("interrupt-controller").unwrap();
        w.property_u32("#interrupt-cells", 3).unwrap();
        w.property_phandle(2).unwrap();
        w.end_node(gic).unwrap();
        let mem = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        let banks: &[u64] = if pool_in_memory {
            &[0x4000_0000, 0x1000_0000, 0x7800_0000, 0x40_0000]
        } else {
            &[0x4000_0000, 0x1000_0000]
        };
        w.property_array_u64("reg", banks).unwrap();
        w.end_node(mem).unwrap();
        let rm = w.begin_node("reserved-memory").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_null("ranges").unwrap();
        let pool = w.begin_node("dma@78000000").unwrap();
        w.property_string("compatible", "shared-dma-pool").unwrap();
        w.property_array_u64("reg", &[0x7800_0000, 0x40_0000])
            .unwrap();
        if pool_no_map {
            w.property_null("no-map").unwrap();
        }
        w.property_phandle(1).unwrap();
        w.end_node(pool).unwrap();
        w.end_node(rm).unwrap();
        let virtio = w.begin_node("virtio_mmio@a003e00").unwrap();
        w.property_string("compatible", "virtio,mmio").unwrap();
        w.property_array_u64("reg", &[0xa00_3e00, 0x200]).unwrap();
        w.property_array_u32("interrupts", &[0, 0x2f, 1]).unwrap();
        w.property_u32("memory-region", 1).unwrap();
        w.end_node(virtio).unwrap();
        let vpl011 = w.begin_node("sbsa-uart@22000000").unwrap();
        w.property_string("compatible", "arm,sbsa-uart").unwrap();
        w.property_array_u64("reg", &[0x2200_0000, 0x1000]).unwrap();
        w.property_array_u32("interrupts", &[0, 0, 4]).unwrap();
        w.end_node(vpl011).unwrap();
        let hyp = w.begin_node("hypervisor").unwrap();
        w.property_string_list("compatible", vec!["xen,xen-4.17".into(), "xen,xen".into()])
            .unwrap();
        w.property_array_u64(
            "reg",
            &[0x3800_0000, 0x100_0000, 0x1_0000_0800, 0x1000_0000],
        )
        .unwrap();
        w.property_array_u32("interrupts", &[1, 15, 0xf08]).unwrap();
        w.end_node(hyp).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    fn device_tree(pool_no_map: bool, pool_in_memory: bool) -> DeviceTree {
        DeviceTree::from_dtb_with(
            &xen_dom0_dtb(pool_no_map, pool_in_memory),
            &[AddrRange::new(0x4008_0000, 0x40000).unwrap()],
        )
        .expect("a valid tree")
    }

    const DTB: PhysRange = PhysRange::new(0x4800_0000, 0x1_0000);

    #[test]
    fn no_map_pool_is_a_window_not_linear() {
        let dt = device_tree(true, true);
        let setup = plan_memory(&dt, &image(), DTB, Some(MIB), &[]).unwrap();
        let map = &setup.layout.address_map;
        let pool = "/reserved-memory/dma@78000000";
        match map.classify(PhysAddr(0x7800_1000)) {
            AddressClass::NoMapPool {
                pool: name,
                window: Some(_),
            } => assert_eq!(name, pool),
            other => panic!("pool classified as {other:?}"),
        }
        assert!(matches!(
            map.phys_to_virt(PhysAddr(0x7800_0000)),
            Err(TranslationError::NotLinear { .. })
        ));
        let window = setup
            .layout
            .mappings
            .iter()
            .find(|m| m.kind == MappingKind::PoolWindow)
            .unwrap();
        assert_eq!(window.name, pool);
        assert_eq!(window.attributes.memory, MemoryType::NormalNonCacheable);
        for linear in setup
            .layout
            .mappings
            .iter()
            .filter(|m| m.kind == MappingKind::Linear)
        {
            assert!(
                !linear
                    .phys_range()
                    .overlaps(&PhysRange::new(0x7800_0000, 0x40_0000)),
                "{linear}"
            );
        }
        // The kernel pools and the heap are at the top of the first bank (the
        // second bank is all pool), in that order downward.
        assert_eq!(
            setup.kernel_nc_pool,
            PhysRange::new(0x5000_0000 - KERNEL_POOL_SIZE, KERNEL_POOL_SIZE)
        );
        assert_eq!(
            setup.heap,
            PhysRange::new(0x5000_0000 - 2 * KERNEL_POOL_SIZE - MIB, MIB)
        );
        assert!(matches!(
            map.classify(setup.heap.base),
            AddressClass::LinearRam { .. }
        ));
    }

    /// A pool outside memory has no linear alias, `no-map` or not: it gets
    /// a window like a no-map pool.
    #[test]
    fn pool_outside_memory_is_a_window() {
        for no_map in [true, false] {
            let dt = device_tree(no_map, false);
            let pool = &dt.plan.reserved()[0];
            assert!(!pool.in_memory, "the plan keeps the pool outside memory");
            let setup = plan_memory(&dt, &image(), DTB, Some(MIB), &[]).unwrap();
            let map = &setup.layout.address_map;
            match map.classify(PhysAddr(0x7800_1000)) {
                AddressClass::NoMapPool {
                    pool: name,
                    window: Some(_),
                } => assert_eq!(name, "/reserved-memory/dma@78000000"),
                other => panic!("no_map={no_map}: pool classified as {other:?}"),
            }
            let window = setup
                .layout
                .mappings
                .iter()
                .find(|m| m.kind == MappingKind::PoolWindow && m.name == pool.path)
                .unwrap();
            assert_eq!(window.attributes.memory, MemoryType::NormalNonCacheable);
            assert_eq!(window.phys_range(), PhysRange::new(0x7800_0000, 0x40_0000));
        }
    }

    #[test]
    fn mapped_pool_stays_linear() {
        let dt = device_tree(false, true);
        let setup = plan_memory(&dt, &image(), DTB, Some(MIB), &[]).unwrap();
        assert!(matches!(
            setup.layout.address_map.classify(PhysAddr(0x7800_0000)),
            AddressClass::MappedPool { .. }
        ));
        assert!(
            setup
                .layout
                .mappings
                .iter()
                .filter(|m| m.kind == MappingKind::PoolWindow)
                .all(|m| m.name == KERNEL_NC_POOL),
            "only the kernel's own pool has a window"
        );
        // The heap avoids the pool even though it is linear.
        assert!(!setup.heap.overlaps(&PhysRange::new(0x7800_0000, 0x40_0000)));
    }

    #[test]
    fn toolstack_pages_are_write_back_windows() {
        let dt = device_tree(true, true);
        let console = NamedRange {
            name: "xen pv console",
            phys: PhysRange::new(0x3900_0000, PAGE_SIZE),
        };
        let setup = plan_memory(&dt, &image(), DTB, Some(MIB), &[console]).unwrap();
        let mapping = setup
            .layout
            .mappings
            .iter()
            .find(|m| m.phys == PhysAddr(0x3900_0000))
            .expect("the console page is mapped");
        assert_eq!(mapping.attributes.memory, MemoryType::NormalWriteBack);
        assert!(
            setup
                .layout
                .address_map
                .window_address(PhysAddr(0x3900_0000))
                .is_some()
        );
    }

    #[test]
    fn devices_and_xen_windows() {
        let dt = device_tree(true, true);
        let setup = plan_memory(&dt, &image(), DTB, Some(MIB), &[]).unwrap();
        let map = &setup.layout.address_map;
        let class = map.classify(PhysAddr(0xa00_3e00));
        assert!(
            matches!(
                class,
                AddressClass::Mmio {
                    device: "/virtio_mmio@a003e00"
                }
            ),
            "{class:?} {:?}",
            dt.platform.errors
        );
        let info = setup.shared_info.expect("a shared-info page");
        assert_eq!(
            info,
            PhysRange::new(0x1_0000_1000, PAGE_SIZE),
            "first whole page of the extended region"
        );
        let window = map
            .window_address(info.base)
            .expect("shared info is mapped");
        assert!(window.0 >= tidepool_mm::WINDOW_BASE);
        let grant = setup
            .layout
            .mappings
            .iter()
            .find(|m| m.phys == PhysAddr(0x3800_0000))
            .unwrap();
        assert_eq!(grant.attributes.memory, MemoryType::NormalWriteBack);
        assert!(matches!(
            map.classify(PhysAddr(0x80a_0000)),
            AddressClass::Mmio {
                device: "/intc@8000000"
            }
        ));
        assert!(
            map.window_address(PhysAddr(0xa00_3e00))
                .is_some_and(|v: VirtAddr| v.0 % PAGE_SIZE == 0xe00)
        );
        // Under Xen the vpl011 gets a window (a domU's monitor reads it).
        let vpl011 = setup
            .layout
            .mappings
            .iter()
            .find(|m| m.phys == PhysAddr(0x2200_0000))
            .expect("the vpl011 is mapped");
        assert_eq!(vpl011.attributes.memory, MemoryType::Device);
    }

    #[test]
    fn default_heap_follows_ram_within_bounds() {
        let mib = |n: u64| PhysRange::new(0x4000_0000, n * MIB);
        assert_eq!(default_heap_size(&[mib(8)]), MIB);
        assert_eq!(default_heap_size(&[mib(64)]), 8 * MIB);
        assert_eq!(default_heap_size(&[mib(1024)]), 32 * MIB);
        let dt = device_tree(true, true);
        let setup = plan_memory(&dt, &image(), DTB, None, &[]).unwrap();
        assert_eq!(setup.heap.size, 32 * MIB, "256 MiB of linear RAM");
    }

    #[test]
    fn subtract_cuts_zero_one_or_two_pieces() {
        let r = PhysRange::new(0x1000, 0x4000);
        let cut = |hole| subtract(r, hole).collect::<Vec<_>>();
        assert_eq!(cut(PhysRange::new(0x9000, 0x1000)), [r]);
        assert_eq!(
            cut(PhysRange::new(0x2000, 0x1000)),
            [
                PhysRange::new(0x1000, 0x1000),
                PhysRange::new(0x3000, 0x2000)
            ]
        );
        assert_eq!(
            cut(PhysRange::new(0x1000, 0x1000)),
            [PhysRange::new(0x2000, 0x3000)]
        );
        assert_eq!(
            cut(PhysRange::new(0x4000, 0x2000)),
            [PhysRange::new(0x1000, 0x3000)]
        );
        assert_eq!(cut(PhysRange::new(0, 0x9000)), []);
    }

    #[test]
    fn kernel_pools_one_windowed_one_linear() {
        let dt = device_tree(true, true);
        let setup = plan_memory(&dt, &image(), DTB, Some(MIB), &[]).unwrap();
        let map = &setup.layout.address_map;
        assert!(matches!(
            map.classify(setup.kernel_nc_pool.base),
            AddressClass::NoMapPool {
                pool: KERNEL_NC_POOL,
                window: Some(_)
            }
        ));
        assert!(matches!(
            map.classify(setup.kernel_linear_pool.base),
            AddressClass::LinearRam { .. }
        ));
        let all = [setup.kernel_nc_pool, setup.kernel_linear_pool, setup.heap];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| !a.overlaps(b)), "{all:?}");
            assert!(!a.overlaps(&image().image) && !a.overlaps(&DTB));
        }
    }

    #[test]
    fn heap_too_big_is_a_clear_error() {
        let dt = device_tree(true, true);
        let err = plan_memory(&dt, &image(), DTB, Some(512 * MIB), &[]).unwrap_err();
        assert!(matches!(err, MemoryError::Heap { size, .. } if size == 512 * MIB));
        assert!(
            err.to_string()
                .starts_with("heap of 0x20000000 bytes: no 0x20000000 bytes"),
            "{err}"
        );
    }
}
