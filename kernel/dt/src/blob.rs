//! The flattened device tree read in one pass: the structural check and the
//! node index are the same walk over the token stream.
//!
//! Only a blob that passes is read: header and blocks in bounds, a
//! well-formed token stream with one unnamed root, UTF-8 names, properties
//! before children (as the Devicetree Specification requires; it also means
//! a node's properties are complete at its first child), bounded nesting.
//! NOP tokens, which loaders leave where they delete nodes or properties
//! (QEMU's `imx8mp-evk` does), are skipped. It also reads the memory
//! reservation block.

use alloc::vec::Vec;

use crate::error::{Block, DtbError, StructureError};
use crate::range::AddrRange;

const FDT_MAGIC: u32 = 0xd00d_feed;
const HEADER_LEN: usize = 40;
/// The format version whose header (with `size_dt_struct`) is read.
const VERSION: u32 = 17;

const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;

/// Deepest node nesting accepted (the root is depth 1). Real trees stay
/// below 10; the bound keeps the recursive walks' stack use small.
pub const MAX_DEPTH: usize = 32;

/// A property as the structure block gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Property<'a> {
    /// Its name, from the strings block.
    pub name: &'a str,
    /// Its value.
    pub value: &'a [u8],
}

/// A node as the structure block gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawNode<'a> {
    /// Its name (empty for the root).
    pub name: &'a str,
    /// Index of its parent in [`CheckedBlob::nodes`] (`None` for the root).
    pub parent: Option<usize>,
    /// Its properties, in blob order (allocated at their number: a large
    /// board tree has thousands, and the kernel reads it in a 256 KiB boot
    /// heap, so no vector of them all grows by doubling).
    pub properties: Vec<Property<'a>>,
}

/// A blob that passed the check: its nodes in tree (depth-first) order, root
/// first, and the `/memreserve/` entries as read from the header's block, in
/// blob order, each `(address, size)`.
pub(crate) struct CheckedBlob<'a> {
    pub nodes: Vec<RawNode<'a>>,
    pub memreserve: Vec<(u64, u64)>,
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

fn be64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some((u64::from(be32(bytes, offset)?) << 32) | u64::from(be32(bytes, offset.checked_add(4)?)?))
}

fn align4(n: usize) -> usize {
    n.next_multiple_of(4)
}

/// Checks `data` and reads its nodes and properties.
pub(crate) fn check(data: &[u8]) -> Result<CheckedBlob<'_>, DtbError> {
    let header = |index: usize| {
        be32(data, index * 4).ok_or(DtbError::Truncated {
            len: data.len(),
            needed: HEADER_LEN,
        })
    };
    let magic = header(0)?;
    if magic != FDT_MAGIC {
        return Err(DtbError::BadMagic(magic));
    }
    let total_size = header(1)?;
    let [
        off_struct,
        off_strings,
        off_rsvmap,
        version,
        last_compatible,
        _boot_cpu,
        size_strings,
        size_struct,
    ] = [2, 3, 4, 5, 6, 7, 8, 9].map(header);
    let (off_struct, off_strings, off_rsvmap) = (off_struct?, off_strings?, off_rsvmap?);
    let (version, last_compatible, size_strings, size_struct) =
        (version?, last_compatible?, size_strings?, size_struct?);
    if (total_size as usize) < HEADER_LEN {
        return Err(DtbError::TotalSizeTooSmall(total_size));
    }
    if data.len() < total_size as usize {
        return Err(DtbError::Truncated {
            len: data.len(),
            needed: total_size as usize,
        });
    }
    if version < VERSION || last_compatible > VERSION {
        return Err(DtbError::UnsupportedVersion {
            version,
            last_compatible,
        });
    }
    let blob = &data[..total_size as usize];
    let structure = block(blob, Block::Structure, off_struct, size_struct, 4)?;
    let strings = block(blob, Block::Strings, off_strings, size_strings, 1)?;
    let memreserve = memreserve_entries(blob, off_rsvmap)?;
    let nodes = read_structure(structure, strings)?;
    Ok(CheckedBlob { nodes, memreserve })
}

fn block(
    blob: &[u8],
    which: Block,
    offset: u32,
    size: u32,
    alignment: u32,
) -> Result<&[u8], DtbError> {
    if !offset.is_multiple_of(alignment) {
        return Err(DtbError::MisalignedBlock {
            block: which,
            offset,
        });
    }
    let out_of_bounds = DtbError::BlockOutOfBounds {
        block: which,
        offset,
        size,
    };
    let end = (offset as usize)
        .checked_add(size as usize)
        .ok_or(out_of_bounds.clone())?;
    blob.get(offset as usize..end).ok_or(out_of_bounds)
}

fn memreserve_entries(blob: &[u8], offset: u32) -> Result<Vec<(u64, u64)>, DtbError> {
    if !offset.is_multiple_of(8) {
        return Err(DtbError::MisalignedBlock {
            block: Block::MemReserve,
            offset,
        });
    }
    if offset as usize >= blob.len() {
        return Err(DtbError::BlockOutOfBounds {
            block: Block::MemReserve,
            offset,
            size: 0,
        });
    }
    let mut entries = Vec::new();
    let mut at = offset as usize;
    loop {
        let (Some(address), Some(size)) = (be64(blob, at), be64(blob, at + 8)) else {
            return Err(DtbError::MemReserveUnterminated);
        };
        if address == 0 && size == 0 {
            return Ok(entries);
        }
        entries.push((address, size));
        at += 16;
    }
}

/// Walks the token stream once, checking it and collecting every node and
/// property.
fn read_structure<'a>(
    structure: &'a [u8],
    strings: &'a [u8],
) -> Result<Vec<RawNode<'a>>, DtbError> {
    let fail = |offset: usize, error: StructureError| DtbError::Structure { offset, error };
    let names = PropertyNames::new(strings);
    let mut nodes: Vec<RawNode<'a>> = Vec::new();
    // The properties of the node open at the deepest level, until its first
    // child or its end (properties come before children): then they move
    // to the node, in a vector of their own size.
    let mut pending: Vec<Property<'a>> = Vec::new();
    let settle = |nodes: &mut Vec<RawNode<'a>>, pending: &mut Vec<Property<'a>>, node: usize| {
        if !pending.is_empty() {
            // A copy at its length, not the buffer with its slack.
            nodes[node].properties = pending.as_slice().to_vec();
            pending.clear();
        }
    };
    // The nodes open at each depth (index into `nodes`).
    let mut open = [0usize; MAX_DEPTH];
    let mut depth = 0usize;
    let mut seen_root = false;
    // Bit d set: the node open at depth d already has a child.
    let mut has_child: u64 = 0;
    let mut at = 0usize;
    loop {
        let token = be32(structure, at).ok_or(fail(at, StructureError::UnexpectedEnd))?;
        match token {
            TOKEN_BEGIN_NODE => {
                if depth == 0 && seen_root {
                    return Err(fail(at, StructureError::MultipleRoots));
                }
                let name_start = at + 4;
                let name_len = structure
                    .get(name_start..)
                    .and_then(|rest| rest.iter().position(|&b| b == 0))
                    .ok_or(fail(at, StructureError::UnterminatedName))?;
                let name = core::str::from_utf8(&structure[name_start..name_start + name_len])
                    .map_err(|_| fail(at, StructureError::NonUtf8Name))?;
                if depth == 0 && !name.is_empty() {
                    return Err(fail(at, StructureError::NamedRoot));
                }
                has_child |= 1 << depth;
                if depth == MAX_DEPTH {
                    return Err(fail(at, StructureError::TooDeep));
                }
                let parent = depth.checked_sub(1).map(|up| open[up]);
                if let Some(parent) = parent {
                    settle(&mut nodes, &mut pending, parent);
                }
                nodes.push(RawNode {
                    name,
                    parent,
                    properties: Vec::new(),
                });
                open[depth] = nodes.len() - 1;
                depth += 1;
                has_child &= !(1 << depth);
                seen_root = true;
                at = align4(name_start + name_len + 1);
            }
            TOKEN_END_NODE => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(fail(at, StructureError::UnbalancedEndNode))?;
                settle(&mut nodes, &mut pending, open[depth]);
                at += 4;
            }
            TOKEN_PROP => {
                if depth == 0 {
                    return Err(fail(at, StructureError::PropertyOutsideNode));
                }
                if has_child & (1 << depth) != 0 {
                    return Err(fail(at, StructureError::PropertyAfterChild));
                }
                let (Some(len), Some(name_offset)) =
                    (be32(structure, at + 4), be32(structure, at + 8))
                else {
                    return Err(fail(at, StructureError::UnexpectedEnd));
                };
                let value_end = (at + 12)
                    .checked_add(len as usize)
                    .filter(|&end| end <= structure.len());
                let value_end =
                    value_end.ok_or(fail(at, StructureError::PropertyPastEnd { len }))?;
                let name = names.get(name_offset).map_err(|error| fail(at, error))?;
                pending.push(Property {
                    name,
                    value: &structure[at + 12..value_end],
                });
                at = align4(value_end);
            }
            TOKEN_NOP => at += 4,
            TOKEN_END if depth > 0 => return Err(fail(at, StructureError::EndInsideNode)),
            TOKEN_END if !seen_root => return Err(fail(at, StructureError::NoRoot)),
            TOKEN_END => return Ok(nodes),
            other => return Err(fail(at, StructureError::UnknownToken(other))),
        }
    }
}

/// Property names from the strings block. Names repeat on every node
/// (`reg`, `compatible`), so when the whole block is ASCII (as in every real
/// tree) it is checked once and each name is a slice of it; otherwise each
/// name is checked on its own.
struct PropertyNames<'a> {
    bytes: &'a [u8],
    ascii: Option<&'a str>,
}

impl<'a> PropertyNames<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let ascii = core::str::from_utf8(bytes).ok().filter(|s| s.is_ascii());
        Self { bytes, ascii }
    }

    /// The NUL-terminated UTF-8 name at `offset`.
    fn get(&self, offset: u32) -> Result<&'a str, StructureError> {
        let start = offset as usize;
        let rest = self.bytes.get(start..).filter(|rest| !rest.is_empty());
        let rest = rest.ok_or(StructureError::NameOffsetOutOfBounds(offset))?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(StructureError::UnterminatedPropertyName)?;
        match self.ascii {
            Some(text) => Ok(&text[start..start + len]),
            None => {
                core::str::from_utf8(&rest[..len]).map_err(|_| StructureError::NonUtf8PropertyName)
            }
        }
    }
}

/// The `/memreserve/` entries as ranges; entries that are empty or wrap are
/// returned apart, with their index, for the caller to report.
pub(crate) fn memreserve_ranges(
    entries: &[(u64, u64)],
) -> (Vec<AddrRange>, Vec<(usize, u64, u64)>) {
    let mut ranges = Vec::with_capacity(entries.len());
    let mut bad = Vec::new();
    for (index, &(base, size)) in entries.iter().enumerate() {
        match AddrRange::new(base, size).filter(|r| !r.is_empty()) {
            Some(range) => ranges.push(range),
            None => bad.push((index, base, size)),
        }
    }
    (ranges, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A minimal valid blob: header, empty memreserve, root with one
    /// property `a` and child `c`, strings "a\0".
    fn minimal() -> Vec<u8> {
        let mut structure = Vec::new();
        for word in [TOKEN_BEGIN_NODE, 0, TOKEN_PROP, 4, 0, 0x1234_5678] {
            structure.extend_from_slice(&word.to_be_bytes());
        }
        structure.extend_from_slice(&TOKEN_BEGIN_NODE.to_be_bytes());
        structure.extend_from_slice(b"c\0\0\0");
        for word in [TOKEN_END_NODE, TOKEN_END_NODE, TOKEN_END] {
            structure.extend_from_slice(&word.to_be_bytes());
        }
        assemble(&structure, b"a\0")
    }

    fn assemble(structure: &[u8], strings: &[u8]) -> Vec<u8> {
        assemble_with(structure, strings, &[])
    }

    fn assemble_with(structure: &[u8], strings: &[u8], memreserve: &[(u64, u64)]) -> Vec<u8> {
        let off_rsvmap = HEADER_LEN;
        let off_struct = off_rsvmap + 16 * (memreserve.len() + 1);
        let off_strings = off_struct + structure.len();
        let total = off_strings + strings.len();
        let mut blob = Vec::new();
        for word in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsvmap as u32,
            17,
            16,
            0,
            strings.len() as u32,
            structure.len() as u32,
        ] {
            blob.extend_from_slice(&word.to_be_bytes());
        }
        for &(address, size) in memreserve.iter().chain(&[(0, 0)]) {
            blob.extend_from_slice(&address.to_be_bytes());
            blob.extend_from_slice(&size.to_be_bytes());
        }
        blob.extend_from_slice(structure);
        blob.extend_from_slice(strings);
        blob
    }

    fn structure_error(blob: &[u8]) -> StructureError {
        match check(blob) {
            Err(DtbError::Structure { error, .. }) => error,
            other => panic!("expected a structure error, got {:?}", other.map(|_| ())),
        }
    }

    fn set_word(blob: &mut [u8], offset: usize, value: u32) {
        blob[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
    }

    const STRUCT: usize = HEADER_LEN + 16;

    #[test]
    fn reads_the_nodes_and_properties_of_a_minimal_blob() {
        let blob = minimal();
        let checked = check(&blob).unwrap();
        assert!(checked.memreserve.is_empty());
        let value = 0x1234_5678u32.to_be_bytes();
        assert_eq!(
            checked.nodes,
            [
                RawNode {
                    name: "",
                    parent: None,
                    properties: vec![Property {
                        name: "a",
                        value: &value
                    }]
                },
                RawNode {
                    name: "c",
                    parent: Some(0),
                    properties: vec![]
                }
            ]
        );
        assert_eq!(checked.nodes[0].properties.capacity(), 1);
    }

    #[test]
    fn property_names_are_read_at_any_offset_and_checked() {
        // dtc shares suffixes: `phandle` can point into `linux,phandle`.
        let names = PropertyNames::new(b"linux,phandle\0reg\0");
        assert!(names.ascii.is_some());
        assert_eq!(names.get(0), Ok("linux,phandle"));
        assert_eq!(names.get(6), Ok("phandle"));
        assert_eq!(names.get(14), Ok("reg"));
        assert_eq!(names.get(17), Ok(""));
        assert_eq!(
            names.get(18),
            Err(StructureError::NameOffsetOutOfBounds(18))
        );
        // A block that is not all ASCII: each name is checked on its own,
        // and an offset inside a multi-byte character is not UTF-8.
        let names = PropertyNames::new("\u{e9}t\u{e9}\0a".as_bytes());
        assert!(names.ascii.is_none());
        assert_eq!(names.get(0), Ok("\u{e9}t\u{e9}"));
        assert_eq!(names.get(1), Err(StructureError::NonUtf8PropertyName));
        assert_eq!(names.get(6), Err(StructureError::UnterminatedPropertyName));
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            check(&[0xd0, 0x0d]).err(),
            Some(DtbError::Truncated { len: 2, needed: 40 })
        );
        let mut blob = minimal();
        set_word(&mut blob, 0, 0x1234);
        assert_eq!(check(&blob).err(), Some(DtbError::BadMagic(0x1234)));
        let blob = minimal();
        assert_eq!(
            check(&blob[..blob.len() - 1]).err(),
            Some(DtbError::Truncated {
                len: blob.len() - 1,
                needed: blob.len()
            })
        );
        let mut small = minimal();
        set_word(&mut small, 4, 8);
        assert_eq!(check(&small).err(), Some(DtbError::TotalSizeTooSmall(8)));
        let mut old = minimal();
        set_word(&mut old, 20, 16);
        assert!(matches!(
            check(&old),
            Err(DtbError::UnsupportedVersion { version: 16, .. })
        ));
    }

    #[test]
    fn blocks_must_be_in_bounds_and_aligned() {
        let mut blob = minimal();
        set_word(&mut blob, 36, 0x1000);
        assert!(matches!(
            check(&blob),
            Err(DtbError::BlockOutOfBounds {
                block: Block::Structure,
                ..
            })
        ));
        let mut blob = minimal();
        set_word(&mut blob, 12, u32::MAX);
        assert!(matches!(
            check(&blob),
            Err(DtbError::BlockOutOfBounds {
                block: Block::Strings,
                ..
            })
        ));
        let mut blob = minimal();
        set_word(&mut blob, 8, STRUCT as u32 + 2);
        assert!(matches!(
            check(&blob),
            Err(DtbError::MisalignedBlock {
                block: Block::Structure,
                ..
            })
        ));
        let mut blob = minimal();
        set_word(&mut blob, 16, 44);
        assert!(matches!(
            check(&blob),
            Err(DtbError::MisalignedBlock {
                block: Block::MemReserve,
                ..
            })
        ));
    }

    #[test]
    fn memreserve_needs_a_terminator_inside_the_blob() {
        let mut blob = minimal();
        let total = blob.len() as u32;
        // Point the reservation block at the last 8 bytes: no room for an entry.
        set_word(&mut blob, 16, (total - 8) & !7);
        assert_eq!(check(&blob).err(), Some(DtbError::MemReserveUnterminated));
    }

    #[test]
    fn memreserve_entries_are_read() {
        let blob = minimal();
        let structure = &blob[STRUCT..blob.len() - 2];
        let with_entry = assemble_with(structure, b"a\0", &[(0x8000_0000, 0x1000)]);
        assert_eq!(
            check(&with_entry).unwrap().memreserve,
            vec![(0x8000_0000, 0x1000)]
        );
        let (ranges, bad) = memreserve_ranges(&[(0x1000, 0x10), (0x2000, 0), (u64::MAX, 2)]);
        assert_eq!(ranges, vec![AddrRange::new(0x1000, 0x10).unwrap()]);
        assert_eq!(bad, vec![(1, 0x2000, 0), (2, u64::MAX, 2)]);
    }

    #[test]
    fn token_stream_errors() {
        let mut blob = minimal();
        set_word(&mut blob, STRUCT, 7);
        assert_eq!(structure_error(&blob), StructureError::UnknownToken(7));

        let mut blob = minimal();
        set_word(&mut blob, STRUCT + 4, u32::from_be_bytes(*b"x\0\0\0"));
        assert_eq!(structure_error(&blob), StructureError::NamedRoot);

        let mut blob = minimal();
        set_word(&mut blob, STRUCT + 12, 0x100);
        assert_eq!(
            structure_error(&blob),
            StructureError::PropertyPastEnd { len: 0x100 }
        );

        let mut blob = minimal();
        set_word(&mut blob, STRUCT + 16, 0x40);
        assert_eq!(
            structure_error(&blob),
            StructureError::NameOffsetOutOfBounds(0x40)
        );

        let mut blob = minimal();
        let last = blob.len() - 2;
        blob[last..].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(
            structure_error(&blob),
            StructureError::UnterminatedPropertyName
        );

        let mut blob = minimal();
        blob[last] = 0xff;
        assert_eq!(structure_error(&blob), StructureError::NonUtf8PropertyName);

        let mut blob = minimal();
        set_word(&mut blob, STRUCT + 28, u32::from_be_bytes([0xff, 0, 0, 0]));
        assert_eq!(structure_error(&blob), StructureError::NonUtf8Name);

        // The final END replaced by END_NODE: unbalanced.
        let mut blob = minimal();
        let end = STRUCT + 40;
        set_word(&mut blob, end, TOKEN_END_NODE);
        assert_eq!(structure_error(&blob), StructureError::UnbalancedEndNode);

        // The root's END_NODE replaced by END.
        let mut blob = minimal();
        set_word(&mut blob, end - 4, TOKEN_END);
        assert_eq!(structure_error(&blob), StructureError::EndInsideNode);

        // The first token is END.
        let mut blob = minimal();
        set_word(&mut blob, STRUCT, TOKEN_END);
        assert_eq!(structure_error(&blob), StructureError::NoRoot);
    }

    #[test]
    fn structural_rules() {
        let words = |words: &[u32]| {
            words
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect::<Vec<u8>>()
        };
        let prop_after_child = words(&[1, 0, 1, u32::from_be_bytes(*b"c\0\0\0"), 2, 3, 0, 0, 2, 9]);
        assert_eq!(
            structure_error(&assemble(&prop_after_child, b"a\0")),
            StructureError::PropertyAfterChild
        );
        let two_roots = words(&[1, 0, 2, 1, 0, 2, 9]);
        assert_eq!(
            structure_error(&assemble(&two_roots, b"")),
            StructureError::MultipleRoots
        );
        let prop_outside = words(&[3, 0, 0, 9]);
        assert_eq!(
            structure_error(&assemble(&prop_outside, b"a\0")),
            StructureError::PropertyOutsideNode
        );
        let mut deep = vec![1, 0];
        for _ in 0..MAX_DEPTH {
            deep.extend_from_slice(&[1, u32::from_be_bytes(*b"n\0\0\0")]);
        }
        assert_eq!(
            structure_error(&assemble(&words(&deep), b"")),
            StructureError::TooDeep
        );
        let no_end = words(&[1, 0, 2]);
        assert_eq!(
            structure_error(&assemble(&no_end, b"")),
            StructureError::UnexpectedEnd
        );
    }

    #[test]
    fn nops_are_skipped() {
        let words = |words: &[u32]| {
            words
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect::<Vec<u8>>()
        };
        // NOP before the root, between two properties, before END_NODE,
        // and between a child and its parent's END_NODE.
        let structure = words(&[
            4,
            1,
            0,
            3,
            0,
            0,
            4,
            3,
            4,
            0,
            7,
            4,
            1,
            0x6300_0000,
            2,
            4,
            2,
            9,
        ]);
        let blob = assemble(&structure, b"a\0");
        let checked = check(&blob).unwrap();
        let lengths: Vec<usize> = checked.nodes[0]
            .properties
            .iter()
            .map(|p| p.value.len())
            .collect();
        assert_eq!(lengths, vec![0, 4]);
        assert_eq!(checked.nodes.len(), 2);
        assert_eq!(checked.nodes[1].name, "c");
        assert!(checked.nodes[1].properties.is_empty());
    }
}
