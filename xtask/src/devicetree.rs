//! An editable device tree for the host side: QEMU's own DTB (`dumpdtb`) is
//! parsed into a [`Tree`], edited (scenario additions from `qemu/scenarios/`,
//! the `/chosen` pieces Xen or a bare boot needs) and written back as a DTB.
//!
//! Node order, property order, `/memreserve/` entries and `boot_cpuid_phys`
//! survive a round trip. Editing goes by absolute node path (`/chosen`,
//! `/virtio_mmio@a003e00`); every failure is a [`DtEditError`] naming the path.

mod boot;
mod dtb;
#[cfg(test)]
pub(crate) mod test_fixture;

use std::fmt;

pub use boot::{
    Module, add_xen_dom0, add_xen_dom0_ramdisk, add_xen_dom0less_domu, set_bootargs,
    set_xen_bootargs,
};
pub use dtb::{DtParseError, DtWriteError};

/// `#address-cells` when a node does not say (Devicetree Specification 2.3.5).
const DEFAULT_ADDRESS_CELLS: u32 = 2;
/// `#size-cells` when a node does not say (Devicetree Specification 2.3.5).
const DEFAULT_SIZE_CELLS: u32 = 1;
/// The all-ones phandle is reserved (Devicetree Specification 2.3.3).
const LAST_VALID_PHANDLE: u32 = 0xffff_fffe;

/// A whole device tree: the root node, the `/memreserve/` entries and the
/// header's boot CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The root node (its name is empty).
    pub root: Node,
    /// The memory reservation block, in order.
    pub memory_reservations: Vec<MemoryReservation>,
    /// The header's `boot_cpuid_phys`.
    pub boot_cpuid_phys: u32,
}

/// One `/memreserve/` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReservation {
    /// First reserved byte.
    pub address: u64,
    /// Length in bytes.
    pub size: u64,
}

/// A device-tree node: its name (with unit address), its properties in order
/// (raw big-endian values) and its children in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `name@unit-address`, or empty for the root.
    pub name: String,
    /// Properties as (name, raw value), in order.
    pub props: Vec<(String, Vec<u8>)>,
    /// Child nodes, in order.
    pub children: Vec<Node>,
}

/// The `#address-cells` and `#size-cells` a node gives its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellSizes {
    /// `#address-cells`.
    pub address: u32,
    /// `#size-cells`.
    pub size: u32,
}

/// An edit that could not be made: the node path and why.
#[derive(Debug, PartialEq, Eq)]
pub struct DtEditError {
    /// The node the edit was about.
    pub path: String,
    /// What was wrong.
    pub reason: DtEditReason,
}

/// Why an edit failed.
#[derive(Debug, PartialEq, Eq)]
pub enum DtEditReason {
    /// The path is not absolute, or has an empty component.
    BadPath,
    /// No node has this path.
    NoSuchNode,
    /// A node with this path exists already.
    NodeExists,
    /// The root cannot be deleted or given a `reg`.
    IsRoot,
    /// The node has no such property.
    NoSuchProperty(String),
    /// A string value contains a NUL byte (it would read as two strings).
    NulInString {
        /// The property being set.
        property: String,
    },
    /// A value does not fit in the number of cells the parent node gives it.
    DoesNotFit {
        /// The property being set.
        property: String,
        /// The value.
        value: u64,
        /// The cells available.
        cells: u32,
    },
    /// The parent's `#address-cells`/`#size-cells` is not 1 or 2, so a 64-bit
    /// value has no encoding.
    UnsupportedCells {
        /// The property being set.
        property: String,
        /// The cell count.
        cells: u32,
    },
    /// A `#address-cells`/`#size-cells` property is not one 32-bit cell.
    MalformedCellCount {
        /// `#address-cells` or `#size-cells`.
        property: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Every phandle value is in use.
    PhandlesExhausted,
}

impl fmt::Display for DtEditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path)?;
        match &self.reason {
            DtEditReason::BadPath => f.write_str("not an absolute node path"),
            DtEditReason::NoSuchNode => f.write_str("no such node"),
            DtEditReason::NodeExists => f.write_str("the node exists already"),
            DtEditReason::IsRoot => f.write_str("not possible on the root node"),
            DtEditReason::NoSuchProperty(name) => write!(f, "no property `{name}`"),
            DtEditReason::NulInString { property } => {
                write!(f, "`{property}`: the string contains a NUL byte")
            }
            DtEditReason::DoesNotFit {
                property,
                value,
                cells,
            } => {
                write!(
                    f,
                    "`{property}`: {value:#x} does not fit in {cells} cell(s)"
                )
            }
            DtEditReason::UnsupportedCells { property, cells } => {
                write!(
                    f,
                    "`{property}`: cannot encode a value in {cells} cells (only 1 or 2)"
                )
            }
            DtEditReason::MalformedCellCount { property, len } => {
                write!(f, "`{property}` is {len} bytes long, not one cell")
            }
            DtEditReason::PhandlesExhausted => f.write_str("no free phandle left"),
        }
    }
}

impl std::error::Error for DtEditError {}

impl DtEditError {
    fn new(path: &str, reason: DtEditReason) -> Self {
        Self {
            path: path.to_string(),
            reason,
        }
    }
}

impl Node {
    /// An empty node called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            props: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The raw value of property `name`.
    pub fn property(&self, name: &str) -> Option<&[u8]> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets property `name`: replaced where it stands, or appended.
    pub fn set_property(&mut self, name: &str, value: Vec<u8>) {
        match self.props.iter_mut().find(|(n, _)| n == name) {
            Some((_, old)) => *old = value,
            None => self.props.push((name.to_string(), value)),
        }
    }

    /// Removes property `name`, returning its value.
    pub fn remove_property(&mut self, name: &str) -> Option<Vec<u8>> {
        let index = self.props.iter().position(|(n, _)| n == name)?;
        Some(self.props.remove(index).1)
    }

    /// The child called exactly `name` (unit address included).
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    /// Every phandle in this subtree (`phandle` and the older `linux,phandle`).
    fn phandles(&self) -> impl Iterator<Item = u32> + '_ {
        let own = ["phandle", "linux,phandle"]
            .into_iter()
            .filter_map(|name| self.property(name))
            .filter_map(|value| <[u8; 4]>::try_from(value).ok())
            .map(u32::from_be_bytes);
        let below: Box<dyn Iterator<Item = u32> + '_> =
            Box::new(self.children.iter().flat_map(Node::phandles));
        own.chain(below)
    }
}

/// Splits an absolute path into its components (none for `/`).
fn components(path: &str) -> Result<Vec<&str>, DtEditError> {
    let bad = || DtEditError::new(path, DtEditReason::BadPath);
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    Ok(parts)
}

/// The parent's path and the last component of `path`.
fn split_parent(path: &str) -> Result<(String, &str), DtEditError> {
    let parts = components(path)?;
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| DtEditError::new(path, DtEditReason::IsRoot))?;
    Ok((format!("/{}", parents.join("/")), last))
}

/// `value` as `cells` big-endian 32-bit cells.
fn encode_cells(
    path: &str,
    property: &str,
    value: u64,
    cells: u32,
    out: &mut Vec<u8>,
) -> Result<(), DtEditError> {
    match cells {
        1 => {
            let cell = u32::try_from(value).map_err(|_| {
                DtEditError::new(
                    path,
                    DtEditReason::DoesNotFit {
                        property: property.to_string(),
                        value,
                        cells,
                    },
                )
            })?;
            out.extend_from_slice(&cell.to_be_bytes());
        }
        2 => out.extend_from_slice(&value.to_be_bytes()),
        _ => {
            return Err(DtEditError::new(
                path,
                DtEditReason::UnsupportedCells {
                    property: property.to_string(),
                    cells,
                },
            ));
        }
    }
    Ok(())
}

impl Tree {
    /// Parses a DTB.
    pub fn from_dtb(bytes: &[u8]) -> Result<Self, DtParseError> {
        dtb::parse(bytes)
    }

    /// Writes the tree as a DTB (version 17).
    pub fn to_dtb(&self) -> Result<Vec<u8>, DtWriteError> {
        dtb::write(self)
    }

    /// The node at `path`.
    pub fn node(&self, path: &str) -> Result<&Node, DtEditError> {
        let mut node = &self.root;
        for part in components(path)? {
            node = node
                .child(part)
                .ok_or_else(|| DtEditError::new(path, DtEditReason::NoSuchNode))?;
        }
        Ok(node)
    }

    /// The node at `path`, for editing.
    pub fn node_mut(&mut self, path: &str) -> Result<&mut Node, DtEditError> {
        let mut node = &mut self.root;
        for part in components(path)? {
            node = node
                .child_mut(part)
                .ok_or_else(|| DtEditError::new(path, DtEditReason::NoSuchNode))?;
        }
        Ok(node)
    }

    /// The node at `path`, created (with any missing parents) if absent.
    pub fn get_or_create(&mut self, path: &str) -> Result<&mut Node, DtEditError> {
        let mut node = &mut self.root;
        for part in components(path)? {
            let index = match node.children.iter().position(|c| c.name == part) {
                Some(index) => index,
                None => {
                    node.children.push(Node::new(part));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[index];
        }
        Ok(node)
    }

    /// Adds an empty node at `path` as the last child of its parent, which
    /// must exist; fails if the node exists already.
    pub fn add_node(&mut self, path: &str) -> Result<&mut Node, DtEditError> {
        let (parent_path, name) = split_parent(path)?;
        let parent = self.node_mut(&parent_path)?;
        if parent.child(name).is_some() {
            return Err(DtEditError::new(path, DtEditReason::NodeExists));
        }
        parent.children.push(Node::new(name));
        Ok(parent.children.last_mut().expect("a child was just pushed"))
    }

    /// Removes the node at `path` (and its subtree), returning it.
    pub fn delete_node(&mut self, path: &str) -> Result<Node, DtEditError> {
        let (parent_path, name) = split_parent(path)?;
        let parent = self
            .node_mut(&parent_path)
            .map_err(|_| DtEditError::new(path, DtEditReason::NoSuchNode))?;
        let index = parent
            .children
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| DtEditError::new(path, DtEditReason::NoSuchNode))?;
        Ok(parent.children.remove(index))
    }

    /// Sets property `name` of the node at `path` to the raw `value`.
    pub fn set_property(
        &mut self,
        path: &str,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), DtEditError> {
        self.node_mut(path)?.set_property(name, value);
        Ok(())
    }

    /// Sets a list of 32-bit cells (`<a b c>`).
    pub fn set_u32s(&mut self, path: &str, name: &str, cells: &[u32]) -> Result<(), DtEditError> {
        self.set_property(
            path,
            name,
            cells.iter().flat_map(|c| c.to_be_bytes()).collect(),
        )
    }

    /// Sets a 64-bit value as two cells (`<hi lo>`), whatever the parent's cell sizes.
    pub fn set_u64(&mut self, path: &str, name: &str, value: u64) -> Result<(), DtEditError> {
        self.set_property(path, name, value.to_be_bytes().to_vec())
    }

    /// Sets a string.
    pub fn set_string(&mut self, path: &str, name: &str, value: &str) -> Result<(), DtEditError> {
        self.set_strings(path, name, &[value])
    }

    /// Sets a string list (`"a", "b"`).
    pub fn set_strings<S: AsRef<str>>(
        &mut self,
        path: &str,
        name: &str,
        values: &[S],
    ) -> Result<(), DtEditError> {
        let mut bytes = Vec::new();
        for value in values.iter().map(AsRef::as_ref) {
            if value.contains('\0') {
                return Err(DtEditError::new(
                    path,
                    DtEditReason::NulInString {
                        property: name.to_string(),
                    },
                ));
            }
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0);
        }
        self.set_property(path, name, bytes)
    }

    /// Sets an empty (boolean) property.
    pub fn set_empty(&mut self, path: &str, name: &str) -> Result<(), DtEditError> {
        self.set_property(path, name, Vec::new())
    }

    /// Sets (address, size) pairs encoded with the parent's `#address-cells`
    /// and `#size-cells`, as `reg` and `alloc-ranges` are.
    pub fn set_address_size_pairs(
        &mut self,
        path: &str,
        name: &str,
        pairs: &[(u64, u64)],
    ) -> Result<(), DtEditError> {
        let cells = self.parent_cell_sizes(path)?;
        let mut bytes = Vec::new();
        for &(address, size) in pairs {
            encode_cells(path, name, address, cells.address, &mut bytes)?;
            encode_cells(path, name, size, cells.size, &mut bytes)?;
        }
        self.set_property(path, name, bytes)
    }

    /// Sets one size encoded with the parent's `#size-cells`, as a
    /// reserved-memory node's `size` and `alignment` are.
    pub fn set_size(&mut self, path: &str, name: &str, size: u64) -> Result<(), DtEditError> {
        let cells = self.parent_cell_sizes(path)?;
        let mut bytes = Vec::new();
        encode_cells(path, name, size, cells.size, &mut bytes)?;
        self.set_property(path, name, bytes)
    }

    /// Removes property `name` from the node at `path`, returning its value;
    /// fails if the node does not have it.
    pub fn delete_property(&mut self, path: &str, name: &str) -> Result<Vec<u8>, DtEditError> {
        self.node_mut(path)?
            .remove_property(name)
            .ok_or_else(|| DtEditError::new(path, DtEditReason::NoSuchProperty(name.to_string())))
    }

    /// The `#address-cells`/`#size-cells` the node at `path` gives its
    /// children, with the specification's defaults (2 and 1) when absent.
    pub fn cell_sizes(&self, path: &str) -> Result<CellSizes, DtEditError> {
        let node = self.node(path)?;
        let read = |property: &str, default: u32| match node.property(property) {
            None => Ok(default),
            Some(value) => <[u8; 4]>::try_from(value)
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    DtEditError::new(
                        path,
                        DtEditReason::MalformedCellCount {
                            property: property.to_string(),
                            len: value.len(),
                        },
                    )
                }),
        };
        Ok(CellSizes {
            address: read("#address-cells", DEFAULT_ADDRESS_CELLS)?,
            size: read("#size-cells", DEFAULT_SIZE_CELLS)?,
        })
    }

    fn parent_cell_sizes(&self, path: &str) -> Result<CellSizes, DtEditError> {
        let (parent, _) = split_parent(path)?;
        self.node(path)?;
        self.cell_sizes(&parent)
    }

    /// A phandle no node uses yet: one more than the largest in the tree.
    pub fn allocate_phandle(&self) -> Result<u32, DtEditError> {
        let next = self
            .root
            .phandles()
            .max()
            .map_or(Some(1), |max| max.checked_add(1));
        next.filter(|&p| p <= LAST_VALID_PHANDLE)
            .ok_or_else(|| DtEditError::new("/", DtEditReason::PhandlesExhausted))
    }

    /// Gives the node at `path` a fresh phandle and returns it.
    pub fn assign_phandle(&mut self, path: &str) -> Result<u32, DtEditError> {
        let phandle = self.allocate_phandle()?;
        self.set_u32s(path, "phandle", &[phandle])?;
        Ok(phandle)
    }
}

#[cfg(test)]
mod tests {
    use super::dtb::DtWriteReason;
    use super::test_fixture::{self, VIRTIO_MMIO_COUNT};
    use super::*;

    fn fixture() -> Tree {
        Tree::from_dtb(&test_fixture::qemu_like_dtb()).expect("the fixture parses")
    }

    /// A node as the `fdt` crate sees it: depth, name, properties.
    type FdtCrateNode = (usize, String, Vec<(String, Vec<u8>)>);

    /// Every node of a DTB as read by the `fdt` crate (an independent parser),
    /// in document order.
    fn fdt_crate_view(dtb: &[u8]) -> Vec<FdtCrateNode> {
        fn walk(node: fdt::node::FdtNode<'_, '_>, depth: usize, out: &mut Vec<FdtCrateNode>) {
            let props = node
                .properties()
                .map(|p| (p.name.to_string(), p.value.to_vec()))
                .collect();
            out.push((depth, node.name.to_string(), props));
            for child in node.children() {
                walk(child, depth + 1, out);
            }
        }
        let fdt = fdt::Fdt::new(dtb).expect("the fdt crate reads the DTB");
        let mut out = Vec::new();
        walk(fdt.find_node("/").expect("a root node"), 0, &mut out);
        out
    }

    fn fdt_crate_reservations(dtb: &[u8]) -> Vec<(usize, usize)> {
        let fdt = fdt::Fdt::new(dtb).expect("the fdt crate reads the DTB");
        fdt.memory_reservations()
            .map(|r| (r.address() as usize, r.size()))
            .collect()
    }

    /// QEMU's own DT for a GICv3 virt machine, or `None` if xtask has not
    /// fetched QEMU into build/qemu yet (`cargo xtask test` fetches it first).
    fn qemu_dumpdtb() -> Option<Vec<u8>> {
        crate::tools::Qemu::unpacked(&crate::Workspace::locate().build.join("qemu")).ok()?;
        let path =
            std::env::temp_dir().join(format!("xtask-devicetree-test-{}.dtb", std::process::id()));
        let machine = crate::qemu::Machine::new(crate::qemu::Mode::XenDom0 {
            dom0_mem: "256M".into(),
        });
        machine.dump_dtb(&path).expect("QEMU dumps its DTB");
        let bytes = std::fs::read(&path).expect("QEMU wrote the DTB");
        std::fs::remove_file(&path).expect("the DTB can be removed");
        Some(bytes)
    }

    fn assert_round_trip(dtb: &[u8]) -> Tree {
        let tree = Tree::from_dtb(dtb).expect("parses");
        let written = tree.to_dtb().expect("writes");
        assert_eq!(Tree::from_dtb(&written).expect("re-parses"), tree);
        assert_eq!(
            fdt_crate_view(&written),
            fdt_crate_view(dtb),
            "the fdt crate sees the same tree"
        );
        assert_eq!(
            fdt_crate_reservations(&written),
            fdt_crate_reservations(dtb)
        );
        tree
    }

    #[test]
    fn round_trip_qemu_dumpdtb_or_fixture_without_qemu() {
        let tree = match qemu_dumpdtb() {
            Some(dtb) => assert_round_trip(&dtb),
            None => {
                eprintln!(
                    "QEMU not fetched into build/qemu: round-tripping the vm-fdt fixture instead"
                );
                assert_round_trip(&test_fixture::qemu_like_dtb())
            }
        };
        let virtio = tree
            .root
            .children
            .iter()
            .filter(|n| n.name.starts_with("virtio_mmio@"))
            .count();
        assert_eq!(virtio, VIRTIO_MMIO_COUNT);
        assert!(
            tree.node("/virtio_mmio@a003e00")
                .expect("last transport")
                .property("dma-coherent")
                .is_some()
        );
    }

    #[test]
    fn round_trip_preserves_fixture_order_reservations_and_boot_cpu() {
        let tree = assert_round_trip(&test_fixture::qemu_like_dtb());
        assert_eq!(tree.memory_reservations, test_fixture::MEMORY_RESERVATIONS);
        assert_eq!(tree.boot_cpuid_phys, test_fixture::BOOT_CPUID_PHYS);
        let names: Vec<&str> = tree.root.children.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"psci"));
        assert_eq!(names.last(), Some(&"chosen"));
        let first_virtio = names
            .iter()
            .position(|n| *n == "virtio_mmio@a000000")
            .expect("transport 0");
        assert_eq!(names[first_virtio + 31], "virtio_mmio@a003e00");
        let props: Vec<&str> = tree
            .node("/virtio_mmio@a000200")
            .unwrap()
            .props
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(props, ["dma-coherent", "interrupts", "reg", "compatible"]);
    }

    #[test]
    fn parse_rejects_malformed_blobs_with_typed_errors() {
        let good = test_fixture::qemu_like_dtb();
        assert_eq!(
            Tree::from_dtb(&good[..20]),
            Err(DtParseError::TooShort { len: 20 })
        );
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        assert!(matches!(
            Tree::from_dtb(&bad_magic),
            Err(DtParseError::BadMagic { .. })
        ));
        let truncated = &good[..good.len() - 8];
        assert!(matches!(
            Tree::from_dtb(truncated),
            Err(DtParseError::OutOfBounds { .. })
        ));
        let mut bad_token = good.clone();
        let off_dt_struct = u32::from_be_bytes(good[8..12].try_into().unwrap()) as usize;
        bad_token[off_dt_struct..off_dt_struct + 4].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            Tree::from_dtb(&bad_token),
            Err(DtParseError::BadToken {
                offset: off_dt_struct,
                token: 7
            })
        );
        // Every prefix fails cleanly instead of panicking.
        for len in 0..good.len() {
            assert!(Tree::from_dtb(&good[..len]).is_err());
        }
    }

    #[test]
    fn find_get_or_create_add_and_delete_nodes() {
        let mut tree = fixture();
        assert_eq!(tree.node("/chosen").unwrap().name, "chosen");
        assert_eq!(tree.node("/").unwrap().name, "");
        assert_eq!(
            tree.node("/nope").unwrap_err(),
            DtEditError::new("/nope", DtEditReason::NoSuchNode)
        );
        assert_eq!(
            tree.node("chosen").unwrap_err().reason,
            DtEditReason::BadPath
        );
        assert_eq!(
            tree.node("/chosen/").unwrap_err().reason,
            DtEditReason::BadPath
        );

        tree.get_or_create("/a/b/c").unwrap();
        assert!(tree.node("/a/b/c").is_ok());
        let before = tree.clone();
        tree.get_or_create("/a/b").unwrap();
        assert_eq!(tree, before, "get_or_create leaves an existing node alone");

        tree.add_node("/chosen/domU1").unwrap();
        assert_eq!(
            tree.add_node("/chosen/domU1").unwrap_err().reason,
            DtEditReason::NodeExists
        );
        assert_eq!(
            tree.add_node("/missing/x").unwrap_err(),
            DtEditError::new("/missing", DtEditReason::NoSuchNode)
        );

        let removed = tree.delete_node("/a").unwrap();
        assert_eq!(removed.children[0].name, "b");
        assert_eq!(
            tree.delete_node("/a").unwrap_err().reason,
            DtEditReason::NoSuchNode
        );
        assert_eq!(
            tree.delete_node("/").unwrap_err().reason,
            DtEditReason::IsRoot
        );
    }

    #[test]
    fn typed_setters_encode_values() {
        let mut tree = fixture();
        let path = "/chosen";
        tree.set_u32s(path, "cells", &[1, 0x8000]).unwrap();
        tree.set_u64(path, "wide", 0x1_0000_0002).unwrap();
        tree.set_string(path, "text", "hi").unwrap();
        tree.set_strings(path, "list", &["a", "bc"]).unwrap();
        tree.set_empty(path, "flag").unwrap();
        let node = tree.node(path).unwrap();
        assert_eq!(node.property("cells").unwrap(), [0, 0, 0, 1, 0, 0, 0x80, 0]);
        assert_eq!(node.property("wide").unwrap(), [0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(node.property("text").unwrap(), b"hi\0");
        assert_eq!(node.property("list").unwrap(), b"a\0bc\0");
        assert_eq!(node.property("flag").unwrap(), b"");
        let err = tree.set_string(path, "text", "a\0b").unwrap_err();
        assert_eq!(
            err.reason,
            DtEditReason::NulInString {
                property: "text".into()
            }
        );

        // Replacing a property keeps its place.
        let position = |tree: &Tree| {
            tree.node(path)
                .unwrap()
                .props
                .iter()
                .position(|(n, _)| n == "cells")
        };
        let at = position(&tree);
        tree.set_u32s(path, "cells", &[9]).unwrap();
        assert_eq!(position(&tree), at);
    }

    #[test]
    fn address_size_pairs_follow_the_parent_cell_sizes() {
        let mut tree = fixture();
        tree.add_node("/reg-test@1000").unwrap();
        tree.set_address_size_pairs(
            "/reg-test@1000",
            "reg",
            &[(0x7800_0000, 0x40_0000), (1 << 32, 0x10)],
        )
        .unwrap();
        let expected: Vec<u8> = [0u32, 0x7800_0000, 0, 0x40_0000, 1, 0, 0, 0x10]
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        assert_eq!(
            tree.node("/reg-test@1000")
                .unwrap()
                .property("reg")
                .unwrap(),
            expected
        );

        // Under a 1+1-cell bus, values are one cell each and must fit.
        tree.add_node("/bus").unwrap();
        tree.set_u32s("/bus", "#address-cells", &[1]).unwrap();
        tree.set_u32s("/bus", "#size-cells", &[1]).unwrap();
        tree.add_node("/bus/dev@10").unwrap();
        tree.set_address_size_pairs("/bus/dev@10", "reg", &[(0x10, 0x20)])
            .unwrap();
        tree.set_size("/bus/dev@10", "size", 0x30).unwrap();
        let node = tree.node("/bus/dev@10").unwrap();
        assert_eq!(
            node.property("reg").unwrap(),
            [0, 0, 0, 0x10, 0, 0, 0, 0x20]
        );
        assert_eq!(node.property("size").unwrap(), [0, 0, 0, 0x30]);
        let err = tree
            .set_address_size_pairs("/bus/dev@10", "reg", &[(1 << 32, 1)])
            .unwrap_err();
        assert_eq!(
            err.reason,
            DtEditReason::DoesNotFit {
                property: "reg".into(),
                value: 1 << 32,
                cells: 1
            }
        );

        // /cpus has #size-cells = <0>: no size can be written there.
        tree.add_node("/cpus/thing").unwrap();
        let err = tree.set_size("/cpus/thing", "size", 1).unwrap_err();
        assert_eq!(
            err.reason,
            DtEditReason::UnsupportedCells {
                property: "size".into(),
                cells: 0
            }
        );
        assert_eq!(
            tree.set_size("/", "size", 1).unwrap_err().reason,
            DtEditReason::IsRoot
        );

        tree.set_u32s("/bus", "#size-cells", &[1, 2]).unwrap();
        let err = tree.set_size("/bus/dev@10", "size", 1).unwrap_err();
        assert_eq!(
            err.reason,
            DtEditReason::MalformedCellCount {
                property: "#size-cells".into(),
                len: 8
            }
        );
    }

    #[test]
    fn cell_sizes_default_to_two_and_one() {
        let mut tree = fixture();
        assert_eq!(
            tree.cell_sizes("/").unwrap(),
            CellSizes {
                address: 2,
                size: 2
            }
        );
        assert_eq!(
            tree.cell_sizes("/chosen").unwrap(),
            CellSizes {
                address: 2,
                size: 1
            }
        );
        tree.set_u32s("/chosen", "#size-cells", &[2]).unwrap();
        assert_eq!(
            tree.cell_sizes("/chosen").unwrap(),
            CellSizes {
                address: 2,
                size: 2
            }
        );
    }

    #[test]
    fn delete_dma_coherent_and_missing_properties() {
        let mut tree = fixture();
        let path = "/virtio_mmio@a003e00";
        assert_eq!(
            tree.delete_property(path, "dma-coherent").unwrap(),
            Vec::<u8>::new()
        );
        assert!(tree.node(path).unwrap().property("dma-coherent").is_none());
        assert!(
            tree.node("/virtio_mmio@a003c00")
                .unwrap()
                .property("dma-coherent")
                .is_some()
        );
        assert_eq!(
            tree.delete_property(path, "dma-coherent").unwrap_err(),
            DtEditError::new(path, DtEditReason::NoSuchProperty("dma-coherent".into()))
        );
        let dtb = tree.to_dtb().unwrap();
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        assert!(
            fdt.find_node(path)
                .unwrap()
                .property("dma-coherent")
                .is_none()
        );
        assert!(
            fdt.find_node("/virtio_mmio@a003c00")
                .unwrap()
                .property("dma-coherent")
                .is_some()
        );
    }

    #[test]
    fn phandles_are_allocated_above_the_largest() {
        let mut tree = fixture();
        // The fixture uses QEMU's phandles 0x8000..=0x8002.
        assert_eq!(tree.allocate_phandle().unwrap(), 0x8003);
        assert_eq!(tree.assign_phandle("/chosen").unwrap(), 0x8003);
        assert_eq!(tree.allocate_phandle().unwrap(), 0x8004);
        tree.set_u32s("/psci", "linux,phandle", &[0x9000]).unwrap();
        assert_eq!(tree.allocate_phandle().unwrap(), 0x9001);

        let empty = Tree {
            root: Node::new(""),
            memory_reservations: Vec::new(),
            boot_cpuid_phys: 0,
        };
        assert_eq!(empty.allocate_phandle().unwrap(), 1);

        tree.set_u32s("/psci", "phandle", &[LAST_VALID_PHANDLE])
            .unwrap();
        assert_eq!(
            tree.allocate_phandle().unwrap_err().reason,
            DtEditReason::PhandlesExhausted
        );
    }

    #[test]
    fn memory_region_with_several_phandles() {
        let mut tree = fixture();
        tree.get_or_create("/reserved-memory").unwrap();
        tree.add_node("/reserved-memory/a@78000000").unwrap();
        tree.add_node("/reserved-memory/b").unwrap();
        let a = tree.assign_phandle("/reserved-memory/a@78000000").unwrap();
        let b = tree.assign_phandle("/reserved-memory/b").unwrap();
        let path = "/virtio_mmio@a003e00";
        tree.set_u32s(path, "memory-region", &[a, b]).unwrap();
        tree.set_strings(path, "memory-region-names", &["static", "dynamic"])
            .unwrap();

        let dtb = tree.to_dtb().unwrap();
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        let node = fdt.find_node(path).unwrap();
        let cells: Vec<u32> = node
            .property("memory-region")
            .unwrap()
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(cells, [a, b]);
        assert_eq!(fdt.find_phandle(a).unwrap().name, "a@78000000");
        assert_eq!(fdt.find_phandle(b).unwrap().name, "b");
        assert_eq!(
            node.property("memory-region-names").unwrap().value,
            b"static\0dynamic\0"
        );
    }

    #[test]
    fn write_errors_name_the_node() {
        let mut tree = fixture();
        tree.add_node("/bad name").unwrap();
        let err = tree.to_dtb().unwrap_err();
        assert_eq!(err.place, "/bad name");
        assert_eq!(err.error, DtWriteReason::InvalidNodeName);

        let mut tree = fixture();
        tree.set_u32s("/psci", "phandle", &[0x8000]).unwrap();
        let err = tree.to_dtb().unwrap_err();
        assert_eq!(err.error, DtWriteReason::DuplicatePhandle(0x8000));

        let mut tree = fixture();
        tree.set_empty("/psci", "bad name").unwrap();
        let err = tree.to_dtb().unwrap_err();
        assert_eq!(err.place, "/psci:bad name");
        assert_eq!(err.error, DtWriteReason::InvalidPropertyName);
    }

    #[test]
    fn long_property_names_of_linux_trees_are_written() {
        let mut tree = fixture();
        let name = "snps,gfladj-refclk-lpm-sel-quirk";
        assert_eq!(name.len(), 32, "one over the specification's limit");
        tree.set_empty("/psci", name).unwrap();
        let written = tree.to_dtb().unwrap();
        assert_eq!(Tree::from_dtb(&written).unwrap(), tree);
        assert!(
            fdt::Fdt::new(&written)
                .unwrap()
                .find_node("/psci")
                .unwrap()
                .property(name)
                .is_some()
        );
    }
}
