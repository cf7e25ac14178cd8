//! Translation tables with a 4 KiB granule, built without allocation in a
//! caller-provided arena of tables, and a software walker over them.
//!
//! The builder runs in the kernel before the MMU is on (no heap, VA == PA)
//! and on the host. Tables refer to each other by physical address, so the
//! arena is given together with the physical address of its first table.
//!
//! [`TableArena::map`] uses 1 GiB and 2 MiB blocks wherever the virtual
//! address, the physical address and the remaining size allow, and 4 KiB
//! pages elsewhere. It never replaces or splits an existing mapping: mapping
//! over any mapped address is [`MapError::AlreadyMapped`]. It is atomic: it
//! first checks the whole range (conflicts, tables needed) and writes only if
//! everything fits, so an error leaves the tables unchanged.

use core::fmt;
use core::ops::AddAssign;

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use crate::attributes::MapAttributes;
use crate::descriptor::{self, Decoded};

/// Descriptors per table.
pub const ENTRIES_PER_TABLE: usize = 512;

/// One past the highest physical address a descriptor can hold (48 bits).
pub const PHYS_ADDR_LIMIT: u64 = 1 << 48;

/// One past the highest address of the lower (TTBR0) half with T0SZ = 16.
pub const LOWER_HALF_END: u64 = 1 << 48;

/// First address of the upper (TTBR1) half with T1SZ = 16.
pub const UPPER_HALF_START: u64 = 0xffff_0000_0000_0000;

/// Address bits below each level's index: level 0 indexes bits \[47:39\],
/// level 1 \[38:30\], level 2 \[29:21\], level 3 \[20:12\].
const LEVEL_SHIFT: [u32; 4] = [39, 30, 21, 12];

/// Translation levels; the root is level 0.
const LEVELS: usize = 4;

/// One translation table: 512 descriptors, 4 KiB aligned.
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct PageTable([u64; ENTRIES_PER_TABLE]);

impl PageTable {
    /// A table of invalid descriptors (all zero, so a `static` of these lives in BSS).
    pub const EMPTY: Self = Self([0; ENTRIES_PER_TABLE]);
}

impl Default for PageTable {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// The size of one block or page descriptor's mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Granule {
    /// A level-1 block: 1 GiB.
    Block1G,
    /// A level-2 block: 2 MiB.
    Block2M,
    /// A level-3 page: 4 KiB.
    Page4K,
}

impl Granule {
    /// Bytes mapped by one descriptor of this granule.
    pub const fn size(self) -> u64 {
        1 << LEVEL_SHIFT[self.level()]
    }

    /// The translation level whose descriptors map this granule.
    pub(crate) const fn level(self) -> usize {
        match self {
            Self::Block1G => 1,
            Self::Block2M => 2,
            Self::Page4K => 3,
        }
    }

    const fn at_level(level: usize) -> Option<Self> {
        match level {
            1 => Some(Self::Block1G),
            2 => Some(Self::Block2M),
            3 => Some(Self::Page4K),
            _ => None,
        }
    }
}

/// How many descriptors of each granule a mapping took.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MappingCounts {
    /// 1 GiB blocks.
    pub blocks_1g: usize,
    /// 2 MiB blocks.
    pub blocks_2m: usize,
    /// 4 KiB pages.
    pub pages_4k: usize,
}

impl MappingCounts {
    /// Counts one more descriptor of `granule`.
    pub fn add(&mut self, granule: Granule) {
        match granule {
            Granule::Block1G => self.blocks_1g += 1,
            Granule::Block2M => self.blocks_2m += 1,
            Granule::Page4K => self.pages_4k += 1,
        }
    }

    /// Counts `count` more descriptors of `granule`.
    pub(crate) fn add_run(&mut self, granule: Granule, count: usize) {
        match granule {
            Granule::Block1G => self.blocks_1g += count,
            Granule::Block2M => self.blocks_2m += count,
            Granule::Page4K => self.pages_4k += count,
        }
    }

    /// Bytes mapped by all the counted descriptors.
    pub fn bytes(&self) -> u64 {
        self.blocks_1g as u64 * Granule::Block1G.size()
            + self.blocks_2m as u64 * Granule::Block2M.size()
            + self.pages_4k as u64 * Granule::Page4K.size()
    }
}

impl AddAssign for MappingCounts {
    fn add_assign(&mut self, other: Self) {
        self.blocks_1g += other.blocks_1g;
        self.blocks_2m += other.blocks_2m;
        self.pages_4k += other.pages_4k;
    }
}

impl fmt::Display for MappingCounts {
    /// `1G=0 2M=448 4K=0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "1G={} 2M={} 4K={}",
            self.blocks_1g, self.blocks_2m, self.pages_4k
        )
    }
}

/// Consecutive descriptors of one granule in one table: `count` blocks or
/// pages of `granule` bytes, the first mapping `virt` to `phys`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Run {
    pub(crate) virt: u64,
    pub(crate) phys: u64,
    pub(crate) granule: Granule,
    pub(crate) count: usize,
}

/// Splits a page-aligned mapping into the descriptors [`TableArena::map`]
/// writes, table by table: at each step the largest granule to which the
/// virtual address, the physical address and the remaining size are all
/// aligned, repeated while the size lasts, up to the end of the table
/// that holds it. A larger granule can only start at that end (its
/// alignment is the table's span), so a run is exactly the descriptors a
/// step-by-step choice would make there.
pub(crate) fn runs(virt: u64, phys: u64, size: u64) -> impl Iterator<Item = Run> {
    let (mut virt, mut phys, mut remaining) = (virt, phys, size);
    core::iter::from_fn(move || {
        if remaining < PAGE_SIZE {
            return None;
        }
        let granule = [Granule::Block1G, Granule::Block2M]
            .into_iter()
            .find(|g| {
                let mask = g.size() - 1;
                virt & mask == 0 && phys & mask == 0 && remaining >= g.size()
            })
            .unwrap_or(Granule::Page4K);
        let left_in_table = (ENTRIES_PER_TABLE - entry_index(virt, granule.level())) as u64;
        let count = (remaining / granule.size()).min(left_in_table);
        let run = Run {
            virt,
            phys,
            granule,
            count: count as usize,
        };
        let bytes = count * granule.size();
        virt = virt.wrapping_add(bytes);
        phys = phys.wrapping_add(bytes);
        remaining -= bytes;
        Some(run)
    })
}

/// The descriptor counts [`TableArena::map`] produces for a page-aligned mapping.
pub(crate) fn run_counts(virt: u64, phys: u64, size: u64) -> MappingCounts {
    let mut counts = MappingCounts::default();
    for run in runs(virt, phys, size) {
        counts.add_run(run.granule, run.count);
    }
    counts
}

/// Index of `virt`'s descriptor in its table at `level`.
fn entry_index(virt: u64, level: usize) -> usize {
    ((virt >> LEVEL_SHIFT[level]) as usize) % ENTRIES_PER_TABLE
}

/// Which table at `level` (1 to 3) covers `virt`: tables at the same level
/// with the same key are the same table.
pub(crate) fn table_key(virt: u64, level: usize) -> u64 {
    virt >> LEVEL_SHIFT[level - 1]
}

/// Whether `[virt, virt + size)` (size > 0) lies within one 48-bit half.
fn is_canonical(virt: u64, size: u64) -> bool {
    let Some(last) = virt.checked_add(size - 1) else {
        return false;
    };
    let half = virt >> 48;
    (half == 0 || half == 0xffff) && last >> 48 == half
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapError {
    /// The arena's first table is not 4 KiB aligned, or the arena reaches
    /// beyond the 48-bit physical address space.
    InvalidArena {
        /// Physical address given for the first table.
        first_table: PhysAddr,
        /// Number of tables in the arena.
        tables: usize,
    },
    /// The virtual address, physical address or size is not 4 KiB aligned.
    Misaligned {
        /// Virtual start.
        virt: VirtAddr,
        /// Physical start.
        phys: PhysAddr,
        /// Size in bytes.
        size: u64,
    },
    /// The virtual range is not inside one canonical 48-bit half.
    NonCanonical {
        /// Virtual start.
        virt: VirtAddr,
        /// Size in bytes.
        size: u64,
    },
    /// The physical range reaches beyond 48 bits.
    PhysOutOfRange {
        /// Physical start.
        phys: PhysAddr,
        /// Size in bytes.
        size: u64,
    },
    /// Executable mappings must be read-only Normal write-back.
    NotPermitted {
        /// Virtual start.
        virt: VirtAddr,
        /// The refused attributes.
        attributes: MapAttributes,
    },
    /// This virtual address is already mapped (by a page, a block, or a
    /// table that a block would have to replace); nothing was changed.
    AlreadyMapped {
        /// The first conflicting virtual address.
        virt: VirtAddr,
    },
    /// The arena has too few free tables; nothing was changed.
    OutOfTables {
        /// Tables the mapping needs.
        needed: usize,
        /// Tables still free in the arena.
        available: usize,
    },
    /// A root or table descriptor names a table that is not in this arena.
    UnknownTable {
        /// Physical address of the table.
        table: PhysAddr,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArena {
                first_table,
                tables,
            } => write!(
                f,
                "table arena of {tables} tables at {first_table} is not 4 KiB aligned or exceeds 48-bit physical addresses"
            ),
            Self::Misaligned { virt, phys, size } => {
                write!(
                    f,
                    "mapping {virt} -> {phys} size {size:#x} is not 4 KiB aligned"
                )
            }
            Self::NonCanonical { virt, size } => {
                write!(
                    f,
                    "virtual range {virt} size {size:#x} is not inside one 48-bit half"
                )
            }
            Self::PhysOutOfRange { phys, size } => {
                write!(f, "physical range {phys} size {size:#x} exceeds 48 bits")
            }
            Self::NotPermitted { virt, attributes } => write!(
                f,
                "mapping at {virt} refused: {attributes} (executable mappings must be read-only Normal WB)"
            ),
            Self::AlreadyMapped { virt } => write!(f, "{virt} is already mapped"),
            Self::OutOfTables { needed, available } => {
                write!(
                    f,
                    "out of translation tables: {needed} needed, {available} free"
                )
            }
            Self::UnknownTable { table } => write!(f, "table {table} is not in this arena"),
        }
    }
}

/// A root (level-0) table of the arena; its physical address is what goes
/// into TTBR0_EL1 or TTBR1_EL1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TableRoot {
    phys: PhysAddr,
}

impl TableRoot {
    /// Physical address of the root table (the TTBR value, ASID 0).
    pub fn phys(self) -> PhysAddr {
        self.phys
    }
}

/// The result of walking the tables for one virtual address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Translation {
    /// The physical address of the byte.
    pub phys: PhysAddr,
    /// Memory type and permissions.
    pub attributes: MapAttributes,
    /// The block or page that maps it.
    pub granule: Granule,
    /// The raw block or page descriptor.
    pub descriptor: u64,
}

/// Translation tables, read-only: the walker.
#[derive(Clone, Copy)]
pub struct TableView<'a> {
    tables: &'a [PageTable],
    first_table: u64,
}

impl<'a> TableView<'a> {
    fn table_index(&self, phys: u64) -> Option<usize> {
        table_index(self.first_table, self.tables.len(), phys)
    }

    /// Walks the tables under `root` for `virt` as the MMU would (stage 1,
    /// 4 KiB granule, 48-bit addresses): the physical address and attributes,
    /// or `None` where the MMU would take a translation fault.
    ///
    /// `virt` is taken to lie in the half `root` serves; a non-canonical
    /// address is `None`. A table descriptor naming a table outside the arena
    /// also ends the walk with `None`: only this crate writes these tables,
    /// and it never writes such a descriptor.
    pub fn translate(&self, root: TableRoot, virt: VirtAddr) -> Option<Translation> {
        if !is_canonical(virt.0, 1) {
            return None;
        }
        let mut table = self.table_index(root.phys.0)?;
        for level in 0..LEVELS {
            let raw = self.tables[table].0[entry_index(virt.0, level)];
            match descriptor::decode(raw, level) {
                Decoded::Invalid => return None,
                Decoded::Table(next) => table = self.table_index(next)?,
                Decoded::Leaf(output) => {
                    let granule = Granule::at_level(level)?;
                    return Some(Translation {
                        phys: PhysAddr(output + (virt.0 & (granule.size() - 1))),
                        attributes: descriptor::leaf_attributes(raw)?,
                        granule,
                        descriptor: raw,
                    });
                }
            }
        }
        None
    }

    /// Counts every block and page mapped under `root`.
    pub fn mapping_counts(&self, root: TableRoot) -> MappingCounts {
        let mut counts = MappingCounts::default();
        if let Some(table) = self.table_index(root.phys.0) {
            self.count_under(table, 0, &mut counts);
        }
        counts
    }

    fn count_under(&self, table: usize, level: usize, counts: &mut MappingCounts) {
        for &raw in &self.tables[table].0 {
            match descriptor::decode(raw, level) {
                Decoded::Invalid => {}
                Decoded::Table(next) => {
                    if let Some(next) = self.table_index(next) {
                        self.count_under(next, level + 1, counts);
                    }
                }
                Decoded::Leaf(_) => {
                    if let Some(granule) = Granule::at_level(level) {
                        counts.add(granule);
                    }
                }
            }
        }
    }
}

/// Index in an arena starting at `first_table` with `len` tables in use of
/// the table at physical `phys`.
fn table_index(first_table: u64, len: usize, phys: u64) -> Option<usize> {
    let offset = phys.checked_sub(first_table)?;
    if !offset.is_multiple_of(PAGE_SIZE) {
        return None;
    }
    usize::try_from(offset / PAGE_SIZE)
        .ok()
        .filter(|&index| index < len)
}

/// A caller-provided arena of tables and the builder that fills it.
///
/// Tables are handed out in order from the start of the arena; each is
/// zeroed when handed out, so the arena's initial contents do not matter.
pub struct TableArena<'a> {
    tables: &'a mut [PageTable],
    first_table: u64,
    used: usize,
}

impl<'a> TableArena<'a> {
    /// An empty arena over `tables`, whose first table is at physical
    /// address `first_table` (the others follow contiguously).
    pub fn new(tables: &'a mut [PageTable], first_table: PhysAddr) -> Result<Self, MapError> {
        let invalid = MapError::InvalidArena {
            first_table,
            tables: tables.len(),
        };
        let bytes = (tables.len() as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or(invalid)?;
        let end = first_table.0.checked_add(bytes).ok_or(invalid)?;
        if !first_table.is_aligned(PAGE_SIZE) || end > PHYS_ADDR_LIMIT {
            return Err(invalid);
        }
        Ok(Self {
            tables,
            first_table: first_table.0,
            used: 0,
        })
    }

    /// Tables in the arena.
    pub fn capacity(&self) -> usize {
        self.tables.len()
    }

    /// Tables handed out so far (roots included).
    pub fn tables_used(&self) -> usize {
        self.used
    }

    /// A new, empty root table.
    pub fn new_root(&mut self) -> Result<TableRoot, MapError> {
        if self.used == self.tables.len() {
            return Err(MapError::OutOfTables {
                needed: 1,
                available: 0,
            });
        }
        let index = self.allocate();
        Ok(TableRoot {
            phys: PhysAddr(self.table_phys(index)),
        })
    }

    /// Maps `[virt, virt + size)` to `[phys, phys + size)` under `root`.
    ///
    /// All three must be 4 KiB aligned; a zero size maps nothing. Uses the
    /// largest blocks alignment allows (see [`TableArena`]); returns how many
    /// of each it wrote. On error nothing is changed.
    pub fn map(
        &mut self,
        root: TableRoot,
        virt: VirtAddr,
        phys: PhysAddr,
        size: u64,
        attributes: MapAttributes,
    ) -> Result<MappingCounts, MapError> {
        if !virt.is_aligned(PAGE_SIZE)
            || !phys.is_aligned(PAGE_SIZE)
            || !size.is_multiple_of(PAGE_SIZE)
        {
            return Err(MapError::Misaligned { virt, phys, size });
        }
        if size == 0 {
            return Ok(MappingCounts::default());
        }
        if !is_canonical(virt.0, size) {
            return Err(MapError::NonCanonical { virt, size });
        }
        if phys
            .0
            .checked_add(size)
            .is_none_or(|end| end > PHYS_ADDR_LIMIT)
        {
            return Err(MapError::PhysOutOfRange { phys, size });
        }
        if !attributes.is_permitted() {
            return Err(MapError::NotPermitted { virt, attributes });
        }
        let root_index = self
            .view()
            .table_index(root.phys.0)
            .ok_or(MapError::UnknownTable { table: root.phys })?;
        let needed = self.check(root_index, virt.0, phys.0, size)?;
        let available = self.tables.len() - self.used;
        if needed > available {
            return Err(MapError::OutOfTables { needed, available });
        }
        self.write(root_index, virt.0, phys.0, size, attributes)
    }

    /// Checks that `[virt, virt + size)` is unmapped under the root at
    /// `root_index` and returns how many new tables mapping it to `phys` takes.
    fn check(&self, root_index: usize, virt: u64, phys: u64, size: u64) -> Result<usize, MapError> {
        let view = self.view();
        // The key of the table most recently counted as new at each level:
        // runs come in increasing address order, so one per level suffices.
        let mut pending = [None; LEVELS];
        let mut needed = 0;
        let mut count_new = |run_virt: u64, level: usize| {
            let key = Some(table_key(run_virt, level));
            if pending[level] != key {
                pending[level] = key;
                needed += 1;
            }
        };
        for run in runs(virt, phys, size) {
            let target = run.granule.level();
            // `None` once the walk is inside tables this mapping would create.
            let mut table = Some(root_index);
            for level in 0..target {
                let Some(current) = table else {
                    count_new(run.virt, level + 1);
                    continue;
                };
                let raw = self.tables[current].0[entry_index(run.virt, level)];
                match descriptor::decode(raw, level) {
                    Decoded::Invalid if raw == 0 => {
                        count_new(run.virt, level + 1);
                        table = None;
                    }
                    Decoded::Table(next) => {
                        table = Some(view.table_index(next).ok_or(MapError::UnknownTable {
                            table: PhysAddr(next),
                        })?);
                    }
                    _ => {
                        return Err(MapError::AlreadyMapped {
                            virt: VirtAddr(run.virt),
                        });
                    }
                }
            }
            if let Some(current) = table {
                let first = entry_index(run.virt, target);
                let slots = &self.tables[current].0[first..first + run.count];
                if let Some(taken) = slots.iter().position(|&raw| raw != 0) {
                    return Err(MapError::AlreadyMapped {
                        virt: VirtAddr(run.virt + taken as u64 * run.granule.size()),
                    });
                }
            }
        }
        Ok(needed)
    }

    /// Writes a mapping that [`Self::check`] accepted.
    fn write(
        &mut self,
        root_index: usize,
        virt: u64,
        phys: u64,
        size: u64,
        attributes: MapAttributes,
    ) -> Result<MappingCounts, MapError> {
        let mut counts = MappingCounts::default();
        for run in runs(virt, phys, size) {
            let target = run.granule.level();
            let mut table = root_index;
            for level in 0..target {
                let slot = entry_index(run.virt, level);
                let raw = self.tables[table].0[slot];
                table = match descriptor::decode(raw, level) {
                    Decoded::Table(next) => {
                        self.view()
                            .table_index(next)
                            .ok_or(MapError::UnknownTable {
                                table: PhysAddr(next),
                            })?
                    }
                    Decoded::Invalid if raw == 0 => {
                        let next = self.allocate();
                        self.tables[table].0[slot] = descriptor::table(self.table_phys(next));
                        next
                    }
                    _ => {
                        return Err(MapError::AlreadyMapped {
                            virt: VirtAddr(run.virt),
                        });
                    }
                };
            }
            let first = entry_index(run.virt, target);
            let slots = &mut self.tables[table].0[first..first + run.count];
            let mut output = run.phys;
            for (index, slot) in slots.iter_mut().enumerate() {
                if *slot != 0 {
                    return Err(MapError::AlreadyMapped {
                        virt: VirtAddr(run.virt + index as u64 * run.granule.size()),
                    });
                }
                *slot = descriptor::leaf(output, target, attributes);
                output += run.granule.size();
            }
            counts.add_run(run.granule, run.count);
        }
        Ok(counts)
    }

    /// Hands out the next table, zeroed. The caller has checked that one is free.
    fn allocate(&mut self) -> usize {
        let index = self.used;
        self.tables[index] = PageTable::EMPTY;
        self.used += 1;
        index
    }

    fn table_phys(&self, index: usize) -> u64 {
        self.first_table + index as u64 * PAGE_SIZE
    }

    /// The walker over the tables built so far.
    pub fn view(&self) -> TableView<'_> {
        TableView {
            tables: &self.tables[..self.used],
            first_table: self.first_table,
        }
    }

    /// Ends building; the walker over the finished tables, for as long as
    /// the arena's memory lives.
    pub fn into_view(self) -> TableView<'a> {
        let tables: &'a [PageTable] = self.tables;
        TableView {
            tables: &tables[..self.used],
            first_table: self.first_table,
        }
    }

    /// Walks the tables under `root` for `virt`; see [`TableView::translate`].
    pub fn translate(&self, root: TableRoot, virt: VirtAddr) -> Option<Translation> {
        self.view().translate(root, virt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::MemoryType;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const ARENA_PHYS: u64 = 0x8000_0000;
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;

    fn tables(n: usize) -> Vec<PageTable> {
        alloc::vec![PageTable::EMPTY; n]
    }

    fn arena(tables: &mut [PageTable]) -> TableArena<'_> {
        TableArena::new(tables, PhysAddr(ARENA_PHYS)).unwrap()
    }

    fn counts(blocks_1g: usize, blocks_2m: usize, pages_4k: usize) -> MappingCounts {
        MappingCounts {
            blocks_1g,
            blocks_2m,
            pages_4k,
        }
    }

    /// Asserts that `virt` translates to `phys` with `attributes` through a `granule` descriptor.
    #[track_caller]
    fn assert_maps(
        arena: &TableArena<'_>,
        root: TableRoot,
        virt: u64,
        phys: u64,
        attributes: MapAttributes,
        granule: Granule,
    ) {
        let t = arena
            .translate(root, VirtAddr(virt))
            .unwrap_or_else(|| panic!("{virt:#x} unmapped"));
        assert_eq!(
            (t.phys, t.attributes, t.granule),
            (PhysAddr(phys), attributes, granule),
            "at {virt:#x}"
        );
    }

    #[test]
    fn aligned_gigabyte_is_one_block() {
        let mut t = tables(4);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let virt = 0xffff_0000_4000_0000;
        let c = a
            .map(
                root,
                VirtAddr(virt),
                PhysAddr(GIB),
                GIB,
                MapAttributes::READ_WRITE,
            )
            .unwrap();
        assert_eq!(c, counts(1, 0, 0));
        assert_eq!(a.tables_used(), 2, "root and one level-1 table");
        assert_maps(
            &a,
            root,
            virt,
            GIB,
            MapAttributes::READ_WRITE,
            Granule::Block1G,
        );
        assert_maps(
            &a,
            root,
            virt + GIB - 1,
            2 * GIB - 1,
            MapAttributes::READ_WRITE,
            Granule::Block1G,
        );
        assert_eq!(a.translate(root, VirtAddr(virt - 1)), None);
        assert_eq!(a.translate(root, VirtAddr(virt + GIB)), None);
    }

    #[test]
    fn two_mib_aligned_range_uses_two_mib_blocks() {
        let mut t = tables(4);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let c = a.map(
            root,
            VirtAddr(0xffff_0000_4000_0000),
            PhysAddr(GIB),
            0x3800_0000,
            MapAttributes::READ_WRITE,
        );
        assert_eq!(c.unwrap().to_string(), "1G=0 2M=448 4K=0");
        assert_eq!(a.tables_used(), 3);
        assert_maps(
            &a,
            root,
            0xffff_0000_77ff_ffff,
            0x77ff_ffff,
            MapAttributes::READ_WRITE,
            Granule::Block2M,
        );
        assert_eq!(a.translate(root, VirtAddr(0xffff_0000_7800_0000)), None);
    }

    #[test]
    fn range_starting_and_ending_inside_blocks_uses_pages_then_blocks_then_pages() {
        let mut t = tables(8);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let (start, end) = (GIB + 4 * KIB, 3 * GIB + 2 * MIB + 12 * KIB);
        let c = a
            .map(
                root,
                VirtAddr(start),
                PhysAddr(start),
                end - start,
                MapAttributes::READ_WRITE,
            )
            .unwrap();
        // 511 pages up to 1G+2M, 511 2M blocks up to 2G, one 1G block, one 2M block, 3 pages.
        assert_eq!(c, counts(1, 512, 514));
        assert_eq!(c.bytes(), end - start);
        let rw = MapAttributes::READ_WRITE;
        assert_eq!(a.translate(root, VirtAddr(start - 1)), None);
        assert_maps(&a, root, start, start, rw, Granule::Page4K);
        assert_maps(
            &a,
            root,
            GIB + 2 * MIB - 1,
            GIB + 2 * MIB - 1,
            rw,
            Granule::Page4K,
        );
        assert_maps(&a, root, GIB + 2 * MIB, GIB + 2 * MIB, rw, Granule::Block2M);
        assert_maps(&a, root, 2 * GIB - 1, 2 * GIB - 1, rw, Granule::Block2M);
        assert_maps(&a, root, 2 * GIB, 2 * GIB, rw, Granule::Block1G);
        assert_maps(&a, root, 3 * GIB, 3 * GIB, rw, Granule::Block2M);
        assert_maps(
            &a,
            root,
            3 * GIB + 2 * MIB,
            3 * GIB + 2 * MIB,
            rw,
            Granule::Page4K,
        );
        assert_maps(&a, root, end - 1, end - 1, rw, Granule::Page4K);
        assert_eq!(a.translate(root, VirtAddr(end)), None);
        // Root, L1, L2 for 1G..2G, L3 at 1G, L2 for 3G..4G, L3 at 3G+2M.
        assert_eq!(a.tables_used(), 6);
        assert_eq!(a.view().mapping_counts(root), c);
    }

    #[test]
    fn virtual_and_physical_addresses_not_congruent_use_pages() {
        let mut t = tables(8);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let c = a
            .map(
                root,
                VirtAddr(0x20_0000),
                PhysAddr(0x4000_1000),
                4 * MIB,
                MapAttributes::DEVICE,
            )
            .unwrap();
        assert_eq!(c, counts(0, 0, 1024));
        assert_maps(
            &a,
            root,
            0x20_0000,
            0x4000_1000,
            MapAttributes::DEVICE,
            Granule::Page4K,
        );
        assert_maps(
            &a,
            root,
            0x5f_ffff,
            0x4040_0fff,
            MapAttributes::DEVICE,
            Granule::Page4K,
        );
    }

    #[test]
    fn guard_page_between_mappings_stays_unmapped() {
        let mut t = tables(8);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let (data_end, stack) = (0x4018_0000, 0x4018_1000);
        a.map(
            root,
            VirtAddr(0x4010_0000),
            PhysAddr(0x4010_0000),
            data_end - 0x4010_0000,
            MapAttributes::READ_WRITE,
        )
        .unwrap();
        a.map(
            root,
            VirtAddr(stack),
            PhysAddr(stack),
            64 * KIB,
            MapAttributes::READ_WRITE,
        )
        .unwrap();
        assert_maps(
            &a,
            root,
            data_end - 1,
            data_end - 1,
            MapAttributes::READ_WRITE,
            Granule::Page4K,
        );
        for byte in [data_end, data_end + 0x800, stack - 1] {
            assert_eq!(
                a.translate(root, VirtAddr(byte)),
                None,
                "guard byte {byte:#x}"
            );
        }
        assert_maps(
            &a,
            root,
            stack,
            stack,
            MapAttributes::READ_WRITE,
            Granule::Page4K,
        );
    }

    #[test]
    fn arena_exhaustion_is_an_error_that_changes_nothing() {
        let mut t = tables(3);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let err = a
            .map(
                root,
                VirtAddr(0x1000),
                PhysAddr(0x1000),
                PAGE_SIZE,
                MapAttributes::READ_WRITE,
            )
            .unwrap_err();
        assert_eq!(
            err,
            MapError::OutOfTables {
                needed: 3,
                available: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "out of translation tables: 3 needed, 2 free"
        );
        assert_eq!(a.tables_used(), 1);
        assert_eq!(a.view().mapping_counts(root), MappingCounts::default());
        // A 1 GiB block needs only a level-1 table, which fits.
        a.map(
            root,
            VirtAddr(GIB),
            PhysAddr(GIB),
            GIB,
            MapAttributes::READ_WRITE,
        )
        .unwrap();
        a.new_root().unwrap();
        assert_eq!(
            a.new_root().unwrap_err(),
            MapError::OutOfTables {
                needed: 1,
                available: 0
            }
        );
    }

    #[test]
    fn mapping_over_a_mapping_is_refused_and_changes_nothing() {
        let mut t = tables(8);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let rw = MapAttributes::READ_WRITE;
        a.map(
            root,
            VirtAddr(0x4000_3000),
            PhysAddr(0x4000_3000),
            PAGE_SIZE,
            rw,
        )
        .unwrap();
        let used = a.tables_used();
        // Same mapping again, a different one over it, and a block over its table.
        for (virt, size, conflict) in [
            (0x4000_3000, PAGE_SIZE, 0x4000_3000),
            (0x4000_0000, 0x10_0000, 0x4000_3000),
            (0x4000_0000, 2 * MIB, 0x4000_0000),
            (0x4000_0000, GIB, 0x4000_0000),
        ] {
            let err = a.map(
                root,
                VirtAddr(virt),
                PhysAddr(0x9000_0000 + (virt & (GIB - 1))),
                size,
                rw,
            );
            assert_eq!(
                err,
                Err(MapError::AlreadyMapped {
                    virt: VirtAddr(conflict)
                }),
                "{virt:#x}+{size:#x}"
            );
        }
        // The head of the refused ranges was not mapped, and no table was added.
        assert_eq!(a.translate(root, VirtAddr(0x4000_0000)), None);
        assert_eq!(a.tables_used(), used);
        assert_eq!(a.view().mapping_counts(root), counts(0, 0, 1));
    }

    #[test]
    fn pages_inside_a_block_are_refused_rather_than_splitting_it() {
        let mut t = tables(8);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        a.map(
            root,
            VirtAddr(0x4000_0000),
            PhysAddr(0x4000_0000),
            2 * MIB,
            MapAttributes::READ_WRITE,
        )
        .unwrap();
        let err = a.map(
            root,
            VirtAddr(0x4000_1000),
            PhysAddr(0x4000_1000),
            PAGE_SIZE,
            MapAttributes::READ_ONLY,
        );
        assert_eq!(
            err,
            Err(MapError::AlreadyMapped {
                virt: VirtAddr(0x4000_1000)
            })
        );
        assert_maps(
            &a,
            root,
            0x4000_1000,
            0x4000_1000,
            MapAttributes::READ_WRITE,
            Granule::Block2M,
        );
        // Also refused when the block is met above the target level.
        a.map(
            root,
            VirtAddr(2 * GIB),
            PhysAddr(2 * GIB),
            GIB,
            MapAttributes::READ_WRITE,
        )
        .unwrap();
        let err = a.map(
            root,
            VirtAddr(2 * GIB + 2 * MIB),
            PhysAddr(0),
            2 * MIB,
            MapAttributes::READ_WRITE,
        );
        assert_eq!(
            err,
            Err(MapError::AlreadyMapped {
                virt: VirtAddr(2 * GIB + 2 * MIB)
            })
        );
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        let mut t = tables(8);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let rw = MapAttributes::READ_WRITE;
        let misaligned = a.map(root, VirtAddr(0x1000), PhysAddr(0x1800), PAGE_SIZE, rw);
        assert_eq!(
            misaligned,
            Err(MapError::Misaligned {
                virt: VirtAddr(0x1000),
                phys: PhysAddr(0x1800),
                size: PAGE_SIZE
            })
        );
        assert!(matches!(
            a.map(root, VirtAddr(0x1000), PhysAddr(0x1000), 0x800, rw),
            Err(MapError::Misaligned { .. })
        ));
        let crossing = a.map(
            root,
            VirtAddr(LOWER_HALF_END - PAGE_SIZE),
            PhysAddr(0),
            2 * PAGE_SIZE,
            rw,
        );
        assert_eq!(
            crossing,
            Err(MapError::NonCanonical {
                virt: VirtAddr(LOWER_HALF_END - PAGE_SIZE),
                size: 0x2000
            })
        );
        let hole = a.map(
            root,
            VirtAddr(0x8000_0000_0000_0000),
            PhysAddr(0),
            PAGE_SIZE,
            rw,
        );
        assert!(matches!(hole, Err(MapError::NonCanonical { .. })));
        let high = a.map(
            root,
            VirtAddr(0x1000),
            PhysAddr(PHYS_ADDR_LIMIT - PAGE_SIZE),
            2 * PAGE_SIZE,
            rw,
        );
        assert!(matches!(high, Err(MapError::PhysOutOfRange { .. })));
        let wx = MapAttributes {
            writable: true,
            ..MapAttributes::TEXT
        };
        assert_eq!(
            a.map(root, VirtAddr(0x1000), PhysAddr(0x1000), PAGE_SIZE, wx),
            Err(MapError::NotPermitted {
                virt: VirtAddr(0x1000),
                attributes: wx
            })
        );
        let device_code = MapAttributes {
            memory: MemoryType::Device,
            ..MapAttributes::TEXT
        };
        assert!(matches!(
            a.map(
                root,
                VirtAddr(0x1000),
                PhysAddr(0x1000),
                PAGE_SIZE,
                device_code
            ),
            Err(MapError::NotPermitted { .. })
        ));
        assert_eq!(
            a.map(root, VirtAddr(0x1000), PhysAddr(0x1000), 0, rw),
            Ok(MappingCounts::default())
        );
        let foreign = TableRoot {
            phys: PhysAddr(0x1234_5000),
        };
        assert_eq!(
            a.map(foreign, VirtAddr(0x1000), PhysAddr(0x1000), PAGE_SIZE, rw),
            Err(MapError::UnknownTable {
                table: PhysAddr(0x1234_5000)
            })
        );
        assert_eq!(
            a.tables_used(),
            1,
            "nothing was built by any refused request"
        );
    }

    #[test]
    fn arena_must_be_aligned_and_addressable() {
        let mut t = tables(2);
        assert_eq!(
            TableArena::new(&mut t, PhysAddr(0x8000_0800)).err(),
            Some(MapError::InvalidArena {
                first_table: PhysAddr(0x8000_0800),
                tables: 2
            })
        );
        assert!(TableArena::new(&mut t, PhysAddr(PHYS_ADDR_LIMIT - PAGE_SIZE)).is_err());
        assert!(TableArena::new(&mut t, PhysAddr(PHYS_ADDR_LIMIT - 2 * PAGE_SIZE)).is_ok());
    }

    #[test]
    fn tables_are_linked_by_physical_address_and_zeroed_when_handed_out() {
        let mut t = alloc::vec![PageTable([0xdead_beef; ENTRIES_PER_TABLE]); 4];
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        assert_eq!(root.phys(), PhysAddr(ARENA_PHYS));
        a.map(
            root,
            VirtAddr(0x4000_0000),
            PhysAddr(0x4000_0000),
            2 * MIB,
            MapAttributes::READ_WRITE,
        )
        .unwrap();
        let view = a.into_view();
        assert_eq!(view.mapping_counts(root), counts(0, 1, 0));
        assert_eq!(view.translate(root, VirtAddr(0x4020_0000)), None);
        // Level-0 entry 0 points at the second table, level-1 entry 1 at the third.
        assert_eq!(t[0].0[0], descriptor::table(ARENA_PHYS + PAGE_SIZE));
        assert_eq!(t[1].0[1], descriptor::table(ARENA_PHYS + 2 * PAGE_SIZE));
        assert_eq!(t[0].0[1], 0);
        assert_eq!(
            t[3].0[0], 0xdead_beef,
            "a table never handed out is untouched"
        );
    }

    #[test]
    fn last_page_of_each_half_can_be_mapped() {
        let mut t = tables(8);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let top = u64::MAX - PAGE_SIZE + 1;
        a.map(
            root,
            VirtAddr(top),
            PhysAddr(0x5000),
            PAGE_SIZE,
            MapAttributes::DEVICE,
        )
        .unwrap();
        assert_maps(
            &a,
            root,
            u64::MAX,
            0x5fff,
            MapAttributes::DEVICE,
            Granule::Page4K,
        );
        let low_top = LOWER_HALF_END - PAGE_SIZE;
        let root0 = a.new_root().unwrap();
        a.map(
            root0,
            VirtAddr(low_top),
            PhysAddr(0x6000),
            PAGE_SIZE,
            MapAttributes::READ_ONLY,
        )
        .unwrap();
        assert_maps(
            &a,
            root0,
            LOWER_HALF_END - 1,
            0x6fff,
            MapAttributes::READ_ONLY,
            Granule::Page4K,
        );
        assert_eq!(
            a.translate(root0, VirtAddr(LOWER_HALF_END)),
            None,
            "non-canonical"
        );
    }

    const ATTRIBUTES: [MapAttributes; 5] = [
        MapAttributes::TEXT,
        MapAttributes::READ_ONLY,
        MapAttributes::READ_WRITE,
        MapAttributes::DEVICE,
        MapAttributes::NON_CACHEABLE,
    ];

    /// Sorted disjoint ranges `(virt, phys, size, attributes)` from
    /// (gap, length - 1, unit, attribute) tuples, where the unit is 4 KiB,
    /// 2 MiB or 1 GiB, laid out upward from physical `base`; each virtual
    /// address is its physical address plus `offset`.
    fn ranges_from(
        spec: &[(u64, u64, usize, usize)],
        offset: u64,
        base: u64,
    ) -> Vec<(u64, u64, u64, MapAttributes)> {
        let units = [PAGE_SIZE, 2 * MIB, GIB];
        let mut cursor = base;
        spec.iter()
            .map(|&(gap, len, unit, attr)| {
                let start = cursor + gap * units[unit];
                let size = (len + 1) * units[unit];
                cursor = start + size;
                (start + offset, start, size, ATTRIBUTES[attr])
            })
            .collect()
    }

    fn check_ranges(
        ranges: &[(u64, u64, u64, MapAttributes)],
        probes: &[u64],
    ) -> Result<(), TestCaseError> {
        let mut t = tables(256);
        let mut a = arena(&mut t);
        let root = a.new_root().unwrap();
        let mut total = MappingCounts::default();
        for &(virt, phys, size, attributes) in ranges {
            let c = a
                .map(root, VirtAddr(virt), PhysAddr(phys), size, attributes)
                .unwrap();
            prop_assert_eq!(c.bytes(), size);
            prop_assert_eq!(c, run_counts(virt, phys, size));
            total += c;
        }
        prop_assert_eq!(a.view().mapping_counts(root), total);
        for &virt in probes {
            let expected = ranges
                .iter()
                .find(|&&(v, _, size, _)| virt >= v && virt - v < size)
                .map(|&(v, p, _, attributes)| (PhysAddr(p + (virt - v)), attributes));
            let got = a
                .translate(root, VirtAddr(virt))
                .map(|t| (t.phys, t.attributes));
            prop_assert_eq!(got, expected, "at {:#x}", virt);
        }
        Ok(())
    }

    /// The descriptors of a mapping one at a time, each the largest
    /// granule the addresses and the remaining size allow: what [`runs`]
    /// must group, table by table.
    fn one_at_a_time(virt: u64, phys: u64, size: u64) -> Vec<(u64, u64, Granule)> {
        let (mut virt, mut phys, mut remaining) = (virt, phys, size);
        let mut out = Vec::new();
        while remaining >= PAGE_SIZE {
            let granule = [Granule::Block1G, Granule::Block2M, Granule::Page4K]
                .into_iter()
                .find(|g| virt % g.size() == 0 && phys % g.size() == 0 && remaining >= g.size())
                .unwrap();
            out.push((virt, phys, granule));
            virt += granule.size();
            phys += granule.size();
            remaining -= granule.size();
        }
        out
    }

    proptest! {
        // Each case expands up to a million descriptors one at a time.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Runs are the step-by-step descriptors, grouped: each run stays
        /// in one table, and consecutive runs of one granule meet only at a
        /// table boundary.
        #[test]
        fn runs_group_the_largest_granule_descriptors_by_table(
            virt_pages in 0u64..(1 << 20),
            phys_delta_pages in prop_oneof![Just(0u64), Just(512), Just(1 << 18), 0u64..(1 << 20)],
            size_pages in 0u64..(1 << 20),
        ) {
            let virt = 0xffff_0000_0000_0000 + virt_pages * PAGE_SIZE;
            let phys = (virt_pages + phys_delta_pages) * PAGE_SIZE;
            let size = size_pages * PAGE_SIZE;
            let runs: Vec<Run> = runs(virt, phys, size).collect();
            let expanded: Vec<(u64, u64, Granule)> = runs
                .iter()
                .flat_map(|r| (0..r.count as u64).map(move |i| {
                    (r.virt + i * r.granule.size(), r.phys + i * r.granule.size(), r.granule)
                }))
                .collect();
            prop_assert_eq!(expanded, one_at_a_time(virt, phys, size));
            for run in &runs {
                prop_assert!(run.count > 0);
                let level = run.granule.level();
                let last = run.virt + (run.count as u64 - 1) * run.granule.size();
                prop_assert_eq!(table_key(run.virt, level), table_key(last, level));
            }
            for pair in runs.windows(2) {
                if pair[0].granule == pair[1].granule {
                    prop_assert_eq!(entry_index(pair[1].virt, pair[1].granule.level()), 0);
                }
            }
        }
    }

    proptest! {
        /// In a 32 MiB space, every page: inside a range it translates to the
        /// right address with the right attributes, outside to nothing.
        #[test]
        fn every_page_of_small_ranges(
            spec in prop::collection::vec((0u64..4, 0u64..300, 0usize..2, 0usize..5), 1..6),
            offset_pages in 0u64..4,
            offset_blocks in 0u64..4,
        ) {
            let spec: Vec<_> = spec.into_iter().map(|(g, l, u, a)| (g, if u == 1 { l % 3 } else { l }, u, a)).collect();
            let offset = 0xffff_0000_0000_0000 + offset_blocks * 2 * MIB + offset_pages * PAGE_SIZE;
            let ranges = ranges_from(&spec, offset, 0x4000_0000);
            let end = ranges.last().map_or(0, |r| r.0 + r.2);
            let probes: Vec<u64> = (offset + 0x4000_0000 - 4 * PAGE_SIZE..end + 4 * PAGE_SIZE)
                .step_by(PAGE_SIZE as usize)
                .flat_map(|p| [p, p + PAGE_SIZE - 1])
                .collect();
            check_ranges(&ranges, &probes)?;
        }

        /// Over many GiB (1 GiB blocks included), with virtual and physical
        /// addresses congruent modulo 2 MiB or 1 GiB (incongruent ones are
        /// all pages, covered above): every range's first and last byte and
        /// the bytes around them, every 2 MiB boundary's neighbours, and
        /// random bytes.
        #[test]
        fn boundaries_of_large_ranges(
            spec in prop::collection::vec((0u64..3, 0u64..3, 0usize..3, 0usize..5), 1..8),
            offset_is_gib in any::<bool>(),
            random in prop::collection::vec(0u64..(40 * GIB), 64),
        ) {
            let offset = if offset_is_gib { 3 * GIB } else { 2 * MIB };
            let ranges = ranges_from(&spec, offset, GIB);
            let mut probes: Vec<u64> = random.iter().map(|r| r + offset).collect();
            for &(virt, _, size, _) in &ranges {
                for edge in [virt, virt + size] {
                    probes.extend([edge - 1, edge, edge + PAGE_SIZE - 1, edge.wrapping_sub(PAGE_SIZE)]);
                }
                let first_block = (virt + 2 * MIB - 1) & !(2 * MIB - 1);
                probes.extend((first_block..virt + size).step_by(2 * MIB as usize).flat_map(|b| [b - 1, b]));
            }
            check_ranges(&ranges, &probes)?;
        }
    }
}
