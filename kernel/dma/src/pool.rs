//! DMA pools: physical ranges the kernel hands out DMA memory from, each with
//! the window the kernel reaches it through.
//!
//! Four roles share one type:
//! - a device-tree `shared-dma-pool` (`/reserved-memory` child named by a
//!   device's `memory-region`), `no-map` or not;
//! - the kernel's non-cacheable pool: RAM the kernel carves out of its own,
//!   leaves out of the linear map and maps non-cacheable like a no-map pool.
//!   Non-coherent devices without a pool of their own get coherent memory
//!   there (virtio rings are written with plain stores and read by the
//!   device without a sync, so they must not be cacheable). Under Xen its
//!   pages are the guest's own, so Xen accepts flushes of them;
//! - the kernel's linear pool: write-back RAM in the linear map, for coherent
//!   allocations of coherent devices without a pool of their own;
//! - a device-private pool: linear RAM the kernel set aside for one device
//!   (a Xen PV disk's pages to grant), which names it as its pool.
//!
//! Whether Xen flushes a pool's pages is learned once, when the pool is set
//! up, by flushing its first page ([`Pool::probe_platform_flush`]).

use alloc::vec::Vec;
use core::fmt;

use tidepool_mm::{AddressClass, AddressMap, PAGE_SIZE, PhysAddr, PhysRange, VirtAddr};

use crate::allocator::{AllocFailure, FreeFault, PageAllocator};
use crate::boundary::{CacheMaintenance, CacheOp, OwnedPhysRange, OwnedVirtRange, PlatformFlush};
use crate::error::SetupError;
use crate::policy::{
    DmaDirection, FlushSupport, Host, MemoryClass, SyncAction, SyncPoint, sync_action,
};

/// Memory attributes of a pool's own window.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WindowAttributes {
    /// Normal non-cacheable (the default for no-map pools).
    NonCacheable,
    /// Normal write-back cacheable.
    WriteBack,
}

/// How the kernel reaches a pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PoolPlacement {
    /// Not in the linear map: the kernel maps the pool on its own. The
    /// address map must list the range as a no-map pool of the same name with
    /// the same window.
    OwnWindow {
        /// Virtual address of the pool's first byte.
        window: VirtAddr,
        /// Attributes of the window mapping.
        attributes: WindowAttributes,
    },
    /// In the linear map (a pool without `no-map`, or RAM the kernel
    /// carved): reached through its write-back linear addresses.
    Linear,
}

/// What a pool is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PoolRole {
    /// A device-tree `shared-dma-pool`: the private pool of the devices whose
    /// `memory-region` names it.
    DeviceTree,
    /// The kernel's non-cacheable pool, for coherent allocations of
    /// non-coherent devices without a pool.
    KernelNonCacheable,
    /// The kernel's linear write-back pool, for coherent allocations of
    /// coherent devices without a pool.
    KernelLinear,
    /// Linear RAM the kernel set aside for one device, which names it as
    /// its pool: a Xen PV disk's pages to grant to its back end.
    DevicePrivate,
}

impl fmt::Display for PoolRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DeviceTree => "device-tree pool",
            Self::KernelNonCacheable => "kernel non-cacheable pool",
            Self::KernelLinear => "kernel linear pool",
            Self::DevicePrivate => "device-private pool",
        })
    }
}

/// Everything needed to set up a pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PoolSpec<'a> {
    /// Stable name: the device-tree path for a DT pool (e.g.
    /// `/reserved-memory/dma@78000000`); for an own-window pool it is also
    /// the name of its region in the address map.
    pub name: &'a str,
    /// The pool's physical range, page-aligned.
    pub phys: PhysRange,
    /// How the kernel reaches it.
    pub placement: PoolPlacement,
    /// What it is for.
    pub role: PoolRole,
}

/// Identifies a pool in its [`PoolSet`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PoolId(usize);

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Pages in use and in all, for "usage back to its baseline" checks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PoolUsage {
    /// Pages allocated.
    pub used_pages: usize,
    /// Pages in the pool.
    pub total_pages: usize,
}

impl fmt::Display for PoolUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} pages", self.used_pages, self.total_pages)
    }
}

/// An allocation or free a pool refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PoolError<'a> {
    /// No free block fits; nothing was allocated.
    Exhausted {
        /// The pool.
        pool: &'a str,
        /// Bytes asked for.
        requested: u64,
        /// Alignment in effect (at least a page).
        align: u64,
        /// Bytes in the largest free block.
        largest_free: u64,
    },
    /// Larger than the whole pool.
    TooLarge {
        /// The pool.
        pool: &'a str,
        /// Bytes asked for.
        requested: u64,
        /// Bytes in the pool.
        pool_size: u64,
    },
    /// An alignment that is not a power of two.
    BadAlignment {
        /// The pool.
        pool: &'a str,
        /// The alignment asked for.
        align: u64,
    },
    /// An allocation of zero bytes.
    ZeroSize {
        /// The pool.
        pool: &'a str,
    },
    /// A free that does not name one live allocation of this pool.
    BadFree {
        /// The pool.
        pool: &'a str,
        /// The range given.
        range: PhysRange,
        /// What is wrong with it.
        fault: FreeFault,
    },
}

impl fmt::Display for FreeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutsidePool => "not a page-aligned range inside the pool",
            Self::NotAllocated => "already free",
            Self::NotAnAllocation => "not exactly one allocation",
        })
    }
}

impl fmt::Display for PoolError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted {
                pool,
                requested,
                align,
                largest_free,
            } => write!(
                f,
                "pool {pool} exhausted: no free block of {requested:#x} bytes aligned to {align:#x} \
                 (largest free block {largest_free:#x} bytes)"
            ),
            Self::TooLarge {
                pool,
                requested,
                pool_size,
            } => {
                write!(
                    f,
                    "pool {pool} holds {pool_size:#x} bytes, not {requested:#x}"
                )
            }
            Self::BadAlignment { pool, align } => {
                write!(f, "pool {pool}: alignment {align:#x} is not a power of two")
            }
            Self::ZeroSize { pool } => write!(f, "pool {pool}: allocation of zero bytes"),
            Self::BadFree { pool, range, fault } => {
                write!(f, "pool {pool}: free of {range} refused: {fault}")
            }
        }
    }
}

/// One pool: its range, window, allocator and what Xen said to a flush of it.
pub struct Pool<'a> {
    name: &'a str,
    phys: PhysRange,
    window: VirtAddr,
    placement: PoolPlacement,
    class: MemoryClass,
    role: PoolRole,
    host: Host,
    flush_support: Option<FlushSupport>,
    refusal_warned: bool,
    pages: PageAllocator,
}

impl<'a> Pool<'a> {
    /// The pool's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The pool's physical range.
    pub fn phys(&self) -> PhysRange {
        self.phys
    }

    /// Virtual address of the pool's first byte: its own window, or its
    /// linear-map address for a [`PoolPlacement::Linear`] pool.
    pub fn window(&self) -> VirtAddr {
        self.window
    }

    /// How the kernel reaches the pool.
    pub fn placement(&self) -> PoolPlacement {
        self.placement
    }

    /// What the pool is for.
    pub fn role(&self) -> PoolRole {
        self.role
    }

    /// What kind of memory the pool is.
    pub fn memory_class(&self) -> MemoryClass {
        self.class
    }

    /// Whether CPU accesses through the window may allocate cache lines.
    pub fn window_cacheable(&self) -> bool {
        !matches!(
            self.placement,
            PoolPlacement::OwnWindow {
                attributes: WindowAttributes::NonCacheable,
                ..
            }
        )
    }

    /// What the kernel runs on (whether a hypervisor maps the pool too).
    pub fn host(&self) -> Host {
        self.host
    }

    /// What Xen said to a flush of the pool's pages; `None` if never asked
    /// (no hypervisor, or a pool in the linear map, which never needs it).
    pub fn flush_support(&self) -> Option<FlushSupport> {
        self.flush_support
    }

    /// Asks the platform to clean the pool's first page and records whether
    /// it accepted. This is the one-time probe; a refusal during a later sync
    /// also marks the pool refused.
    pub(crate) fn probe_platform_flush(
        &mut self,
        platform: &mut dyn PlatformFlush,
    ) -> FlushSupport {
        let first_page = PhysRange {
            base: self.phys.base,
            size: PAGE_SIZE,
        };
        let support = match platform.flush(CacheOp::Clean, &OwnedPhysRange::new(first_page)) {
            Ok(_) => FlushSupport::Accepted,
            Err(failed) => FlushSupport::Refused(failed.errno),
        };
        self.flush_support = Some(support);
        support
    }

    /// Records that the platform refused a flush during a sync. Returns
    /// whether this is the pool's first such refusal (the one to warn about).
    pub(crate) fn record_sync_refusal(&mut self, support: FlushSupport) -> bool {
        self.flush_support = Some(support);
        !core::mem::replace(&mut self.refusal_warned, true)
    }

    /// The window address of `pa`, if `pa` lies in the pool.
    pub fn window_of(&self, pa: PhysAddr) -> Option<VirtAddr> {
        self.phys
            .contains(pa)
            .then(|| VirtAddr(self.window.0 + (pa.0 - self.phys.base.0)))
    }

    /// Allocates `size` bytes (rounded up to whole pages) at a physical
    /// address that is a multiple of `align` (a power of two; page alignment
    /// at least). Never touches the heap; on failure nothing is allocated.
    pub(crate) fn alloc(&mut self, size: u64, align: u64) -> Result<PhysRange, PoolError<'a>> {
        let pool = self.name;
        self.pages
            .alloc(size, align)
            .map_err(|failure| match failure {
                AllocFailure::ZeroSize => PoolError::ZeroSize { pool },
                AllocFailure::BadAlignment => PoolError::BadAlignment { pool, align },
                AllocFailure::TooLarge => PoolError::TooLarge {
                    pool,
                    requested: size,
                    pool_size: self.phys.size,
                },
                AllocFailure::Exhausted { largest_free } => PoolError::Exhausted {
                    pool,
                    requested: size,
                    align: align.max(PAGE_SIZE),
                    largest_free,
                },
            })
    }

    /// Frees the allocation `range` names (as [`Self::alloc`] returned it).
    /// A double free or a range that is not exactly one allocation is refused
    /// and changes nothing.
    pub(crate) fn free(&mut self, range: PhysRange) -> Result<(), PoolError<'a>> {
        self.pages.free(range).map_err(|fault| PoolError::BadFree {
            pool: self.name,
            range,
            fault,
        })
    }

    /// Whether `range` is exactly one live allocation of this pool.
    pub fn is_allocation(&self, range: PhysRange) -> bool {
        self.pages.is_allocation(range)
    }

    /// Pages in use and in all.
    pub fn usage(&self) -> PoolUsage {
        let (used_pages, total_pages) = self.pages.usage();
        PoolUsage {
            used_pages,
            total_pages,
        }
    }

    /// Bytes in the largest free block.
    pub fn largest_free(&self) -> u64 {
        self.pages.largest_free()
    }

    /// The console line describing the pool (see the crate documentation).
    pub fn setup_line(&self) -> PoolLine<'_, 'a> {
        PoolLine(self)
    }
}

/// The console line describing a pool, printed once at setup:
///
/// `dma: pool <name> <base>+<size> window <va> <nc|wb|linear> xen-flush=<state> -> <sync>`
///
/// `<state>` is `accepted`, `refused(<ERRNO>)` or `none` (not asked: no
/// hypervisor, or a pool in the linear map); `<sync>` is how a
/// non-coherent device's request (a bidirectional mapping) is maintained in
/// the pool: `xen cache flush`, `window VA maintenance`, `linear VA
/// maintenance` or `no CPU maintenance`.
pub struct PoolLine<'p, 'a>(&'p Pool<'a>);

impl fmt::Display for PoolLine<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pool = self.0;
        let attributes = match pool.placement {
            PoolPlacement::OwnWindow {
                attributes: WindowAttributes::NonCacheable,
                ..
            } => "nc",
            PoolPlacement::OwnWindow {
                attributes: WindowAttributes::WriteBack,
                ..
            } => "wb",
            PoolPlacement::Linear => "linear",
        };
        write!(
            f,
            "dma: pool {} {:#x}+{:#x} window {:#x} {attributes} xen-flush=",
            pool.name, pool.phys.base.0, pool.phys.size, pool.window.0
        )?;
        match pool.flush_support {
            Some(support) => write!(f, "{support}")?,
            None => f.write_str("none")?,
        }
        // What a non-coherent device's request (the device reads and writes)
        // costs: the first maintenance of its two syncs.
        let action = [SyncPoint::ForDevice, SyncPoint::ForCpu]
            .into_iter()
            .map(|point| {
                sync_action(
                    false,
                    pool.class,
                    pool.host,
                    pool.flush_support,
                    pool.window_cacheable(),
                    point,
                    DmaDirection::Bidirectional,
                )
            })
            .find(|action| *action != SyncAction::None)
            .unwrap_or(SyncAction::None);
        f.write_str(match action {
            SyncAction::None => " -> no CPU maintenance",
            SyncAction::LinearVa { .. } => " -> linear VA maintenance",
            SyncAction::WindowVa { .. } => " -> window VA maintenance",
            SyncAction::Platform { .. } => " -> xen cache flush",
        })
    }
}

/// The first byte of `range` whose class `accept` rejects, with that class.
/// Walks region by region, so it costs one lookup per region, not per byte.
pub(crate) fn first_rejected_byte<'m>(
    map: &'m AddressMap,
    range: PhysRange,
    accept: impl Fn(PhysAddr, &AddressClass<'m>) -> bool,
) -> Option<(PhysAddr, AddressClass<'m>)> {
    let mut pa = range.base;
    while pa.0 < range.end() {
        let class = map.classify(pa);
        let region_end = map.region_of(pa).map(|region| region.phys.end());
        match region_end {
            Some(end) if accept(pa, &class) => pa = PhysAddr(end),
            _ => return Some((pa, class)),
        }
    }
    None
}

/// Every pool of the system, set up at boot. Devices refer to pools by
/// [`PoolId`].
pub struct PoolSet<'a> {
    map: &'a AddressMap,
    host: Host,
    pools: Vec<Pool<'a>>,
}

impl<'a> PoolSet<'a> {
    /// No pools yet, on `host`; every pool will be checked against `map`,
    /// and every DMA operation classifies addresses with it.
    pub fn new(map: &'a AddressMap, host: Host) -> Self {
        Self {
            map,
            host,
            pools: Vec::new(),
        }
    }

    /// The address map the pools were checked against.
    pub fn address_map(&self) -> &'a AddressMap {
        self.map
    }

    /// What the kernel runs on.
    pub fn host(&self) -> Host {
        self.host
    }

    /// Sets up a pool: checks it against the address map, cleans and
    /// invalidates an own-window pool once through its window (so that no
    /// line an earlier cacheable alias left can later be written back over
    /// device data; the policy for non-cacheable windows relies on it:
    /// see [`sync_action`]), and, when a platform is given, probes whether it
    /// flushes the pool's pages (own-window pools only: a pool in the linear
    /// map is always maintained by linear VA).
    ///
    /// This is setup: it allocates the pool's allocator metadata.
    ///
    /// # Safety
    ///
    /// The set's address map describes the running kernel's mappings for as
    /// long as the set lives (every window it names maps its region with the
    /// attributes it says, and the linear map is where it says), and
    /// `spec.phys` is memory reserved for this pool: from now on nothing but
    /// this pool's allocations (their owners, their devices and the DMA
    /// layer) reads or writes it, and it stays mapped. The layer zeroes,
    /// copies into and cleans it, and hands its addresses to devices.
    #[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
    pub unsafe fn add(
        &mut self,
        spec: PoolSpec<'a>,
        cache: &mut dyn CacheMaintenance,
        platform: Option<&mut dyn PlatformFlush>,
    ) -> Result<PoolId, SetupError<'a>> {
        let map = self.map;
        let name = spec.name;
        if self.find(name).is_some() {
            return Err(SetupError::DuplicatePool { pool: name });
        }
        if let Some(existing) = self.kernel_pool(spec.role) {
            return Err(SetupError::DuplicateKernelPool {
                role: spec.role,
                existing: self.pools[existing.0].name,
                pool: name,
            });
        }
        let phys = spec.phys;
        if phys.size == 0
            || !phys.base.is_aligned(PAGE_SIZE)
            || !phys.size.is_multiple_of(PAGE_SIZE)
            || phys.base.checked_add(phys.size).is_none()
        {
            return Err(SetupError::PoolNotPageAligned { pool: name, phys });
        }
        let (window, class) = match spec.placement {
            PoolPlacement::OwnWindow { window, .. } => {
                let rejected = first_rejected_byte(map, phys, |pa, class| {
                    matches!(class, AddressClass::NoMapPool { pool, window: mapped }
                        if *pool == name && *mapped == window.checked_add(pa.0 - phys.base.0))
                });
                if let Some((pa, class)) = rejected {
                    return Err(match class {
                        AddressClass::NoMapPool {
                            pool,
                            window: mapped,
                        } if pool == name => SetupError::PoolWindowMismatch {
                            pool: name,
                            declared: window,
                            mapped,
                        },
                        class => SetupError::PoolPlacementMismatch {
                            pool: name,
                            placement: spec.placement,
                            phys: pa,
                            class,
                        },
                    });
                }
                (window, MemoryClass::NoMapPool)
            }
            PoolPlacement::Linear => {
                let rejected = first_rejected_byte(map, phys, |_, class| {
                    matches!(
                        class,
                        AddressClass::LinearRam { .. } | AddressClass::MappedPool { .. }
                    )
                });
                if let Some((pa, class)) = rejected {
                    return Err(SetupError::PoolPlacementMismatch {
                        pool: name,
                        placement: spec.placement,
                        phys: pa,
                        class,
                    });
                }
                match map.classify(phys.base) {
                    AddressClass::MappedPool { virt, .. } => (virt, MemoryClass::MappedPool),
                    _ => (
                        VirtAddr(phys.base.0.wrapping_add(map.linear_offset())),
                        MemoryClass::LinearRam,
                    ),
                }
            }
        };
        let mut pool = Pool {
            name,
            phys,
            window,
            placement: spec.placement,
            class,
            role: spec.role,
            host: self.host,
            flush_support: None,
            refusal_warned: false,
            pages: PageAllocator::new(phys),
        };
        if let PoolPlacement::OwnWindow { .. } = spec.placement {
            cache.maintain(
                CacheOp::CleanInvalidate,
                &OwnedVirtRange::new(window, phys.size),
            );
            if let Some(platform) = platform {
                pool.probe_platform_flush(platform);
            }
        }
        self.pools.push(pool);
        Ok(PoolId(self.pools.len() - 1))
    }

    /// The pool `id` names, if it is one of this set's.
    pub fn get(&self, id: PoolId) -> Option<&Pool<'a>> {
        self.pools.get(id.0)
    }

    /// The pool `id` names, mutably, if it is one of this set's.
    pub(crate) fn get_mut(&mut self, id: PoolId) -> Option<&mut Pool<'a>> {
        self.pools.get_mut(id.0)
    }

    /// The pool called `name`.
    pub fn find(&self, name: &str) -> Option<PoolId> {
        self.pools
            .iter()
            .position(|pool| pool.name == name)
            .map(PoolId)
    }

    /// The kernel's pool with `role`, if one was added (`None` for
    /// [`PoolRole::DeviceTree`] and [`PoolRole::DevicePrivate`], which are
    /// not kernel pools).
    pub fn kernel_pool(&self, role: PoolRole) -> Option<PoolId> {
        if matches!(role, PoolRole::DeviceTree | PoolRole::DevicePrivate) {
            return None;
        }
        self.pools
            .iter()
            .position(|pool| pool.role == role)
            .map(PoolId)
    }

    /// Every pool, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Pool<'a>> {
        self.pools.iter()
    }
}
