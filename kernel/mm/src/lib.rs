//! Memory-management logic of tidepool that does not touch hardware: typed
//! physical and virtual addresses, the address map that classifies every
//! physical address (and refuses to invent a linear address for memory that is
//! not in the linear map), the kernel's address-space layout, page-table
//! construction, and the one name of a cache maintenance operation.
//!
//! Everything here builds and is unit-tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod addr;
pub mod address_map;
pub mod attributes;
pub mod cache;
pub mod carve;
mod descriptor;
pub mod layout;
pub mod page_table;
pub mod verify;

pub use addr::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr};
pub use address_map::{
    AddressClass, AddressMap, IdentityRange, Region, RegionKind, TranslationError,
};
pub use attributes::{MAIR_EL1_VALUE, MapAttributes, MemoryType, TcrError, tcr_el1};
pub use cache::CacheOp;
pub use carve::{CarveError, carve};
pub use layout::{
    BuildError, ImageSections, KernelLayout, KernelRoots, LINEAR_OFFSET, Mapping, MappingKind,
    MmioSpec, NamedRange, PlanError, PlanInput, PoolSpec, WINDOW_BASE, build_tables, plan_layout,
    tables_needed,
};
pub use page_table::{
    Granule, MapError, MappingCounts, PageTable, TableArena, TableRoot, TableView, Translation,
};
