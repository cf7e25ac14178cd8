//! Physical address ranges, exact to the byte, and the set operations the
//! memory plan is made of (sort and merge, subtract, intersect, fit).

use alloc::vec::Vec;
use core::fmt;

/// A half-open physical address range `[base, base + size)`.
///
/// Invariant: `base + size` does not overflow a `u64`, so [`AddrRange::end`]
/// is always representable. A range may be empty (`size == 0`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AddrRange {
    base: u64,
    size: u64,
}

impl AddrRange {
    /// The range `[base, base + size)`, or `None` if it would run past the
    /// end of the 64-bit address space.
    pub const fn new(base: u64, size: u64) -> Option<Self> {
        match base.checked_add(size) {
            Some(_) => Some(Self { base, size }),
            None => None,
        }
    }

    /// The range `[base, end)`, or `None` if `end < base`.
    pub const fn from_bounds(base: u64, end: u64) -> Option<Self> {
        match end.checked_sub(base) {
            Some(size) => Some(Self { base, size }),
            None => None,
        }
    }

    /// First byte of the range.
    pub const fn base(self) -> u64 {
        self.base
    }

    /// Length in bytes.
    pub const fn size(self) -> u64 {
        self.size
    }

    /// First byte after the range.
    pub const fn end(self) -> u64 {
        self.base + self.size
    }

    /// Whether the range holds no byte.
    pub const fn is_empty(self) -> bool {
        self.size == 0
    }

    /// Whether every byte of `other` is in `self` (an empty `other` is
    /// contained in any range that contains its base).
    pub const fn contains(self, other: AddrRange) -> bool {
        self.base <= other.base && other.end() <= self.end()
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(self, other: AddrRange) -> bool {
        !self.is_empty() && !other.is_empty() && self.base < other.end() && other.base < self.end()
    }

    /// The bytes the two ranges share, if any.
    pub fn intersection(self, other: AddrRange) -> Option<AddrRange> {
        let base = self.base.max(other.base);
        let end = self.end().min(other.end());
        (base < end).then(|| AddrRange {
            base,
            size: end - base,
        })
    }
}

impl fmt::Debug for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.base, self.end())
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} size={:#x}", self.base, self.size)
    }
}

/// Sorts `ranges` by base, drops empty ones and merges those that overlap or
/// touch, so that the result is sorted, disjoint and non-adjacent.
pub(crate) fn normalize(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_unstable();
    let mut merged: Vec<AddrRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.base <= last.end() => {
                let end = last.end().max(range.end());
                last.size = end - last.base;
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// `from` minus `holes`; both must be normalized, and so is the result.
pub(crate) fn subtract(from: &[AddrRange], holes: &[AddrRange]) -> Vec<AddrRange> {
    let mut result = Vec::with_capacity(from.len());
    let mut first_hole = 0;
    for &range in from {
        // Holes ending at or before this range cannot touch it or any later one.
        while holes.get(first_hole).is_some_and(|h| h.end() <= range.base) {
            first_hole += 1;
        }
        let mut cursor = range.base;
        for hole in holes[first_hole..]
            .iter()
            .take_while(|h| h.base < range.end())
        {
            if hole.base > cursor {
                result.push(AddrRange {
                    base: cursor,
                    size: hole.base - cursor,
                });
            }
            cursor = cursor.max(hole.end());
        }
        if cursor < range.end() {
            result.push(AddrRange {
                base: cursor,
                size: range.end() - cursor,
            });
        }
    }
    result
}

/// The parts of the normalized `ranges` that lie inside `window`.
pub(crate) fn clip(ranges: &[AddrRange], window: AddrRange) -> Vec<AddrRange> {
    ranges
        .iter()
        .filter_map(|r| r.intersection(window))
        .collect()
}

/// The highest base, aligned to `alignment` (a power of two), at which `size`
/// bytes fit entirely inside one of the sorted `free` ranges.
pub(crate) fn highest_fit(free: &[AddrRange], size: u64, alignment: u64) -> Option<u64> {
    free.iter().rev().find_map(|r| {
        let top = r.end().checked_sub(size)?;
        let base = top & !(alignment - 1);
        (base >= r.base).then_some(base)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn r(base: u64, size: u64) -> AddrRange {
        AddrRange::new(base, size).unwrap()
    }

    #[test]
    fn new_rejects_wrapping_ranges() {
        assert!(AddrRange::new(u64::MAX, 1).is_none());
        assert!(AddrRange::new(u64::MAX - 0xfff, 0x1000).is_none());
        assert_eq!(
            AddrRange::new(u64::MAX - 0xfff, 0xfff).unwrap().end(),
            u64::MAX
        );
        assert!(AddrRange::from_bounds(2, 1).is_none());
    }

    #[test]
    fn overlap_and_containment() {
        assert!(r(0, 10).overlaps(r(9, 1)));
        assert!(!r(0, 10).overlaps(r(10, 1)));
        assert!(!r(0, 10).overlaps(r(5, 0)));
        assert!(r(0, 10).contains(r(2, 8)));
        assert!(!r(0, 10).contains(r(2, 9)));
    }

    #[test]
    fn normalize_sorts_merges_overlapping_and_touching_and_drops_empty() {
        let merged = normalize(vec![
            r(0x3000, 0x1000),
            r(0x1000, 0x1000),
            r(0x2000, 0x800),
            r(0x9000, 0),
            r(0x1800, 0x100),
        ]);
        assert_eq!(merged, vec![r(0x1000, 0x1800), r(0x3000, 0x1000)]);
    }

    #[test]
    fn subtract_cuts_holes_exactly() {
        let rest = subtract(
            &[r(0x1000, 0x9000), r(0x20000, 0x1000)],
            &[r(0x0, 0x1800), r(0x4000, 0x10), r(0x9fff, 0x17000)],
        );
        assert_eq!(
            rest,
            vec![r(0x1800, 0x2800), r(0x4010, 0x5fef), r(0x20fff, 0x1)]
        );
    }

    #[test]
    fn highest_fit_aligns_down_inside_the_range() {
        assert_eq!(
            highest_fit(&[r(0x1000, 0x10000)], 0x2000, 0x4000),
            Some(0xc000)
        );
        assert_eq!(
            highest_fit(&[r(0x1000, 0x2000), r(0x8000, 0x1000)], 0x2000, 0x1000),
            Some(0x1000)
        );
        assert_eq!(highest_fit(&[r(0x1001, 0x2000)], 0x2000, 0x1000), None);
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<AddrRange>> {
        prop::collection::vec((0u64..0x100, 0u64..0x40).prop_map(|(b, s)| r(b, s)), 0..12)
    }

    fn bytes_of(ranges: &[AddrRange]) -> Vec<bool> {
        let mut bytes = vec![false; 0x140];
        for range in ranges {
            for b in range.base..range.end() {
                bytes[b as usize] = true;
            }
        }
        bytes
    }

    proptest! {
        #[test]
        fn normalize_keeps_exactly_the_same_bytes(ranges in arb_ranges()) {
            let merged = normalize(ranges.clone());
            prop_assert_eq!(bytes_of(&merged), bytes_of(&ranges));
            for pair in merged.windows(2) {
                prop_assert!(pair[0].end() < pair[1].base);
            }
        }

        #[test]
        fn subtract_is_bytewise_difference(a in arb_ranges(), b in arb_ranges()) {
            let (a, b) = (normalize(a), normalize(b));
            let diff = subtract(&a, &b);
            let expected: Vec<bool> = bytes_of(&a).iter().zip(bytes_of(&b)).map(|(x, y)| *x && !y).collect();
            prop_assert_eq!(bytes_of(&diff), expected);
            prop_assert_eq!(normalize(diff.clone()), diff);
        }
    }
}
