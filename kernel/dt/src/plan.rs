//! The memory plan: memory banks, `/memreserve/` entries, reserved regions
//! with their final placement and users, the linear map, and the errors.
//! The rules are documented on the crate.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::blob;
use crate::error::{DtbError, NodeError, NodeErrorKind};
use crate::range::{self, AddrRange};
use crate::tree::{self, ROOT, Tree};

/// Path under which errors about `/memreserve/` entries are reported.
pub const MEMRESERVE_PATH: &str = "/memreserve/";

/// Smallest alignment of a dynamically placed region (one 4 KiB page), so
/// that a dynamic region always starts on a page boundary.
pub const MIN_DYNAMIC_ALIGNMENT: u64 = 0x1000;

/// How a reserved region got its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// From `reg`.
    Static,
    /// Placed by this plan from `size` (and `alignment`, `alloc-ranges`).
    Dynamic {
        /// The alignment used: `alignment` or [`MIN_DYNAMIC_ALIGNMENT`],
        /// whichever is larger.
        alignment: u64,
    },
}

/// A device that names a reserved region in its `memory-region`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionUser {
    /// Full path of the device node.
    pub path: String,
    /// The matching `memory-region-names` entry, if there is one.
    pub name: Option<String>,
    /// Whether the device's DMA is cache-coherent (the nearest
    /// `dma-coherent`/`dma-noncoherent`, as for every device).
    pub dma_coherent: bool,
}

/// One reserved region (one `reg` entry of a `/reserved-memory` child, or
/// the placement of a dynamic one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedRegion {
    /// Full path of the `/reserved-memory` child.
    pub path: String,
    /// Where it is, exact to the byte.
    pub range: AddrRange,
    /// Its `compatible` strings, in order.
    pub compatible: Vec<String>,
    /// `no-map`: RAM that must stay out of the linear map.
    pub no_map: bool,
    /// `reusable`: the OS may use it while its owner does not.
    pub reusable: bool,
    /// `linux,dma-default`: the default DMA pool for devices without a
    /// `memory-region`.
    pub dma_default: bool,
    /// Static (`reg`) or dynamic (`size`).
    pub placement: Placement,
    /// Whether it lies inside memory (one bank). A static region that
    /// overlaps no bank is kept with `false`: memory the board has outside
    /// its `memory` nodes (a display's VRAM, as on Arm's FVP) or RAM the boot
    /// loader adds to `/memory` later. It is never in the linear map.
    pub in_memory: bool,
    /// Devices naming it in `memory-region`, in tree order.
    pub users: Vec<RegionUser>,
}

impl ReservedRegion {
    /// Whether `compatible` lists `name`.
    pub fn is_compatible(&self, name: &str) -> bool {
        self.compatible.iter().any(|c| c == name)
    }

    /// Whether it is a DMA pool (`shared-dma-pool`).
    pub fn is_dma_pool(&self) -> bool {
        self.is_compatible("shared-dma-pool")
    }

    /// Whether the linear map covers it: it is inside memory and not
    /// `no-map`. Every other region can be reached only through a window.
    pub fn is_linear(&self) -> bool {
        self.in_memory && !self.no_map
    }
}

/// The kernel's memory decisions, computed from a device tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub(crate) memory: Vec<AddrRange>,
    pub(crate) memreserve: Vec<AddrRange>,
    pub(crate) reserved: Vec<ReservedRegion>,
    pub(crate) linear_map: Vec<AddrRange>,
    pub(crate) errors: Vec<NodeError>,
}

impl Plan {
    /// The plan of the device tree blob `dtb`.
    pub fn from_dtb(dtb: &[u8]) -> Result<Plan, DtbError> {
        Self::from_dtb_with(dtb, &[])
    }

    /// The plan of `dtb`, with dynamic regions also kept out of `busy`
    /// (for example the kernel image and the blob itself).
    pub fn from_dtb_with(dtb: &[u8], busy: &[AddrRange]) -> Result<Plan, DtbError> {
        let checked = blob::check(dtb)?;
        let tree = Tree::new(&checked)?;
        Ok(Self::build(&tree, &checked.memreserve, busy))
    }

    /// Memory banks, sorted by base, overlapping or touching banks merged.
    pub fn memory(&self) -> &[AddrRange] {
        &self.memory
    }

    /// `/memreserve/` entries, sorted by base (not merged).
    pub fn memreserve(&self) -> &[AddrRange] {
        &self.memreserve
    }

    /// Reserved regions, sorted by base, each inside memory or outside every
    /// bank ([`ReservedRegion::in_memory`]); those inside memory are
    /// disjoint, those outside may overlap each other.
    pub fn reserved(&self) -> &[ReservedRegion] {
        &self.reserved
    }

    /// Memory the kernel may put in its linear map: memory minus every
    /// no-map range, sorted and merged, exact to the byte.
    pub fn linear_map(&self) -> &[AddrRange] {
        &self.linear_map
    }

    /// What was wrong, sorted by node path (then in detection order).
    pub fn errors(&self) -> &[NodeError] {
        &self.errors
    }

    /// The DMA pools (`shared-dma-pool` regions), sorted by base.
    pub fn dma_pools(&self) -> impl Iterator<Item = &ReservedRegion> {
        self.reserved.iter().filter(|r| r.is_dma_pool())
    }

    /// The regions of the `/reserved-memory` child at `path` (several if it
    /// has several `reg` entries).
    pub fn regions_of<'p>(&'p self, path: &'p str) -> impl Iterator<Item = &'p ReservedRegion> {
        self.reserved.iter().filter(move |r| r.path == path)
    }

    pub(crate) fn build(
        tree: &Tree<'_>,
        memreserve_entries: &[(u64, u64)],
        busy: &[AddrRange],
    ) -> Plan {
        let mut errors = Vec::new();
        let memory = memory_banks(tree, &mut errors);
        let (mut memreserve, bad) = blob::memreserve_ranges(memreserve_entries);
        memreserve.sort_unstable();
        for (entry, base, size) in bad {
            let kind = if size == 0 {
                NodeErrorKind::ZeroSize {
                    property: "memreserve",
                    entry: Some(entry),
                }
            } else {
                NodeErrorKind::Wraps {
                    property: "memreserve",
                    base,
                    size,
                }
            };
            errors.push(NodeError {
                path: MEMRESERVE_PATH.to_string(),
                kind,
            });
        }

        let (reserved_memory, children) = reserved_children(tree, &mut errors);
        let mut regions = static_regions(tree, &children, &memory, &mut errors);

        // Everything a dynamic region must avoid: every readable static range
        // (kept or not), the memreserve entries and the caller's ranges.
        let mut taken: Vec<AddrRange> = children
            .iter()
            .flat_map(|c| c.readable.iter().copied())
            .collect();
        taken.extend_from_slice(&memreserve);
        taken.extend_from_slice(busy);
        let mut taken = range::normalize(taken);
        for (index, child) in children.iter().enumerate() {
            let Some(Request::Dynamic {
                size,
                alignment,
                windows,
            }) = &child.request
            else {
                continue;
            };
            match place(&memory, &taken, *size, *alignment, windows.as_deref()) {
                Some(placed) => {
                    taken = range::normalize([taken.as_slice(), &[placed]].concat());
                    regions.push(child.region(
                        tree,
                        placed,
                        Placement::Dynamic {
                            alignment: *alignment,
                        },
                        true,
                        index,
                    ));
                }
                None => errors.push(tree.error(
                    child.node,
                    NodeErrorKind::NoRoom {
                        size: *size,
                        alignment: *alignment,
                    },
                )),
            }
        }

        // Every no-map range that is known stays out of the linear map, even
        // where its node had an error.
        let no_map_static = children
            .iter()
            .filter(|c| c.no_map)
            .flat_map(|c| c.readable.iter().copied());
        let no_map_dynamic = regions
            .iter()
            .filter(|r| r.region.no_map && r.region.placement != Placement::Static);
        let holes = range::normalize(
            no_map_static
                .chain(no_map_dynamic.map(|r| r.region.range))
                .collect(),
        );
        let linear_map = range::subtract(&memory, &holes);

        attach_users(tree, reserved_memory, &children, &mut regions, &mut errors);
        let mut reserved: Vec<ReservedRegion> = regions.into_iter().map(|r| r.region).collect();
        reserved.sort_by(|a, b| (a.range.base(), &a.path).cmp(&(b.range.base(), &b.path)));
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        Plan {
            memory,
            memreserve,
            reserved,
            linear_map,
            errors,
        }
    }
}

/// The banks of every available root child with `device_type = "memory"`,
/// normalized; zero-size entries are ignored.
fn memory_banks(tree: &Tree<'_>, errors: &mut Vec<NodeError>) -> Vec<AddrRange> {
    let mut banks = Vec::new();
    let mut root_cells = None;
    for &node in &tree.nodes[ROOT].children {
        if !tree.nodes[node].available || tree.string(node, "device_type") != Ok(Some("memory")) {
            continue;
        }
        let cells = match root_cells.get_or_insert_with(|| tree.cells(ROOT)) {
            Ok(cells) => *cells,
            Err(error) => {
                errors.push(error.clone());
                return Vec::new();
            }
        };
        let Some(reg) = tree.property(node, "reg") else {
            errors.push(tree.error(node, NodeErrorKind::Missing { property: "reg" }));
            continue;
        };
        match tree::decode(reg, "reg", [cells.address, cells.size]) {
            Err(kind) => errors.push(tree.error(node, kind)),
            Ok(entries) => {
                for entry in entries.iter().filter(|e| e[1] != 0) {
                    match AddrRange::new(entry[0], entry[1]) {
                        Some(bank) => banks.push(bank),
                        None => errors.push(tree.error(node, wraps("reg", entry))),
                    }
                }
            }
        }
    }
    range::normalize(banks)
}

fn wraps(property: &'static str, entry: &[u64]) -> NodeErrorKind {
    NodeErrorKind::Wraps {
        property,
        base: entry[0],
        size: entry[1],
    }
}

/// What a valid `/reserved-memory` child asks for.
enum Request {
    Static,
    Dynamic {
        size: u64,
        alignment: u64,
        /// `alloc-ranges` (translated), or `None` for anywhere in memory.
        windows: Option<Vec<AddrRange>>,
    },
}

/// An available `/reserved-memory` child as read.
struct Child {
    node: usize,
    compatible: Vec<String>,
    no_map: bool,
    reusable: bool,
    dma_default: bool,
    /// `reg` entries that decoded to a non-empty range, translated.
    readable: Vec<AddrRange>,
    /// `None` when the node is left out for an error.
    request: Option<Request>,
}

impl Child {
    fn region(
        &self,
        tree: &Tree<'_>,
        range: AddrRange,
        placement: Placement,
        in_memory: bool,
        child: usize,
    ) -> Region {
        Region {
            child,
            region: ReservedRegion {
                path: tree.nodes[self.node].path.clone(),
                range,
                compatible: self.compatible.clone(),
                no_map: self.no_map,
                reusable: self.reusable,
                dma_default: self.dma_default,
                placement,
                in_memory,
                users: Vec::new(),
            },
        }
    }
}

/// A region being planned, with the index of its child in `children`.
struct Region {
    child: usize,
    region: ReservedRegion,
}

/// Reads every available child of an available `/reserved-memory`; returns
/// that node (if any) and the children in tree order.
fn reserved_children(tree: &Tree<'_>, errors: &mut Vec<NodeError>) -> (Option<usize>, Vec<Child>) {
    let Some(parent) = tree
        .child(ROOT, "reserved-memory")
        .filter(|&n| tree.nodes[n].available)
    else {
        return (None, Vec::new());
    };
    let cells = match tree.cells(parent) {
        Ok(cells) => cells,
        Err(error) => {
            errors.push(error);
            return (Some(parent), Vec::new());
        }
    };
    let identity = !tree.has(parent, "ranges");
    if identity {
        errors.push(tree.error(parent, NodeErrorKind::MissingRanges));
    }
    let translate = |node: usize, range: AddrRange| {
        if identity {
            Ok(range)
        } else {
            tree.to_root(node, range)
        }
    };
    let children = tree.nodes[parent]
        .children
        .iter()
        .copied()
        .filter(|&n| tree.nodes[n].available);
    let children = children
        .map(|node| read_child(tree, node, cells, &translate, errors))
        .collect();
    (Some(parent), children)
}

fn read_child(
    tree: &Tree<'_>,
    node: usize,
    cells: tree::Cells,
    translate: &dyn Fn(usize, AddrRange) -> Result<AddrRange, NodeError>,
    errors: &mut Vec<NodeError>,
) -> Child {
    let mut valid = true;
    let mut reject = |kind: NodeErrorKind, errors: &mut Vec<NodeError>| {
        errors.push(tree.error(node, kind));
        valid = false;
    };
    let compatible = match tree.strings(node, "compatible") {
        Ok(list) => list
            .unwrap_or_default()
            .into_iter()
            .map(String::from)
            .collect(),
        Err(kind) => {
            reject(kind, errors);
            Vec::new()
        }
    };
    let no_map = tree.has(node, "no-map");
    let reusable = tree.has(node, "reusable");
    let reg = tree.property(node, "reg");
    let readable = match reg.map(|reg| tree::decode(reg, "reg", [cells.address, cells.size])) {
        None => Vec::new(),
        Some(Err(kind)) => {
            reject(kind, errors);
            Vec::new()
        }
        Some(Ok(entries)) => translated_entries(tree, node, "reg", &entries, translate, errors),
    };
    let has_size = tree.has(node, "size");
    let size = tree
        .property(node, "size")
        .map(|value| exact(value, "size", cells.size));
    let dynamic = match size {
        None => None,
        Some(Err(kind)) => {
            reject(kind, errors);
            None
        }
        Some(Ok(0)) => {
            reject(
                NodeErrorKind::ZeroSize {
                    property: "size",
                    entry: None,
                },
                errors,
            );
            None
        }
        Some(Ok(size)) => {
            let alignment = match tree
                .property(node, "alignment")
                .map(|value| exact(value, "alignment", cells.size))
            {
                None => Ok(MIN_DYNAMIC_ALIGNMENT),
                Some(Ok(alignment)) if alignment.is_power_of_two() => {
                    Ok(alignment.max(MIN_DYNAMIC_ALIGNMENT))
                }
                Some(Ok(alignment)) => Err(NodeErrorKind::BadAlignment(alignment)),
                Some(Err(kind)) => Err(kind),
            };
            let windows = match tree.property(node, "alloc-ranges") {
                None => Ok(None),
                Some(value) => tree::decode(value, "alloc-ranges", [cells.address, cells.size])
                    .map(|entries| {
                        Some(translated_entries(
                            tree,
                            node,
                            "alloc-ranges",
                            &entries,
                            translate,
                            errors,
                        ))
                    }),
            };
            match (alignment, windows) {
                (Ok(alignment), Ok(windows)) => Some(Request::Dynamic {
                    size,
                    alignment,
                    windows,
                }),
                (alignment, windows) => {
                    for kind in [alignment.err(), windows.err()].into_iter().flatten() {
                        reject(kind, errors);
                    }
                    None
                }
            }
        }
    };
    match (reg.is_some(), has_size) {
        (true, true) => reject(NodeErrorKind::RegAndSize, errors),
        (false, false) => reject(NodeErrorKind::NoRegOrSize, errors),
        _ => {}
    }
    if no_map && reusable {
        reject(NodeErrorKind::NoMapAndReusable, errors);
    }
    let request = match (valid, reg.is_some()) {
        (false, _) => None,
        (true, true) => Some(Request::Static),
        (true, false) => dynamic,
    };
    Child {
        node,
        compatible,
        no_map,
        reusable,
        dma_default: tree.has(node, "linux,dma-default"),
        readable,
        request,
    }
}

/// A property of one value of `cells` cells.
fn exact(value: &[u8], property: &'static str, cells: usize) -> Result<u64, NodeErrorKind> {
    if value.len() == cells * 4 {
        Ok(tree::read_cells(value))
    } else {
        Err(NodeErrorKind::BadLength {
            property,
            len: value.len(),
            expected: cells * 4,
        })
    }
}

/// The non-empty `(address, size)` entries as translated ranges; an entry
/// that is empty, wraps or does not translate is reported and skipped.
fn translated_entries(
    tree: &Tree<'_>,
    node: usize,
    property: &'static str,
    entries: &[[u64; 2]],
    translate: &dyn Fn(usize, AddrRange) -> Result<AddrRange, NodeError>,
    errors: &mut Vec<NodeError>,
) -> Vec<AddrRange> {
    let mut ranges = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        if entry[1] == 0 {
            errors.push(tree.error(
                node,
                NodeErrorKind::ZeroSize {
                    property,
                    entry: Some(index),
                },
            ));
            continue;
        }
        let Some(range) = AddrRange::new(entry[0], entry[1]) else {
            errors.push(tree.error(node, wraps(property, entry)));
            continue;
        };
        match translate(node, range) {
            Ok(range) => ranges.push(range),
            Err(error) => errors.push(error),
        }
    }
    ranges
}

/// The static regions kept: every readable entry of a valid static child
/// that is outside every bank, or inside memory and overlapping no region
/// kept before it (by base, then tree order).
fn static_regions(
    tree: &Tree<'_>,
    children: &[Child],
    memory: &[AddrRange],
    errors: &mut Vec<NodeError>,
) -> Vec<Region> {
    let mut candidates = Vec::new();
    for (index, child) in children.iter().enumerate() {
        if !matches!(child.request, Some(Request::Static)) {
            continue;
        }
        for &range in &child.readable {
            let in_memory = memory.iter().any(|bank| bank.contains(range));
            if in_memory || !memory.iter().any(|bank| bank.overlaps(range)) {
                candidates.push((range, index, in_memory));
            } else {
                errors.push(tree.error(child.node, NodeErrorKind::PartlyInMemory(range.into())));
            }
        }
    }
    candidates.sort_by_key(|&(range, index, _)| (range.base(), index));
    let mut kept: Vec<Region> = Vec::with_capacity(candidates.len());
    // Kept regions in memory are disjoint and sorted, so the one reaching
    // furthest is the only one a later candidate can overlap. Outside memory
    // nothing is mapped, so regions there may overlap (as in Linux).
    let mut furthest: Option<(AddrRange, usize)> = None;
    for (range, index, in_memory) in candidates {
        if !in_memory {
            kept.push(children[index].region(tree, range, Placement::Static, false, index));
            continue;
        }
        if let Some((_, other_index)) = furthest.filter(|(other, _)| other.overlaps(range)) {
            let other = tree.nodes[children[other_index].node].path.clone();
            errors.push(tree.error(
                children[index].node,
                NodeErrorKind::Overlaps {
                    range: range.into(),
                    other,
                },
            ));
            continue;
        }
        kept.push(children[index].region(tree, range, Placement::Static, in_memory, index));
        if furthest.is_none_or(|(other, _)| range.end() > other.end()) {
            furthest = Some((range, index));
        }
    }
    kept
}

/// Where a dynamic region of `size` bytes goes: in the first window
/// (`alloc-ranges` entry, in order; all memory without `alloc-ranges`) that
/// has room, at the highest `alignment`-aligned base where it lies inside
/// memory and outside `taken`.
fn place(
    memory: &[AddrRange],
    taken: &[AddrRange],
    size: u64,
    alignment: u64,
    windows: Option<&[AddrRange]>,
) -> Option<AddrRange> {
    let everywhere = [AddrRange::from_bounds(0, u64::MAX)?];
    windows.unwrap_or(&everywhere).iter().find_map(|&window| {
        let free = range::subtract(&range::clip(memory, window), taken);
        let base = range::highest_fit(&free, size, alignment)?;
        AddrRange::new(base, size)
    })
}

/// Adds every available node's `memory-region` entries to the users of the
/// regions they name.
fn attach_users(
    tree: &Tree<'_>,
    reserved_memory: Option<usize>,
    children: &[Child],
    regions: &mut [Region],
    errors: &mut Vec<NodeError>,
) {
    let mut regions_of_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, region) in regions.iter().enumerate() {
        regions_of_node
            .entry(children[region.child].node)
            .or_default()
            .push(index);
    }
    for (node, entry) in tree.nodes.iter().enumerate() {
        let Some(value) = tree
            .property(node, "memory-region")
            .filter(|_| entry.available)
        else {
            continue;
        };
        let phandles = match tree::decode(value, "memory-region", [1]) {
            Ok(phandles) if !phandles.is_empty() => phandles,
            Ok(_) => {
                errors.push(tree.error(
                    node,
                    NodeErrorKind::Truncated {
                        property: "memory-region",
                        len: 0,
                        unit: 4,
                    },
                ));
                continue;
            }
            Err(kind) => {
                errors.push(tree.error(node, kind));
                continue;
            }
        };
        let names = match tree.strings(node, "memory-region-names") {
            Ok(names) => names,
            Err(kind) => {
                errors.push(tree.error(node, kind));
                None
            }
        };
        if let Some(names) = names.as_ref().filter(|names| names.len() != phandles.len()) {
            let kind = NodeErrorKind::NamesMismatch {
                names: names.len(),
                phandles: phandles.len(),
            };
            errors.push(tree.error(node, kind));
        }
        for (index, phandle) in phandles.iter().map(|p| p[0] as u32).enumerate() {
            let target = match tree.target(node, "memory-region", index, phandle) {
                Ok(target) => target,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
            let target_path = || tree.nodes[target].path.clone();
            if !tree.nodes[target].available {
                errors.push(tree.error(
                    node,
                    NodeErrorKind::DisabledTarget {
                        entry: index,
                        target: target_path(),
                    },
                ));
                continue;
            }
            if tree.nodes[target].parent.is_none() || tree.nodes[target].parent != reserved_memory {
                errors.push(tree.error(
                    node,
                    NodeErrorKind::NotReservedMemory {
                        entry: index,
                        target: target_path(),
                    },
                ));
                continue;
            }
            let name = names
                .as_ref()
                .and_then(|names| names.get(index))
                .map(|name| name.to_string());
            for &region in regions_of_node
                .get(&target)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let users = &mut regions[region].region.users;
                if !users.iter().any(|user| user.path == entry.path) {
                    users.push(RegionUser {
                        path: entry.path.clone(),
                        name: name.clone(),
                        dma_coherent: crate::platform::dma_coherent(tree, node),
                    });
                }
            }
        }
    }
}
