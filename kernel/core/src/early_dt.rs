//! The first look at the device tree, before the MMU is on: is there a blob
//! at x0 at all. Everything in it is read once, by tidepool-dt.

use core::fmt;

/// Largest device tree accepted (Linux's limit too).
const MAX_DTB_SIZE: usize = 2 << 20;
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Why the blob at x0 is not a usable device tree.
#[derive(Clone, Debug)]
pub enum DtbError {
    /// x0 was 0: the loader passed no device tree.
    Null,
    /// Not 8-byte aligned, as the boot protocol requires.
    Misaligned(usize),
    /// No FDT magic at the address.
    BadMagic(u32),
    /// `totalsize` is implausible.
    BadSize(usize),
    /// tidepool-dt could not read the blob.
    Structure(tidepool_dt::DtbError),
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("x0 is 0 (the loader passed no device tree)"),
            Self::Misaligned(a) => write!(f, "address {a:#x} is not 8-byte aligned"),
            Self::BadMagic(m) => {
                write!(f, "no FDT magic (found {m:#010x}, want {FDT_MAGIC:#010x})")
            }
            Self::BadSize(s) => write!(f, "implausible totalsize {s:#x} (limit {MAX_DTB_SIZE:#x})"),
            Self::Structure(e) => write!(f, "malformed: {e}"),
        }
    }
}

/// The device-tree blob at physical address `addr`, as a byte slice.
///
/// # Safety
/// `addr` must be readable memory for at least the FDT header (8 bytes) and,
/// if the header is valid, for `totalsize` bytes, and must stay unmodified
/// for the kernel's lifetime (the loader hands it over).
pub unsafe fn blob_at(addr: usize) -> Result<&'static [u8], DtbError> {
    if addr == 0 {
        return Err(DtbError::Null);
    }
    if !addr.is_multiple_of(8) {
        return Err(DtbError::Misaligned(addr));
    }
    let header = addr as *const u32;
    // SAFETY: the caller guarantees the first 8 bytes are readable; `addr` is aligned.
    let (magic, size) = unsafe {
        (
            u32::from_be(header.read_volatile()),
            u32::from_be(header.add(1).read_volatile()),
        )
    };
    if magic != FDT_MAGIC {
        return Err(DtbError::BadMagic(magic));
    }
    let size = size as usize;
    if !(40..=MAX_DTB_SIZE).contains(&size) {
        return Err(DtbError::BadSize(size));
    }
    // SAFETY: the caller guarantees `size` bytes at `addr` are readable and
    // never modified while the kernel runs.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, size) })
}
