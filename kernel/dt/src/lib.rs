//! The device tree, read once, and the memory plan the kernel derives from
//! it: what is RAM, what is reserved, what may be in the linear map, which
//! device owns which DMA pool. Shared by the kernel (no_std, at boot) and the
//! host tools (`cargo xtask dt`). The blob is read in one pass over its
//! token stream (the structural check and the node index are one walk).
//!
//! ```no_run
//! # fn demo(dtb: &[u8], image: tidepool_dt::AddrRange) -> Result<(), tidepool_dt::DtbError> {
//! let dt = tidepool_dt::DeviceTree::from_dtb_with(dtb, &[image])?;
//! for line in dt.plan.console_lines() {
//!     // println!("{line}");
//! #   let _ = line;
//! }
//! # Ok(()) }
//! ```
//!
//! # Reading
//!
//! A blob is first checked structurally (header, blocks in bounds, token
//! stream, names; see [`MAX_DEPTH`]). One that fails is a hard
//! [`DtbError`]: nothing is computed. Everything after that is per node: a
//! bad node is reported as a [`NodeError`] (path and reason) and the rest of
//! the tree is still used. No input makes this crate panic (a `cargo fuzz`
//! target checks it, see `README.md`).
//!
//! A node is *available* when `status` is absent, `"okay"` or `"ok"` on it
//! and on every ancestor. Unavailable nodes are skipped silently.
//!
//! - **Memory**: every available child of the root with
//!   `device_type = "memory"`; every `reg` entry, decoded with the root's
//!   `#address-cells`/`#size-cells` (default 2 and 1; each must be 1 or 2).
//!   Zero-size entries are ignored (boot loaders fill them in).
//! - **`/memreserve/`**: the header's reservation entries.
//! - **`/reserved-memory`**: each available child, decoded with
//!   `/reserved-memory`'s own cell counts and translated through its
//!   `ranges` (if `ranges` is missing, an error is reported and addresses
//!   are taken as they are). Static children have `reg` (one region per
//!   entry); dynamic ones have `size`, optional `alignment` and
//!   `alloc-ranges`. Also read: `no-map`, `reusable`, `compatible`,
//!   `linux,dma-default`.
//! - **Users**: every available node with `memory-region` is a user of each
//!   region its phandles name, with the matching `memory-region-names`
//!   entry. Users are full node paths, in tree order, each listed once.
//!
//! # The plan ([`Plan`])
//!
//! - `memory`: the banks, sorted by base, overlapping or touching banks
//!   merged.
//! - `memreserve`: the entries, sorted by base. They are kept out of dynamic
//!   placement but stay in the linear map (they are ordinary RAM the OS must
//!   not allocate, as in Linux).
//! - `reserved`: every valid region, sorted by base. A static region must
//!   lie entirely inside memory or entirely outside it. Inside memory it must
//!   overlap no region kept before it, taking regions by base, then tree
//!   order: of two overlapping regions the lower (or earlier) one is kept
//!   and the other reported (Linux refuses a no-map region over memory
//!   already reserved). A region outside every bank is kept and marked
//!   ([`ReservedRegion::in_memory`] is `false`), as Linux keeps it
//!   (`early_init_dt_reserve_memory` records it; a no-map one "won't be
//!   mapped"; `rmem_dma_setup` serves a `shared-dma-pool` there): memory a
//!   board has outside its `memory` nodes, such as Arm FVP's `vram@18000000`
//!   for its display controller, or RAM the boot loader adds to `/memory`
//!   (174 of Debian's 577 arm64 board DTBs have such regions, most for that
//!   reason). It is never in the linear map, whatever its `no-map`; the
//!   kernel reaches a pool there through a window like a no-map pool.
//!   Regions outside memory may overlap each other (several boards nest
//!   firmware regions), since none of them is mapped as RAM.
//!   A region partly inside memory is refused: no single rule says what its
//!   two parts are.
//! - **Dynamic placement**, deterministic: dynamic regions are placed one at
//!   a time in tree order. The alignment is `alignment` or
//!   [`MIN_DYNAMIC_ALIGNMENT`] (4 KiB), whichever is larger (Linux falls back
//!   to 64 bytes; a page keeps every pool made of whole pages at its start).
//!   The candidate windows are the `alloc-ranges` entries in the order
//!   listed, or all memory when there is none. In the first window that has
//!   room, the region takes the highest aligned base at which it lies inside
//!   memory and overlaps none of: any static `reg` range read (kept or
//!   not), the `/memreserve/` entries, the caller's `busy` ranges (see
//!   [`Plan::from_dtb_with`]: the kernel passes its image and the blob), and
//!   the dynamic regions placed before it. This is Linux's order (windows in
//!   order, top-down within a window) without Linux's other allocations.
//! - `linear_map`: memory minus every no-map range, sorted and merged. The
//!   no-map ranges are the `reg` ranges of every available no-map
//!   `/reserved-memory` child whose `reg` could be read, *even when that
//!   node was left out for an error*, and every placed no-map dynamic
//!   region. A no-map region that a `memory` node also covers (as Xen 4.17
//!   gives dom0) is still cut out. Ranges are exact to the byte; the MMU
//!   rounds them to pages later, inward where a no-map region is cut out.
//! - DMA pools ([`Plan::dma_pools`]): the `shared-dma-pool` regions, with
//!   their users.
//!
//! # Errors
//!
//! Every error reported at a `/reserved-memory` child's path means that
//! node, or that one `reg` entry, is not in `reserved` (so it is no pool and
//! has no users). The whole node is left out when the node is wrong: both or
//! neither of `reg` and `size`, `no-map` with `reusable`, a zero `size`, a
//! truncated or mis-sized property, a bad `alignment`, no room for a dynamic
//! region. One entry is left out when only that entry is wrong: zero size,
//! wrapping past 2^64, partly inside memory, overlapping a kept region. An error
//! never makes the plan less careful: a left-out node still keeps its
//! readable no-map `reg` ranges out of the linear map and all its readable
//! `reg` ranges out of dynamic placement. A bad memory node or entry is
//! left out of `memory`. A `memory-region` entry whose phandle is dangling,
//! ambiguous (claimed by two nodes), or names something other than an
//! available `/reserved-memory` child is reported at the user's path and
//! ignored. Errors are sorted by path; errors about `/memreserve/` entries
//! use the path [`MEMRESERVE_PATH`].
//!
//! # Console format
//!
//! [`Plan::console_lines`] yields one line per item, in this order (each
//! list sorted by base; numbers lowercase hex with `0x`):
//!
//! ```text
//! mem: bank 0x40000000 size=0x80000000
//! mem: memreserve 0x48000000 size=0x10000
//! mem: reserved /reserved-memory/dma@78000000 base=0x78000000 size=0x400000 static no-map compatible=shared-dma-pool users=/virtio_mmio@a003e00
//! mem: reserved /reserved-memory/pool base=0xbfc00000 size=0x100000 dynamic no-map compatible=shared-dma-pool users=-
//! mem: linear 0x40000000 size=0x38000000
//! mem: error /reserved-memory/foo: has both `reg` and `size`
//! mem: summary banks=1 memreserve=1 reserved=2 linear=2 errors=1
//! ```
//!
//! A `reserved` line has, after `size=`, `static` or `dynamic`, then any of
//! `no-map`, `reusable`, `dma-default`, `outside-memory` (in that order), then
//! `compatible=` and `users=` as comma-separated lists (`-` when empty).
//! Spaces and control characters in device-tree text are written `\xNN`, so
//! fields never split.
//!
//! # JSON format
//!
//! [`Plan::to_json`] gives one line (addresses and sizes as lowercase hex
//! strings, lists sorted by base; a region with several `reg` entries
//! appears once per entry):
//!
//! ```text
//! {"memory":[{"base":"0x40000000","size":"0x80000000"}],
//!  "memreserve":[{"base":"0x...","size":"0x..."}],
//!  "reserved":[{"path":"/reserved-memory/dma@78000000","base":"0x78000000","size":"0x400000",
//!    "compatible":["shared-dma-pool"],"no_map":true,"reusable":false,"dynamic":false,
//!    "in_memory":true,"users":["/virtio_mmio@a003e00"]}],
//!  "linear_map":[{"base":"0x40000000","size":"0x38000000"}],
//!  "errors":[{"path":"/reserved-memory/foo","reason":"..."}]}
//! ```
//!
//! `Display` on [`Plan`] prints the same as a table for people.
//!
//! # Platform facts
//!
//! [`Platform`] holds `/chosen` (bootargs, the resolved `stdout-path`), the
//! Xen `/hypervisor` node, the GIC, the architected timer, PSCI, virtio-mmio
//! transports and the UARTs the kernel drives (PL011, SBSA, i.MX); see its module for the rules.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod blob;
mod describe;
mod error;
mod plan;
mod platform;
mod range;
mod report;
#[cfg(test)]
mod testing;
mod tree;

#[cfg(test)]
mod tests;

pub use blob::MAX_DEPTH;
pub use describe::{DescribeError, NodeDescription, PropertyValue, describe_node, describe_tree};
pub use error::{AddrRangeText, Block, DtbError, NodeError, NodeErrorKind, StructureError};
pub use plan::{
    MEMRESERVE_PATH, MIN_DYNAMIC_ALIGNMENT, Placement, Plan, RegionUser, ReservedRegion,
};
pub use platform::{
    ArchTimer, Chosen, DmaDeviceNode, Gic, GicInterrupt, GicVersion, Hypervisor, InterruptKind,
    Platform, Psci, PsciMethod, Stdout, Uart, UartKind, Usdhc, VirtioMmio,
};
pub use range::AddrRange;
pub use report::ConsoleLine;

/// The memory plan and the platform facts of one device tree, read in one
/// pass (what the kernel does at boot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceTree {
    /// The memory plan.
    pub plan: Plan,
    /// The platform facts.
    pub platform: Platform,
}

impl DeviceTree {
    /// Reads `dtb`; dynamic reserved regions are also kept out of `busy`
    /// (see [`Plan::from_dtb_with`]). The one reading of the blob: at boot
    /// every fact comes from it, the early console's included.
    pub fn from_dtb_with(dtb: &[u8], busy: &[AddrRange]) -> Result<DeviceTree, DtbError> {
        let checked = blob::check(dtb)?;
        let tree = tree::Tree::new(&checked)?;
        Ok(DeviceTree {
            plan: Plan::build(&tree, &checked.memreserve, busy),
            platform: Platform::build(&tree),
        })
    }
}
