//! Test-only device-tree builder on `vm-fdt`: describe a tree with closures,
//! get a DTB.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::blob;
use crate::tree::Tree;

/// A node being described: its properties and children, in order.
pub(crate) struct N {
    name: String,
    properties: Vec<(String, Vec<u8>)>,
    children: Vec<N>,
}

impl N {
    fn named(name: &str) -> Self {
        N {
            name: name.to_string(),
            properties: Vec::new(),
            children: Vec::new(),
        }
    }

    /// A raw property.
    pub fn bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.properties.push((name.to_string(), value.to_vec()));
        self
    }

    /// A property of big-endian cells.
    pub fn cells(self, name: &str, cells: &[u32]) -> Self {
        let value: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.bytes(name, &value)
    }

    /// A one-cell property.
    pub fn u32(self, name: &str, value: u32) -> Self {
        self.cells(name, &[value])
    }

    /// A string property.
    pub fn str(self, name: &str, value: &str) -> Self {
        self.strs(name, &[value])
    }

    /// A string-list property.
    pub fn strs(self, name: &str, values: &[&str]) -> Self {
        let value: Vec<u8> = values.iter().flat_map(|s| s.bytes().chain([0])).collect();
        self.bytes(name, &value)
    }

    /// An empty (flag) property.
    pub fn empty(self, name: &str) -> Self {
        self.bytes(name, &[])
    }

    /// A `reg`-style property of 2+2-cell (address, size) pairs.
    pub fn reg64(self, name: &str, pairs: &[(u64, u64)]) -> Self {
        let cells: Vec<u32> = pairs
            .iter()
            .flat_map(|&(a, s)| [(a >> 32) as u32, a as u32, (s >> 32) as u32, s as u32])
            .collect();
        self.cells(name, &cells)
    }

    /// A child node.
    pub fn node(mut self, name: &str, describe: impl FnOnce(N) -> N) -> Self {
        self.children.push(describe(N::named(name)));
        self
    }

    fn write(&self, writer: &mut vm_fdt::FdtWriter) {
        let node = writer.begin_node(&self.name).unwrap();
        for (name, value) in &self.properties {
            writer.property(name, value).unwrap();
        }
        for child in &self.children {
            child.write(writer);
        }
        writer.end_node(node).unwrap();
    }
}

/// A whole tree: the root (with `#address-cells = <2>` and `#size-cells =
/// <2>` unless replaced) and the `/memreserve/` entries.
pub(crate) struct Dt {
    root: N,
    memreserve: Vec<(u64, u64)>,
    root_cells: bool,
}

impl Dt {
    pub fn new() -> Self {
        Dt {
            root: N::named(""),
            memreserve: Vec::new(),
            root_cells: true,
        }
    }

    /// Describes the root's own properties; the default cell counts are
    /// then not added.
    pub fn root(mut self, describe: impl FnOnce(N) -> N) -> Self {
        self.root_cells = false;
        self.root = describe(self.root);
        self
    }

    /// A child of the root.
    pub fn node(mut self, name: &str, describe: impl FnOnce(N) -> N) -> Self {
        self.root = self.root.node(name, describe);
        self
    }

    /// A `/memreserve/` entry.
    pub fn memreserve(mut self, base: u64, size: u64) -> Self {
        self.memreserve.push((base, size));
        self
    }

    /// `memory@BASE` nodes with one bank each (2+2 cells).
    pub fn memory(self, banks: &[(u64, u64)]) -> Self {
        banks.iter().fold(self, |dt, &(base, size)| {
            dt.node(&alloc::format!("memory@{base:x}"), |n| {
                n.str("device_type", "memory").reg64("reg", &[(base, size)])
            })
        })
    }

    /// A `/reserved-memory` node (2+2 cells, empty `ranges`) with children.
    pub fn reserved(self, describe: impl FnOnce(N) -> N) -> Self {
        self.node("reserved-memory", |n| {
            describe(
                n.u32("#address-cells", 2)
                    .u32("#size-cells", 2)
                    .empty("ranges"),
            )
        })
    }

    pub fn build(mut self) -> Vec<u8> {
        if self.root_cells {
            let mut properties =
                alloc::vec![("#address-cells".to_string(), 2u32.to_be_bytes().to_vec())];
            properties.push(("#size-cells".to_string(), 2u32.to_be_bytes().to_vec()));
            properties.append(&mut self.root.properties);
            self.root.properties = properties;
        }
        let reservations: Vec<_> = self
            .memreserve
            .iter()
            .map(|&(a, s)| vm_fdt::FdtReserveEntry::new(a, s).unwrap())
            .collect();
        let mut writer = vm_fdt::FdtWriter::new_with_mem_reserv(&reservations).unwrap();
        self.root.write(&mut writer);
        writer.finish().unwrap()
    }

    /// Runs `check` on the indexed tree of `blob`.
    pub fn with_tree(blob: &[u8], check: impl FnOnce(&Tree<'_>)) {
        let checked = blob::check(blob).unwrap();
        let tree = Tree::new(&checked).unwrap();
        check(&tree);
    }
}
