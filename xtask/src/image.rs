//! Turning the linked kernel ELF into a Linux arm64 Image, with the checks
//! that make a broken image fail the build instead of the boot.

use object::elf::{PT_LOAD, R_AARCH64_RELATIVE};
use object::read::elf::{ElfFile64, ProgramHeader, Rela};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

use crate::{Error, Result};

/// The Image format's magic at offset 56.
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";
/// The size target for the image file (README, DEVELOPERS guide).
pub const IMAGE_SIZE_LIMIT: usize = 512 * 1024;

/// Where Xen's toolstack puts a guest's boot modules (device tree,
/// ramdisk): at the first 2 MiB boundary after the Image *file*, since it
/// ignores `image_size` (`xg_dom_arm.c`, `modbase = ROUNDUP(kernend, 21)`
/// when RAM is under 128 MiB plus the modules). The entry code clears BSS
/// before it looks at the device tree, so the whole image in memory must end
/// below that boundary, or an `xl` guest would wipe its own device tree.
const XL_MODULE_ALIGN: u64 = 2 << 20;

/// Refuses an image whose memory footprint from `text_offset` crosses the
/// 2 MiB boundary where `xl` places the device tree.
fn check_xl_placement(text_offset: u64, memory_size: u64) -> Result<()> {
    if text_offset + memory_size > XL_MODULE_ALIGN {
        return Err(Error::msg(format!(
            "the Image needs {memory_size:#x} bytes from text_offset {text_offset:#x}, past the \
             2 MiB boundary where xl places an arm64 guest's device tree (BSS would overwrite it)"
        )));
    }
    Ok(())
}

/// What the conversion found.
pub struct Image {
    /// The flat image file.
    pub bytes: Vec<u8>,
    /// Memory the loader must reserve (header `image_size`).
    pub memory_size: u64,
    /// Relative relocations the entry code applies.
    pub relocations: usize,
}

/// The memory an arm64 Image (Linux's, tidepool's, Xen's) needs from its
/// load address: the header's `image_size`, which must cover the file.
pub fn header_memory_size(bytes: &[u8]) -> Result<u64> {
    if bytes.len() < 64 || &bytes[56..60] != IMAGE_MAGIC {
        return Err(Error::msg("no arm64 Image header (magic missing)"));
    }
    let memory_size = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if memory_size < bytes.len() as u64 {
        return Err(Error::msg(format!(
            "Image header image_size {memory_size:#x} is smaller than the file {:#x}",
            bytes.len()
        )));
    }
    Ok(memory_size)
}

/// Flattens the loadable segments of `elf` (linked at 0) into an Image and
/// checks the header and relocations.
pub fn elf_to_image(elf: &[u8]) -> Result<Image> {
    let file =
        ElfFile64::<Endianness>::parse(elf).map_err(|e| Error::msg(format!("kernel ELF: {e}")))?;
    let endian = file.endian();
    let mut bytes = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != PT_LOAD {
            continue;
        }
        let vaddr = ph.p_vaddr(endian) as usize;
        let data = ph
            .data(endian, elf)
            .map_err(|_| Error::msg("kernel ELF: segment data out of bounds"))?;
        if bytes.len() < vaddr + data.len() {
            bytes.resize(vaddr + data.len(), 0);
        }
        bytes[vaddr..vaddr + data.len()].copy_from_slice(data);
    }
    let memory_size =
        header_memory_size(&bytes).map_err(|e| Error::msg(format!("kernel ELF: {e}")))?;
    let text_offset = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    check_xl_placement(text_offset, memory_size)?;

    let text_end = file
        .symbol_by_name("__text_end")
        .map(|symbol| symbol.address())
        .ok_or_else(|| Error::msg("kernel ELF: no __text_end symbol"))?;
    let mut relocations = 0;
    if let Some(section) = file.section_by_name(".rela.dyn") {
        let data = section
            .data()
            .map_err(|e| Error::msg(format!(".rela.dyn: {e}")))?;
        let relas: &[object::elf::Rela64<Endianness>] = object::slice_from_all_bytes(data)
            .map_err(|_| Error::msg(".rela.dyn is not a whole number of entries"))?;
        for rela in relas {
            let kind = rela.r_type(endian, false);
            if kind != R_AARCH64_RELATIVE {
                return Err(Error::msg(format!(
                    "relocation of type {kind} at {:#x}: the entry code applies only R_AARCH64_RELATIVE",
                    rela.r_offset(endian)
                )));
            }
            check_relocation_target(rela.r_offset(endian), text_end)?;
            relocations += 1;
        }
    }
    Ok(Image {
        bytes,
        memory_size,
        relocations,
    })
}

/// Refuses a relocation that writes the kernel text (`[0, text_end)`): the
/// entry code writes relocations with the caches off, and the MMU bring-up
/// discards stale cache lines only from the end of the text on (what the
/// kernel writes before its caches are on: relocated data, BSS, stacks).
fn check_relocation_target(offset: u64, text_end: u64) -> Result<()> {
    if offset < text_end {
        return Err(Error::msg(format!(
            "relocation at {offset:#x} writes the kernel text (which ends at {text_end:#x}): \
             the MMU bring-up invalidates the caches only after the text"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocations_into_the_text_are_refused() {
        assert!(check_relocation_target(0x6a000, 0x6a000).is_ok());
        assert!(check_relocation_target(0x7c008, 0x6a000).is_ok());
        assert!(check_relocation_target(0x69ff8, 0x6a000).is_err());
        assert!(check_relocation_target(0, 0x6a000).is_err());
    }

    #[test]
    fn xl_places_the_device_tree_at_the_next_2mib_boundary() {
        assert!(check_xl_placement(0, 0xd1000).is_ok());
        assert!(check_xl_placement(0, 2 << 20).is_ok());
        assert!(check_xl_placement(0x1000, 2 << 20).is_err());
        assert!(check_xl_placement(0, (2 << 20) + 1).is_err());
    }
}
