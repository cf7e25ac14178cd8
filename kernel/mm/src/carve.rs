//! Carving kernel regions (the heap, kernel DMA pools) out of linear RAM.
//!
//! The rule, deterministic so every boot of the same device tree lays memory
//! out the same way: the *highest* `align`-aligned range of `size` bytes that
//! lies inside one linear range and overlaps nothing in `avoid`. Highest,
//! because loaders put the kernel and its device tree low in RAM (Linux's
//! boot protocol, and Xen's dom0 placement), so the top of RAM is the part
//! least likely to hold anything the boot path still needs.

use crate::addr::PhysRange;

/// Why nothing could be carved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CarveError {
    /// `size` is zero or `align` is not a power of two.
    BadRequest {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// No linear range has `size` free bytes at that alignment.
    NoRoom {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
        /// The largest free, aligned run found.
        largest: u64,
    },
}

impl core::fmt::Display for CarveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadRequest { size, align } => {
                write!(f, "bad request: size {size:#x}, alignment {align:#x}")
            }
            Self::NoRoom {
                size,
                align,
                largest,
            } => write!(
                f,
                "no {size:#x} bytes aligned to {align:#x} free in linear RAM (largest free run {largest:#x})"
            ),
        }
    }
}

/// The highest `align`-aligned `size`-byte range inside one of `linear` that
/// overlaps none of `avoid` (see the module documentation).
pub fn carve(
    linear: &[PhysRange],
    avoid: &[PhysRange],
    size: u64,
    align: u64,
) -> Result<PhysRange, CarveError> {
    if size == 0 || !align.is_power_of_two() {
        return Err(CarveError::BadRequest { size, align });
    }
    let mut best: Option<PhysRange> = None;
    let mut largest = 0;
    for range in linear {
        // Free runs of this range: walk `avoid` by descending end.
        let mut top = range.end();
        loop {
            // The highest obstacle that ends above the run's bottom and starts below `top`.
            let obstacle = avoid
                .iter()
                .filter(|a| a.size != 0 && a.base.0 < top && a.end() > range.base.0)
                .max_by_key(|a| a.end());
            let bottom = obstacle.map_or(range.base.0, |a| a.end().max(range.base.0));
            if let Some(end) = aligned_top(bottom, top, size, align) {
                let found = PhysRange::new(end - size, size);
                largest = largest.max(size);
                if best.is_none_or(|b| found.base.0 > b.base.0) {
                    best = Some(found);
                }
                break;
            }
            let base_up = bottom.checked_next_multiple_of(align).unwrap_or(u64::MAX);
            let run = top.saturating_sub(base_up) & !(align - 1);
            largest = largest.max(run);
            match obstacle {
                Some(a) if a.base.0 > range.base.0 => top = a.base.0,
                _ => break,
            }
        }
    }
    best.ok_or(CarveError::NoRoom {
        size,
        align,
        largest,
    })
}

/// The highest end `e <= top` such that `[e - size, e)` is aligned and at or
/// above `bottom`.
fn aligned_top(bottom: u64, top: u64, size: u64, align: u64) -> Option<u64> {
    let base = top.checked_sub(size)? & !(align - 1);
    (base >= bottom).then_some(base + size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn r(base: u64, size: u64) -> PhysRange {
        PhysRange::new(base, size)
    }

    #[test]
    fn takes_the_top_of_ram() {
        let linear = [r(0x4000_0000, 256 * MIB)];
        assert_eq!(
            carve(&linear, &[], 4 * MIB, 4096),
            Ok(r(0x4000_0000 + 252 * MIB, 4 * MIB))
        );
    }

    #[test]
    fn steps_below_obstacles_at_the_top() {
        let linear = [r(0x4000_0000, 16 * MIB)];
        // The top 1 MiB and a range 3..4 MiB below the top are taken.
        let avoid = [
            r(0x4000_0000 + 15 * MIB, MIB),
            r(0x4000_0000 + 12 * MIB, MIB),
        ];
        assert_eq!(
            carve(&linear, &avoid, 2 * MIB, 4096),
            Ok(r(0x4000_0000 + 13 * MIB, 2 * MIB))
        );
        assert_eq!(
            carve(&linear, &avoid, 3 * MIB, 4096),
            Ok(r(0x4000_0000 + 9 * MIB, 3 * MIB))
        );
    }

    #[test]
    fn prefers_the_highest_range() {
        let linear = [r(0x4000_0000, 8 * MIB), r(0x8000_0000, 4 * MIB)];
        assert_eq!(
            carve(&linear, &[], 2 * MIB, 4096),
            Ok(r(0x8000_0000 + 2 * MIB, 2 * MIB))
        );
        // Too big for the upper range: the lower one.
        assert_eq!(
            carve(&linear, &[], 6 * MIB, 4096),
            Ok(r(0x4000_0000 + 2 * MIB, 6 * MIB))
        );
    }

    #[test]
    fn honours_alignment() {
        let linear = [r(0x4000_0000, 8 * MIB + 0x3000)];
        let got = carve(&linear, &[], MIB, 2 * MIB).unwrap();
        assert_eq!(got.base.0 % (2 * MIB), 0);
        assert_eq!(got, r(0x4000_0000 + 6 * MIB, MIB));
    }

    #[test]
    fn obstacles_straddling_the_range_edges() {
        let linear = [r(0x4000_0000, 8 * MIB)];
        let avoid = [r(0x3ff0_0000, 2 * MIB), r(0x4000_0000 + 7 * MIB, 4 * MIB)];
        assert_eq!(
            carve(&linear, &avoid, 5 * MIB, 4096),
            Ok(r(0x4000_0000 + 2 * MIB, 5 * MIB))
        );
        assert_eq!(
            carve(&linear, &avoid, 6 * MIB, 4096),
            Ok(r(0x4000_0000 + MIB, 6 * MIB))
        );
        assert_eq!(
            carve(&linear, &avoid, 7 * MIB, 4096),
            Err(CarveError::NoRoom {
                size: 7 * MIB,
                align: 4096,
                largest: 6 * MIB
            })
        );
    }

    #[test]
    fn bad_requests() {
        let linear = [r(0x4000_0000, 8 * MIB)];
        assert!(matches!(
            carve(&linear, &[], 0, 4096),
            Err(CarveError::BadRequest { .. })
        ));
        assert!(matches!(
            carve(&linear, &[], MIB, 3000),
            Err(CarveError::BadRequest { .. })
        ));
    }

    #[test]
    fn result_never_overlaps_and_stays_inside() {
        // A small exhaustive sweep over obstacle positions.
        let linear = [r(0x1000_0000, 64 * 4096)];
        for a in 0..64u64 {
            for b in a..64 {
                let avoid = [
                    r(0x1000_0000 + a * 4096, 4096),
                    r(0x1000_0000 + b * 4096, 2 * 4096),
                ];
                for pages in 1..8 {
                    if let Ok(got) = carve(&linear, &avoid, pages * 4096, 4096) {
                        assert!(linear[0].base.0 <= got.base.0 && got.end() <= linear[0].end());
                        assert!(
                            avoid.iter().all(|x| !x.overlaps(&got)),
                            "{got:?} vs {avoid:?}"
                        );
                    }
                }
            }
        }
    }
}
