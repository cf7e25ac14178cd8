//! The DTB format (Devicetree Specification, chapter 5): reading it into a
//! [`Tree`] and writing a [`Tree`] back with `vm-fdt`.
//!
//! The reader walks the structure block itself rather than going through the
//! `fdt` crate: `fdt` 0.1.5 panics (`unwrap`, `assert_eq!`) on malformed
//! blobs, and a host tool should report a bad file, not abort.

use std::fmt;

use vm_fdt::{FdtReserveEntry, FdtWriter};

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

/// Why a tree could not be written: where, and `vm-fdt`'s reason.
#[derive(Debug, PartialEq, Eq)]
pub struct DtWriteError {
    /// The node path (or `path:property`, or `/memreserve/`).
    pub place: String,
    /// What `vm-fdt` refused.
    pub error: vm_fdt::Error,
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

fn write_error(place: &str) -> impl FnOnce(vm_fdt::Error) -> DtWriteError + '_ {
    move |error| DtWriteError {
        place: place.to_string(),
        error,
    }
}

/// Writes `tree` as a DTB.
pub(super) fn write(tree: &Tree) -> Result<Vec<u8>, DtWriteError> {
    let reservations = tree
        .memory_reservations
        .iter()
        .map(|r| FdtReserveEntry::new(r.address, r.size))
        .collect::<Result<Vec<_>, _>>()
        .map_err(write_error("/memreserve/"))?;
    let mut writer =
        FdtWriter::new_with_mem_reserv(&reservations).map_err(write_error("/memreserve/"))?;
    writer.set_boot_cpuid_phys(tree.boot_cpuid_phys);
    write_node(&mut writer, &tree.root, "/")?;
    writer.finish().map_err(write_error("/"))
}

fn write_node(writer: &mut FdtWriter, node: &Node, path: &str) -> Result<(), DtWriteError> {
    let handle = writer.begin_node(&node.name).map_err(write_error(path))?;
    for (name, value) in &node.props {
        let written = match <[u8; 4]>::try_from(value.as_slice()) {
            // vm-fdt checks phandles for uniqueness when they go through here.
            Ok(cell) if name == "phandle" => writer.property_phandle(u32::from_be_bytes(cell)),
            _ => writer.property(name, value),
        };
        written.map_err(|error| DtWriteError {
            place: format!("{path}:{name}"),
            error,
        })?;
    }
    for child in &node.children {
        let child_path = if path == "/" {
            format!("/{}", child.name)
        } else {
            format!("{path}/{}", child.name)
        };
        write_node(writer, child, &child_path)?;
    }
    writer.end_node(handle).map_err(write_error(path))
}
