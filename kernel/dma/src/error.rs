//! Typed errors of pool and device setup and of the DMA operations.

use core::fmt;

use tidepool_mm::{AddressClass, PhysAddr, PhysRange, VirtAddr};
use tidepool_xen_abi::{DomId, GrantError, GrantRef};

use crate::device::DmaAddr;
use crate::pool::{PoolError, PoolId, PoolPlacement, PoolRole};

/// A pool or device the boot code described inconsistently.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SetupError<'a> {
    /// Two pools with one name.
    DuplicatePool {
        /// The name.
        pool: &'a str,
    },
    /// A second kernel pool for a role that has one.
    DuplicateKernelPool {
        /// The role.
        role: PoolRole,
        /// The pool that already has it.
        existing: &'a str,
        /// The pool added.
        pool: &'a str,
    },
    /// An empty range, or one that is not page-aligned.
    PoolNotPageAligned {
        /// The pool.
        pool: &'a str,
        /// Its range.
        phys: PhysRange,
    },
    /// The address map says something else about the pool's memory than
    /// its placement does.
    PoolPlacementMismatch {
        /// The pool.
        pool: &'a str,
        /// How it was declared.
        placement: PoolPlacement,
        /// The first byte that does not match.
        phys: PhysAddr,
        /// What the address map says that byte is.
        class: AddressClass<'a>,
    },
    /// An own-window pool whose window differs from the one in the address map.
    PoolWindowMismatch {
        /// The pool.
        pool: &'a str,
        /// The window declared.
        declared: VirtAddr,
        /// The window in the address map (for the same byte).
        mapped: Option<VirtAddr>,
    },
    /// A device's `memory-region` names no pool that was set up.
    UnknownPool {
        /// The device.
        device: &'a str,
        /// The pool named.
        pool: &'a str,
    },
    /// A device without a pool of its own, and no kernel pool to allocate
    /// its coherent memory from.
    NoKernelPool {
        /// The device.
        device: &'a str,
        /// The kernel pool it needs.
        role: PoolRole,
    },
    /// A grant device without a pool of its own: its buffers are the pages
    /// it grants, and they come from its pool alone.
    GrantDeviceWithoutPool {
        /// The device.
        device: &'a str,
    },
}

impl fmt::Display for SetupError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicatePool { pool } => write!(f, "pool {pool} is set up twice"),
            Self::DuplicateKernelPool {
                role,
                existing,
                pool,
            } => {
                write!(f, "pool {pool} cannot be the {role}: {existing} is")
            }
            Self::PoolNotPageAligned { pool, phys } => {
                write!(
                    f,
                    "pool {pool} {phys} is not a non-empty, page-aligned range"
                )
            }
            Self::PoolPlacementMismatch {
                pool,
                placement,
                phys,
                class,
            } => {
                let declared = match placement {
                    PoolPlacement::OwnWindow { .. } => "a no-map pool with its own window",
                    PoolPlacement::Linear => "in the linear map",
                };
                write!(
                    f,
                    "pool {pool} is declared {declared}, but {phys} is {class}"
                )
            }
            Self::PoolWindowMismatch {
                pool,
                declared,
                mapped: Some(mapped),
            } => {
                write!(
                    f,
                    "pool {pool} is declared with window {declared}, but is mapped at {mapped}"
                )
            }
            Self::PoolWindowMismatch {
                pool,
                declared,
                mapped: None,
            } => {
                write!(
                    f,
                    "pool {pool} is declared with window {declared}, but has no window in the address map"
                )
            }
            Self::UnknownPool { device, pool } => {
                write!(
                    f,
                    "device {device}: memory-region {pool} is not a DMA pool that was set up"
                )
            }
            Self::NoKernelPool { device, role } => {
                write!(
                    f,
                    "device {device} has no pool of its own and there is no {role}"
                )
            }
            Self::GrantDeviceWithoutPool { device } => {
                write!(f, "grant device {device} has no pool to grant pages of")
            }
        }
    }
}

/// A DMA operation that was refused. Nothing was left half-done: no memory
/// stays allocated and no mapping exists for a failed call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DmaError<'a> {
    /// The device's pool refused an allocation or a free.
    Pool {
        /// The device.
        device: &'a str,
        /// What the pool said.
        error: PoolError<'a>,
    },
    /// A mapping of zero bytes.
    ZeroLength {
        /// The device.
        device: &'a str,
    },
    /// A CPU buffer that runs past the end of the address space.
    BufferOutOfRange {
        /// The device.
        device: &'a str,
        /// Start of the buffer.
        virt: VirtAddr,
        /// Its length.
        len: u64,
    },
    /// A CPU buffer in no mapping the address map knows (so it has no
    /// physical address the device could use).
    BufferNotMapped {
        /// The device.
        device: &'a str,
        /// Start of the buffer.
        virt: VirtAddr,
    },
    /// A device without a pool can only use linear RAM directly; this byte of
    /// the buffer is something else.
    NotLinearRam {
        /// The device.
        device: &'a str,
        /// The first byte that is not linear RAM.
        phys: PhysAddr,
        /// What it is.
        class: AddressClass<'a>,
    },
    /// A mapping or coherent buffer handed to a device that did not make it.
    ForeignHandle {
        /// The device it was handed to.
        device: &'a str,
        /// The device that made it.
        owner: &'a str,
    },
    /// Coherent memory for a non-coherent device from a pool whose window
    /// is cacheable: it would not be coherent.
    CacheableCoherentPool {
        /// The device.
        device: &'a str,
        /// The pool.
        pool: &'a str,
    },
    /// The device refers to a pool that is not in the given pool set.
    UnknownPoolId {
        /// The device.
        device: &'a str,
        /// The pool id.
        pool: PoolId,
    },
    /// Streaming memory in the device's pool for a device without one.
    NoDevicePool {
        /// The device.
        device: &'a str,
    },
    /// [`DmaDevice::unmap_in_pool`](crate::DmaDevice::unmap_in_pool) of a
    /// mapping that is not of a pool buffer.
    NotInPool {
        /// The device.
        device: &'a str,
        /// The mapping's DMA address.
        dma: DmaAddr,
    },
    /// No live mapping or coherent buffer matches what was given.
    NoSuchMapping {
        /// The device.
        device: &'a str,
        /// DMA address given.
        dma: DmaAddr,
        /// Length given.
        len: u64,
    },
    /// A sync of part of a coherent buffer that is empty or runs past its end.
    OutsideCoherentBuffer {
        /// The device.
        device: &'a str,
        /// Offset of the part in the buffer.
        offset: u64,
        /// Length of the part.
        len: u64,
        /// The buffer's size.
        size: u64,
    },
    /// A grant device is given only memory of its own pool, granted once
    /// and kept ([`DmaDevice::map_in_pool`](crate::DmaDevice::map_in_pool),
    /// [`DmaDevice::alloc_coherent`](crate::DmaDevice::alloc_coherent));
    /// CPU buffers are refused.
    GrantDeviceNeedsPoolBuffer {
        /// The device.
        device: &'a str,
    },
    /// A grant device's operation without a grant table in the environment.
    NoGrantTable {
        /// The device.
        device: &'a str,
    },
    /// The grant table refused to grant a page; the pages granted before it
    /// stay granted to the buffer.
    GrantRefused {
        /// The device.
        device: &'a str,
        /// The domain the page was for.
        domid: DomId,
        /// The page.
        phys: PhysAddr,
        /// What the table said.
        error: GrantError,
    },
    /// Grants of a freed buffer that could not be ended (the other domain
    /// still maps them): the buffer's pages are leaked on purpose, never
    /// freed, since that domain may still write them.
    GrantsStillMapped {
        /// The device.
        device: &'a str,
        /// The domain that still maps them.
        domid: DomId,
        /// The first grant not ended.
        gref: GrantRef,
        /// Why it was not ended.
        error: GrantError,
        /// Grants not ended.
        count: usize,
        /// The buffer's pages, left allocated for good.
        leaked: PhysRange,
    },
}

impl fmt::Display for DmaError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool { device, error } => write!(f, "device {device}: {error}"),
            Self::ZeroLength { device } => write!(f, "device {device}: DMA of zero bytes"),
            Self::BufferOutOfRange { device, virt, len } => {
                write!(
                    f,
                    "device {device}: buffer at {virt} of {len:#x} bytes runs past the address space"
                )
            }
            Self::BufferNotMapped { device, virt } => {
                write!(
                    f,
                    "device {device}: buffer at {virt} is in no mapping of the address map"
                )
            }
            Self::NotLinearRam {
                device,
                phys,
                class,
            } => {
                write!(
                    f,
                    "device {device}: buffer byte {phys} is {class}, not linear RAM"
                )
            }
            Self::ForeignHandle { device, owner } => {
                write!(f, "device {device}: DMA handle belongs to {owner}")
            }
            Self::CacheableCoherentPool { device, pool } => write!(
                f,
                "device {device} is not DMA-coherent and pool {pool} is mapped cacheable: no coherent memory there"
            ),
            Self::UnknownPoolId { device, pool } => {
                write!(f, "device {device}: pool {pool} is not in this pool set")
            }
            Self::NoDevicePool { device } => {
                write!(f, "device {device} has no DMA pool of its own")
            }
            Self::NotInPool { device, dma } => {
                write!(
                    f,
                    "device {device}: the mapping at {dma} is not of a pool buffer"
                )
            }
            Self::NoSuchMapping { device, dma, len } => {
                write!(
                    f,
                    "device {device}: no live DMA buffer of {len:#x} bytes at {dma}"
                )
            }
            Self::OutsideCoherentBuffer {
                device,
                offset,
                len,
                size,
            } => write!(
                f,
                "device {device}: sync of {len:#x} bytes at {offset:#x} of a coherent buffer of {size:#x} bytes"
            ),
            Self::GrantDeviceNeedsPoolBuffer { device } => write!(
                f,
                "grant device {device}: only its pool's memory is granted, not CPU buffers"
            ),
            Self::NoGrantTable { device } => {
                write!(f, "grant device {device}: no grant table")
            }
            Self::GrantRefused {
                device,
                domid,
                phys,
                error,
            } => write!(
                f,
                "grant device {device}: page {phys} not granted to {domid}: {error}"
            ),
            Self::GrantsStillMapped {
                device,
                domid,
                gref,
                error,
                count,
                leaked,
            } => write!(
                f,
                "grant device {device}: {count} grants still mapped by {domid} (first {gref}: {error}); \
                 {leaked} leaked, never freed"
            ),
        }
    }
}
