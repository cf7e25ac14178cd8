//! The two kinds of failure: a blob that cannot be read at all
//! ([`DtbError`], nothing is computed), and a node whose content is wrong
//! ([`NodeError`], reported in the plan's `errors` while the rest is used).

use alloc::string::String;
use core::fmt;

/// A block of the flattened device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// The memory reservation block (`/memreserve/` entries).
    MemReserve,
    /// The structure block (nodes and properties).
    Structure,
    /// The strings block (property names).
    Strings,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MemReserve => "memory reservation block",
            Self::Structure => "structure block",
            Self::Strings => "strings block",
        })
    }
}

/// Why a blob is not a device tree that can be read at all.
#[derive(Clone, Debug, PartialEq)]
pub enum DtbError {
    /// The blob is shorter than the header or than the header's `totalsize`.
    Truncated {
        /// Bytes available.
        len: usize,
        /// Bytes the header says (or the header itself) needs.
        needed: usize,
    },
    /// The first word is not the FDT magic `0xd00dfeed`.
    BadMagic(u32),
    /// The header's `totalsize` is smaller than the header.
    TotalSizeTooSmall(u32),
    /// The format version is not one this reader understands (17, or a later
    /// one that is backwards compatible with 17).
    UnsupportedVersion {
        /// The header's `version`.
        version: u32,
        /// The header's `last_comp_version`.
        last_compatible: u32,
    },
    /// A block lies (partly) outside `totalsize`.
    BlockOutOfBounds {
        /// Which block.
        block: Block,
        /// Its offset from the start of the blob.
        offset: u32,
        /// Its size in bytes.
        size: u32,
    },
    /// A block's offset is not aligned as the format requires.
    MisalignedBlock {
        /// Which block.
        block: Block,
        /// Its offset from the start of the blob.
        offset: u32,
    },
    /// The memory reservation block has no terminating all-zero entry.
    MemReserveUnterminated,
    /// The structure block is not a well-formed token stream.
    Structure {
        /// Offset of the offending token from the start of the structure block.
        offset: usize,
        /// What is wrong there.
        error: StructureError,
    },
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len, needed } => {
                write!(f, "truncated blob: {len} bytes, needs {needed}")
            }
            Self::BadMagic(magic) => write!(f, "bad magic {magic:#010x} (want 0xd00dfeed)"),
            Self::TotalSizeTooSmall(size) => {
                write!(f, "totalsize {size} is smaller than the 40-byte header")
            }
            Self::UnsupportedVersion {
                version,
                last_compatible,
            } => {
                write!(
                    f,
                    "unsupported format version {version} (last compatible {last_compatible}; need 17)"
                )
            }
            Self::BlockOutOfBounds {
                block,
                offset,
                size,
            } => {
                write!(
                    f,
                    "{block} at offset {offset:#x} size {size:#x} lies outside totalsize"
                )
            }
            Self::MisalignedBlock { block, offset } => {
                write!(f, "{block} offset {offset:#x} is misaligned")
            }
            Self::MemReserveUnterminated => {
                f.write_str("memory reservation block has no terminating entry")
            }
            Self::Structure { offset, error } => {
                write!(f, "structure block offset {offset:#x}: {error}")
            }
        }
    }
}

impl core::error::Error for DtbError {}

/// What is wrong with the structure block's token stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StructureError {
    /// The block ends before a token or its payload is complete.
    UnexpectedEnd,
    /// A token that is none of BEGIN_NODE, END_NODE, PROP, NOP, END.
    UnknownToken(u32),
    /// A node name has no terminating NUL inside the block.
    UnterminatedName,
    /// A node name is not UTF-8.
    NonUtf8Name,
    /// The root node has a non-empty name.
    NamedRoot,
    /// A second node follows the root at the top level.
    MultipleRoots,
    /// The block ends (END token) without any node.
    NoRoot,
    /// Nodes nest deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
    TooDeep,
    /// END_NODE with no node open.
    UnbalancedEndNode,
    /// END while a node is still open.
    EndInsideNode,
    /// A property outside any node.
    PropertyOutsideNode,
    /// A property after a child node (properties must come first).
    PropertyAfterChild,
    /// A property's value runs past the end of the block.
    PropertyPastEnd {
        /// The property's declared length.
        len: u32,
    },
    /// A property's name offset lies outside the strings block.
    NameOffsetOutOfBounds(u32),
    /// A property name has no terminating NUL inside the strings block.
    UnterminatedPropertyName,
    /// A property name is not UTF-8.
    NonUtf8PropertyName,
}

impl fmt::Display for StructureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnexpectedEnd => f.write_str("block ends inside a token"),
            Self::UnknownToken(token) => write!(f, "unknown token {token:#x}"),
            Self::UnterminatedName => f.write_str("node name is not NUL-terminated"),
            Self::NonUtf8Name => f.write_str("node name is not UTF-8"),
            Self::NamedRoot => f.write_str("root node has a name"),
            Self::MultipleRoots => f.write_str("second top-level node"),
            Self::NoRoot => f.write_str("no root node"),
            Self::TooDeep => write!(f, "nodes nest deeper than {}", crate::MAX_DEPTH),
            Self::UnbalancedEndNode => f.write_str("END_NODE without an open node"),
            Self::EndInsideNode => f.write_str("END inside an open node"),
            Self::PropertyOutsideNode => f.write_str("property outside any node"),
            Self::PropertyAfterChild => f.write_str("property after a child node"),
            Self::PropertyPastEnd { len } => {
                write!(f, "property of {len} bytes runs past the block")
            }
            Self::NameOffsetOutOfBounds(offset) => write!(
                f,
                "property name offset {offset:#x} is outside the strings block"
            ),
            Self::UnterminatedPropertyName => f.write_str("property name is not NUL-terminated"),
            Self::NonUtf8PropertyName => f.write_str("property name is not UTF-8"),
        }
    }
}

/// A problem with one node (or one entry of one of its properties).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeError {
    /// Full path of the node (`/memreserve/` for the header's reservation
    /// entries).
    pub path: String,
    /// What is wrong.
    pub kind: NodeErrorKind,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind)
    }
}

impl core::error::Error for NodeError {}

/// What is wrong with a node. The `Display` text is the `reason` of the
/// JSON output and of the `mem: error` console line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeErrorKind {
    /// `#address-cells` or `#size-cells` has a value this reader cannot use
    /// (both must be 1 or 2 here).
    UnsupportedCells {
        /// `#address-cells` or `#size-cells`.
        property: &'static str,
        /// The value found.
        value: u32,
    },
    /// A property that must be exactly `expected` bytes long is `len` bytes.
    BadLength {
        /// Property name.
        property: &'static str,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// A property made of `unit`-byte entries is `len` bytes long, not a
    /// multiple of `unit` (or holds no entry where one is required).
    Truncated {
        /// Property name.
        property: &'static str,
        /// Its length.
        len: usize,
        /// Size of one entry.
        unit: usize,
    },
    /// A string (list) property is not NUL-terminated UTF-8.
    BadString {
        /// Property name.
        property: &'static str,
    },
    /// A required property is missing.
    Missing {
        /// Property name.
        property: &'static str,
    },
    /// An entry has size zero (entry `None`: the single value of `size`).
    ZeroSize {
        /// Property name.
        property: &'static str,
        /// Entry index, if the property is a list.
        entry: Option<usize>,
    },
    /// An entry runs past the end of the 64-bit address space.
    Wraps {
        /// Property name.
        property: &'static str,
        /// Base of the entry.
        base: u64,
        /// Size of the entry.
        size: u64,
    },
    /// A reserved-memory node has both `reg` and `size`.
    RegAndSize,
    /// A reserved-memory node has neither `reg` nor `size`.
    NoRegOrSize,
    /// A reserved-memory node is both `no-map` and `reusable`.
    NoMapAndReusable,
    /// `alignment` is zero or not a power of two.
    BadAlignment(u64),
    /// A static region is partly inside memory and partly outside it (a
    /// region entirely outside memory is kept, see
    /// [`ReservedRegion::in_memory`](crate::ReservedRegion::in_memory)).
    PartlyInMemory(AddrRangeText),
    /// A static region overlaps one kept earlier (lower base, or same base
    /// and earlier in the tree).
    Overlaps {
        /// The region left out.
        range: AddrRangeText,
        /// Path of the region it overlaps, which is kept.
        other: String,
    },
    /// A dynamic region found no free, aligned place.
    NoRoom {
        /// Bytes requested.
        size: u64,
        /// Effective alignment.
        alignment: u64,
    },
    /// A phandle refers to no node.
    DanglingPhandle {
        /// Property holding the phandle.
        property: &'static str,
        /// Entry index in that property.
        entry: usize,
        /// The phandle value.
        phandle: u32,
    },
    /// A phandle is claimed by more than one node, so what it names is
    /// ambiguous (the entry is not used).
    DuplicatePhandle {
        /// The phandle value.
        phandle: u32,
        /// Path of the first node claiming it.
        first: String,
        /// Path of the second node claiming it.
        second: String,
    },
    /// A `memory-region` entry names a node that is not a `/reserved-memory` child.
    NotReservedMemory {
        /// Entry index.
        entry: usize,
        /// Path of the node it names.
        target: String,
    },
    /// A `memory-region` entry names a disabled reserved-memory node.
    DisabledTarget {
        /// Entry index.
        entry: usize,
        /// Path of the node it names.
        target: String,
    },
    /// `memory-region-names` does not have one name per `memory-region` entry.
    NamesMismatch {
        /// Number of names.
        names: usize,
        /// Number of phandles.
        phandles: usize,
    },
    /// `/reserved-memory` has no `ranges`; its children's addresses were
    /// taken as parent (root) addresses.
    MissingRanges,
    /// A bus on the way to the root has no `ranges`, so the address cannot be
    /// translated.
    NoRangesOnBus {
        /// Path of the bus.
        bus: String,
    },
    /// No `ranges` entry of a bus covers the address.
    Untranslatable {
        /// Path of the bus.
        bus: String,
        /// The range in the bus's address space.
        range: AddrRangeText,
    },
    /// No interrupt parent (a node with `#interrupt-cells`) is reachable
    /// through `interrupt-parent` links and tree parents.
    NoInterruptParent,
    /// The interrupt parent is not a GIC this reader decodes.
    InterruptParentNotGic {
        /// Path of the interrupt parent.
        parent: String,
    },
    /// The GIC's `#interrupt-cells` is not 3.
    UnsupportedInterruptCells(u32),
    /// The first interrupt cell is neither 0 (SPI) nor 1 (PPI).
    UnsupportedInterruptType(u32),
    /// The interrupt number is beyond the SPI (0..=987) or PPI (0..=15) range.
    InterruptOutOfRange {
        /// The first cell (0 = SPI, 1 = PPI).
        kind: u32,
        /// The second cell.
        number: u32,
    },
    /// Too few `reg` entries for what the binding requires.
    TooFewRegEntries {
        /// Entries found.
        found: usize,
        /// Entries required.
        required: usize,
    },
    /// Too few `interrupts` specifiers for what the binding requires.
    TooFewInterrupts {
        /// Specifiers found.
        found: usize,
        /// Specifiers required.
        required: usize,
    },
    /// PSCI `method` is neither `hvc` nor `smc`.
    BadPsciMethod(String),
    /// An alias (in `stdout-path`) is not defined in `/aliases`.
    UnknownAlias(String),
    /// A path (in `stdout-path` or an alias) names no node.
    NoSuchNode(String),
}

/// A range printed as `base+size` in an error message; kept apart from
/// [`AddrRange`](crate::AddrRange) so that an error can describe a range that
/// wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRangeText {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl From<crate::AddrRange> for AddrRangeText {
    fn from(range: crate::AddrRange) -> Self {
        Self {
            base: range.base(),
            size: range.size(),
        }
    }
}

impl fmt::Display for AddrRangeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{:#x}", self.base, self.size)
    }
}

impl fmt::Display for NodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedCells { property, value } => {
                write!(f, "{property} = {value} is not supported (must be 1 or 2)")
            }
            Self::BadLength {
                property,
                len,
                expected,
            } => write!(f, "`{property}` is {len} bytes, must be {expected}"),
            Self::Truncated {
                property,
                len,
                unit,
            } => {
                write!(
                    f,
                    "`{property}` is {len} bytes, not a non-zero multiple of {unit} (truncated)"
                )
            }
            Self::BadString { property } => write!(f, "`{property}` is not NUL-terminated UTF-8"),
            Self::Missing { property } => write!(f, "no `{property}` property"),
            Self::ZeroSize {
                property,
                entry: Some(entry),
            } => write!(f, "`{property}` entry {entry} has size 0"),
            Self::ZeroSize {
                property,
                entry: None,
            } => write!(f, "`{property}` is 0"),
            Self::Wraps {
                property,
                base,
                size,
            } => {
                write!(
                    f,
                    "`{property}` entry {base:#x}+{size:#x} runs past the end of the 64-bit address space"
                )
            }
            Self::RegAndSize => f.write_str("has both `reg` and `size`"),
            Self::NoRegOrSize => f.write_str("has neither `reg` nor `size`"),
            Self::NoMapAndReusable => f.write_str(
                "is both `no-map` and `reusable` (its range stays out of the linear map)",
            ),
            Self::BadAlignment(alignment) => {
                write!(f, "`alignment` {alignment:#x} is not a power of two")
            }
            Self::PartlyInMemory(range) => {
                write!(f, "{range} is partly inside memory and partly outside it")
            }
            Self::Overlaps { range, other } => write!(f, "{range} overlaps {other}, which is kept"),
            Self::NoRoom { size, alignment } => {
                write!(
                    f,
                    "no free place for {size:#x} bytes aligned to {alignment:#x}"
                )
            }
            Self::DanglingPhandle {
                property,
                entry,
                phandle,
            } => {
                write!(
                    f,
                    "`{property}` entry {entry}: phandle {phandle:#x} names no node"
                )
            }
            Self::DuplicatePhandle {
                phandle,
                first,
                second,
            } => {
                write!(
                    f,
                    "phandle {phandle:#x} is claimed by both {first} and {second}; entry not used"
                )
            }
            Self::NotReservedMemory { entry, target } => {
                write!(
                    f,
                    "`memory-region` entry {entry} names {target}, not a /reserved-memory child"
                )
            }
            Self::DisabledTarget { entry, target } => write!(
                f,
                "`memory-region` entry {entry} names {target}, which is disabled"
            ),
            Self::NamesMismatch { names, phandles } => {
                write!(
                    f,
                    "`memory-region-names` has {names} names for {phandles} regions"
                )
            }
            Self::MissingRanges => {
                f.write_str("no `ranges`; child addresses taken as root addresses")
            }
            Self::NoRangesOnBus { bus } => {
                write!(f, "bus {bus} has no `ranges`; address not translatable")
            }
            Self::Untranslatable { bus, range } => {
                write!(f, "{range} is outside every `ranges` entry of bus {bus}")
            }
            Self::NoInterruptParent => f.write_str(
                "no interrupt parent (no node with `#interrupt-cells` up the interrupt tree)",
            ),
            Self::InterruptParentNotGic { parent } => {
                write!(f, "interrupt parent {parent} is not a GIC")
            }
            Self::UnsupportedInterruptCells(cells) => {
                write!(f, "#interrupt-cells = {cells} (GIC needs 3)")
            }
            Self::UnsupportedInterruptType(kind) => {
                write!(f, "interrupt type {kind} is neither SPI (0) nor PPI (1)")
            }
            Self::InterruptOutOfRange { kind: 0, number } => {
                write!(f, "SPI {number} is beyond SPI 987")
            }
            Self::InterruptOutOfRange { number, .. } => write!(f, "PPI {number} is beyond PPI 15"),
            Self::TooFewRegEntries { found, required } => {
                write!(f, "`reg` has {found} entries, needs {required}")
            }
            Self::TooFewInterrupts { found, required } => {
                write!(f, "`interrupts` has {found} specifiers, needs {required}")
            }
            Self::BadPsciMethod(method) => {
                write!(f, "PSCI method {method:?} is neither \"hvc\" nor \"smc\"")
            }
            Self::UnknownAlias(alias) => write!(f, "alias {alias:?} is not in /aliases"),
            Self::NoSuchNode(path) => write!(f, "no node {path}"),
        }
    }
}
