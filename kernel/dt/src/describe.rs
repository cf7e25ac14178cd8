//! One node of a device tree, described for a person: its properties
//! decoded where the type is known, and its children (the monitor's
//! `dt PATH`).
//!
//! Decoding, in order: `reg` as (address, size) pairs in the parent's cell
//! counts; a value that is a list of non-empty printable NUL-terminated
//! strings as strings; a multiple of four bytes as 32-bit cells (decimal
//! for the few properties that are counts or frequencies, hex otherwise);
//! an empty value as a flag; anything else as hex bytes.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::blob;
use crate::error::DtbError;
use crate::tree::{self, Tree};

/// Properties whose cells are counts or frequencies (printed in decimal).
const DECIMAL: &[&str] = &[
    "#address-cells",
    "#size-cells",
    "#interrupt-cells",
    "#clock-cells",
    "#gpio-cells",
    "#dma-cells",
    "#iommu-cells",
    "#msi-cells",
    "#phy-cells",
    "#reset-cells",
    "#mbox-cells",
    "#power-domain-cells",
    "clock-frequency",
    "current-speed",
    "timebase-frequency",
    "cpu-release-addr",
];

/// A decoded property value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropertyValue {
    /// No value: a flag such as `no-map` or `dma-coherent`.
    Flag,
    /// `reg`: (address, size) pairs.
    Reg(Vec<(u64, u64)>),
    /// A list of strings.
    Strings(Vec<String>),
    /// 32-bit cells, shown in decimal (counts, frequencies).
    Decimal(Vec<u32>),
    /// 32-bit cells, shown in hex.
    Cells(Vec<u32>),
    /// Bytes of no known shape.
    Bytes(Vec<u8>),
}

impl fmt::Display for PropertyValue {
    /// One `key=value` word: strings quoted and comma-separated, cells and
    /// `reg` pairs comma-separated, bytes as one hex string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T>(
            f: &mut fmt::Formatter<'_>,
            items: &[T],
            item: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
        ) -> fmt::Result {
            for (i, value) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                item(f, value)?;
            }
            Ok(())
        }
        match self {
            Self::Flag => f.write_str("true"),
            Self::Reg(pairs) => list(f, pairs, |f, (base, size)| write!(f, "{base:#x}+{size:#x}")),
            Self::Strings(strings) => list(f, strings, |f, s| write!(f, "\"{s}\"")),
            Self::Decimal(cells) => list(f, cells, |f, c| write!(f, "{c}")),
            Self::Cells(cells) => list(f, cells, |f, c| write!(f, "{c:#x}")),
            Self::Bytes(bytes) => {
                f.write_str("0x")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// A node's properties and children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDescription {
    /// The node's full path.
    pub path: String,
    /// Its properties in blob order, each decoded.
    pub properties: Vec<(String, PropertyValue)>,
    /// Its children's names, in blob order.
    pub children: Vec<String>,
}

/// Why a node could not be described.
#[derive(Clone, Debug, PartialEq)]
pub enum DescribeError {
    /// The blob itself is unreadable.
    Dtb(DtbError),
    /// No node at that path.
    NoNode(String),
}

impl fmt::Display for DescribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dtb(error) => error.fmt(f),
            Self::NoNode(path) => write!(f, "no node at {path}"),
        }
    }
}

impl From<DtbError> for DescribeError {
    fn from(error: DtbError) -> Self {
        Self::Dtb(error)
    }
}

/// Describes the node of `dtb` at `path` (a component without a unit
/// address matches the first child with one, as in `/memory`).
pub fn describe_node(dtb: &[u8], path: &str) -> Result<NodeDescription, DescribeError> {
    let checked = blob::check(dtb)?;
    let tree = Tree::new(&checked)?;
    let node = tree
        .find(path)
        .ok_or_else(|| DescribeError::NoNode(path.to_string()))?;
    Ok(describe(&tree, node))
}

/// Describes every node of `dtb`, in blob order, from one reading.
pub fn describe_tree(dtb: &[u8]) -> Result<Vec<NodeDescription>, DescribeError> {
    let checked = blob::check(dtb)?;
    let tree = Tree::new(&checked)?;
    Ok((0..tree.nodes.len())
        .map(|node| describe(&tree, node))
        .collect())
}

fn describe(tree: &Tree<'_>, node: usize) -> NodeDescription {
    // The parent's cell counts shape `reg`; where they are unusable, `reg`
    // is shown as plain cells.
    let cells = tree.nodes[node]
        .parent
        .and_then(|parent| tree.cells(parent).ok());
    let properties = tree.nodes[node]
        .properties
        .iter()
        .map(|property| {
            let value = decode(
                property.name,
                property.value,
                cells.map(|c| [c.address, c.size]),
            );
            (property.name.to_string(), value)
        })
        .collect();
    let children = tree.nodes[node]
        .children
        .iter()
        .map(|&child| tree.nodes[child].name.to_string())
        .collect();
    NodeDescription {
        path: tree.nodes[node].path.clone(),
        properties,
        children,
    }
}

fn decode(name: &str, value: &[u8], reg_cells: Option<[usize; 2]>) -> PropertyValue {
    if value.is_empty() {
        return PropertyValue::Flag;
    }
    if name == "reg"
        && let Some(fields) = reg_cells
        && let Ok(pairs) = tree::decode(value, "reg", fields)
    {
        return PropertyValue::Reg(pairs.iter().map(|p| (p[0], p[1])).collect());
    }
    if let Some(strings) = printable_strings(value) {
        return PropertyValue::Strings(strings);
    }
    if value.len().is_multiple_of(4) {
        let cells = value
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return if DECIMAL.contains(&name) {
            PropertyValue::Decimal(cells)
        } else {
            PropertyValue::Cells(cells)
        };
    }
    PropertyValue::Bytes(value.to_vec())
}

/// `value` as strings if it is one or more non-empty strings of printable
/// ASCII, each NUL-terminated.
fn printable_strings(value: &[u8]) -> Option<Vec<String>> {
    let strings = tree::string_list(value)?;
    let printable = |s: &&str| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b));
    strings
        .iter()
        .all(printable)
        .then(|| strings.iter().map(|s| s.to_string()).collect())
}
