//! The kernel's address-space layout, planned from the memory plan, and the
//! tables built from it.
//!
//! Lower half (TTBR0_EL1): the kernel image, identity-mapped (VA == PA)
//! section by section: text read-only and executable, rodata read-only,
//! data/BSS and each stack read-write, all but text execute-never. The page
//! under each stack stays unmapped (its guard).
//!
//! Upper half (TTBR1_EL1):
//! - the linear map at `VA = PA + LINEAR_OFFSET`, Normal write-back, covering
//!   exactly the plan's linear ranges. They arrive exact to the byte and are
//!   rounded *inward* to pages (base up, end down): a partial page may hold
//!   something else, so it is left out, and a range that vanishes is skipped.
//! - from [`WINDOW_BASE`] up, one window per no-map pool (Normal
//!   non-cacheable) and per MMIO device (its own memory type, normally
//!   Device-nGnRE). A window is a whole pool or device, so it is rounded
//!   *outward* to pages. Pools that are not no-map are in the linear map and
//!   get no window.
//!
//! Why non-cacheable pool windows: the point of a no-map pool is that the
//! CPU holds no cacheable alias of it. With the window non-cacheable too,
//! the CPU never has a dirty or stale line for pool memory, so DMA to and
//! from the pool needs no CPU cache maintenance, which matters because Xen
//! refuses `GNTTABOP_cache_flush` for static pool pages (platform.md). It
//! is correct for coherent and non-coherent devices alike.
//!
//! Window placement is deterministic: windows are laid out upward from
//! [`WINDOW_BASE`], no-map pools first then MMIO devices, each in input
//! order, with at least [`WINDOW_GAP`] unmapped between neighbours. A
//! window's virtual address is congruent to its physical address modulo
//! 1 GiB if the window contains a whole aligned 1 GiB block, else modulo
//! 2 MiB if it contains a whole aligned 2 MiB block (so the builder can use
//! blocks), else it is only page aligned (so small windows share tables).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr};
use crate::address_map::{AddressMap, IdentityRange, Region, RegionKind};
use crate::attributes::{MapAttributes, MemoryType};
use crate::page_table::{
    Granule, LOWER_HALF_END, MapError, MappingCounts, PHYS_ADDR_LIMIT, TableArena, TableRoot,
    UPPER_HALF_START, run_counts, runs, table_key,
};

/// The linear map places physical `pa` at virtual `pa + LINEAR_OFFSET`: the
/// start of the upper half, so every physical address below
/// [`LINEAR_PHYS_LIMIT`] fits below [`WINDOW_BASE`].
pub const LINEAR_OFFSET: u64 = UPPER_HALF_START;

/// Linear RAM must lie below this physical address (2^47).
pub const LINEAR_PHYS_LIMIT: u64 = 1 << 47;

/// First virtual address of the window region, just above the linear map's
/// largest possible span.
pub const WINDOW_BASE: u64 = LINEAR_OFFSET + LINEAR_PHYS_LIMIT;

/// The least unmapped space between two windows.
pub const WINDOW_GAP: u64 = PAGE_SIZE;

/// A named physical range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NamedRange<'a> {
    /// Device-tree path or another stable name.
    pub name: &'a str,
    /// The range, exact to the byte.
    pub phys: PhysRange,
}

/// A `shared-dma-pool` of the memory plan.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PoolSpec<'a> {
    /// Device-tree path of the pool (e.g. `/reserved-memory/dma@78000000`).
    pub name: &'a str,
    /// The pool, exact to the byte.
    pub phys: PhysRange,
    /// Whether the pool is `no-map` (then it gets a window and must not be
    /// linear); otherwise it must lie inside the linear map.
    pub no_map: bool,
}

/// A device (or other non-RAM range) the kernel maps through a window.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MmioSpec<'a> {
    /// Device-tree path of the device.
    pub name: &'a str,
    /// The register block, exact to the byte.
    pub phys: PhysRange,
    /// [`MemoryType::Device`] for registers; [`MemoryType::NormalWriteBack`]
    /// for memory the hypervisor shares (Xen's grant-table frames must be
    /// mapped write-back).
    pub memory: MemoryType,
}

/// The kernel image's sections as loaded (physical addresses, 4 KiB aligned;
/// the linker script aligns them).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ImageSections<'s, 'a> {
    /// Code.
    pub text: PhysRange,
    /// Read-only data and relocations.
    pub rodata: PhysRange,
    /// Data and BSS.
    pub data: PhysRange,
    /// Each stack; the page under each must be left out of every section.
    pub stacks: &'s [NamedRange<'a>],
}

/// Everything the layout is planned from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PlanInput<'s, 'a> {
    /// The kernel image.
    pub image: ImageSections<'s, 'a>,
    /// RAM of the linear map, exact to the byte (no-map regions already left
    /// out; mapped pools included).
    pub linear: &'s [NamedRange<'a>],
    /// DMA pools, no-map or not.
    pub pools: &'s [PoolSpec<'a>],
    /// No-map reserved regions that are not pools: never mapped, only named
    /// in the address map.
    pub reserved: &'s [NamedRange<'a>],
    /// Devices the kernel maps.
    pub mmio: &'s [MmioSpec<'a>],
}

/// What a mapping is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MappingKind {
    /// Kernel code (identity-mapped).
    Text,
    /// Kernel read-only data (identity-mapped).
    ReadOnlyData,
    /// Kernel data and BSS (identity-mapped).
    Data,
    /// A kernel stack (identity-mapped).
    Stack,
    /// Part of the linear map.
    Linear,
    /// A no-map pool's window.
    PoolWindow,
    /// A device's window.
    MmioWindow,
}

impl fmt::Display for MappingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::ReadOnlyData => "rodata",
            Self::Data => "data",
            Self::Stack => "stack",
            Self::Linear => "linear",
            Self::PoolWindow => "pool",
            Self::MmioWindow => "mmio",
        })
    }
}

/// One mapping of the layout: `size` bytes from `virt` to `phys`, all 4 KiB aligned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mapping<'a> {
    /// What the mapping is for.
    pub kind: MappingKind,
    /// Name of the section, range, pool or device.
    pub name: &'a str,
    /// First virtual address.
    pub virt: VirtAddr,
    /// First physical address.
    pub phys: PhysAddr,
    /// Size in bytes.
    pub size: u64,
    /// Memory type and permissions.
    pub attributes: MapAttributes,
}

impl Mapping<'_> {
    /// The blocks and pages the builder writes for this mapping (for a
    /// mapping that is 4 KiB aligned, as every planned one is).
    pub fn counts(&self) -> MappingCounts {
        run_counts(self.virt.0, self.phys.0, self.size)
    }

    /// The physical range mapped.
    pub fn phys_range(&self) -> PhysRange {
        PhysRange {
            base: self.phys,
            size: self.size,
        }
    }
}

impl fmt::Display for Mapping<'_> {
    /// `linear /memory@40000000 [0x40000000..0x78000000) at 0xffff000040000000 Normal WB RW`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} at {} {}",
            self.kind,
            self.name,
            self.phys_range(),
            self.virt,
            self.attributes
        )
    }
}

/// The planned layout: what to map, and the address map that describes it.
#[derive(Clone, Debug)]
pub struct KernelLayout<'a> {
    /// Every mapping, sorted by virtual address (lower half first).
    pub mappings: Vec<Mapping<'a>>,
    /// Every named physical range with its window, plus the identity-mapped
    /// image sections; `phys_to_virt`/`virt_to_phys` agree with the tables.
    pub address_map: AddressMap,
}

/// Why no layout could be planned.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PlanError {
    /// An image section or stack is not 4 KiB aligned (rounding would change
    /// a neighbour's permissions).
    Misaligned {
        /// The section.
        name: String,
        /// Its range.
        range: PhysRange,
    },
    /// A pool, device or reserved region has size zero.
    EmptyRange {
        /// The range's name.
        name: String,
    },
    /// Two ranges that must be disjoint share memory.
    Overlap {
        /// One range.
        first: String,
        /// The other.
        second: String,
    },
    /// The page under a stack is mapped (or the stack starts at page 0).
    MissingGuard {
        /// The stack.
        stack: String,
    },
    /// Linear RAM at or above [`LINEAR_PHYS_LIMIT`].
    BeyondLinearReach {
        /// The range's name.
        name: String,
        /// The range.
        range: PhysRange,
    },
    /// A range to map reaches beyond 48-bit physical addresses.
    BeyondPhysicalLimit {
        /// The range's name.
        name: String,
        /// The range.
        range: PhysRange,
    },
    /// A pool without `no-map` that the (page-rounded) linear map does not cover.
    MappedPoolOutsideLinearMap {
        /// The pool.
        pool: String,
        /// Its range.
        range: PhysRange,
    },
    /// Two windows share a physical page but need different memory types
    /// (mismatched aliases).
    ConflictingAttributes {
        /// One window.
        first: String,
        /// The other.
        second: String,
    },
    /// The window region has no room left for this window.
    WindowSpaceExhausted {
        /// The window's name.
        name: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned { name, range } => write!(f, "{name} {range} is not 4 KiB aligned"),
            Self::EmptyRange { name } => write!(f, "{name} has size zero"),
            Self::Overlap { first, second } => write!(f, "{first} and {second} overlap"),
            Self::MissingGuard { stack } => {
                write!(f, "{stack} has no unmapped guard page under it")
            }
            Self::BeyondLinearReach { name, range } => {
                write!(
                    f,
                    "{name} {range} is above the linear map's reach ({LINEAR_PHYS_LIMIT:#x})"
                )
            }
            Self::BeyondPhysicalLimit { name, range } => {
                write!(f, "{name} {range} exceeds 48-bit physical addresses")
            }
            Self::MappedPoolOutsideLinearMap { pool, range } => {
                write!(
                    f,
                    "pool {pool} {range} is not no-map but not in the linear map either"
                )
            }
            Self::ConflictingAttributes { first, second } => {
                write!(
                    f,
                    "{first} and {second} share a page but need different memory types"
                )
            }
            Self::WindowSpaceExhausted { name } => {
                write!(f, "no virtual space left for the window of {name}")
            }
        }
    }
}

/// `range` rounded inward to pages as `[start, end)`, or `None` if nothing is left.
fn round_inward(range: PhysRange) -> Option<(u64, u64)> {
    let start = range.base.checked_align_up(PAGE_SIZE)?.0;
    let end = PhysAddr(range.end()).align_down(PAGE_SIZE).0;
    (start < end).then_some((start, end))
}

/// `range` (non-empty, end within 48 bits) rounded outward to pages as `[start, end)`.
fn round_outward(range: PhysRange) -> (u64, u64) {
    let start = range.base.align_down(PAGE_SIZE).0;
    let end = PhysAddr(range.end())
        .checked_align_up(PAGE_SIZE)
        .map_or(u64::MAX, |e| e.0);
    (start, end)
}

/// The exact end of `range`, or `BeyondPhysicalLimit` if it is not below `limit`.
fn checked_end(name: &str, range: PhysRange, limit: u64) -> Result<u64, PlanError> {
    range
        .base
        .0
        .checked_add(range.size)
        .filter(|&end| end <= limit)
        .ok_or_else(|| PlanError::BeyondPhysicalLimit {
            name: name.to_string(),
            range,
        })
}

fn overlap(first: &str, second: &str) -> PlanError {
    PlanError::Overlap {
        first: first.to_string(),
        second: second.to_string(),
    }
}

/// Plans the layout described in the module documentation.
///
/// Checks on the way: image sections are page-aligned, pairwise disjoint,
/// and leave the page under every stack unmapped; no-map pools, reserved
/// regions and devices overlap neither linear RAM, nor the image, nor each
/// other; mapped pools lie inside the page-rounded linear map; windows that
/// share a page have the same memory type. Exact (byte) disjointness is
/// enough: a page rounded inward from one range never touches a disjoint
/// range, so the linear map shares no page with any window.
pub fn plan_layout<'a>(input: &PlanInput<'_, 'a>) -> Result<KernelLayout<'a>, PlanError> {
    let mut mappings = Vec::new();
    let mut identity = Vec::new();
    plan_image(&input.image, &mut mappings, &mut identity)?;
    check_physical_ranges(input)?;

    let mut regions = Vec::new();
    plan_linear(input, &mut mappings, &mut regions)?;
    plan_windows(input, &mut mappings, &mut regions)?;
    regions.extend(input.reserved.iter().map(|r| Region {
        name: r.name.to_string(),
        phys: r.phys,
        kind: RegionKind::NoMapReserved,
        window: None,
    }));

    let address_map = AddressMap::new(LINEAR_OFFSET, regions)
        .map_err(|(first, second)| PlanError::Overlap { first, second })?
        .with_identity_ranges(identity);
    mappings.sort_by_key(|m| m.virt);
    Ok(KernelLayout {
        mappings,
        address_map,
    })
}

/// Identity mappings of the image sections and stacks.
fn plan_image<'a>(
    image: &ImageSections<'_, 'a>,
    mappings: &mut Vec<Mapping<'a>>,
    identity: &mut Vec<IdentityRange>,
) -> Result<(), PlanError> {
    let sections = [
        (
            MappingKind::Text,
            "kernel text",
            image.text,
            MapAttributes::TEXT,
        ),
        (
            MappingKind::ReadOnlyData,
            "kernel rodata",
            image.rodata,
            MapAttributes::READ_ONLY,
        ),
        (
            MappingKind::Data,
            "kernel data",
            image.data,
            MapAttributes::READ_WRITE,
        ),
    ];
    let stacks = image.stacks.iter().map(|s| {
        (
            MappingKind::Stack,
            s.name,
            s.phys,
            MapAttributes::READ_WRITE,
        )
    });
    let first_new = mappings.len();
    for (kind, name, phys, attributes) in sections.into_iter().chain(stacks) {
        if phys.size == 0 {
            continue;
        }
        if !phys.base.is_aligned(PAGE_SIZE) || !phys.size.is_multiple_of(PAGE_SIZE) {
            return Err(PlanError::Misaligned {
                name: name.to_string(),
                range: phys,
            });
        }
        checked_end(name, phys, LOWER_HALF_END)?;
        let planned = &mappings[first_new..];
        if let Some(other) = planned.iter().find(|m| m.phys_range().overlaps(&phys)) {
            return Err(overlap(other.name, name));
        }
        mappings.push(Mapping {
            kind,
            name,
            virt: VirtAddr(phys.base.0),
            phys: phys.base,
            size: phys.size,
            attributes,
        });
        identity.push(IdentityRange {
            name: name.to_string(),
            phys,
        });
    }
    let planned = &mappings[first_new..];
    for stack in image.stacks.iter().filter(|s| s.phys.size != 0) {
        let guard = stack
            .phys
            .base
            .0
            .checked_sub(PAGE_SIZE)
            .map(|base| PhysRange::new(base, PAGE_SIZE));
        if guard.is_none_or(|guard| planned.iter().any(|m| m.phys_range().overlaps(&guard))) {
            return Err(PlanError::MissingGuard {
                stack: stack.name.to_string(),
            });
        }
    }
    Ok(())
}

/// Sizes, limits and exact disjointness of every non-image range.
fn check_physical_ranges(input: &PlanInput<'_, '_>) -> Result<(), PlanError> {
    // (name, range, is linear RAM, is a mapped pool)
    let mut all: Vec<(&str, PhysRange, bool, bool)> = Vec::new();
    all.extend(input.linear.iter().map(|r| (r.name, r.phys, true, false)));
    all.extend(
        input
            .pools
            .iter()
            .map(|p| (p.name, p.phys, false, !p.no_map)),
    );
    all.extend(
        input
            .reserved
            .iter()
            .map(|r| (r.name, r.phys, false, false)),
    );
    all.extend(input.mmio.iter().map(|d| (d.name, d.phys, false, false)));
    for &(name, range, is_linear, _) in &all {
        if range.size == 0 && !is_linear {
            return Err(PlanError::EmptyRange {
                name: name.to_string(),
            });
        }
        checked_end(name, range, PHYS_ADDR_LIMIT)?;
    }
    for (i, &(name_a, a, linear_a, mapped_pool_a)) in all.iter().enumerate() {
        for &(name_b, b, linear_b, mapped_pool_b) in &all[i + 1..] {
            let pool_in_linear = (linear_a && mapped_pool_b) || (mapped_pool_a && linear_b);
            if !pool_in_linear && a.overlaps(&b) {
                return Err(overlap(name_a, name_b));
            }
        }
    }
    // Things that must not be mapped as image memory.
    let image = [input.image.text, input.image.rodata, input.image.data];
    let image = image
        .iter()
        .copied()
        .chain(input.image.stacks.iter().map(|s| s.phys));
    for section in image.filter(|s| s.size != 0) {
        let outside = input
            .pools
            .iter()
            .filter(|p| p.no_map)
            .map(|p| (p.name, p.phys));
        let outside = outside.chain(input.reserved.iter().map(|r| (r.name, r.phys)));
        let outside = outside.chain(input.mmio.iter().map(|d| (d.name, d.phys)));
        for (name, range) in outside {
            if range.overlaps(&section) {
                return Err(overlap("the kernel image", name));
            }
        }
    }
    Ok(())
}

/// The linear map, and the address-map regions of linear RAM and mapped pools.
fn plan_linear<'a>(
    input: &PlanInput<'_, 'a>,
    mappings: &mut Vec<Mapping<'a>>,
    regions: &mut Vec<Region>,
) -> Result<(), PlanError> {
    let mut linear = Vec::new();
    for range in input.linear {
        if range
            .phys
            .base
            .0
            .checked_add(range.phys.size)
            .is_none_or(|end| end > LINEAR_PHYS_LIMIT)
        {
            return Err(PlanError::BeyondLinearReach {
                name: range.name.to_string(),
                range: range.phys,
            });
        }
        if let Some((start, end)) = round_inward(range.phys) {
            linear.push((start, end, range.name));
        }
    }
    linear.sort_unstable();

    let mut mapped_pools: Vec<&PoolSpec<'a>> = input.pools.iter().filter(|p| !p.no_map).collect();
    mapped_pools.sort_by_key(|p| p.phys.base);
    for pool in &mapped_pools {
        if !covered(&linear, pool.phys) {
            return Err(PlanError::MappedPoolOutsideLinearMap {
                pool: pool.name.to_string(),
                range: pool.phys,
            });
        }
        regions.push(Region {
            name: pool.name.to_string(),
            phys: pool.phys,
            kind: RegionKind::MappedPool,
            window: None,
        });
    }

    for &(start, end, name) in &linear {
        mappings.push(Mapping {
            kind: MappingKind::Linear,
            name,
            virt: VirtAddr(start + LINEAR_OFFSET),
            phys: PhysAddr(start),
            size: end - start,
            attributes: MapAttributes::READ_WRITE,
        });
        // Linear RAM regions: the rounded range minus the mapped pools in it.
        let mut cursor = start;
        let ram = |from: u64, to: u64| Region {
            name: name.to_string(),
            phys: PhysRange::new(from, to - from),
            kind: RegionKind::LinearRam,
            window: None,
        };
        for pool in mapped_pools
            .iter()
            .filter(|p| p.phys.base.0 < end && p.phys.end() > start)
        {
            if pool.phys.base.0 > cursor {
                regions.push(ram(cursor, pool.phys.base.0));
            }
            cursor = cursor.max(pool.phys.end());
        }
        if cursor < end {
            regions.push(ram(cursor, end));
        }
    }
    Ok(())
}

/// Whether the sorted, disjoint page-rounded ranges `linear` cover `range`.
fn covered(linear: &[(u64, u64, &str)], range: PhysRange) -> bool {
    let mut next = range.base.0;
    for &(start, end, _) in linear {
        if start <= next && next < end {
            next = end;
        }
    }
    next >= range.end()
}

/// Windows for no-map pools and devices.
fn plan_windows<'a>(
    input: &PlanInput<'_, 'a>,
    mappings: &mut Vec<Mapping<'a>>,
    regions: &mut Vec<Region>,
) -> Result<(), PlanError> {
    let pools = input.pools.iter().filter(|p| p.no_map).map(|p| {
        (
            MappingKind::PoolWindow,
            RegionKind::NoMapPool,
            p.name,
            p.phys,
            MapAttributes::NON_CACHEABLE,
        )
    });
    let devices = input.mmio.iter().map(|d| {
        (
            MappingKind::MmioWindow,
            RegionKind::Mmio,
            d.name,
            d.phys,
            MapAttributes::read_write(d.memory),
        )
    });
    let first_window = mappings.len();
    let mut cursor = WINDOW_BASE;
    for (kind, region_kind, name, phys, attributes) in pools.chain(devices) {
        let (start, end) = round_outward(phys);
        let size = end - start;
        for other in &mappings[first_window..] {
            let other_end = other.phys.0 + other.size;
            if other.attributes.memory != attributes.memory
                && start < other_end
                && other.phys.0 < end
            {
                return Err(PlanError::ConflictingAttributes {
                    first: other.name.to_string(),
                    second: name.to_string(),
                });
            }
        }
        let alignment = window_alignment(start, end);
        let exhausted = || PlanError::WindowSpaceExhausted {
            name: name.to_string(),
        };
        let virt = cursor
            .checked_add(start.wrapping_sub(cursor) & (alignment - 1))
            .ok_or_else(exhausted)?;
        let window_end = virt.checked_add(size).ok_or_else(exhausted)?;
        cursor = window_end.checked_add(WINDOW_GAP).ok_or_else(exhausted)?;
        mappings.push(Mapping {
            kind,
            name,
            virt: VirtAddr(virt),
            phys: PhysAddr(start),
            size,
            attributes,
        });
        regions.push(Region {
            name: name.to_string(),
            phys,
            kind: region_kind,
            window: Some(VirtAddr(virt + (phys.base.0 - start))),
        });
    }
    Ok(())
}

/// The alignment a window's virtual address shares with its physical start:
/// the largest block size of which `[start, end)` holds a whole aligned block.
fn window_alignment(start: u64, end: u64) -> u64 {
    [Granule::Block1G, Granule::Block2M]
        .into_iter()
        .map(Granule::size)
        .find(|&block| {
            PhysAddr(start)
                .checked_align_up(block)
                .and_then(|first| first.checked_add(block))
                .is_some_and(|b| b.0 <= end)
        })
        .unwrap_or(PAGE_SIZE)
}

/// How many tables [`build_tables`] takes for `mappings`, both roots
/// included: exact when the mappings are sorted by virtual address and do
/// not overlap (as planned ones are), an upper bound otherwise.
pub fn tables_needed(mappings: &[Mapping<'_>]) -> usize {
    const ROOTS: usize = 2;
    let mut last_key = [None; 4];
    let mut tables = ROOTS;
    for mapping in mappings {
        for run in runs(mapping.virt.0, mapping.phys.0, mapping.size) {
            // The run needs a table at every level from 1 down to its own
            // (all its descriptors are in one table).
            let levels = last_key
                .iter_mut()
                .enumerate()
                .take(run.granule.level() + 1)
                .skip(1);
            for (level, last) in levels {
                let key = Some(table_key(run.virt, level));
                if *last != key {
                    *last = key;
                    tables += 1;
                }
            }
        }
    }
    tables
}

/// The two root tables of a built layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KernelRoots {
    /// Lower half: the identity-mapped image (TTBR0_EL1).
    pub ttbr0: TableRoot,
    /// Upper half: linear map and windows (TTBR1_EL1).
    pub ttbr1: TableRoot,
    /// The blocks and pages written under `ttbr0`.
    pub ttbr0_counts: MappingCounts,
    /// The blocks and pages written under `ttbr1`.
    pub ttbr1_counts: MappingCounts,
}

/// Why the tables of a layout could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BuildError<'a> {
    /// The arena has fewer free tables than the layout needs; nothing was written.
    ArenaTooSmall {
        /// Tables needed ([`tables_needed`]).
        needed: usize,
        /// Tables free in the arena.
        available: usize,
    },
    /// A mapping failed.
    Map {
        /// The mapping.
        mapping: Mapping<'a>,
        /// Why.
        error: MapError,
    },
}

impl fmt::Display for BuildError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ArenaTooSmall { needed, available } => {
                write!(
                    f,
                    "page-table arena too small: {needed} tables needed, {available} free"
                )
            }
            Self::Map { mapping, error } => write!(f, "cannot map {mapping}: {error}"),
        }
    }
}

/// Builds two new roots in `arena` and maps every mapping under the root of
/// its half (lower half under `ttbr0`, upper half under `ttbr1`). Allocates
/// nothing; checks the arena's room first ([`tables_needed`]).
pub fn build_tables<'a>(
    arena: &mut TableArena<'_>,
    mappings: &[Mapping<'a>],
) -> Result<KernelRoots, BuildError<'a>> {
    let needed = tables_needed(mappings);
    let available = arena.capacity() - arena.tables_used();
    let too_small = BuildError::ArenaTooSmall { needed, available };
    if needed > available {
        return Err(too_small);
    }
    let ttbr0 = arena.new_root().map_err(|_| too_small)?;
    let ttbr1 = arena.new_root().map_err(|_| too_small)?;
    let mut ttbr0_counts = MappingCounts::default();
    let mut ttbr1_counts = MappingCounts::default();
    for mapping in mappings {
        let (root, counts) = if mapping.virt.0 < LOWER_HALF_END {
            (ttbr0, &mut ttbr0_counts)
        } else {
            (ttbr1, &mut ttbr1_counts)
        };
        *counts += arena
            .map(
                root,
                mapping.virt,
                mapping.phys,
                mapping.size,
                mapping.attributes,
            )
            .map_err(|error| BuildError::Map {
                mapping: *mapping,
                error,
            })?;
    }
    Ok(KernelRoots {
        ttbr0,
        ttbr1,
        ttbr0_counts,
        ttbr1_counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address_map::{AddressClass, TranslationError};
    use crate::page_table::{PageTable, TableView, Translation};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const ARENA_PHYS: u64 = 0x4500_0000;

    const STACKS: [NamedRange<'static>; 2] = [
        NamedRange {
            name: "kernel stack",
            phys: PhysRange::new(0x5018_1000, 0x1_0000),
        },
        NamedRange {
            name: "exception stack",
            phys: PhysRange::new(0x5019_2000, 0x4000),
        },
    ];

    /// The image as the linker script lays it out, at 0x50080000 (dom0 at 0x50000000).
    fn image() -> ImageSections<'static, 'static> {
        ImageSections {
            text: PhysRange::new(0x5008_0000, 0x8_0000),
            rodata: PhysRange::new(0x5010_0000, 0x2_0000),
            data: PhysRange::new(0x5012_0000, 0x6_0000),
            stacks: &STACKS,
        }
    }

    /// One 1 GiB bank at 0x40000000 with no-map pools at its start, in its
    /// middle, two adjacent ones, a reserved region, and a pool at its end;
    /// the linear ranges are the bank with those holes.
    const LINEAR: [NamedRange<'static>; 4] = [
        NamedRange {
            name: "/memory@40000000",
            phys: PhysRange::new(0x4020_0000, 0x1fe0_0000),
        },
        NamedRange {
            name: "/memory@40000000",
            phys: PhysRange::new(0x6040_0000, 0x0fc0_0000),
        },
        NamedRange {
            name: "/memory@40000000",
            phys: PhysRange::new(0x7020_0000, 0x07e0_0000),
        },
        NamedRange {
            name: "/memory@40000000",
            phys: PhysRange::new(0x7810_0000, 0x07b0_0000),
        },
    ];
    const POOLS: [PoolSpec<'static>; 6] = [
        PoolSpec {
            name: "/reserved-memory/dma@40000000",
            phys: PhysRange::new(0x4000_0000, 0x20_0000),
            no_map: true,
        },
        PoolSpec {
            name: "/reserved-memory/dma@60000000",
            phys: PhysRange::new(0x6000_0000, 0x40_0000),
            no_map: true,
        },
        PoolSpec {
            name: "/reserved-memory/dma@70000000",
            phys: PhysRange::new(0x7000_0000, 0x10_0000),
            no_map: true,
        },
        PoolSpec {
            name: "/reserved-memory/dma@70100000",
            phys: PhysRange::new(0x7010_0000, 0x10_0000),
            no_map: true,
        },
        PoolSpec {
            name: "/reserved-memory/dma@7fc00000",
            phys: PhysRange::new(0x7fc0_0000, 0x40_0000),
            no_map: true,
        },
        PoolSpec {
            name: "/reserved-memory/cma@58000000",
            phys: PhysRange::new(0x5800_0000, 0x80_0000),
            no_map: false,
        },
    ];
    const RESERVED: [NamedRange<'static>; 1] = [NamedRange {
        name: "/reserved-memory/optee@78000000",
        phys: PhysRange::new(0x7800_0000, 0x10_0000),
    }];
    const MMIO: [MmioSpec<'static>; 5] = [
        MmioSpec {
            name: "/pl011@9000000",
            phys: PhysRange::new(0x0900_0000, 0x1000),
            memory: MemoryType::Device,
        },
        MmioSpec {
            name: "/intc@8000000",
            phys: PhysRange::new(0x0800_0000, 0x1_0000),
            memory: MemoryType::Device,
        },
        MmioSpec {
            name: "/virtio_mmio@a000000",
            phys: PhysRange::new(0x0a00_0000, 0x200),
            memory: MemoryType::Device,
        },
        MmioSpec {
            name: "/virtio_mmio@a000200",
            phys: PhysRange::new(0x0a00_0200, 0x200),
            memory: MemoryType::Device,
        },
        MmioSpec {
            name: "/hypervisor grant table",
            phys: PhysRange::new(0x3800_0000, 0x4_0000),
            memory: MemoryType::NormalWriteBack,
        },
    ];

    fn input() -> PlanInput<'static, 'static> {
        PlanInput {
            image: image(),
            linear: &LINEAR,
            pools: &POOLS,
            reserved: &RESERVED,
            mmio: &MMIO,
        }
    }

    /// Plans `input`, builds its tables in an arena of exactly the size
    /// `tables_needed` asks for, and hands both to `check`.
    fn with_built<R>(
        input: &PlanInput<'_, '_>,
        check: impl FnOnce(&KernelLayout<'_>, TableView<'_>, KernelRoots) -> R,
    ) -> R {
        let layout = plan_layout(input).unwrap();
        let needed = tables_needed(&layout.mappings);
        let mut tables = alloc::vec![PageTable::EMPTY; needed];
        let mut arena = TableArena::new(&mut tables, PhysAddr(ARENA_PHYS)).unwrap();
        let roots = build_tables(&mut arena, &layout.mappings).unwrap();
        assert_eq!(
            arena.tables_used(),
            needed,
            "tables_needed is exact for a planned layout"
        );
        let view = arena.into_view();
        assert_eq!(roots.ttbr0_counts, view.mapping_counts(roots.ttbr0));
        assert_eq!(roots.ttbr1_counts, view.mapping_counts(roots.ttbr1));
        check(&layout, view, roots)
    }

    fn translate(view: &TableView<'_>, roots: KernelRoots, virt: u64) -> Option<Translation> {
        let root = if virt < LOWER_HALF_END {
            roots.ttbr0
        } else {
            roots.ttbr1
        };
        view.translate(root, VirtAddr(virt))
    }

    fn linear_va(pa: u64) -> u64 {
        pa + LINEAR_OFFSET
    }

    fn mapping<'l>(layout: &'l KernelLayout<'_>, name: &str) -> &'l Mapping<'l> {
        layout.mappings.iter().find(|m| m.name == name).unwrap()
    }

    #[test]
    fn no_map_holes_at_start_middle_and_end_of_a_bank_are_unmapped() {
        with_built(&input(), |_, view, roots| {
            let mapped =
                |pa: u64| translate(&view, roots, linear_va(pa)).map(|t| (t.phys.0, t.attributes));
            let rw = MapAttributes::READ_WRITE;
            // Start of the bank.
            assert_eq!(mapped(0x4000_0000), None);
            assert_eq!(mapped(0x401f_ffff), None);
            assert_eq!(mapped(0x4020_0000), Some((0x4020_0000, rw)));
            // Middle.
            assert_eq!(mapped(0x5fff_ffff), Some((0x5fff_ffff, rw)));
            assert_eq!(mapped(0x6000_0000), None);
            assert_eq!(mapped(0x603f_ffff), None);
            assert_eq!(mapped(0x6040_0000), Some((0x6040_0000, rw)));
            // Two adjacent pools, then RAM.
            assert_eq!(mapped(0x6fff_ffff), Some((0x6fff_ffff, rw)));
            for pa in [0x7000_0000, 0x700f_ffff, 0x7010_0000, 0x701f_ffff] {
                assert_eq!(mapped(pa), None, "{pa:#x}");
            }
            assert_eq!(mapped(0x7020_0000), Some((0x7020_0000, rw)));
            // Reserved region.
            assert_eq!(mapped(0x7800_0000), None);
            // End of the bank.
            assert_eq!(mapped(0x7fbf_ffff), Some((0x7fbf_ffff, rw)));
            assert_eq!(mapped(0x7fc0_0000), None);
            assert_eq!(mapped(0x7fff_ffff), None);
            // The mapped pool is in the linear map.
            assert_eq!(mapped(0x5800_0000), Some((0x5800_0000, rw)));
        });
    }

    #[test]
    fn linear_map_uses_the_largest_blocks_alignment_allows() {
        let layout = plan_layout(&input()).unwrap();
        let counts: Vec<_> = layout
            .mappings
            .iter()
            .filter(|m| m.kind == MappingKind::Linear)
            .map(|m| m.counts())
            .collect();
        let blocks = |blocks_2m: usize, pages_4k: usize| MappingCounts {
            blocks_1g: 0,
            blocks_2m,
            pages_4k,
        };
        // The last range starts 1 MiB into a block, after the reserved region:
        // 256 pages up to 0x78200000, then 2 MiB blocks.
        assert_eq!(
            counts,
            [
                blocks(255, 0),
                blocks(126, 0),
                blocks(63, 0),
                blocks(61, 256)
            ]
        );
        let bank = NamedRange {
            name: "/memory@40000000",
            phys: PhysRange::new(0x4000_0000, 0x4000_0000),
        };
        let whole = PlanInput {
            linear: &[bank],
            pools: &[],
            reserved: &[],
            mmio: &[],
            ..input()
        };
        let layout = plan_layout(&whole).unwrap();
        assert_eq!(
            mapping(&layout, "/memory@40000000").counts().to_string(),
            "1G=1 2M=0 4K=0"
        );
    }

    #[test]
    fn pool_windows_are_non_cacheable_blocks_with_no_linear_alias() {
        with_built(&input(), |layout, view, roots| {
            let map = &layout.address_map;
            for pool in POOLS.iter().filter(|p| p.no_map) {
                let window = map.region_of(pool.phys.base).unwrap().window.unwrap();
                assert!(window.0 >= WINDOW_BASE);
                for offset in [0, pool.phys.size / 2, pool.phys.size - 1] {
                    let t = translate(&view, roots, window.0 + offset).unwrap();
                    assert_eq!(
                        (t.phys, t.attributes),
                        (
                            PhysAddr(pool.phys.base.0 + offset),
                            MapAttributes::NON_CACHEABLE
                        )
                    );
                    assert_eq!(
                        translate(&view, roots, linear_va(pool.phys.base.0 + offset)),
                        None
                    );
                }
                assert_eq!(
                    translate(&view, roots, window.0 - 1),
                    None,
                    "gap under {}",
                    pool.name
                );
                assert_eq!(
                    translate(&view, roots, window.0 + pool.phys.size),
                    None,
                    "gap over {}",
                    pool.name
                );
                let err = map.phys_to_virt(pool.phys.base).unwrap_err();
                assert_eq!(
                    err,
                    TranslationError::NotLinear {
                        phys: pool.phys.base,
                        class: alloc::format!("no-map pool {}", pool.name)
                    }
                );
            }
            let middle = mapping(layout, "/reserved-memory/dma@60000000");
            assert_eq!(middle.virt.0 % (2 * MIB), middle.phys.0 % (2 * MIB));
            assert_eq!(middle.counts().to_string(), "1G=0 2M=2 4K=0");
            assert_eq!(
                map.phys_to_virt(PhysAddr(0x6000_0010))
                    .unwrap_err()
                    .to_string(),
                "phys_to_virt(0x60000010) refused: no-map pool /reserved-memory/dma@60000000, not in the linear map"
            );
        });
    }

    #[test]
    fn windows_are_laid_out_upward_with_gaps_in_input_order() {
        let layout = plan_layout(&input()).unwrap();
        let windows: Vec<_> = layout
            .mappings
            .iter()
            .filter(|m| m.virt.0 >= WINDOW_BASE)
            .collect();
        let names: Vec<_> = windows.iter().map(|m| m.name).collect();
        let expected: Vec<_> = POOLS
            .iter()
            .filter(|p| p.no_map)
            .map(|p| p.name)
            .chain(MMIO.iter().map(|d| d.name))
            .collect();
        assert_eq!(names, expected);
        assert_eq!(windows[0].virt.0, WINDOW_BASE);
        for pair in windows.windows(2) {
            assert!(
                pair[0].virt.0 + pair[0].size + WINDOW_GAP <= pair[1].virt.0,
                "{} / {}",
                pair[0],
                pair[1]
            );
        }
        // Small device windows are packed a page apart.
        let uart = mapping(&layout, "/pl011@9000000");
        let gic = mapping(&layout, "/intc@8000000");
        assert_eq!(gic.virt.0, uart.virt.0 + uart.size + WINDOW_GAP);
    }

    #[test]
    fn devices_get_their_own_memory_type_and_whole_pages() {
        with_built(&input(), |layout, view, roots| {
            let map = &layout.address_map;
            let uart = map.window_address(PhysAddr(0x0900_0018)).unwrap();
            let t = translate(&view, roots, uart.0).unwrap();
            assert_eq!(
                (t.phys, t.attributes),
                (PhysAddr(0x0900_0018), MapAttributes::DEVICE)
            );
            // A 0x200-byte device shares its page with the one before it: its
            // window maps the whole page and points into it.
            let second = map
                .region_of(PhysAddr(0x0a00_0200))
                .unwrap()
                .window
                .unwrap();
            assert_eq!(second.0 % PAGE_SIZE, 0x200);
            assert_eq!(
                translate(&view, roots, second.0).unwrap().phys,
                PhysAddr(0x0a00_0200)
            );
            assert_eq!(
                translate(&view, roots, second.0 - 0x200).unwrap().phys,
                PhysAddr(0x0a00_0000)
            );
            let grant = map.window_address(PhysAddr(0x3800_0000)).unwrap();
            assert_eq!(
                translate(&view, roots, grant.0).unwrap().attributes,
                MapAttributes::READ_WRITE
            );
            assert_eq!(
                map.phys_to_virt(PhysAddr(0x0900_0000))
                    .unwrap_err()
                    .to_string(),
                "phys_to_virt(0x9000000) refused: MMIO /pl011@9000000, not in the linear map"
            );
        });
    }

    #[test]
    fn image_sections_have_their_permissions_and_stacks_their_guards() {
        with_built(&input(), |layout, view, roots| {
            let at = |pa: u64| translate(&view, roots, pa).map(|t| (t.phys.0, t.attributes));
            let image = image();
            for (range, attributes) in [
                (image.text, MapAttributes::TEXT),
                (image.rodata, MapAttributes::READ_ONLY),
                (image.data, MapAttributes::READ_WRITE),
                (STACKS[0].phys, MapAttributes::READ_WRITE),
                (STACKS[1].phys, MapAttributes::READ_WRITE),
            ] {
                assert_eq!(at(range.base.0), Some((range.base.0, attributes)));
                assert_eq!(at(range.end() - 1), Some((range.end() - 1, attributes)));
                assert_eq!(
                    layout.address_map.virt_to_phys(VirtAddr(range.base.0)),
                    Ok(range.base)
                );
            }
            for stack in &STACKS {
                let guard = stack.phys.base.0 - PAGE_SIZE;
                assert_eq!(at(guard), None, "guard of {}", stack.name);
                assert_eq!(at(stack.phys.base.0 - 1), None);
                assert!(
                    at(guard - 1).is_some(),
                    "the page under the guard is mapped"
                );
                assert!(matches!(
                    layout.address_map.virt_to_phys(VirtAddr(guard)),
                    Err(TranslationError::NotMapped { .. })
                ));
            }
            assert_eq!(at(image.text.base.0 - 1), None);
            assert_eq!(at(STACKS[1].phys.end()), None);
        });
    }

    #[test]
    fn address_map_and_tables_agree_on_every_region_and_mapping_boundary() {
        with_built(&input(), |layout, view, roots| {
            let map = &layout.address_map;
            for region in map.regions() {
                for pa in [
                    region.phys.base.0,
                    region.phys.base.0 + region.phys.size / 2,
                    region.phys.end() - 1,
                ] {
                    let pa = PhysAddr(pa);
                    let linear_alias = translate(&view, roots, linear_va(pa.0));
                    match map.phys_to_virt(pa) {
                        Ok(va) => {
                            assert_eq!(va, VirtAddr(linear_va(pa.0)));
                            let t = linear_alias.unwrap();
                            assert_eq!(
                                (t.phys, t.attributes),
                                (pa, MapAttributes::READ_WRITE),
                                "{}",
                                region.name
                            );
                            assert_eq!(map.virt_to_phys(va), Ok(pa));
                        }
                        Err(_) => {
                            assert_eq!(linear_alias, None, "{} has a linear alias", region.name)
                        }
                    }
                    if let Some(window) = map.window_address(pa) {
                        assert_eq!(
                            translate(&view, roots, window.0).unwrap().phys,
                            pa,
                            "{}",
                            region.name
                        );
                        assert_eq!(map.virt_to_phys(window), Ok(pa));
                    }
                }
            }
            for m in &layout.mappings {
                let last = m.virt.0 + m.size - 1;
                assert_eq!(
                    translate(&view, roots, m.virt.0).map(|t| (t.phys, t.attributes)),
                    Some((m.phys, m.attributes))
                );
                assert_eq!(
                    translate(&view, roots, last).unwrap().phys,
                    PhysAddr(m.phys.0 + m.size - 1),
                    "{m}"
                );
                for outside in [m.virt.0 - 1, last + 1] {
                    let owner = layout
                        .mappings
                        .iter()
                        .find(|o| outside >= o.virt.0 && outside - o.virt.0 < o.size);
                    let expected = owner.map(|o| PhysAddr(o.phys.0 + (outside - o.virt.0)));
                    assert_eq!(
                        translate(&view, roots, outside).map(|t| t.phys),
                        expected,
                        "next to {m}"
                    );
                }
            }
        });
    }

    #[test]
    fn classification_names_every_kind_of_region() {
        let layout = plan_layout(&input()).unwrap();
        let map = &layout.address_map;
        assert_eq!(
            map.classify(PhysAddr(0x4020_0000)),
            AddressClass::LinearRam {
                virt: VirtAddr(linear_va(0x4020_0000))
            }
        );
        assert_eq!(
            map.classify(PhysAddr(0x5800_0000)),
            AddressClass::MappedPool {
                pool: "/reserved-memory/cma@58000000",
                virt: VirtAddr(linear_va(0x5800_0000))
            }
        );
        assert_eq!(
            map.classify(PhysAddr(0x7800_0000)),
            AddressClass::NoMapReserved {
                region: "/reserved-memory/optee@78000000"
            }
        );
        // Linear RAM around the mapped pool is still linear RAM.
        assert!(matches!(
            map.classify(PhysAddr(0x57ff_ffff)),
            AddressClass::LinearRam { .. }
        ));
        assert!(matches!(
            map.classify(PhysAddr(0x5880_0000)),
            AddressClass::LinearRam { .. }
        ));
        assert_eq!(map.classify(PhysAddr(0x8000_0000)), AddressClass::Unknown);
        assert_eq!(map.identity_ranges().len(), 5);
    }

    #[test]
    fn linear_ranges_round_inward_and_vanishing_ones_are_skipped() {
        let linear = [
            NamedRange {
                name: "ragged",
                phys: PhysRange::new(0x4020_0800, 0x20_0000),
            },
            NamedRange {
                name: "sliver",
                phys: PhysRange::new(0x4050_0100, 0xe00),
            },
        ];
        let plan = PlanInput {
            linear: &linear,
            pools: &[],
            reserved: &[],
            mmio: &[],
            ..input()
        };
        with_built(&plan, |layout, view, roots| {
            let ragged = mapping(layout, "ragged");
            assert_eq!(
                (ragged.phys, ragged.size),
                (PhysAddr(0x4020_1000), 0x1f_f000)
            );
            assert!(layout.mappings.iter().all(|m| m.name != "sliver"));
            assert_eq!(translate(&view, roots, linear_va(0x4020_0fff)), None);
            assert_eq!(translate(&view, roots, linear_va(0x4040_0000)), None);
            // The address map does not claim the partial pages either.
            assert_eq!(
                layout.address_map.classify(PhysAddr(0x4020_0900)),
                AddressClass::Unknown
            );
            assert!(
                layout
                    .address_map
                    .phys_to_virt(PhysAddr(0x4040_0700))
                    .is_err()
            );
            assert!(
                layout
                    .address_map
                    .phys_to_virt(PhysAddr(0x4040_0000 - 1))
                    .is_ok()
            );
        });
    }

    #[test]
    fn contradictory_plans_are_refused_with_names() {
        let pool_in_ram = [PoolSpec {
            name: "/reserved-memory/dma@60000000",
            phys: PhysRange::new(0x5000_0000, MIB),
            no_map: true,
        }];
        let err = plan_layout(&PlanInput {
            pools: &pool_in_ram,
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            overlap("/memory@40000000", "/reserved-memory/dma@60000000")
        );
        assert_eq!(
            err.to_string(),
            "/memory@40000000 and /reserved-memory/dma@60000000 overlap"
        );

        let mapped_outside = [PoolSpec {
            name: "cma",
            phys: PhysRange::new(0x6000_0000, MIB),
            no_map: false,
        }];
        let err = plan_layout(&PlanInput {
            pools: &mapped_outside,
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::MappedPoolOutsideLinearMap {
                pool: "cma".into(),
                range: mapped_outside[0].phys
            }
        );

        let device_in_image = [MmioSpec {
            name: "dev",
            phys: PhysRange::new(0x5010_0000, 0x1000),
            memory: MemoryType::Device,
        }];
        let err = plan_layout(&PlanInput {
            mmio: &device_in_image,
            linear: &[],
            pools: &[],
            ..input()
        })
        .unwrap_err();
        assert_eq!(err, overlap("the kernel image", "dev"));

        let shared_page = [
            MmioSpec {
                name: "regs",
                phys: PhysRange::new(0x0a00_0000, 0x200),
                memory: MemoryType::Device,
            },
            MmioSpec {
                name: "sram",
                phys: PhysRange::new(0x0a00_0200, 0x200),
                memory: MemoryType::NormalNonCacheable,
            },
        ];
        let err = plan_layout(&PlanInput {
            mmio: &shared_page,
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::ConflictingAttributes {
                first: "regs".into(),
                second: "sram".into()
            }
        );

        let empty = [MmioSpec {
            name: "nothing",
            phys: PhysRange::new(0x0a00_0000, 0),
            memory: MemoryType::Device,
        }];
        let err = plan_layout(&PlanInput {
            mmio: &empty,
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::EmptyRange {
                name: "nothing".into()
            }
        );

        let high = [NamedRange {
            name: "high",
            phys: PhysRange::new(LINEAR_PHYS_LIMIT - MIB, 2 * MIB),
        }];
        let err = plan_layout(&PlanInput {
            linear: &high,
            pools: &[],
            reserved: &[],
            mmio: &[],
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::BeyondLinearReach {
                name: "high".into(),
                range: high[0].phys
            }
        );

        let huge = [MmioSpec {
            name: "huge",
            phys: PhysRange::new(PHYS_ADDR_LIMIT - 0x1000, 0x2000),
            memory: MemoryType::Device,
        }];
        let err = plan_layout(&PlanInput {
            mmio: &huge,
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::BeyondPhysicalLimit {
                name: "huge".into(),
                range: huge[0].phys
            }
        );
    }

    #[test]
    fn image_problems_are_refused() {
        let misaligned = ImageSections {
            rodata: PhysRange::new(0x5010_0000, 0x1_0800),
            ..image()
        };
        let err = plan_layout(&PlanInput {
            image: misaligned,
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::Misaligned {
                name: "kernel rodata".into(),
                range: misaligned.rodata
            }
        );

        // Data running up to the stack leaves it no guard.
        let no_guard = ImageSections {
            data: PhysRange::new(0x5012_0000, 0x6_1000),
            ..image()
        };
        let err = plan_layout(&PlanInput {
            image: no_guard,
            ..input()
        })
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingGuard {
                stack: "kernel stack".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "kernel stack has no unmapped guard page under it"
        );

        let overlapping = ImageSections {
            rodata: PhysRange::new(0x500f_f000, 0x2_1000),
            ..image()
        };
        let err = plan_layout(&PlanInput {
            image: overlapping,
            ..input()
        })
        .unwrap_err();
        assert_eq!(err, overlap("kernel text", "kernel rodata"));
    }

    #[test]
    fn arena_too_small_and_failing_mappings_are_build_errors() {
        let layout = plan_layout(&input()).unwrap();
        let needed = tables_needed(&layout.mappings);
        let mut tables = alloc::vec![PageTable::EMPTY; needed - 1];
        let mut arena = TableArena::new(&mut tables, PhysAddr(ARENA_PHYS)).unwrap();
        let err = build_tables(&mut arena, &layout.mappings).unwrap_err();
        assert_eq!(
            err,
            BuildError::ArenaTooSmall {
                needed,
                available: needed - 1
            }
        );
        assert_eq!(arena.tables_used(), 0, "nothing written");

        let twice = [layout.mappings[0], layout.mappings[0]];
        let mut tables = alloc::vec![PageTable::EMPTY; 16];
        let mut arena = TableArena::new(&mut tables, PhysAddr(ARENA_PHYS)).unwrap();
        let err = build_tables(&mut arena, &twice).unwrap_err();
        assert_eq!(
            err,
            BuildError::Map {
                mapping: twice[0],
                error: MapError::AlreadyMapped {
                    virt: twice[0].virt
                }
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot map text kernel text [0x50080000..0x50100000) at 0x50080000 Normal WB RX: 0x50080000 is already mapped"
        );
    }

    proptest! {
        /// A 64 MiB bank with random no-map holes (any page granularity,
        /// adjacent or at either end): every page of the bank is either in
        /// the linear map (write-back, right address) or in its pool's
        /// window (non-cacheable, right address), never both.
        #[test]
        fn every_page_of_a_bank_with_random_holes(
            holes in prop::collection::vec((0u64..600, 1u64..600), 0..6),
        ) {
            const BANK: u64 = 0x4000_0000;
            const PAGES: u64 = 64 * MIB / PAGE_SIZE;
            let mut cursor = 0;
            let mut pool_ranges = Vec::new();
            for (gap, len) in holes {
                let start = cursor + gap;
                let end = (start + len).min(PAGES);
                if start >= end {
                    break;
                }
                pool_ranges.push((start, end));
                cursor = end;
            }
            let names: Vec<String> = (0..pool_ranges.len()).map(|i| alloc::format!("pool{i}")).collect();
            let pools: Vec<PoolSpec<'_>> = pool_ranges
                .iter()
                .zip(&names)
                .map(|(&(s, e), name)| PoolSpec { name, phys: PhysRange::new(BANK + s * PAGE_SIZE, (e - s) * PAGE_SIZE), no_map: true })
                .collect();
            let mut linear = Vec::new();
            let mut next = 0;
            for &(s, e) in pool_ranges.iter().chain([(PAGES, PAGES)].iter()) {
                if s > next {
                    linear.push(NamedRange { name: "bank", phys: PhysRange::new(BANK + next * PAGE_SIZE, (s - next) * PAGE_SIZE) });
                }
                next = e;
            }
            let image = ImageSections { text: PhysRange::new(0x9000_0000, PAGE_SIZE), rodata: PhysRange::default(), data: PhysRange::default(), stacks: &[] };
            let plan = PlanInput { image, linear: &linear, pools: &pools, reserved: &[], mmio: &[] };
            with_built(&plan, |layout, view, roots| {
                for page in 0..PAGES {
                    let pa = BANK + page * PAGE_SIZE;
                    let in_linear = translate(&view, roots, linear_va(pa)).map(|t| (t.phys.0, t.attributes));
                    let window = layout.address_map.window_address(PhysAddr(pa));
                    let in_window = window.and_then(|w| translate(&view, roots, w.0)).map(|t| (t.phys.0, t.attributes));
                    if pool_ranges.iter().any(|&(s, e)| (s..e).contains(&page)) {
                        prop_assert_eq!(in_linear, None);
                        prop_assert_eq!(in_window, Some((pa, MapAttributes::NON_CACHEABLE)));
                    } else {
                        prop_assert_eq!(in_linear, Some((pa, MapAttributes::READ_WRITE)));
                        prop_assert_eq!(window, None);
                    }
                }
                Ok(())
            })?;
        }
    }
}
