//! The MMU's own view of the kernel's mappings, checked against the plan.
//!
//! After the MMU is on, the kernel asks it to translate addresses of every
//! mapping it made (`AT S1E1R`, whose answer is in `PAR_EL1`) and compares
//! the memory type and the output address with what the plan asked for; the
//! linear alias of every no-map region must not translate at all. A table
//! bug, a wrong `MAIR_EL1` index or a no-map region left in the linear map
//! shows here, on QEMU too (which implements `AT` and `PAR_EL1`, unlike
//! caches).
//!
//! The arch layer only executes `AT` and reads `PAR_EL1`; decoding the
//! register ([`Par`]), choosing the addresses and comparing ([`verify`]) are
//! here, host-tested against the software walker of the same tables.

use core::fmt;

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::registers::InMemoryRegister;

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use crate::address_map::{AddressMap, RegionKind};
use crate::attributes::MemoryType;
use crate::layout::{Mapping, MappingKind};

register_bitfields! {u64,
    /// `PAR_EL1` after a stage-1 address translation instruction (Arm ARM
    /// D19.2, "PAR_EL1, Physical Address Register"), 4 KiB granule.
    PAR_EL1 [
        /// Memory attributes of the translation, in `MAIR_ELx` format
        /// (when `F` is 0).
        ATTR OFFSET(56) NUMBITS(8) [],
        /// Output address, bits [47:12] (when `F` is 0).
        PA OFFSET(12) NUMBITS(36) [],
        /// The translation aborted.
        F OFFSET(0) NUMBITS(1) []
    ]
}

/// What the MMU answered for one address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Par {
    /// The stage-1 walk faulted: the address is not mapped.
    Fault,
    /// Mapped: the page's physical address and its `MAIR_ELx`-format
    /// attribute byte.
    Mapped {
        /// The physical address of the page.
        page: PhysAddr,
        /// The attribute byte (0x04 Device-nGnRE, 0x44 Normal non-cacheable,
        /// 0xff Normal write-back).
        attributes: u8,
    },
}

impl Par {
    /// Decodes a raw `PAR_EL1` value.
    pub fn decode(raw: u64) -> Self {
        let par = InMemoryRegister::<u64, PAR_EL1::Register>::new(0);
        par.set(raw);
        if par.is_set(PAR_EL1::F) {
            return Self::Fault;
        }
        Self::Mapped {
            page: PhysAddr(par.read(PAR_EL1::PA) << 12),
            attributes: par.read(PAR_EL1::ATTR) as u8,
        }
    }

    /// The memory type of the attribute byte, if it is one the kernel uses.
    pub fn memory_type(self) -> Option<MemoryType> {
        match self {
            Self::Fault => None,
            Self::Mapped { attributes, .. } => [
                MemoryType::Device,
                MemoryType::NormalWriteBack,
                MemoryType::NormalNonCacheable,
            ]
            .into_iter()
            .find(|memory| memory.mair_attribute() == attributes),
        }
    }
}

impl fmt::Display for Par {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self::Mapped { page, attributes } = *self else {
            return f.write_str("untranslated");
        };
        match self.memory_type() {
            Some(memory) => write!(f, "{memory} pa={page}"),
            None => write!(f, "attr({attributes:#04x}) pa={page}"),
        }
    }
}

/// The classes of mappings checked, one console line each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CheckClass {
    /// The kernel image: text, rodata, data and stacks (Normal write-back).
    Image,
    /// The linear map of RAM (Normal write-back).
    LinearRam,
    /// The window of a no-map DMA pool (Normal non-cacheable).
    PoolWindow,
    /// A device's window (Device-nGnRE).
    DeviceWindow,
    /// Pages Xen shares: grant table, shared info (Normal write-back).
    XenShared,
    /// The linear alias of a no-map region (must not translate).
    NoMapAlias,
}

impl CheckClass {
    /// Every class, in console order.
    pub const ALL: [Self; 6] = [
        Self::Image,
        Self::LinearRam,
        Self::PoolWindow,
        Self::DeviceWindow,
        Self::XenShared,
        Self::NoMapAlias,
    ];

    fn of(mapping: &Mapping<'_>) -> Self {
        match mapping.kind {
            MappingKind::Text
            | MappingKind::ReadOnlyData
            | MappingKind::Data
            | MappingKind::Stack => Self::Image,
            MappingKind::Linear => Self::LinearRam,
            MappingKind::PoolWindow => Self::PoolWindow,
            MappingKind::MmioWindow if mapping.attributes.memory == MemoryType::Device => {
                Self::DeviceWindow
            }
            MappingKind::MmioWindow => Self::XenShared,
        }
    }
}

impl fmt::Display for CheckClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Image => "image",
            Self::LinearRam => "linear-ram",
            Self::PoolWindow => "pool-window",
            Self::DeviceWindow => "device-window",
            Self::XenShared => "xen-shared",
            Self::NoMapAlias => "no-map-alias",
        })
    }
}

/// What the plan says an address must translate to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expected {
    /// This page, with this memory type.
    Mapped {
        /// The physical page.
        page: PhysAddr,
        /// The memory type.
        memory: MemoryType,
    },
    /// Nothing: a translation fault.
    Untranslated,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mapped { page, memory } => write!(f, "{memory} pa={page}"),
            Self::Untranslated => f.write_str("untranslated"),
        }
    }
}

/// An address the MMU translated differently from the plan. Fatal.
///
/// Display (the kernel prefixes `mm: `):
/// `translation mismatch class=<class> <name> va=<va> expected=<...> found=<...>`
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mismatch<'a> {
    /// The class of the mapping.
    pub class: CheckClass,
    /// The mapping's or region's name.
    pub name: &'a str,
    /// The address translated.
    pub virt: VirtAddr,
    /// What the plan says.
    pub expected: Expected,
    /// What the MMU said.
    pub found: Par,
}

impl fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "translation mismatch class={} {} va={} expected={} found={}",
            self.class, self.name, self.virt, self.expected, self.found
        )
    }
}

/// How many mappings of one class were checked (all of them matched).
///
/// Display: `mm: verified <N> mappings by translation, 0 mismatches class=<class>`
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Verified {
    /// The class.
    pub class: CheckClass,
    /// Mappings (or no-map regions) checked.
    pub mappings: u32,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mm: verified {} mappings by translation, 0 mismatches class={}",
            self.mappings, self.class
        )
    }
}

/// The pages of `[start, start + size)` that are checked: the first, the
/// middle and the last.
fn probe_offsets(size: u64) -> [u64; 3] {
    let last = size.saturating_sub(1) & !(PAGE_SIZE - 1);
    [0, (last / 2) & !(PAGE_SIZE - 1), last]
}

/// Translates the first, middle and last page of every mapping with
/// `translate` (the MMU: `AT S1E1R`, then `PAR_EL1`) and compares each with
/// the plan; then the first and last page of the linear alias of every
/// no-map region (pools and other reserved regions), which must fault.
/// Returns the count per class, in [`CheckClass::ALL`] order, or the first
/// mismatch.
pub fn verify<'a>(
    mappings: &[Mapping<'a>],
    map: &'a AddressMap,
    mut translate: impl FnMut(VirtAddr) -> u64,
) -> Result<[Verified; 6], Mismatch<'a>> {
    let mut counts = CheckClass::ALL.map(|class| Verified { class, mappings: 0 });
    let mut count = |class: CheckClass| {
        if let Some(tally) = counts.iter_mut().find(|tally| tally.class == class) {
            tally.mappings += 1;
        }
    };
    for mapping in mappings {
        let class = CheckClass::of(mapping);
        for offset in probe_offsets(mapping.size) {
            let virt = VirtAddr(mapping.virt.0 + offset);
            let expected = Expected::Mapped {
                page: PhysAddr((mapping.phys.0 + offset) & !(PAGE_SIZE - 1)),
                memory: mapping.attributes.memory,
            };
            check(class, mapping.name, virt, expected, &mut translate)?;
        }
        count(class);
    }
    let no_map = map.regions().iter().filter(|region| {
        matches!(
            region.kind,
            RegionKind::NoMapPool | RegionKind::NoMapReserved
        )
    });
    for region in no_map {
        for offset in [0, probe_offsets(region.phys.size)[2]] {
            let virt = VirtAddr(
                (region.phys.base.0 + offset).wrapping_add(map.linear_offset()) & !(PAGE_SIZE - 1),
            );
            let class = CheckClass::NoMapAlias;
            check(
                class,
                &region.name,
                virt,
                Expected::Untranslated,
                &mut translate,
            )?;
        }
        count(CheckClass::NoMapAlias);
    }
    Ok(counts)
}

fn check<'a>(
    class: CheckClass,
    name: &'a str,
    virt: VirtAddr,
    expected: Expected,
    translate: &mut impl FnMut(VirtAddr) -> u64,
) -> Result<(), Mismatch<'a>> {
    let found = Par::decode(translate(virt));
    let matches = match (expected, found) {
        (Expected::Untranslated, Par::Fault) => true,
        (
            Expected::Mapped { page, memory },
            Par::Mapped {
                page: found_page, ..
            },
        ) => page == found_page && found.memory_type() == Some(memory),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(Mismatch {
            class,
            name,
            virt,
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;
    use crate::addr::PhysRange;
    use crate::layout::{
        ImageSections, KernelLayout, MmioSpec, NamedRange, PlanInput, PoolSpec, build_tables,
        plan_layout,
    };
    use crate::page_table::{PageTable, TableArena, TableView};

    const STACKS: [NamedRange<'static>; 1] = [NamedRange {
        name: "kernel stack",
        phys: PhysRange::new(0x4018_1000, 0x1_0000),
    }];
    const LINEAR: [NamedRange<'static>; 2] = [
        NamedRange {
            name: "/memory@40000000",
            phys: PhysRange::new(0x4000_0000, 0x3800_0000),
        },
        NamedRange {
            name: "/memory@40000000",
            phys: PhysRange::new(0x7840_0000, 0x07c0_0000),
        },
    ];
    const POOLS: [PoolSpec<'static>; 1] = [PoolSpec {
        name: "/reserved-memory/dma@78000000",
        phys: PhysRange::new(0x7800_0000, 0x40_0000),
        no_map: true,
    }];
    const MMIO: [MmioSpec<'static>; 2] = [
        MmioSpec {
            name: "/pl011@9000000",
            phys: PhysRange::new(0x0900_0000, 0x1000),
            memory: MemoryType::Device,
        },
        MmioSpec {
            name: "xen grant table",
            phys: PhysRange::new(0x3800_0000, 0x4000),
            memory: MemoryType::NormalWriteBack,
        },
    ];

    fn layout() -> KernelLayout<'static> {
        plan_layout(&PlanInput {
            image: ImageSections {
                text: PhysRange::new(0x4008_0000, 0x8_0000),
                rodata: PhysRange::new(0x4010_0000, 0x2_0000),
                data: PhysRange::new(0x4012_0000, 0x6_0000),
                stacks: &STACKS,
            },
            linear: &LINEAR,
            pools: &POOLS,
            reserved: &[],
            mmio: &MMIO,
        })
        .unwrap()
    }

    /// `PAR_EL1` as the MMU would set it for a translation.
    fn par(page: u64, memory: MemoryType) -> u64 {
        (u64::from(memory.mair_attribute()) << 56) | page
    }

    /// The MMU, modelled by the software walker of the real tables.
    fn with_mmu<R>(
        layout: &KernelLayout<'_>,
        run: impl FnOnce(&dyn Fn(VirtAddr) -> u64) -> R,
    ) -> R {
        let mut tables = vec![PageTable::EMPTY; 32];
        let first = PhysAddr(0x4500_0000);
        let mut arena = TableArena::new(&mut tables, first).unwrap();
        let roots = build_tables(&mut arena, &layout.mappings).unwrap();
        let view: TableView<'_> = arena.into_view();
        let mmu = |virt: VirtAddr| {
            let root = if virt.0 >> 63 == 0 {
                roots.ttbr0
            } else {
                roots.ttbr1
            };
            match view.translate(root, virt) {
                None => 1,
                Some(t) => par(t.phys.0 & !(PAGE_SIZE - 1), t.attributes.memory),
            }
        };
        run(&mmu)
    }

    #[test]
    fn par_decoding() {
        assert_eq!(Par::decode(0x809), Par::Fault);
        let mapped = Par::decode(0x44 << 56 | 0x7800_0000 | 0x980);
        assert_eq!(
            mapped,
            Par::Mapped {
                page: PhysAddr(0x7800_0000),
                attributes: 0x44
            }
        );
        assert_eq!(mapped.memory_type(), Some(MemoryType::NormalNonCacheable));
        assert_eq!(mapped.to_string(), "Normal NC pa=0x78000000");
        assert_eq!(Par::decode(0x40 << 56).to_string(), "attr(0x40) pa=0x0");
        assert_eq!(Par::decode(1).to_string(), "untranslated");
    }

    #[test]
    fn the_tables_the_plan_builds_pass_with_every_class_counted() {
        let layout = layout();
        let counts = with_mmu(&layout, |mmu| {
            verify(&layout.mappings, &layout.address_map, mmu).unwrap()
        });
        let by_class: Vec<(CheckClass, u32)> =
            counts.iter().map(|v| (v.class, v.mappings)).collect();
        assert_eq!(
            by_class,
            [
                (CheckClass::Image, 4),
                (CheckClass::LinearRam, 2),
                (CheckClass::PoolWindow, 1),
                (CheckClass::DeviceWindow, 1),
                (CheckClass::XenShared, 1),
                (CheckClass::NoMapAlias, 1),
            ]
        );
        assert_eq!(
            counts[2].to_string(),
            "mm: verified 1 mappings by translation, 0 mismatches class=pool-window"
        );
    }

    /// The MMU answering write-back for a pool window (a wrong attribute
    /// index in its descriptors) is caught with the address and both answers.
    #[test]
    fn a_cacheable_pool_window_is_a_mismatch() {
        let layout = layout();
        let window = layout
            .mappings
            .iter()
            .find(|m| m.kind == MappingKind::PoolWindow)
            .unwrap();
        let mismatch = with_mmu(&layout, |mmu| {
            let wrong = |virt: VirtAddr| {
                let raw = mmu(virt);
                if virt == window.virt {
                    raw & !(0xff << 56) | 0xff << 56
                } else {
                    raw
                }
            };
            verify(&layout.mappings, &layout.address_map, wrong).unwrap_err()
        });
        assert_eq!(mismatch.class, CheckClass::PoolWindow);
        assert_eq!(
            mismatch.to_string(),
            alloc::format!(
                "translation mismatch class=pool-window /reserved-memory/dma@78000000 va={} \
                 expected=Normal NC pa=0x78000000 found=Normal WB pa=0x78000000",
                window.virt
            )
        );
    }

    /// A no-map pool left in the linear map is caught.
    #[test]
    fn a_translated_no_map_alias_is_a_mismatch() {
        let layout = layout();
        let alias = VirtAddr(0x7800_0000 + layout.address_map.linear_offset());
        let mismatch = with_mmu(&layout, |mmu| {
            let leaky = |virt: VirtAddr| {
                if virt == alias {
                    par(0x7800_0000, MemoryType::NormalWriteBack)
                } else {
                    mmu(virt)
                }
            };
            verify(&layout.mappings, &layout.address_map, leaky).unwrap_err()
        });
        assert_eq!(mismatch.class, CheckClass::NoMapAlias);
        assert_eq!(mismatch.virt, alias);
        assert_eq!(mismatch.expected, Expected::Untranslated);
    }

    /// Output addresses are compared too, and a fault where the plan maps
    /// is a mismatch; every probe of every mapping is asked.
    #[test]
    fn wrong_pages_and_faults_are_mismatches() {
        let layout = layout();
        let last_linear = layout
            .mappings
            .iter()
            .rfind(|m| m.kind == MappingKind::Linear)
            .unwrap();
        let last_page = VirtAddr(last_linear.virt.0 + last_linear.size - PAGE_SIZE);
        with_mmu(&layout, |mmu| {
            let shifted = |virt: VirtAddr| {
                if virt == last_page {
                    mmu(virt) + PAGE_SIZE
                } else {
                    mmu(virt)
                }
            };
            let mismatch = verify(&layout.mappings, &layout.address_map, shifted).unwrap_err();
            assert_eq!(mismatch.class, CheckClass::LinearRam);
            assert_eq!(mismatch.virt, last_page);
            let unmapped = |virt: VirtAddr| if virt == last_page { 1 } else { mmu(virt) };
            let mismatch = verify(&layout.mappings, &layout.address_map, unmapped).unwrap_err();
            assert_eq!(mismatch.found, Par::Fault);
        });
    }
}
