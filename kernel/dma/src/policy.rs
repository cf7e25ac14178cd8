//! The sync policy: which cache maintenance a DMA sync needs, as one pure
//! function of the device, the memory and the platform.

use core::fmt;

use crate::boundary::{CacheOp, FlushErrno};

/// Which way data moves in a streaming mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DmaDirection {
    /// The device reads the buffer (`DMA_TO_DEVICE`).
    ToDevice,
    /// The device writes the buffer (`DMA_FROM_DEVICE`).
    FromDevice,
    /// The device reads and writes the buffer (`DMA_BIDIRECTIONAL`).
    Bidirectional,
}

impl DmaDirection {
    /// Whether the device reads what the CPU wrote.
    pub const fn device_reads(self) -> bool {
        matches!(self, Self::ToDevice | Self::Bidirectional)
    }

    /// Whether the CPU reads what the device wrote.
    pub const fn device_writes(self) -> bool {
        matches!(self, Self::FromDevice | Self::Bidirectional)
    }
}

/// Who is about to own the buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SyncPoint {
    /// Before the device accesses the buffer (`sync_for_device`, and map).
    ForDevice,
    /// Before the CPU accesses the buffer again (`sync_for_cpu`, and unmap).
    ForCpu,
}

/// What kind of memory a DMA buffer is, as far as cache maintenance goes.
///
/// This is the DMA-able subset of [`tidepool_mm::AddressClass`]: MMIO,
/// reserved and unknown memory are refused before any sync.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemoryClass {
    /// RAM in the linear map.
    LinearRam,
    /// A pool that is also in the linear map (a `shared-dma-pool` without
    /// `no-map`).
    MappedPool,
    /// A no-map pool, reached only through its own window.
    NoMapPool,
}

/// Whether the platform (Xen) flushes a pool's pages by physical address,
/// learned once per pool by a one-page flush.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlushSupport {
    /// `GNTTABOP_cache_flush` succeeds on the pool's pages.
    Accepted,
    /// `GNTTABOP_cache_flush` fails on the pool's pages with this error.
    Refused(FlushErrno),
}

impl fmt::Display for FlushSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted => f.write_str("accepted"),
            Self::Refused(errno) => write!(f, "refused({errno})"),
        }
    }
}

/// The cache maintenance one sync does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SyncAction {
    /// Nothing.
    None,
    /// `op` by the buffer's linear-map address.
    LinearVa {
        /// The operation.
        op: CacheOp,
    },
    /// `op` by the buffer's address in its pool's own window.
    WindowVa {
        /// The operation.
        op: CacheOp,
    },
    /// `op` by physical address, done by the platform in one batched call.
    Platform {
        /// The operation.
        op: CacheOp,
    },
}

/// The operation a non-coherent sync needs, by sync point and direction;
/// `None` where the caches need nothing.
///
/// | point      | to device          | from device        | bidirectional      |
/// |------------|--------------------|--------------------|--------------------|
/// | for device | clean              | clean+invalidate   | clean+invalidate   |
/// | for CPU    | (none)             | invalidate         | invalidate         |
///
/// For the device, lines holding CPU writes are cleaned; where the device will
/// write, they are also dropped so that no dirty line is later evicted over
/// the device's data (clean+invalidate rather than invalidate, which never
/// loses CPU data). For the CPU, lines the CPU may have fetched speculatively
/// while the device wrote are dropped; a buffer the device only read needs
/// nothing.
pub const fn cache_op_for(point: SyncPoint, dir: DmaDirection) -> Option<CacheOp> {
    match (point, dir) {
        (SyncPoint::ForDevice, DmaDirection::ToDevice) => Some(CacheOp::Clean),
        (SyncPoint::ForDevice, DmaDirection::FromDevice | DmaDirection::Bidirectional) => {
            Some(CacheOp::CleanInvalidate)
        }
        (SyncPoint::ForCpu, DmaDirection::ToDevice) => None,
        (SyncPoint::ForCpu, DmaDirection::FromDevice | DmaDirection::Bidirectional) => {
            Some(CacheOp::Invalidate)
        }
    }
}

/// The sync policy.
///
/// - `coherent`: the device has `dma-coherent`;
/// - `class`: what the buffer is;
/// - `platform`: `None` when not running under a hypervisor that flushes by
///   physical address, else what it said to the pool's probe;
/// - `window_cacheable`: whether the pool's own window is mapped cacheable
///   (only looked at for a no-map pool);
/// - `point`, `dir`: the sync point and the mapping's direction, which give
///   the operation ([`cache_op_for`]).
///
/// | device       | memory             | platform  | action                      |
/// |--------------|--------------------|-----------|-----------------------------|
/// | coherent     | any                | any       | none                        |
/// | non-coherent | linear RAM         | any       | by linear VA                |
/// | non-coherent | mapped pool        | any       | by linear VA                |
/// | non-coherent | no-map pool        | accepted  | platform flush (hypercall)  |
/// | non-coherent | no-map pool        | refused   | by window VA                |
/// | non-coherent | no-map pool, NC    | none      | none                        |
/// | non-coherent | no-map pool, WB    | none      | by window VA                |
///
/// One exception to the rows above: **for the CPU, a no-map pool whose
/// window is non-cacheable needs nothing**, under Xen or not. The CPU reaches
/// the pool only through that window (there is no linear alias), and its
/// non-cacheable reads do not allocate or use lines of this guest; the sync
/// for the device (clean+invalidate where the device writes) already removed
/// every line, dirty or clean, that another agent held, so nothing can be
/// written back over the device's data. This is the assumption Linux makes
/// for every coherent allocation it remaps non-cacheable (including from a
/// no-map `shared-dma-pool`), and it makes a request cost one platform
/// flush (for the device) instead of two.
///
/// A no-map pool's window is non-cacheable by default, so CPU accesses
/// through it never allocate lines and need no maintenance of their own.
/// Under Xen the hypervisor's own mapping of the pages (or an earlier
/// cacheable mapping) may still hold lines, which is what the platform flush
/// is for. When Xen refuses it, maintenance by VA through the window takes its
/// place: `DC` by VA acts on the cache lines of the physical address whatever
/// the attributes of the VA used, so it cleans or drops lines any cacheable
/// alias holds. The linear map is never used for pool memory.
pub const fn sync_action(
    coherent: bool,
    class: MemoryClass,
    platform: Option<FlushSupport>,
    window_cacheable: bool,
    point: SyncPoint,
    dir: DmaDirection,
) -> SyncAction {
    let Some(op) = cache_op_for(point, dir) else {
        return SyncAction::None;
    };
    if coherent {
        return SyncAction::None;
    }
    if matches!((class, point), (MemoryClass::NoMapPool, SyncPoint::ForCpu)) && !window_cacheable {
        return SyncAction::None;
    }
    match (class, platform) {
        (MemoryClass::LinearRam | MemoryClass::MappedPool, _) => SyncAction::LinearVa { op },
        (MemoryClass::NoMapPool, Some(FlushSupport::Accepted)) => SyncAction::Platform { op },
        (MemoryClass::NoMapPool, Some(FlushSupport::Refused(_))) => SyncAction::WindowVa { op },
        (MemoryClass::NoMapPool, None) if window_cacheable => SyncAction::WindowVa { op },
        (MemoryClass::NoMapPool, None) => SyncAction::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use CacheOp::{Clean, CleanInvalidate, Invalidate};
    use DmaDirection::{Bidirectional, FromDevice, ToDevice};
    use SyncPoint::{ForCpu, ForDevice};

    const ALL_DIRS: [DmaDirection; 3] = [ToDevice, FromDevice, Bidirectional];
    const ALL_POINTS: [SyncPoint; 2] = [ForDevice, ForCpu];
    const ALL_CLASSES: [MemoryClass; 3] = [
        MemoryClass::LinearRam,
        MemoryClass::MappedPool,
        MemoryClass::NoMapPool,
    ];
    const ALL_PLATFORMS: [Option<FlushSupport>; 3] = [
        None,
        Some(FlushSupport::Accepted),
        Some(FlushSupport::Refused(FlushErrno::Eperm)),
    ];

    #[test]
    fn op_table() {
        assert_eq!(cache_op_for(ForDevice, ToDevice), Some(Clean));
        assert_eq!(cache_op_for(ForDevice, FromDevice), Some(CleanInvalidate));
        assert_eq!(
            cache_op_for(ForDevice, Bidirectional),
            Some(CleanInvalidate)
        );
        assert_eq!(cache_op_for(ForCpu, ToDevice), None);
        assert_eq!(cache_op_for(ForCpu, FromDevice), Some(Invalidate));
        assert_eq!(cache_op_for(ForCpu, Bidirectional), Some(Invalidate));
    }

    #[test]
    fn coherent_device_needs_nothing_anywhere() {
        for class in ALL_CLASSES {
            for platform in ALL_PLATFORMS {
                for cacheable in [false, true] {
                    for point in ALL_POINTS {
                        for dir in ALL_DIRS {
                            assert_eq!(
                                sync_action(true, class, platform, cacheable, point, dir),
                                SyncAction::None
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn non_coherent_linear_memory_uses_linear_va_whatever_the_platform() {
        for class in [MemoryClass::LinearRam, MemoryClass::MappedPool] {
            for platform in ALL_PLATFORMS {
                for point in ALL_POINTS {
                    for dir in ALL_DIRS {
                        let expected = match cache_op_for(point, dir) {
                            Some(op) => SyncAction::LinearVa { op },
                            None => SyncAction::None,
                        };
                        assert_eq!(
                            sync_action(false, class, platform, true, point, dir),
                            expected
                        );
                    }
                }
            }
        }
        assert_eq!(
            sync_action(
                false,
                MemoryClass::LinearRam,
                None,
                true,
                ForDevice,
                ToDevice
            ),
            SyncAction::LinearVa { op: Clean }
        );
        assert_eq!(
            sync_action(
                false,
                MemoryClass::LinearRam,
                None,
                true,
                ForCpu,
                FromDevice
            ),
            SyncAction::LinearVa { op: Invalidate }
        );
    }

    #[test]
    fn no_map_pool_under_xen_accepted_uses_the_platform() {
        for cacheable in [false, true] {
            assert_eq!(
                sync_action(
                    false,
                    MemoryClass::NoMapPool,
                    Some(FlushSupport::Accepted),
                    cacheable,
                    ForDevice,
                    Bidirectional
                ),
                SyncAction::Platform {
                    op: CleanInvalidate
                }
            );
            assert_eq!(
                sync_action(
                    false,
                    MemoryClass::NoMapPool,
                    Some(FlushSupport::Accepted),
                    cacheable,
                    ForCpu,
                    FromDevice
                ),
                if cacheable {
                    SyncAction::Platform { op: Invalidate }
                } else {
                    SyncAction::None
                }
            );
        }
    }

    #[test]
    fn no_map_pool_behind_a_non_cacheable_window_needs_nothing_for_the_cpu() {
        for platform in ALL_PLATFORMS {
            for dir in ALL_DIRS {
                assert_eq!(
                    sync_action(false, MemoryClass::NoMapPool, platform, false, ForCpu, dir),
                    SyncAction::None
                );
            }
        }
    }

    #[test]
    fn no_map_pool_under_xen_refused_uses_the_window_even_when_non_cacheable() {
        for errno in [
            FlushErrno::Eperm,
            FlushErrno::Eopnotsupp,
            FlushErrno::Einval,
        ] {
            for cacheable in [false, true] {
                assert_eq!(
                    sync_action(
                        false,
                        MemoryClass::NoMapPool,
                        Some(FlushSupport::Refused(errno)),
                        cacheable,
                        ForDevice,
                        ToDevice
                    ),
                    SyncAction::WindowVa { op: Clean }
                );
            }
        }
    }

    #[test]
    fn no_map_pool_without_xen_depends_on_the_window() {
        for point in ALL_POINTS {
            for dir in ALL_DIRS {
                assert_eq!(
                    sync_action(false, MemoryClass::NoMapPool, None, false, point, dir),
                    SyncAction::None
                );
                let expected = match cache_op_for(point, dir) {
                    Some(op) => SyncAction::WindowVa { op },
                    None => SyncAction::None,
                };
                assert_eq!(
                    sync_action(false, MemoryClass::NoMapPool, None, true, point, dir),
                    expected
                );
            }
        }
    }

    #[test]
    fn a_buffer_the_device_only_read_needs_nothing_for_the_cpu() {
        for class in ALL_CLASSES {
            for platform in ALL_PLATFORMS {
                assert_eq!(
                    sync_action(false, class, platform, true, ForCpu, ToDevice),
                    SyncAction::None
                );
            }
        }
    }

    #[test]
    fn flush_support_display() {
        assert_eq!(FlushSupport::Accepted.to_string(), "accepted");
        assert_eq!(
            FlushSupport::Refused(FlushErrno::Eperm).to_string(),
            "refused(EPERM)"
        );
        assert_eq!(
            FlushSupport::Refused(FlushErrno::Other(-14)).to_string(),
            "refused(error -14)"
        );
    }
}
