//! A page-granular allocator over one physical range.
//!
//! Two bitmaps, both allocated once when the allocator is built: which pages
//! are in use, and which pages start an allocation. Allocating and freeing
//! never touch the heap (they run on the I/O path). Free pages coalesce by
//! construction: a free run is just a run of clear bits. The start bits let a
//! free check that it names exactly one whole allocation, so a double free, a
//! free of a range inside an allocation or of the wrong size, or a foreign
//! range is refused instead of corrupting the map.

use alloc::boxed::Box;
use alloc::vec;

use tidepool_mm::{PAGE_SIZE, PhysAddr, PhysRange};

/// A fixed-size bit set.
struct Bitmap {
    words: Box<[u64]>,
    bits: usize,
}

impl Bitmap {
    fn new(bits: usize) -> Self {
        Self {
            words: vec![0; bits.div_ceil(64)].into_boxed_slice(),
            bits,
        }
    }

    fn get(&self, bit: usize) -> bool {
        self.words[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Sets (`value`) or clears every bit of `[start, end)`.
    fn assign_range(&mut self, start: usize, end: usize, value: bool) {
        let mut bit = start;
        while bit < end {
            let offset = bit % 64;
            let count = (64 - offset).min(end - bit);
            let mask = if count == 64 {
                u64::MAX
            } else {
                ((1u64 << count) - 1) << offset
            };
            let word = &mut self.words[bit / 64];
            if value {
                *word |= mask;
            } else {
                *word &= !mask;
            }
            bit += count;
        }
    }

    /// The first bit equal to `value` in `[start, end)`.
    fn find(&self, start: usize, end: usize, value: bool) -> Option<usize> {
        let end = end.min(self.bits);
        let mut bit = start;
        while bit < end {
            let word = if value {
                self.words[bit / 64]
            } else {
                !self.words[bit / 64]
            };
            let remaining = word >> (bit % 64);
            if remaining != 0 {
                let found = bit + remaining.trailing_zeros() as usize;
                return (found < end).then_some(found);
            }
            bit = (bit / 64 + 1) * 64;
        }
        None
    }
}

/// Why an allocation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AllocFailure {
    /// A size of zero.
    ZeroSize,
    /// An alignment that is not a power of two.
    BadAlignment,
    /// Larger than the whole range.
    TooLarge,
    /// No free run that fits; `largest_free` bytes is the longest there is.
    Exhausted { largest_free: u64 },
}

/// Why a free was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FreeFault {
    /// The range is not inside the pool or not page-aligned.
    OutsidePool,
    /// The range's first page is free: a double free.
    NotAllocated,
    /// The range is allocated but is not exactly one allocation (it starts
    /// inside one, or its size differs).
    NotAnAllocation,
}

/// Page allocator over one page-aligned physical range.
pub(crate) struct PageAllocator {
    base: PhysAddr,
    pages: usize,
    used: Bitmap,
    starts: Bitmap,
    used_pages: usize,
}

impl PageAllocator {
    /// An allocator with every page of `range` free. `range` must be
    /// page-aligned and non-empty (the pool checks it).
    pub(crate) fn new(range: PhysRange) -> Self {
        let pages = usize::try_from(range.size / PAGE_SIZE).unwrap_or(usize::MAX);
        Self {
            base: range.base,
            pages,
            used: Bitmap::new(pages),
            starts: Bitmap::new(pages),
            used_pages: 0,
        }
    }

    /// Pages in use and in all.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.used_pages, self.pages)
    }

    fn page_bytes(pages: usize) -> u64 {
        pages as u64 * PAGE_SIZE
    }

    /// Length in bytes of the longest run of free pages.
    pub(crate) fn largest_free(&self) -> u64 {
        let mut longest = 0;
        let mut page = 0;
        while let Some(start) = self.used.find(page, self.pages, false) {
            let end = self
                .used
                .find(start, self.pages, true)
                .unwrap_or(self.pages);
            longest = longest.max(end - start);
            page = end;
        }
        Self::page_bytes(longest)
    }

    /// Allocates `size` bytes (rounded up to whole pages) at a physical
    /// address that is a multiple of `align` (a power of two; at least a
    /// page). Finds the lowest fitting run. On failure nothing changes.
    pub(crate) fn alloc(&mut self, size: u64, align: u64) -> Result<PhysRange, AllocFailure> {
        if size == 0 {
            return Err(AllocFailure::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(AllocFailure::BadAlignment);
        }
        if size > Self::page_bytes(self.pages) {
            return Err(AllocFailure::TooLarge);
        }
        let count = size.div_ceil(PAGE_SIZE) as usize;
        let Some(start) = self.find_free_run(count, align.max(PAGE_SIZE)) else {
            return Err(AllocFailure::Exhausted {
                largest_free: self.largest_free(),
            });
        };
        self.used.assign_range(start, start + count, true);
        self.starts.assign_range(start, start + 1, true);
        self.used_pages += count;
        Ok(PhysRange::new(
            self.base.0 + Self::page_bytes(start),
            Self::page_bytes(count),
        ))
    }

    /// The lowest page starting `count` free pages at a physical address
    /// that is a multiple of `align` (a power of two, at least a page).
    fn find_free_run(&self, count: usize, align: u64) -> Option<usize> {
        let first_aligned = self.base.checked_align_up(align)?;
        let first = usize::try_from((first_aligned.0 - self.base.0) / PAGE_SIZE).ok()?;
        let step = usize::try_from(align / PAGE_SIZE).ok()?;
        let mut start = first;
        while start.checked_add(count)? <= self.pages {
            match self.used.find(start, start + count, true) {
                None => return Some(start),
                // The next candidate is the first aligned page after the used one.
                Some(used) => {
                    start = ((used - first) / step + 1)
                        .checked_mul(step)?
                        .checked_add(first)?
                }
            }
        }
        None
    }

    /// The first page and page count of the allocation `range` names exactly.
    fn allocation_at(&self, range: PhysRange) -> Result<(usize, usize), FreeFault> {
        let end = self.base.0 + Self::page_bytes(self.pages);
        if range.base.0 < self.base.0
            || range.end() > end
            || range.size == 0
            || !range.base.is_aligned(PAGE_SIZE)
        {
            return Err(FreeFault::OutsidePool);
        }
        let first = ((range.base.0 - self.base.0) / PAGE_SIZE) as usize;
        let count = range.size.div_ceil(PAGE_SIZE) as usize;
        if !self.used.get(first) {
            return Err(FreeFault::NotAllocated);
        }
        if !self.starts.get(first) {
            return Err(FreeFault::NotAnAllocation);
        }
        let next_start = self
            .starts
            .find(first + 1, self.pages, true)
            .unwrap_or(self.pages);
        let next_free = self
            .used
            .find(first + 1, self.pages, false)
            .unwrap_or(self.pages);
        if next_start.min(next_free) - first != count {
            return Err(FreeFault::NotAnAllocation);
        }
        Ok((first, count))
    }

    /// Whether `range` is exactly one live allocation.
    pub(crate) fn is_allocation(&self, range: PhysRange) -> bool {
        self.allocation_at(range).is_ok()
    }

    /// Frees the allocation `range` names (as [`Self::alloc`] returned it, or
    /// with the size the caller asked for). On failure nothing changes.
    pub(crate) fn free(&mut self, range: PhysRange) -> Result<(), FreeFault> {
        let (first, count) = self.allocation_at(range)?;
        self.used.assign_range(first, first + count, false);
        self.starts.assign_range(first, first + 1, false);
        self.used_pages -= count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const BASE: u64 = 0x7800_0000;

    #[test]
    fn bitmap_ranges_across_words() {
        let mut map = Bitmap::new(200);
        map.assign_range(60, 130, true);
        assert!(!map.get(59) && map.get(60) && map.get(129) && !map.get(130));
        assert_eq!(map.find(0, 200, true), Some(60));
        assert_eq!(map.find(60, 200, false), Some(130));
        assert_eq!(map.find(131, 200, true), None);
        map.assign_range(64, 128, false);
        assert_eq!(map.find(61, 200, false), Some(64));
        assert_eq!(map.find(64, 200, true), Some(128));
        assert_eq!(map.find(190, 200, false), Some(190));
        map.assign_range(0, 200, true);
        assert_eq!(map.find(0, 200, false), None);
    }

    #[test]
    fn alignment_is_of_the_physical_address() {
        // A base that is only page-aligned: a 16 KiB-aligned block must skip ahead.
        let mut pool = PageAllocator::new(PhysRange::new(BASE + 0x1000, 0x10_000));
        let block = pool.alloc(0x1000, 0x4000).unwrap();
        assert_eq!(block, PhysRange::new(BASE + 0x4000, 0x1000));
        assert_eq!(pool.usage(), (1, 16));
    }

    #[test]
    fn exhaustion_changes_nothing_and_reports_the_largest_free_run() {
        let mut pool = PageAllocator::new(PhysRange::new(BASE, 0x8000));
        let a = pool.alloc(0x3000, 1).unwrap();
        let _b = pool.alloc(0x1000, 1).unwrap();
        pool.free(a).unwrap();
        assert_eq!(
            pool.alloc(0x5000, 1),
            Err(AllocFailure::Exhausted {
                largest_free: 0x4000
            })
        );
        assert_eq!(pool.usage(), (1, 8));
        assert_eq!(pool.alloc(0x9000, 1), Err(AllocFailure::TooLarge));
        assert_eq!(pool.alloc(0, 1), Err(AllocFailure::ZeroSize));
        assert_eq!(pool.alloc(0x1000, 3), Err(AllocFailure::BadAlignment));
        assert_eq!(pool.usage(), (1, 8));
    }

    #[test]
    fn bad_frees_are_refused_without_damage() {
        let mut pool = PageAllocator::new(PhysRange::new(BASE, 0x8000));
        let a = pool.alloc(0x2000, 1).unwrap();
        let b = pool.alloc(0x2000, 1).unwrap();
        assert_eq!(
            pool.free(PhysRange::new(BASE - 0x1000, 0x1000)),
            Err(FreeFault::OutsidePool)
        );
        assert_eq!(
            pool.free(PhysRange::new(BASE + 0x10, 0x1000)),
            Err(FreeFault::OutsidePool)
        );
        assert_eq!(
            pool.free(PhysRange::new(BASE + 0x1000, 0x1000)),
            Err(FreeFault::NotAnAllocation)
        );
        assert_eq!(
            pool.free(PhysRange::new(a.base.0, 0x1000)),
            Err(FreeFault::NotAnAllocation)
        );
        assert_eq!(
            pool.free(PhysRange::new(a.base.0, 0x4000)),
            Err(FreeFault::NotAnAllocation)
        );
        assert_eq!(
            pool.free(PhysRange::new(BASE + 0x6000, 0x1000)),
            Err(FreeFault::NotAllocated)
        );
        assert_eq!(pool.usage(), (4, 8));
        pool.free(a).unwrap();
        assert_eq!(pool.free(a), Err(FreeFault::NotAllocated));
        assert!(pool.is_allocation(b));
        // A size the caller asked for frees the page-rounded allocation.
        pool.free(PhysRange::new(b.base.0, 0x1801)).unwrap();
        assert_eq!(pool.usage(), (0, 8));
        assert_eq!(pool.largest_free(), 0x8000);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc { size: u64, align_shift: u32 },
        Free { pick: usize },
        DoubleFree { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..0x9000, 0u32..20).prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
            2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
            1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        ]
    }

    /// Whether a free, aligned run of `count` pages exists given the live blocks.
    fn model_fits(base: u64, pages: u64, live: &[PhysRange], count: u64, align: u64) -> bool {
        (0..pages).any(|p| {
            let start = base + p * PAGE_SIZE;
            let candidate = PhysRange::new(start, count * PAGE_SIZE);
            start.is_multiple_of(align)
                && p + count <= pages
                && live.iter().all(|b| !b.overlaps(&candidate))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_alloc_free_sequences(
            base_page in 0u64..16,
            pages in 1u64..48,
            ops in proptest::collection::vec(op(), 1..64),
        ) {
            let base = BASE + base_page * PAGE_SIZE;
            let range = PhysRange::new(base, pages * PAGE_SIZE);
            let mut pool = PageAllocator::new(range);
            let mut live: Vec<PhysRange> = Vec::new();
            let mut freed: Vec<PhysRange> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc { size, align_shift } => {
                        let align = 1u64 << align_shift;
                        let before = pool.usage();
                        match pool.alloc(size, align) {
                            Ok(block) => {
                                prop_assert!(block.size >= size && block.size - size < PAGE_SIZE);
                                prop_assert!(block.base.is_aligned(align.max(PAGE_SIZE)));
                                prop_assert!(block.base.0 >= base && block.end() <= range.end());
                                prop_assert!(live.iter().all(|b| !b.overlaps(&block)));
                                freed.retain(|f| !f.overlaps(&block));
                                live.push(block);
                            }
                            Err(failure) => {
                                prop_assert_eq!(pool.usage(), before);
                                let count = size.div_ceil(PAGE_SIZE);
                                if count > pages {
                                    prop_assert_eq!(failure, AllocFailure::TooLarge);
                                } else {
                                    prop_assert!(matches!(failure, AllocFailure::Exhausted { .. }), "{:?}", failure);
                                    prop_assert!(!model_fits(base, pages, &live, count, align.max(PAGE_SIZE)));
                                }
                            }
                        }
                    }
                    Op::Free { pick } if !live.is_empty() => {
                        let block = live.swap_remove(pick % live.len());
                        prop_assert_eq!(pool.free(block), Ok(()));
                        freed.push(block);
                    }
                    Op::DoubleFree { pick } if !freed.is_empty() => {
                        let block = freed[pick % freed.len()];
                        let before = pool.usage();
                        prop_assert!(pool.free(block).is_err());
                        prop_assert_eq!(pool.usage(), before);
                    }
                    Op::Free { .. } | Op::DoubleFree { .. } => {}
                }
                let used: u64 = live.iter().map(|b| b.size / PAGE_SIZE).sum();
                prop_assert_eq!(pool.usage(), (used as usize, pages as usize));
            }
            for block in live.drain(..) {
                prop_assert_eq!(pool.free(block), Ok(()));
            }
            prop_assert_eq!(pool.usage(), (0, pages as usize));
            prop_assert_eq!(pool.largest_free(), pages * PAGE_SIZE);
            let whole = pool.alloc(pages * PAGE_SIZE, 1);
            prop_assert_eq!(whole, Ok(range));
        }
    }
}
