//! The DTB format (Devicetree Specification, chapter 5): reading it into a
//! [`Tree`] and writing a [`Tree`] back.
//!
//! The writer is our own rather than `vm-fdt`'s: `vm-fdt` enforces the
//! specification's 31-character limit on property names, which Linux's own
//! board trees exceed (the i.MX 8M Plus EVK's has
//! `snps,gfladj-refclk-lpm-sel-quirk`, 32; `dtc` accepts it with a
//! warning). It checks the characters of names and that phandles are
//! unique, as `vm-fdt` did.
//!
//! The reader walks the structure block itself rather than going through the
//! `fdt` crate: `fdt` 0.1.5 panics (`unwrap`, `assert_eq!`) on malformed
//! blobs, and a host tool should report a bad file, not abort.

use std::fmt;

use std::collections::{BTreeMap, BTreeSet};

use super::{MemoryReservation, Node, Tree};

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// The version-17 header: ten big-endian u32 fields.
const HEADER_LEN: usize = 40;
/// The version this reader understands (the one with `size_dt_struct`).
const SUPPORTED_VERSION: u32 = 17;
/// Nesting limit, as in Linux's and `vm-fdt`'s `FDT_MAX_NODE_DEPTH`; it also
/// keeps recursive drops and comparisons of a hostile tree shallow.
const MAX_DEPTH: usize = 64;

/// Why a DTB could not be read. Offsets are from the start of the blob.
#[derive(Debug, PartialEq, Eq)]
pub enum DtParseError {
    /// Shorter than the header.
    TooShort {
        /// The blob's length.
        len: usize,
    },
    /// The magic is not 0xd00dfeed.
    BadMagic {
        /// What was there instead.
        found: u32,
    },
    /// Not readable by a version-17 reader.
    UnsupportedVersion {
        /// The header's `version`.
        version: u32,
        /// The header's `last_comp_version`.
        last_compatible: u32,
    },
    /// Something extends past the end of the blob or of its block.
    OutOfBounds {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Where its block (or the blob) ends.
        limit: usize,
    },
    /// A structure token that is unknown or not allowed where it stands.
    BadToken {
        /// The token's offset.
        offset: usize,
        /// The token.
        token: u32,
    },
    /// A node or property name that is not a NUL-terminated UTF-8 string.
    BadName {
        /// Where the name starts.
        offset: usize,
    },
    /// A property follows a child node inside the same node.
    PropertyAfterChild {
        /// The property token's offset.
        offset: usize,
    },
    /// Nodes nest deeper than 64 levels.
    TooDeep {
        /// The offending node's offset.
        offset: usize,
    },
}

impl fmt::Display for DtParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "{len} bytes is too short for a DTB header"),
            Self::BadMagic { found } => {
                write!(f, "bad magic {found:#010x} (expected {FDT_MAGIC:#010x})")
            }
            Self::UnsupportedVersion {
                version,
                last_compatible,
            } => write!(
                f,
                "DTB version {version} (compatible back to {last_compatible}) is not readable as version {SUPPORTED_VERSION}"
            ),
            Self::OutOfBounds {
                what,
                offset,
                limit,
            } => {
                write!(
                    f,
                    "{what} at offset {offset:#x} runs past its end at {limit:#x}"
                )
            }
            Self::BadToken { offset, token } => {
                write!(f, "unexpected token {token:#x} at offset {offset:#x}")
            }
            Self::BadName { offset } => write!(f, "bad name at offset {offset:#x}"),
            Self::PropertyAfterChild { offset } => {
                write!(f, "property at offset {offset:#x} follows a child node")
            }
            Self::TooDeep { offset } => write!(
                f,
                "node at offset {offset:#x} nests deeper than {MAX_DEPTH} levels"
            ),
        }
    }
}

impl std::error::Error for DtParseError {}

/// Why a tree could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum DtWriteReason {
    /// A node name that is empty (below the root) or has a character the
    /// specification does not allow (`[0-9a-zA-Z,._+-]` and one `@`).
    InvalidNodeName,
    /// A property name that is empty or has a character the specification
    /// does not allow (`[0-9a-zA-Z,._+?#-]`).
    InvalidPropertyName,
    /// Two nodes have this phandle.
    DuplicatePhandle(u32),
    /// Nodes nest deeper than the reader accepts.
    TooDeep,
    /// The blob would not fit the header's 32-bit sizes.
    TooLarge,
}

impl fmt::Display for DtWriteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidNodeName => f.write_str("invalid node name"),
            Self::InvalidPropertyName => f.write_str("invalid property name"),
            Self::DuplicatePhandle(p) => write!(f, "phandle {p:#x} is used twice"),
            Self::TooDeep => write!(f, "nodes nest deeper than {MAX_DEPTH} levels"),
            Self::TooLarge => f.write_str("the blob would exceed 4 GiB"),
        }
    }
}

/// Why a tree could not be written: where, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct DtWriteError {
    /// The node path (or `path:property`).
    pub place: String,
    /// What is wrong there.
    pub error: DtWriteReason,
}

impl fmt::Display for DtWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.error)
    }
}

impl std::error::Error for DtWriteError {}

/// A bounds-checked big-endian reader over `blob[..limit]`.
struct Reader<'a> {
    blob: &'a [u8],
    pos: usize,
    limit: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DtParseError> {
        let out_of_bounds = DtParseError::OutOfBounds {
            what,
            offset: self.pos,
            limit: self.limit,
        };
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.limit)
            .ok_or(out_of_bounds)?;
        let bytes = &self.blob[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DtParseError> {
        let bytes = self.bytes(4, what)?;
        Ok(u32::from_be_bytes(bytes.try_into().expect("four bytes")))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DtParseError> {
        let bytes = self.bytes(8, what)?;
        Ok(u64::from_be_bytes(bytes.try_into().expect("eight bytes")))
    }

    /// Skips to the next 4-byte boundary (structure-block items are aligned).
    fn align(&mut self, what: &'static str) -> Result<(), DtParseError> {
        let padding = self.pos.next_multiple_of(4) - self.pos;
        self.bytes(padding, what).map(|_| ())
    }

    /// A NUL-terminated UTF-8 string, then alignment.
    fn name(&mut self) -> Result<&'a str, DtParseError> {
        let name = c_str(&self.blob[..self.limit], self.pos)?;
        self.pos += name.len() + 1;
        self.align("node name padding")?;
        Ok(name)
    }
}

/// The NUL-terminated UTF-8 string at `offset` in `block`.
fn c_str(block: &[u8], offset: usize) -> Result<&str, DtParseError> {
    let bad = || DtParseError::BadName { offset };
    let tail = block.get(offset..).ok_or_else(bad)?;
    let len = tail.iter().position(|&b| b == 0).ok_or_else(bad)?;
    std::str::from_utf8(&tail[..len]).map_err(|_| bad())
}

/// The header fields the reader uses.
struct Header {
    total_size: usize,
    off_dt_struct: usize,
    off_dt_strings: usize,
    off_mem_rsvmap: usize,
    boot_cpuid_phys: u32,
    size_dt_strings: usize,
    size_dt_struct: usize,
}

fn read_header(blob: &[u8]) -> Result<Header, DtParseError> {
    if blob.len() < HEADER_LEN {
        return Err(DtParseError::TooShort { len: blob.len() });
    }
    let mut r = Reader {
        blob,
        pos: 0,
        limit: HEADER_LEN,
    };
    let magic = r.u32("magic")?;
    if magic != FDT_MAGIC {
        return Err(DtParseError::BadMagic { found: magic });
    }
    let total_size = r.u32("totalsize")? as usize;
    let off_dt_struct = r.u32("off_dt_struct")? as usize;
    let off_dt_strings = r.u32("off_dt_strings")? as usize;
    let off_mem_rsvmap = r.u32("off_mem_rsvmap")? as usize;
    let version = r.u32("version")?;
    let last_compatible = r.u32("last_comp_version")?;
    if version < SUPPORTED_VERSION || last_compatible > SUPPORTED_VERSION {
        return Err(DtParseError::UnsupportedVersion {
            version,
            last_compatible,
        });
    }
    let header = Header {
        total_size,
        off_dt_struct,
        off_dt_strings,
        off_mem_rsvmap,
        boot_cpuid_phys: r.u32("boot_cpuid_phys")?,
        size_dt_strings: r.u32("size_dt_strings")? as usize,
        size_dt_struct: r.u32("size_dt_struct")? as usize,
    };
    if header.total_size > blob.len() {
        return Err(DtParseError::OutOfBounds {
            what: "blob (totalsize)",
            offset: 0,
            limit: blob.len(),
        });
    }
    for (what, offset, size) in [
        (
            "structure block",
            header.off_dt_struct,
            header.size_dt_struct,
        ),
        (
            "strings block",
            header.off_dt_strings,
            header.size_dt_strings,
        ),
    ] {
        if offset
            .checked_add(size)
            .is_none_or(|end| end > header.total_size)
        {
            return Err(DtParseError::OutOfBounds {
                what,
                offset,
                limit: header.total_size,
            });
        }
    }
    Ok(header)
}

/// Parses a version-17 DTB.
pub(super) fn parse(blob: &[u8]) -> Result<Tree, DtParseError> {
    let header = read_header(blob)?;

    let mut reservations = Reader {
        blob,
        pos: header.off_mem_rsvmap,
        limit: header.total_size,
    };
    let mut memory_reservations = Vec::new();
    loop {
        let address = reservations.u64("memory reservation")?;
        let size = reservations.u64("memory reservation")?;
        if address == 0 && size == 0 {
            break;
        }
        memory_reservations.push(MemoryReservation { address, size });
    }

    let strings = &blob[header.off_dt_strings..header.off_dt_strings + header.size_dt_strings];
    let mut r = Reader {
        blob,
        pos: header.off_dt_struct,
        limit: header.off_dt_struct + header.size_dt_struct,
    };
    let mut open: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let offset = r.pos;
        let token = r.u32("structure token")?;
        match token {
            FDT_NOP => {}
            FDT_BEGIN_NODE if root.is_none() => {
                if open.len() == MAX_DEPTH {
                    return Err(DtParseError::TooDeep { offset });
                }
                open.push(Node::new(r.name()?));
            }
            FDT_PROP => {
                let node = open
                    .last_mut()
                    .ok_or(DtParseError::BadToken { offset, token })?;
                if !node.children.is_empty() {
                    return Err(DtParseError::PropertyAfterChild { offset });
                }
                let len = r.u32("property length")? as usize;
                let name_offset = r.u32("property name offset")? as usize;
                let value = r.bytes(len, "property value")?;
                r.align("property padding")?;
                let name = c_str(strings, name_offset).map_err(|_| DtParseError::BadName {
                    offset: header.off_dt_strings + name_offset,
                })?;
                node.props.push((name.to_string(), value.to_vec()));
            }
            FDT_END_NODE => {
                let node = open.pop().ok_or(DtParseError::BadToken { offset, token })?;
                match open.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            FDT_END if open.is_empty() => {
                let root = root.ok_or(DtParseError::BadToken { offset, token })?;
                return Ok(Tree {
                    root,
                    memory_reservations,
                    boot_cpuid_phys: header.boot_cpuid_phys,
                });
            }
            _ => return Err(DtParseError::BadToken { offset, token }),
        }
    }
}

/// The blob being written: structure and strings blocks.
struct Writer {
    structure: Vec<u8>,
    strings: Vec<u8>,
    string_offsets: BTreeMap<String, u32>,
    phandles: BTreeSet<u32>,
}

impl Writer {
    fn token(&mut self, token: u32) {
        self.structure.extend_from_slice(&token.to_be_bytes());
    }

    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }

    fn string_offset(&mut self, name: &str) -> Result<u32, DtWriteReason> {
        if let Some(&offset) = self.string_offsets.get(name) {
            return Ok(offset);
        }
        let offset = u32::try_from(self.strings.len()).map_err(|_| DtWriteReason::TooLarge)?;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.string_offsets.insert(name.to_string(), offset);
        Ok(offset)
    }

    fn node(&mut self, node: &Node, path: &str, depth: usize) -> Result<(), DtWriteError> {
        let fail = |error| DtWriteError {
            place: path.to_string(),
            error,
        };
        if depth > MAX_DEPTH {
            return Err(fail(DtWriteReason::TooDeep));
        }
        if !node_name_valid(&node.name, depth == 1) {
            return Err(fail(DtWriteReason::InvalidNodeName));
        }
        self.token(FDT_BEGIN_NODE);
        self.structure.extend_from_slice(node.name.as_bytes());
        self.structure.push(0);
        self.pad();
        for (name, value) in &node.props {
            let fail = |error| DtWriteError {
                place: format!("{path}:{name}"),
                error,
            };
            if !property_name_valid(name) {
                return Err(fail(DtWriteReason::InvalidPropertyName));
            }
            if (name == "phandle" || name == "linux,phandle")
                && let Ok(cell) = <[u8; 4]>::try_from(value.as_slice())
            {
                let phandle = u32::from_be_bytes(cell);
                // `linux,phandle` repeats `phandle` on old trees.
                let repeat =
                    name == "linux,phandle" && node.property("phandle") == Some(value.as_slice());
                if !repeat && !self.phandles.insert(phandle) {
                    return Err(fail(DtWriteReason::DuplicatePhandle(phandle)));
                }
            }
            let len = u32::try_from(value.len()).map_err(|_| fail(DtWriteReason::TooLarge))?;
            let offset = self.string_offset(name).map_err(fail)?;
            self.token(FDT_PROP);
            self.structure.extend_from_slice(&len.to_be_bytes());
            self.structure.extend_from_slice(&offset.to_be_bytes());
            self.structure.extend_from_slice(value);
            self.pad();
        }
        for child in &node.children {
            let child_path = if path == "/" {
                format!("/{}", child.name)
            } else {
                format!("{path}/{}", child.name)
            };
            self.node(child, &child_path, depth + 1)?;
        }
        self.token(FDT_END_NODE);
        Ok(())
    }
}

/// A node name: `name[@unit]`, characters `[0-9a-zA-Z,._+-]` (and `@`
/// once); only the root's is empty.
fn node_name_valid(name: &str, root: bool) -> bool {
    if root {
        return name.is_empty();
    }
    let (base, unit) = match name.split_once('@') {
        Some((base, unit)) => (base, Some(unit)),
        None => (name, None),
    };
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ",._+-".contains(c))
    };
    !base.is_empty() && ok(base) && unit.is_none_or(ok)
}

/// A property name: characters `[0-9a-zA-Z,._+?#-]`, any length (see the
/// module docs).
fn property_name_valid(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ",._+?#-".contains(c))
}

/// Writes `tree` as a version-17 DTB: header, memory reservation block,
/// structure block, strings block.
pub(super) fn write(tree: &Tree) -> Result<Vec<u8>, DtWriteError> {
    let mut writer = Writer {
        structure: Vec::new(),
        strings: Vec::new(),
        string_offsets: BTreeMap::new(),
        phandles: BTreeSet::new(),
    };
    writer.node(&tree.root, "/", 1)?;
    writer.token(FDT_END);
    let mut reservations = Vec::new();
    for r in &tree.memory_reservations {
        reservations.extend_from_slice(&r.address.to_be_bytes());
        reservations.extend_from_slice(&r.size.to_be_bytes());
    }
    reservations.extend_from_slice(&[0; 16]);
    // Header, then the reservations (8-aligned), structure, strings.
    let off_rsvmap = HEADER_LEN;
    let off_struct = off_rsvmap + reservations.len();
    let off_strings = off_struct + writer.structure.len();
    let total = off_strings + writer.strings.len();
    let too_large = || DtWriteError {
        place: "/".into(),
        error: DtWriteReason::TooLarge,
    };
    let field = |n: usize| u32::try_from(n).map_err(|_| too_large());
    let header = [
        FDT_MAGIC,
        field(total)?,
        field(off_struct)?,
        field(off_strings)?,
        field(off_rsvmap)?,
        SUPPORTED_VERSION,
        16,
        tree.boot_cpuid_phys,
        field(writer.strings.len())?,
        field(writer.structure.len())?,
    ];
    let mut blob = Vec::with_capacity(total);
    for word in header {
        blob.extend_from_slice(&word.to_be_bytes());
    }
    blob.extend_from_slice(&reservations);
    blob.extend_from_slice(&writer.structure);
    blob.extend_from_slice(&writer.strings);
    Ok(blob)
}
