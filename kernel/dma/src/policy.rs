//! The sync policy: which cache maintenance a DMA sync needs, as one pure
//! function of the device, the memory and the platform.

use core::fmt;

use crate::boundary::{CacheOp, FlushErrno};
use crate::device::Addressing;

/// Whether a device's accesses are coherent with this CPU's caches, which
/// is the `coherent` every other decision here takes.
///
/// - A bus device: what its node's `dma-coherent` says.
/// - A grant device: always. Its "device" is another domain's CPUs, which
///   reach the granted pages through their own Normal write-back mapping
///   (Xen maps a grant that way; Linux's blkback copies with `memcpy`), in
///   the same inner-shareable domain as ours: the hardware keeps both sides'
///   caches coherent, exactly as for a snooping bus master. No cache
///   maintenance is needed for its cacheable memory, and a `dma-coherent`
///   property has no say.
pub const fn snoops_cpu_caches(addressing: Addressing, dma_coherent: bool) -> bool {
    match addressing {
        Addressing::Bus => dma_coherent,
        Addressing::Grant { .. } => true,
    }
}

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

/// What the kernel runs on, as far as other mappings of its memory go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Host {
    /// No hypervisor: the kernel's own page tables are the only mappings of
    /// its memory (bare metal, QEMU without Xen).
    Bare,
    /// Under a hypervisor that maps all RAM write-back on its own (Xen's
    /// directmap): any page, a no-map pool's included, may have cache lines
    /// allocated through that mapping at any moment. Those lines are clean
    /// (Xen does not write a guest's DMA memory), but they can be stale.
    Hypervisor,
}

/// The sync policy.
///
/// - `coherent`: the device has `dma-coherent`;
/// - `class`: what the buffer is;
/// - `host`: whether a hypervisor maps the memory too ([`Host`]);
/// - `flush`: what the hypervisor said to the pool's flush probe, `None`
///   when it was not asked (no hypervisor, a domain that is not
///   direct-mapped, a pool in the linear map);
/// - `window_cacheable`: whether the pool's own window is mapped cacheable
///   (only looked at for a no-map pool);
/// - `point`, `dir`: the sync point and the mapping's direction.
///
/// The operation, for memory the kernel maps cacheable (linear RAM, a mapped
/// pool, a no-map pool behind a write-back window), is [`cache_op_for`] for
/// a non-coherent device and nothing for a coherent one. A no-map pool
/// behind a non-cacheable window is different: the pool was cleaned and
/// invalidated once when it was set up ([`crate::PoolSet::add`]), and since
/// the kernel only writes it non-cacheable, no dirty line of it can exist
/// afterwards; the only lines are the clean, possibly stale ones a
/// hypervisor's write-back mapping allocates speculatively, which a
/// non-cacheable read may hit. So:
///
/// | device       | memory             | host, flush    | for the device       | for the CPU (device wrote) |
/// |--------------|--------------------|----------------|----------------------|----------------------------|
/// | coherent     | cacheable          | any            | none                 | none                       |
/// | coherent     | no-map pool, NC    | bare           | none                 | none                       |
/// | coherent     | no-map pool, NC    | hypervisor     | invalidate           | none                       |
/// | non-coherent | linear / mapped    | any            | clean (+inval.) by linear VA | invalidate by linear VA |
/// | non-coherent | no-map pool, WB    | any            | clean (+inval.) by window / Xen | invalidate by window / Xen |
/// | non-coherent | no-map pool, NC    | bare           | none                 | none                       |
/// | non-coherent | no-map pool, NC    | hypervisor     | none                 | invalidate by Xen / window |
///
/// A coherent device's reads snoop the cache, so a stale line allocated
/// through the hypervisor's alias before the CPU's non-cacheable writes (the
/// bounce copy) would be what it reads, and what the CPU reads back where the
/// device wrote nothing; dropped after those writes, lines allocated later
/// hold the CPU's data, and the device's writes update them, so the CPU
/// needs nothing afterwards. A non-coherent device reads memory, which the CPU's
/// non-cacheable writes reached; after it wrote, the stale lines are dropped
/// so that the CPU's non-cacheable reads cannot hit them (lines allocated
/// after the drop hold the device's data). Either way a request through a
/// non-cacheable pool costs at most one maintenance operation.
///
/// How: by linear VA for linear memory; for a no-map pool by the platform
/// (one batched hypercall) when it accepted the pool's probe, else by VA
/// through the pool's window (`DC` by VA acts on the lines of the physical
/// address whatever the attributes of the VA used). The linear map is never
/// used for pool memory.
pub const fn sync_action(
    coherent: bool,
    class: MemoryClass,
    host: Host,
    flush: Option<FlushSupport>,
    window_cacheable: bool,
    point: SyncPoint,
    dir: DmaDirection,
) -> SyncAction {
    let non_cacheable_pool = matches!(class, MemoryClass::NoMapPool) && !window_cacheable;
    let op = if non_cacheable_pool {
        match (host, coherent, point) {
            (Host::Bare, _, _) => None,
            (Host::Hypervisor, true, SyncPoint::ForDevice) => Some(CacheOp::Invalidate),
            (Host::Hypervisor, false, SyncPoint::ForCpu) if dir.device_writes() => {
                Some(CacheOp::Invalidate)
            }
            (Host::Hypervisor, _, _) => None,
        }
    } else if coherent {
        None
    } else {
        cache_op_for(point, dir)
    };
    let Some(op) = op else {
        return SyncAction::None;
    };
    match (class, flush) {
        (MemoryClass::LinearRam | MemoryClass::MappedPool, _) => SyncAction::LinearVa { op },
        (MemoryClass::NoMapPool, Some(FlushSupport::Accepted)) => SyncAction::Platform { op },
        (MemoryClass::NoMapPool, _) => SyncAction::WindowVa { op },
    }
}

/// The sync policy for part of a coherent allocation (a virtqueue's rings),
/// at the point where the CPU is about to read what the device wrote
/// ([`SyncPoint::ForCpu`]) or the device is about to read what the CPU
/// wrote ([`SyncPoint::ForDevice`]); the arguments are as for
/// [`sync_action`].
///
/// Coherent memory is cacheable only for a coherent device (a non-coherent
/// device's coherent memory behind a cacheable window is refused at
/// allocation), and non-cacheable otherwise, so this is [`sync_action`] for
/// a buffer both sides read and write: nothing for cacheable memory or
/// without a hypervisor; under one, whose write-back directmap may allocate
/// clean, stale lines of it at any moment, an invalidate before the reader
/// that could hit them: the CPU's non-cacheable reads for a non-coherent
/// device, the device's snooping reads for a coherent one.
///
/// | device       | memory          | host       | for the device       | for the CPU          |
/// |--------------|-----------------|------------|----------------------|----------------------|
/// | coherent     | cacheable       | any        | none                 | none                 |
/// | any          | non-cacheable   | bare       | none                 | none                 |
/// | coherent     | non-cacheable   | hypervisor | invalidate by window | none                 |
/// | non-coherent | non-cacheable   | hypervisor | none                 | invalidate by window |
///
/// Always by VA through the window, never by the platform, even where it
/// flushes the pool: such a sync covers a few lines (a used ring's index,
/// or the entries just published), for which `DC IVAC` costs a few
/// instructions where a hypercall costs a trap into Xen, and a block
/// request keeps its one hypercall (its region's). `DC` by VA acts on the
/// physical line whatever the window's attributes, so the result is the
/// same.
pub const fn coherent_sync_action(
    coherent: bool,
    class: MemoryClass,
    host: Host,
    window_cacheable: bool,
    point: SyncPoint,
) -> SyncAction {
    // Without a platform flush, `sync_action` answers by VA only.
    sync_action(
        coherent,
        class,
        host,
        None,
        window_cacheable,
        point,
        DmaDirection::Bidirectional,
    )
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
    fn a_grant_device_is_coherent_whatever_the_device_tree_says() {
        use tidepool_xen_abi::DomId;
        let grant = Addressing::Grant { domid: DomId(0) };
        for dma_coherent in [false, true] {
            assert!(snoops_cpu_caches(grant, dma_coherent));
            assert_eq!(
                snoops_cpu_caches(Addressing::Bus, dma_coherent),
                dma_coherent
            );
        }
        // So its cacheable memory never needs maintenance, in any direction.
        for class in [MemoryClass::LinearRam, MemoryClass::MappedPool] {
            for host in ALL_HOSTS {
                for point in ALL_POINTS {
                    for dir in ALL_DIRS {
                        let coherent = snoops_cpu_caches(grant, false);
                        assert_eq!(
                            sync_action(coherent, class, host, None, true, point, dir),
                            SyncAction::None
                        );
                    }
                }
            }
        }
    }

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

    const ALL_HOSTS: [Host; 2] = [Host::Bare, Host::Hypervisor];

    #[test]
    fn coherent_device_needs_nothing_for_cacheable_memory() {
        for class in ALL_CLASSES {
            for host in ALL_HOSTS {
                for flush in ALL_PLATFORMS {
                    for point in ALL_POINTS {
                        for dir in ALL_DIRS {
                            assert_eq!(
                                sync_action(true, class, host, flush, true, point, dir),
                                SyncAction::None
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn coherent_device_invalidates_a_non_cacheable_pool_for_itself_under_a_hypervisor() {
        for dir in ALL_DIRS {
            let expected = |action: SyncAction| action;
            let nc = |flush, point| {
                sync_action(
                    true,
                    MemoryClass::NoMapPool,
                    Host::Hypervisor,
                    flush,
                    false,
                    point,
                    dir,
                )
            };
            assert_eq!(
                nc(Some(FlushSupport::Accepted), ForDevice),
                expected(SyncAction::Platform { op: Invalidate })
            );
            assert_eq!(
                nc(Some(FlushSupport::Refused(FlushErrno::Eperm)), ForDevice),
                expected(SyncAction::WindowVa { op: Invalidate })
            );
            assert_eq!(
                nc(None, ForDevice),
                expected(SyncAction::WindowVa { op: Invalidate })
            );
            for flush in ALL_PLATFORMS {
                assert_eq!(nc(flush, ForCpu), SyncAction::None);
                for point in ALL_POINTS {
                    assert_eq!(
                        sync_action(
                            true,
                            MemoryClass::NoMapPool,
                            Host::Bare,
                            flush,
                            false,
                            point,
                            dir
                        ),
                        SyncAction::None
                    );
                }
            }
        }
    }

    #[test]
    fn non_coherent_linear_memory_uses_linear_va_whatever_the_platform() {
        for class in [MemoryClass::LinearRam, MemoryClass::MappedPool] {
            for host in ALL_HOSTS {
                for flush in ALL_PLATFORMS {
                    for point in ALL_POINTS {
                        for dir in ALL_DIRS {
                            let expected = match cache_op_for(point, dir) {
                                Some(op) => SyncAction::LinearVa { op },
                                None => SyncAction::None,
                            };
                            assert_eq!(
                                sync_action(false, class, host, flush, true, point, dir),
                                expected
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn non_cacheable_pool_needs_nothing_before_a_non_coherent_device() {
        for host in ALL_HOSTS {
            for flush in ALL_PLATFORMS {
                for dir in ALL_DIRS {
                    assert_eq!(
                        sync_action(
                            false,
                            MemoryClass::NoMapPool,
                            host,
                            flush,
                            false,
                            ForDevice,
                            dir
                        ),
                        SyncAction::None
                    );
                }
            }
        }
    }

    #[test]
    fn non_cacheable_pool_is_invalidated_after_a_non_coherent_device_wrote_under_a_hypervisor() {
        for dir in ALL_DIRS {
            let expected = |action| {
                if dir.device_writes() {
                    action
                } else {
                    SyncAction::None
                }
            };
            let nc = |host, flush| {
                sync_action(
                    false,
                    MemoryClass::NoMapPool,
                    host,
                    flush,
                    false,
                    ForCpu,
                    dir,
                )
            };
            assert_eq!(
                nc(Host::Hypervisor, Some(FlushSupport::Accepted)),
                expected(SyncAction::Platform { op: Invalidate })
            );
            for errno in [
                FlushErrno::Eperm,
                FlushErrno::Eopnotsupp,
                FlushErrno::Einval,
            ] {
                assert_eq!(
                    nc(Host::Hypervisor, Some(FlushSupport::Refused(errno))),
                    expected(SyncAction::WindowVa { op: Invalidate })
                );
            }
            assert_eq!(
                nc(Host::Hypervisor, None),
                expected(SyncAction::WindowVa { op: Invalidate })
            );
            for flush in ALL_PLATFORMS {
                assert_eq!(nc(Host::Bare, flush), SyncAction::None);
            }
        }
    }

    #[test]
    fn write_back_window_is_maintained_like_linear_memory() {
        for host in ALL_HOSTS {
            for point in ALL_POINTS {
                for dir in ALL_DIRS {
                    let op = cache_op_for(point, dir);
                    let by = |flush| {
                        sync_action(false, MemoryClass::NoMapPool, host, flush, true, point, dir)
                    };
                    assert_eq!(
                        by(Some(FlushSupport::Accepted)),
                        op.map_or(SyncAction::None, |op| SyncAction::Platform { op })
                    );
                    assert_eq!(
                        by(None),
                        op.map_or(SyncAction::None, |op| SyncAction::WindowVa { op })
                    );
                }
            }
        }
    }

    #[test]
    fn a_buffer_the_device_only_read_needs_nothing_for_the_cpu() {
        for class in ALL_CLASSES {
            for host in ALL_HOSTS {
                for flush in ALL_PLATFORMS {
                    for cacheable in [false, true] {
                        for coherent in [false, true] {
                            assert_eq!(
                                sync_action(
                                    coherent, class, host, flush, cacheable, ForCpu, ToDevice
                                ),
                                SyncAction::None
                            );
                        }
                    }
                }
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

    #[test]
    fn coherent_allocations_are_invalidated_by_window_for_the_reader_a_stale_line_could_fool() {
        for host in ALL_HOSTS {
            for point in ALL_POINTS {
                let nc = |coherent| {
                    coherent_sync_action(coherent, MemoryClass::NoMapPool, host, false, point)
                };
                let expected = |reader_snoops_stale_lines: bool| {
                    if host == Host::Hypervisor && reader_snoops_stale_lines {
                        SyncAction::WindowVa { op: Invalidate }
                    } else {
                        SyncAction::None
                    }
                };
                assert_eq!(nc(false), expected(point == ForCpu), "{host:?} {point:?}");
                assert_eq!(nc(true), expected(point == ForDevice), "{host:?} {point:?}");
                for class in ALL_CLASSES {
                    assert_eq!(
                        coherent_sync_action(true, class, host, true, point),
                        SyncAction::None
                    );
                }
            }
        }
    }
}
