//! The device tree as an index over the checked blob's nodes: full paths,
//! parents, availability, phandles, and the property decoders everything else
//! is built from (cells, `reg`-style pairs, strings, address translation).

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::blob::{CheckedBlob, Property};
use crate::error::{DtbError, NodeError, NodeErrorKind, StructureError};
use crate::range::AddrRange;

/// One node of the tree.
pub(crate) struct Node<'a> {
    pub name: &'a str,
    pub path: String,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    pub properties: &'a [Property<'a>],
    /// `status` is absent, "okay" or "ok" here and on every ancestor.
    pub available: bool,
}

/// Where a phandle points.
struct PhandleOwner {
    node: usize,
    duplicate_of: Option<usize>,
}

/// Cell counts a node gives its children (`#address-cells`, `#size-cells`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cells {
    pub address: usize,
    pub size: usize,
}

/// What a phandle resolves to.
enum Resolved {
    Node(usize),
    Dangling,
    /// Claimed by several nodes (the first two given).
    Duplicate {
        first: usize,
        second: usize,
    },
}

/// All nodes, root first, in tree (depth-first) order.
pub(crate) struct Tree<'a> {
    pub nodes: Vec<Node<'a>>,
    phandles: BTreeMap<u32, PhandleOwner>,
}

/// Index of the root node.
pub(crate) const ROOT: usize = 0;

impl<'a> Tree<'a> {
    /// Indexes a blob that passed [`crate::blob::check`].
    pub fn new(blob: &'a CheckedBlob<'_>) -> Result<Self, DtbError> {
        if blob.nodes.is_empty() {
            return Err(DtbError::Structure {
                offset: 0,
                error: StructureError::NoRoot,
            });
        }
        let mut tree = Tree {
            nodes: Vec::with_capacity(blob.nodes.len()),
            phandles: BTreeMap::new(),
        };
        for (index, raw) in blob.nodes.iter().enumerate() {
            let path = match raw.parent {
                None => "/".to_string(),
                Some(parent) => {
                    let above = if parent == ROOT {
                        ""
                    } else {
                        tree.nodes[parent].path.as_str()
                    };
                    let mut path = String::with_capacity(above.len() + 1 + raw.name.len());
                    path.push_str(above);
                    path.push('/');
                    path.push_str(raw.name);
                    path
                }
            };
            let properties = raw.properties.as_slice();
            let status_ok = match properties.iter().find(|p| p.name == "status") {
                None => true,
                Some(status) => matches!(first_string(status.value), Some("okay" | "ok")),
            };
            let available = status_ok && raw.parent.is_none_or(|p| tree.nodes[p].available);
            for property in properties
                .iter()
                .filter(|p| p.name == "phandle" || p.name == "linux,phandle")
            {
                if let Ok(phandle) = <[u8; 4]>::try_from(property.value).map(u32::from_be_bytes) {
                    tree.claim_phandle(phandle, index);
                }
            }
            tree.nodes.push(Node {
                name: raw.name,
                path,
                parent: raw.parent,
                children: Vec::new(),
                properties,
                available,
            });
            if let Some(parent) = raw.parent {
                tree.nodes[parent].children.push(index);
            }
        }
        Ok(tree)
    }

    fn claim_phandle(&mut self, phandle: u32, node: usize) {
        // 0 and 0xffffffff are not valid phandles.
        if phandle == 0 || phandle == u32::MAX {
            return;
        }
        match self.phandles.get_mut(&phandle) {
            // `phandle` and `linux,phandle` of the same node.
            Some(owner) if owner.node == node => {}
            Some(owner) => {
                owner.duplicate_of.get_or_insert(node);
            }
            None => {
                self.phandles.insert(
                    phandle,
                    PhandleOwner {
                        node,
                        duplicate_of: None,
                    },
                );
            }
        }
    }

    /// The node a phandle names.
    fn resolve(&self, phandle: u32) -> Resolved {
        match self.phandles.get(&phandle) {
            None => Resolved::Dangling,
            Some(PhandleOwner {
                node,
                duplicate_of: None,
            }) => Resolved::Node(*node),
            Some(PhandleOwner {
                node,
                duplicate_of: Some(second),
            }) => Resolved::Duplicate {
                first: *node,
                second: *second,
            },
        }
    }

    /// The node that entry `entry` of `node`'s phandle property `property`
    /// names; an error if no node or several nodes claim `phandle`.
    pub fn target(
        &self,
        node: usize,
        property: &'static str,
        entry: usize,
        phandle: u32,
    ) -> Result<usize, NodeError> {
        match self.resolve(phandle) {
            Resolved::Node(target) => Ok(target),
            Resolved::Dangling => Err(self.error(
                node,
                NodeErrorKind::DanglingPhandle {
                    property,
                    entry,
                    phandle,
                },
            )),
            Resolved::Duplicate { first, second } => {
                let (first, second) = (
                    self.nodes[first].path.clone(),
                    self.nodes[second].path.clone(),
                );
                Err(self.error(
                    node,
                    NodeErrorKind::DuplicatePhandle {
                        phandle,
                        first,
                        second,
                    },
                ))
            }
        }
    }

    /// The value of property `name` of node `node`.
    pub fn property(&self, node: usize, name: &str) -> Option<&'a [u8]> {
        self.nodes[node]
            .properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value)
    }

    /// Whether node `node` has property `name` (of any value).
    pub fn has(&self, node: usize, name: &str) -> bool {
        self.property(node, name).is_some()
    }

    /// An error at node `node`'s path.
    pub fn error(&self, node: usize, kind: NodeErrorKind) -> NodeError {
        NodeError {
            path: self.nodes[node].path.clone(),
            kind,
        }
    }

    /// The child of `parent` called exactly `name`.
    pub fn child(&self, parent: usize, name: &str) -> Option<usize> {
        self.nodes[parent]
            .children
            .iter()
            .copied()
            .find(|&c| self.nodes[c].name == name)
    }

    /// The node at `path`; a component without a unit address also matches
    /// a child with one (the first such child).
    pub fn find(&self, path: &str) -> Option<usize> {
        let mut node = ROOT;
        for component in path.split('/').filter(|c| !c.is_empty()) {
            let children = &self.nodes[node].children;
            let exact = children
                .iter()
                .copied()
                .find(|&c| self.nodes[c].name == component);
            let loose = || {
                if component.contains('@') {
                    return None;
                }
                children
                    .iter()
                    .copied()
                    .find(|&c| self.nodes[c].name.split('@').next() == Some(component))
            };
            node = exact.or_else(loose)?;
        }
        path.starts_with('/').then_some(node)
    }

    /// The string list property `name`: `Ok(None)` if absent.
    pub fn strings(
        &self,
        node: usize,
        name: &'static str,
    ) -> Result<Option<Vec<&'a str>>, NodeErrorKind> {
        self.property(node, name)
            .map(|value| string_list(value).ok_or(NodeErrorKind::BadString { property: name }))
            .transpose()
    }

    /// The first string of property `name`: `Ok(None)` if absent.
    pub fn string(
        &self,
        node: usize,
        name: &'static str,
    ) -> Result<Option<&'a str>, NodeErrorKind> {
        self.property(node, name)
            .map(|value| first_string(value).ok_or(NodeErrorKind::BadString { property: name }))
            .transpose()
    }

    /// Whether `compatible` of `node` is a well-formed string list that
    /// lists one of `candidates`.
    pub fn is_compatible(&self, node: usize, candidates: &[&str]) -> bool {
        let Some(items) = self.property(node, "compatible").and_then(list_items) else {
            return false;
        };
        let mut found = false;
        for item in items {
            if core::str::from_utf8(item).is_err() {
                return false;
            }
            found = found || candidates.iter().any(|c| c.as_bytes() == item);
        }
        found
    }

    /// The one-cell property `name`: `Ok(None)` if absent.
    pub fn u32(&self, node: usize, name: &'static str) -> Result<Option<u32>, NodeErrorKind> {
        self.property(node, name)
            .map(|value| {
                <[u8; 4]>::try_from(value)
                    .map(u32::from_be_bytes)
                    .map_err(|_| NodeErrorKind::BadLength {
                        property: name,
                        len: value.len(),
                        expected: 4,
                    })
            })
            .transpose()
    }

    /// The cell counts `node` gives its children: `#address-cells`
    /// (default 2) and `#size-cells` (default 1), each 1 or 2.
    pub fn cells(&self, node: usize) -> Result<Cells, NodeError> {
        let read = |name: &'static str, default: u32| -> Result<usize, NodeError> {
            let value = self
                .u32(node, name)
                .map_err(|kind| self.error(node, kind))?
                .unwrap_or(default);
            match value {
                1 | 2 => Ok(value as usize),
                _ => Err(self.error(
                    node,
                    NodeErrorKind::UnsupportedCells {
                        property: name,
                        value,
                    },
                )),
            }
        };
        Ok(Cells {
            address: read("#address-cells", 2)?,
            size: read("#size-cells", 1)?,
        })
    }

    /// Translates `range`, an address in `node`'s parent bus, to a root
    /// address through the `ranges` of every bus between it and the root.
    pub fn to_root(&self, node: usize, mut range: AddrRange) -> Result<AddrRange, NodeError> {
        let mut bus = self.nodes[node].parent;
        while let Some(current) = bus {
            let Some(up) = self.nodes[current].parent else {
                break;
            };
            let ranges = self.property(current, "ranges");
            let ranges = ranges.ok_or_else(|| {
                self.error(
                    node,
                    NodeErrorKind::NoRangesOnBus {
                        bus: self.nodes[current].path.clone(),
                    },
                )
            })?;
            if !ranges.is_empty() {
                range = self
                    .translate_once(current, up, ranges, range)
                    .map_err(|kind| self.error(node, kind))?;
            }
            bus = Some(up);
        }
        Ok(range)
    }

    fn translate_once(
        &self,
        bus: usize,
        up: usize,
        ranges: &[u8],
        range: AddrRange,
    ) -> Result<AddrRange, NodeErrorKind> {
        let child = self.cells(bus).map_err(|e| e.kind)?;
        let parent = self.cells(up).map_err(|e| e.kind)?;
        let entries = decode(
            ranges,
            "ranges",
            [child.address, parent.address, child.size],
        )?;
        for entry in entries {
            let (child_base, parent_base, len) = (entry[0], entry[1], entry[2]);
            let Some(window) = AddrRange::new(child_base, len) else {
                continue;
            };
            if window.contains(range) {
                let translated = (range.base() - child_base)
                    .checked_add(parent_base)
                    .and_then(|b| AddrRange::new(b, range.size()));
                if let Some(translated) = translated {
                    return Ok(translated);
                }
            }
        }
        Err(NodeErrorKind::Untranslatable {
            bus: self.nodes[bus].path.clone(),
            range: range.into(),
        })
    }
}

/// Splits `value` into entries of `N` fields, field `i` being `fields[i]`
/// cells (1 or 2) wide. An empty value has no entry.
pub(crate) fn decode<const N: usize>(
    value: &[u8],
    property: &'static str,
    fields: [usize; N],
) -> Result<Vec<[u64; N]>, NodeErrorKind> {
    let unit = fields.iter().sum::<usize>() * 4;
    if !value.len().is_multiple_of(unit) {
        return Err(NodeErrorKind::Truncated {
            property,
            len: value.len(),
            unit,
        });
    }
    let entries = value.chunks_exact(unit).map(|entry| {
        let mut at = 0;
        fields.map(|cells| {
            let field = read_cells(&entry[at..at + cells * 4]);
            at += cells * 4;
            field
        })
    });
    Ok(entries.collect())
}

/// A big-endian number of one or two cells.
pub(crate) fn read_cells(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// A NUL-terminated list of UTF-8 strings (an empty value is an empty list).
pub(crate) fn string_list(value: &[u8]) -> Option<Vec<&str>> {
    match value.split_last() {
        None => Some(Vec::new()),
        Some((0, body)) => body
            .split(|&b| b == 0)
            .map(|s| core::str::from_utf8(s).ok())
            .collect(),
        Some(_) => None,
    }
}

/// The first string of a string list (`None` if the list is empty or is
/// not a well-formed list of UTF-8 strings).
pub(crate) fn first_string(value: &[u8]) -> Option<&str> {
    let mut first = None;
    for item in list_items(value)? {
        let text = core::str::from_utf8(item).ok()?;
        first.get_or_insert(text);
    }
    first
}

/// The items of a NUL-terminated string list, not yet checked as UTF-8
/// (`None` if the value does not end in NUL; an empty value has none).
fn list_items(value: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    let body = match value.split_last() {
        None => None,
        Some((0, body)) => Some(body),
        Some(_) => return None,
    };
    Some(body.into_iter().flat_map(|body| body.split(|&b| b == 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Dt;
    use alloc::vec;

    #[test]
    fn paths_availability_and_lookup() {
        let blob = Dt::new()
            .node("soc@0", |n| {
                n.str("status", "disabled").node("uart@100", |n| n)
            })
            .node("chosen", |n| n.str("status", "ok"))
            .node("serial@9000000", |n| n)
            .build();
        Dt::with_tree(&blob, |tree| {
            let uart = tree.find("/soc@0/uart@100").unwrap();
            assert_eq!(tree.nodes[uart].path, "/soc@0/uart@100");
            assert!(
                !tree.nodes[uart].available,
                "a child of a disabled node is not available"
            );
            assert!(tree.nodes[tree.find("/chosen").unwrap()].available);
            assert_eq!(tree.find("/serial"), tree.find("/serial@9000000"));
            assert_eq!(tree.find("/soc/uart"), Some(uart));
            assert_eq!(tree.find("/serial@1"), None);
            assert_eq!(tree.find("serial"), None);
        });
    }

    #[test]
    fn phandles_resolve_and_duplicates_are_detected() {
        let blob = Dt::new()
            .node("a", |n| n.u32("phandle", 5).u32("linux,phandle", 5))
            .node("b", |n| n.u32("phandle", 6))
            .node("c", |n| n.u32("phandle", 6))
            .build();
        Dt::with_tree(&blob, |tree| {
            assert!(matches!(tree.resolve(5), Resolved::Node(n) if tree.nodes[n].path == "/a"));
            assert!(
                matches!(tree.resolve(6), Resolved::Duplicate { first, second }
                if tree.nodes[first].path == "/b" && tree.nodes[second].path == "/c")
            );
            assert!(matches!(tree.resolve(7), Resolved::Dangling));
        });
    }

    #[test]
    fn cells_defaults_and_limits() {
        let blob = Dt::new()
            .node("default", |n| n)
            .node("one", |n| n.u32("#address-cells", 1).u32("#size-cells", 1))
            .node("three", |n| n.u32("#address-cells", 3))
            .node("short", |n| n.bytes("#size-cells", &[0, 1]))
            .build();
        Dt::with_tree(&blob, |tree| {
            assert_eq!(
                tree.cells(tree.find("/default").unwrap()).unwrap(),
                Cells {
                    address: 2,
                    size: 1
                }
            );
            assert_eq!(
                tree.cells(tree.find("/one").unwrap()).unwrap(),
                Cells {
                    address: 1,
                    size: 1
                }
            );
            let three = tree.cells(tree.find("/three").unwrap()).unwrap_err();
            assert_eq!(
                three.kind,
                NodeErrorKind::UnsupportedCells {
                    property: "#address-cells",
                    value: 3
                }
            );
            let short = tree.cells(tree.find("/short").unwrap()).unwrap_err();
            assert_eq!(
                short.kind,
                NodeErrorKind::BadLength {
                    property: "#size-cells",
                    len: 2,
                    expected: 4
                }
            );
        });
    }

    #[test]
    fn decode_and_strings() {
        let value: Vec<u8> = [0u32, 0x4000_0000, 0x1000]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(
            decode(&value, "reg", [2, 1]).unwrap(),
            vec![[0x4000_0000, 0x1000]]
        );
        assert_eq!(
            decode(&value, "reg", [1, 2]).unwrap(),
            vec![[0, 0x4000_0000_0000_1000]]
        );
        assert_eq!(
            decode(&value, "reg", [2, 2]).unwrap_err(),
            NodeErrorKind::Truncated {
                property: "reg",
                len: 12,
                unit: 16
            }
        );
        assert_eq!(string_list(b"a\0bc\0"), Some(vec!["a", "bc"]));
        assert_eq!(string_list(b""), Some(vec![]));
        assert_eq!(string_list(b"abc"), None);
        assert_eq!(string_list(b"\xff\0"), None);
        assert_eq!(first_string(b"okay\0"), Some("okay"));
    }

    #[test]
    fn translation_through_bus_ranges() {
        let blob = Dt::new()
            .node("soc", |n| {
                n.u32("#address-cells", 1)
                    .u32("#size-cells", 1)
                    .cells("ranges", &[0x0, 0x0, 0x3000_0000, 0x1000_0000])
                    .node("bus", |n| {
                        n.u32("#address-cells", 1)
                            .u32("#size-cells", 1)
                            .empty("ranges")
                            .node("dev@100", |n| n)
                    })
                    .node("island", |n| {
                        n.u32("#address-cells", 1)
                            .u32("#size-cells", 1)
                            .node("dev", |n| n)
                    })
            })
            .build();
        Dt::with_tree(&blob, |tree| {
            let dev = tree.find("/soc/bus/dev@100").unwrap();
            let range = AddrRange::new(0x100, 0x10).unwrap();
            assert_eq!(
                tree.to_root(dev, range).unwrap(),
                AddrRange::new(0x3000_0100, 0x10).unwrap()
            );
            let outside = AddrRange::new(0x0fff_fff8, 0x10).unwrap();
            assert!(matches!(
                tree.to_root(dev, outside).unwrap_err().kind,
                NodeErrorKind::Untranslatable { .. }
            ));
            let island = tree.find("/soc/island/dev").unwrap();
            let error = tree.to_root(island, range).unwrap_err();
            assert_eq!(
                error.kind,
                NodeErrorKind::NoRangesOnBus {
                    bus: "/soc/island".into()
                }
            );
        });
    }
}
