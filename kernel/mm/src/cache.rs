//! Data-cache maintenance operations, named once for every layer that asks
//! for them: the DMA policy decides one, the kernel issues it by VA (`DC`),
//! and Xen's `GNTTABOP_cache_flush` issues it by machine address.

use core::fmt;

/// A cache maintenance operation to the point of coherency, by VA or by PA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CacheOp {
    /// Write dirty lines back (`DC CVAC`; Xen `GNTTAB_CACHE_CLEAN`).
    Clean,
    /// Discard lines, dirty data included (`DC IVAC`; Xen
    /// `GNTTAB_CACHE_INVAL`). Implementations keep the data of partial lines
    /// at either end of a range (they clean and invalidate those).
    Invalidate,
    /// Write dirty lines back, then discard them (`DC CIVAC`; Xen both
    /// flags).
    CleanInvalidate,
}

impl fmt::Display for CacheOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Clean => "clean",
            Self::Invalidate => "invalidate",
            Self::CleanInvalidate => "clean+invalidate",
        })
    }
}

/// The per-line operations that apply `op` to `[start, start + len)` with
/// cache lines of `line` bytes (a power of two): one `(line address, op)` per
/// line overlapping the range, in address order.
///
/// An [`CacheOp::Invalidate`] becomes [`CacheOp::CleanInvalidate`] on a
/// partial line at either end: that line also holds bytes outside the range,
/// which a plain invalidate would lose. An empty range yields nothing; a
/// range that would run past the end of the address space stops at its
/// last byte.
pub fn line_ops(
    op: CacheOp,
    start: usize,
    len: usize,
    line: usize,
) -> impl Iterator<Item = (usize, CacheOp)> {
    let mask = !(line - 1);
    // The last byte, inclusive, so that a range ending at the top of the
    // address space needs no overflowing end.
    let last = start.saturating_add(len.saturating_sub(1));
    let first = start & mask;
    let lines = if len == 0 {
        0
    } else {
        ((last & mask) - first) / line + 1
    };
    (0..lines).map(move |index| {
        let addr = first + index * line;
        let partial = addr < start || addr + (line - 1) > last;
        let op = match op {
            CacheOp::Invalidate if partial => CacheOp::CleanInvalidate,
            op => op,
        };
        (addr, op)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CacheOp::*;
    use alloc::vec::Vec;

    fn ops(op: CacheOp, start: usize, len: usize) -> Vec<(usize, CacheOp)> {
        line_ops(op, start, len, 64).collect()
    }

    #[test]
    fn an_invalidate_keeps_the_data_of_partial_lines() {
        assert_eq!(
            ops(Invalidate, 0x1010, 0x100),
            [
                (0x1000, CleanInvalidate),
                (0x1040, Invalidate),
                (0x1080, Invalidate),
                (0x10c0, Invalidate),
                (0x1100, CleanInvalidate),
            ]
        );
        // A range inside one line: that line is partial at both ends.
        assert_eq!(ops(Invalidate, 0x1008, 8), [(0x1000, CleanInvalidate)]);
        // Whole lines only: invalidated.
        assert_eq!(
            ops(Invalidate, 0x1000, 0x80),
            [(0x1000, Invalidate), (0x1040, Invalidate)]
        );
    }

    #[test]
    fn clean_and_clean_invalidate_cover_every_overlapping_line_as_asked() {
        assert_eq!(ops(Clean, 0x103f, 2), [(0x1000, Clean), (0x1040, Clean)]);
        assert_eq!(ops(CleanInvalidate, 0x1000, 1), [(0x1000, CleanInvalidate)]);
        assert_eq!(ops(Clean, 0x1000, 0), []);
    }

    #[test]
    fn the_top_of_the_address_space_does_not_wrap() {
        let top = usize::MAX - 63;
        assert_eq!(ops(Invalidate, top, 64), [(top, Invalidate)]);
        assert_eq!(ops(Invalidate, top + 1, 63), [(top, CleanInvalidate)]);
        assert_eq!(ops(Clean, top, 128), [(top, Clean)]);
    }

    #[test]
    fn display() {
        assert_eq!(
            [Clean, Invalidate, CleanInvalidate].map(|op| op.to_string()),
            ["clean", "invalidate", "clean+invalidate"]
        );
    }
}
