//! Stage-1 translation-table descriptors of the VMSAv8-64 4 KiB granule
//! (Arm ARM D8.3), declared as bitfields and built over `InMemoryRegister`.
//!
//! Levels 0 to 2 hold table descriptors; levels 1 and 2 may hold block
//! descriptors (1 GiB, 2 MiB); level 3 holds page descriptors (4 KiB). Block
//! and page descriptors share one layout and differ in bit 1.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::registers::InMemoryRegister;

use crate::attributes::{MapAttributes, MemoryType};

register_bitfields! {u64,
    /// A table descriptor: points to a next-level table.
    TABLE_DESCRIPTOR [
        /// Physical address of the next-level table, bits [47:12].
        NEXT_LEVEL_TABLE_ADDR OFFSET(12) NUMBITS(36) [],
        /// Bit 1 distinguishes a table (1) from a block (0) at levels 0 to 2.
        TYPE OFFSET(1) NUMBITS(1) [
            Block = 0,
            Table = 1
        ],
        /// Whether the descriptor is valid.
        VALID OFFSET(0) NUMBITS(1) [
            False = 0,
            True = 1
        ]
    ],

    /// A block (levels 1 and 2) or page (level 3) descriptor.
    LEAF_DESCRIPTOR [
        /// Unprivileged execute-never.
        UXN OFFSET(54) NUMBITS(1) [
            False = 0,
            True = 1
        ],
        /// Privileged execute-never.
        PXN OFFSET(53) NUMBITS(1) [
            False = 0,
            True = 1
        ],
        /// Output address, bits [47:12]; for a block the bits below its size are zero.
        OUTPUT_ADDR OFFSET(12) NUMBITS(36) [],
        /// Not global (ASID-tagged); kernel mappings are global.
        NG OFFSET(11) NUMBITS(1) [
            False = 0,
            True = 1
        ],
        /// Access flag; set on every descriptor so that no access-flag fault occurs.
        AF OFFSET(10) NUMBITS(1) [
            False = 0,
            True = 1
        ],
        /// Shareability.
        SH OFFSET(8) NUMBITS(2) [
            NonShareable = 0b00,
            OuterShareable = 0b10,
            InnerShareable = 0b11
        ],
        /// Data access permissions, AP[2:1].
        AP OFFSET(6) NUMBITS(2) [
            RW_EL1 = 0b00,
            RW_EL1_EL0 = 0b01,
            RO_EL1 = 0b10,
            RO_EL1_EL0 = 0b11
        ],
        /// Index into MAIR_EL1.
        ATTR_INDX OFFSET(2) NUMBITS(3) [],
        /// Bit 1: block (0) at levels 1 and 2, page (1) at level 3.
        TYPE OFFSET(1) NUMBITS(1) [
            Block = 0,
            Page = 1
        ],
        /// Whether the descriptor is valid.
        VALID OFFSET(0) NUMBITS(1) [
            False = 0,
            True = 1
        ]
    ]
}

/// Width of the output-address fields' shift: addresses are stored >> 12.
const ADDRESS_SHIFT: u64 = 12;

/// What a raw descriptor at some level is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Decoded {
    /// Invalid: translation fault.
    Invalid,
    /// A table descriptor (levels 0 to 2) pointing at the table at this physical address.
    Table(u64),
    /// A block or page descriptor mapping to this physical address.
    Leaf(u64),
}

/// Decodes `raw` found at translation level `level` (0 to 3).
///
/// Level 3 has no tables: a valid level-3 descriptor with bit 1 clear is
/// reserved and, like an invalid one, faults. Level 0 has no blocks with a
/// 4 KiB granule (without FEAT_LPA2): such a descriptor faults too.
pub(crate) fn decode(raw: u64, level: usize) -> Decoded {
    let reg = InMemoryRegister::<u64, TABLE_DESCRIPTOR::Register>::new(raw);
    if !reg.is_set(TABLE_DESCRIPTOR::VALID) {
        return Decoded::Invalid;
    }
    let is_type_one = reg.matches_all(TABLE_DESCRIPTOR::TYPE::Table);
    let address = reg.read(TABLE_DESCRIPTOR::NEXT_LEVEL_TABLE_ADDR) << ADDRESS_SHIFT;
    match (level, is_type_one) {
        (0..=2, true) => Decoded::Table(address),
        (1 | 2, false) | (3, true) => Decoded::Leaf(address),
        _ => Decoded::Invalid,
    }
}

/// A table descriptor pointing at the table at physical `table`.
pub(crate) fn table(table: u64) -> u64 {
    let reg = InMemoryRegister::<u64, TABLE_DESCRIPTOR::Register>::new(0);
    reg.write(
        TABLE_DESCRIPTOR::VALID::True
            + TABLE_DESCRIPTOR::TYPE::Table
            + TABLE_DESCRIPTOR::NEXT_LEVEL_TABLE_ADDR.val(table >> ADDRESS_SHIFT),
    );
    reg.get()
}

/// A block (level 1 or 2) or page (level 3) descriptor for `output` with `attributes`.
pub(crate) fn leaf(output: u64, level: usize, attributes: MapAttributes) -> u64 {
    let reg = InMemoryRegister::<u64, LEAF_DESCRIPTOR::Register>::new(0);
    let shareability = match attributes.memory {
        MemoryType::NormalWriteBack => LEAF_DESCRIPTOR::SH::InnerShareable,
        MemoryType::NormalNonCacheable | MemoryType::Device => LEAF_DESCRIPTOR::SH::OuterShareable,
    };
    let access = if attributes.writable {
        LEAF_DESCRIPTOR::AP::RW_EL1
    } else {
        LEAF_DESCRIPTOR::AP::RO_EL1
    };
    let privileged_execute = if attributes.executable {
        LEAF_DESCRIPTOR::PXN::False
    } else {
        LEAF_DESCRIPTOR::PXN::True
    };
    let kind = if level == 3 {
        LEAF_DESCRIPTOR::TYPE::Page
    } else {
        LEAF_DESCRIPTOR::TYPE::Block
    };
    reg.write(
        LEAF_DESCRIPTOR::VALID::True
            + kind
            + LEAF_DESCRIPTOR::ATTR_INDX.val(attributes.memory.mair_index())
            + access
            + shareability
            + LEAF_DESCRIPTOR::AF::True
            + LEAF_DESCRIPTOR::NG::False
            + LEAF_DESCRIPTOR::OUTPUT_ADDR.val(output >> ADDRESS_SHIFT)
            + privileged_execute
            + LEAF_DESCRIPTOR::UXN::True,
    );
    reg.get()
}

/// The attributes of a leaf descriptor, or `None` if its attribute index is
/// not one of [`MemoryType`]'s (this crate never writes such a descriptor).
pub(crate) fn leaf_attributes(raw: u64) -> Option<MapAttributes> {
    let reg = InMemoryRegister::<u64, LEAF_DESCRIPTOR::Register>::new(raw);
    let memory = MemoryType::from_mair_index(reg.read(LEAF_DESCRIPTOR::ATTR_INDX))?;
    let writable = matches!(
        reg.read_as_enum(LEAF_DESCRIPTOR::AP),
        Some(LEAF_DESCRIPTOR::AP::Value::RW_EL1 | LEAF_DESCRIPTOR::AP::Value::RW_EL1_EL0)
    );
    let executable = !reg.is_set(LEAF_DESCRIPTOR::PXN);
    Some(MapAttributes {
        memory,
        writable,
        executable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(raw: u64) -> InMemoryRegister<u64, LEAF_DESCRIPTOR::Register> {
        InMemoryRegister::new(raw)
    }

    #[test]
    fn write_back_block_is_inner_shareable_global_and_never_executable() {
        let raw = leaf(0x4020_0000, 2, MapAttributes::READ_WRITE);
        // Bits by hand: valid, block, AttrIndx=1 (bit 2), AP=00, SH=11 (bits 8-9), AF (bit 10),
        // PXN (bit 53), UXN (bit 54).
        assert_eq!(raw, 0x0060_0000_4020_0705);
        let reg = fields(raw);
        assert!(reg.matches_all(LEAF_DESCRIPTOR::SH::InnerShareable + LEAF_DESCRIPTOR::AF::True));
        assert!(!reg.is_set(LEAF_DESCRIPTOR::NG));
        assert_eq!(decode(raw, 2), Decoded::Leaf(0x4020_0000));
        assert_eq!(leaf_attributes(raw), Some(MapAttributes::READ_WRITE));
    }

    #[test]
    fn text_page_is_privileged_executable_read_only() {
        let raw = leaf(0x4008_0000, 3, MapAttributes::TEXT);
        let reg = fields(raw);
        assert!(reg.matches_all(LEAF_DESCRIPTOR::TYPE::Page + LEAF_DESCRIPTOR::AP::RO_EL1));
        assert!(!reg.is_set(LEAF_DESCRIPTOR::PXN));
        assert!(reg.is_set(LEAF_DESCRIPTOR::UXN));
        assert_eq!(leaf_attributes(raw), Some(MapAttributes::TEXT));
    }

    #[test]
    fn device_and_non_cacheable_are_outer_shareable() {
        for attributes in [MapAttributes::DEVICE, MapAttributes::NON_CACHEABLE] {
            let raw = leaf(0x0900_0000, 3, attributes);
            assert!(fields(raw).matches_all(LEAF_DESCRIPTOR::SH::OuterShareable));
            assert_eq!(
                fields(raw).read(LEAF_DESCRIPTOR::ATTR_INDX),
                attributes.memory.mair_index()
            );
            assert_eq!(leaf_attributes(raw), Some(attributes));
        }
    }

    #[test]
    fn decoding_follows_the_level() {
        let table_raw = table(0x8000_3000);
        assert_eq!(table_raw, 0x8000_3003);
        assert_eq!(decode(table_raw, 0), Decoded::Table(0x8000_3000));
        assert_eq!(
            decode(table_raw, 3),
            Decoded::Leaf(0x8000_3000),
            "type 1 at level 3 is a page"
        );
        let block = leaf(0x4000_0000, 1, MapAttributes::READ_WRITE);
        assert_eq!(decode(block, 1), Decoded::Leaf(0x4000_0000));
        assert_eq!(
            decode(block, 0),
            Decoded::Invalid,
            "no level-0 blocks with 4 KiB granule"
        );
        assert_eq!(
            decode(block, 3),
            Decoded::Invalid,
            "type 0 at level 3 is reserved"
        );
        assert_eq!(decode(0, 2), Decoded::Invalid);
        assert_eq!(leaf_attributes(block | (3 << 2)), None);
    }
}
