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

/// Consecutive cache lines that take the same operation: `lines` lines
/// of the given size from the line at `first`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LineSpan {
    /// Address of the first line (line-aligned).
    pub first: usize,
    /// How many lines.
    pub lines: usize,
    /// The operation on each.
    pub op: CacheOp,
}

/// The operations that apply `op` to `[start, start + len)` with cache
/// lines of `line` bytes (a power of two), as at most three spans of
/// consecutive lines in address order (so that the maintenance loop over a
/// span is one instruction per line): every line overlapping the range
/// once.
///
/// An [`CacheOp::Invalidate`] becomes [`CacheOp::CleanInvalidate`] on a
/// partial line at either end: that line also holds bytes outside the range,
/// which a plain invalidate would lose. An empty range yields nothing; a
/// range that would run past the end of the address space stops at its
/// last byte.
pub fn line_spans(
    op: CacheOp,
    start: usize,
    len: usize,
    line: usize,
) -> impl Iterator<Item = LineSpan> {
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
    let mut spans = [None; 3];
    if op == CacheOp::Invalidate && lines > 0 {
        // Only the end lines can be partial; each is its own span.
        let head_partial = first < start;
        let tail_partial = (last & mask) + (line - 1) > last;
        let head = usize::from(head_partial);
        let tail = usize::from(tail_partial && (lines > 1 || !head_partial));
        let whole = lines - head - tail;
        let partial = |first| LineSpan {
            first,
            lines: 1,
            op: CacheOp::CleanInvalidate,
        };
        spans[0] = head_partial.then(|| partial(first));
        spans[1] = (whole > 0).then(|| LineSpan {
            first: first + head * line,
            lines: whole,
            op,
        });
        spans[2] = (tail == 1).then(|| partial(last & mask));
    } else if lines > 0 {
        spans[1] = Some(LineSpan { first, lines, op });
    }
    spans.into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use CacheOp::*;
    use alloc::vec::Vec;

    /// The spans, one `(line, op)` per line.
    fn ops(op: CacheOp, start: usize, len: usize) -> Vec<(usize, CacheOp)> {
        line_spans(op, start, len, 64)
            .flat_map(|span| (0..span.lines).map(move |i| (span.first + i * 64, span.op)))
            .collect()
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

    /// Line by line: every line overlapping the range, an invalidate of a
    /// line only partly inside it cleaned too.
    fn reference(op: CacheOp, start: usize, len: usize) -> Vec<(usize, CacheOp)> {
        let Some(last) = len.checked_sub(1).map(|n| start.saturating_add(n)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut line = start & !63;
        loop {
            let partial = line < start || line + 63 > last;
            out.push((
                line,
                if op == Invalidate && partial {
                    CleanInvalidate
                } else {
                    op
                },
            ));
            if line + 63 >= last {
                return out;
            }
            line += 64;
        }
    }

    #[test]
    fn spans_are_the_line_by_line_operations_grouped() {
        for op in [Clean, Invalidate, CleanInvalidate] {
            for start in 0x1000..0x1000 + 130 {
                for len in 0..300 {
                    assert_eq!(
                        ops(op, start, len),
                        reference(op, start, len),
                        "{op} {start:#x}+{len:#x}"
                    );
                    assert!(
                        line_spans(op, start, len, 64).all(|span| span.lines > 0),
                        "no empty span: {op} {start:#x}+{len:#x}"
                    );
                }
            }
        }
        // At most three spans, the middle one carrying the asked operation.
        let spans: Vec<LineSpan> = line_spans(Invalidate, 0x1010, 0x1000, 64).collect();
        assert_eq!(
            spans,
            [
                LineSpan {
                    first: 0x1000,
                    lines: 1,
                    op: CleanInvalidate
                },
                LineSpan {
                    first: 0x1040,
                    lines: 63,
                    op: Invalidate
                },
                LineSpan {
                    first: 0x2000,
                    lines: 1,
                    op: CleanInvalidate
                },
            ]
        );
    }

    #[test]
    fn display() {
        assert_eq!(
            [Clean, Invalidate, CleanInvalidate].map(|op| op.to_string()),
            ["clean", "invalidate", "clean+invalidate"]
        );
    }
}
