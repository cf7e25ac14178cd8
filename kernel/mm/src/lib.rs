//! Memory-management logic of tidepool that does not touch hardware: typed
//! physical and virtual addresses, the address map that classifies every
//! physical address (and refuses to invent a linear address for memory that is
//! not in the linear map), and page-table construction.
//!
//! Everything here builds and is unit-tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod addr;
pub mod address_map;

pub use addr::{PhysAddr, PhysRange, VirtAddr, PAGE_SIZE};
pub use address_map::{AddressClass, AddressMap, Region, RegionKind, TranslationError};
