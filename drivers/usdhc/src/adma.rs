//! ADMA2 descriptor tables (SD Host Controller Simplified Specification
//! §1.13, 32-bit addressing, as the uSDHC implements it).
//!
//! A descriptor is 8 bytes, little-endian: attributes (byte 0: Valid,
//! End, Int, Act), a reserved byte, a 16-bit length and a 32-bit address.
//! The driver describes one contiguous DMA region with as many "transfer"
//! descriptors as it needs, each of at most [`MAX_SEGMENT`] bytes, the last
//! one marked End. 32 KiB segments keep every length clear of the
//! encoding's "0 means 65536" corner.

use core::fmt;

/// Bytes per descriptor.
pub const DESCRIPTOR_BYTES: usize = 8;
/// The largest segment one descriptor moves.
pub const MAX_SEGMENT: u32 = 32 * 1024;

/// Attribute: the descriptor is valid.
pub const ATTR_VALID: u8 = 1 << 0;
/// Attribute: the last descriptor of the table.
pub const ATTR_END: u8 = 1 << 1;
/// Act field (bits 5:4) = transfer data.
pub const ACT_TRAN: u8 = 0b10 << 4;

/// Why a region cannot be described.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdmaError {
    /// The region ends above 4 GiB: 32-bit ADMA2 cannot reach it.
    AboveFourGiB {
        /// Its DMA address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The address or length is not a multiple of 4, which ADMA2 needs.
    Misaligned {
        /// Its DMA address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The table has room for fewer descriptors than the region needs.
    TableTooSmall {
        /// Descriptors needed.
        needed: usize,
        /// Descriptors the table holds.
        room: usize,
    },
    /// An empty region.
    Empty,
}

impl fmt::Display for AdmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AboveFourGiB { addr, len } => write!(
                f,
                "ADMA2 region {addr:#x}+{len:#x} ends above 4 GiB (32-bit descriptors)"
            ),
            Self::Misaligned { addr, len } => {
                write!(f, "ADMA2 region {addr:#x}+{len:#x} is not 4-byte aligned")
            }
            Self::TableTooSmall { needed, room } => write!(
                f,
                "ADMA2 table holds {room} descriptors, the region needs {needed}"
            ),
            Self::Empty => f.write_str("ADMA2 region is empty"),
        }
    }
}

/// The descriptors of the region `[addr, addr + len)`: how many, and each
/// one's 8 bytes, in order, through `put(index, bytes)`.
pub fn describe(
    addr: u64,
    len: u32,
    room: usize,
    mut put: impl FnMut(usize, [u8; DESCRIPTOR_BYTES]),
) -> Result<usize, AdmaError> {
    if len == 0 {
        return Err(AdmaError::Empty);
    }
    if addr + u64::from(len) > 1 << 32 {
        return Err(AdmaError::AboveFourGiB { addr, len });
    }
    if !addr.is_multiple_of(4) || !len.is_multiple_of(4) {
        return Err(AdmaError::Misaligned { addr, len });
    }
    let needed = len.div_ceil(MAX_SEGMENT) as usize;
    if needed > room {
        return Err(AdmaError::TableTooSmall { needed, room });
    }
    for index in 0..needed {
        let offset = index as u32 * MAX_SEGMENT;
        let segment = MAX_SEGMENT.min(len - offset);
        let mut attributes = ATTR_VALID | ACT_TRAN;
        if index + 1 == needed {
            attributes |= ATTR_END;
        }
        let mut bytes = [0; DESCRIPTOR_BYTES];
        bytes[0] = attributes;
        bytes[2..4].copy_from_slice(&(segment as u16).to_le_bytes());
        bytes[4..8].copy_from_slice(&((addr as u32) + offset).to_le_bytes());
        put(index, bytes);
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn table(addr: u64, len: u32, room: usize) -> Result<Vec<[u8; 8]>, AdmaError> {
        let mut out = Vec::new();
        let n = describe(addr, len, room, |i, d| {
            assert_eq!(i, out.len());
            out.push(d);
        })?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    #[test]
    fn one_block_is_one_end_descriptor() {
        let t = table(0x4000_1000, 512, 4).unwrap();
        assert_eq!(t, [[0x23, 0, 0x00, 0x02, 0x00, 0x10, 0x00, 0x40]]);
    }

    #[test]
    fn large_regions_are_split_into_32_kib_segments() {
        let t = table(0x5000_0000, 256 * 1024 + 512, 16).unwrap();
        assert_eq!(t.len(), 9);
        for (i, d) in t.iter().enumerate() {
            let len = u16::from_le_bytes([d[2], d[3]]);
            let addr = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            assert_eq!(addr, 0x5000_0000 + i as u32 * MAX_SEGMENT);
            assert_eq!(d[0] & ATTR_END != 0, i == 8);
            assert_eq!(d[0] & (ATTR_VALID | ACT_TRAN), ATTR_VALID | ACT_TRAN);
            assert_eq!(len, if i == 8 { 512 } else { 0x8000 });
        }
    }

    #[test]
    fn unreachable_or_misaligned_regions_are_refused() {
        assert_eq!(
            table(0xffff_f000, 8192, 4),
            Err(AdmaError::AboveFourGiB {
                addr: 0xffff_f000,
                len: 8192
            })
        );
        assert_eq!(
            table(0x4000_0002, 512, 4),
            Err(AdmaError::Misaligned {
                addr: 0x4000_0002,
                len: 512
            })
        );
        assert_eq!(
            table(0x4000_0000, 3 * MAX_SEGMENT, 2),
            Err(AdmaError::TableTooSmall { needed: 3, room: 2 })
        );
        assert_eq!(table(0x4000_0000, 0, 2), Err(AdmaError::Empty));
        // Exactly up to 4 GiB is reachable.
        assert!(table(0xffff_fe00, 512, 1).is_ok());
    }
}
