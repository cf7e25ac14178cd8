//! Memory types and permissions of a mapping, and the values of the two
//! system registers that give them meaning: MAIR_EL1 (memory types) and
//! TCR_EL1 (translation control). The kernel writes the registers; this
//! module only computes their values.

use core::fmt;

use aarch64_cpu::registers::TCR_EL1;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::InMemoryRegister;

/// The memory type of a mapping: an index into [`MAIR_EL1_VALUE`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MemoryType {
    /// Device-nGnRE: device registers (MAIR index 0, attribute 0x04).
    Device,
    /// Normal, inner and outer write-back, read/write-allocate, non-transient
    /// (MAIR index 1, attribute 0xff): RAM, and everything shared with Xen.
    NormalWriteBack,
    /// Normal, inner and outer non-cacheable (MAIR index 2, attribute 0x44):
    /// the windows of no-map DMA pools.
    NormalNonCacheable,
}

impl MemoryType {
    /// The attribute index (`AttrIndx`) of this type in [`MAIR_EL1_VALUE`].
    pub const fn mair_index(self) -> u64 {
        match self {
            Self::Device => 0,
            Self::NormalWriteBack => 1,
            Self::NormalNonCacheable => 2,
        }
    }

    /// The attribute byte of this type in [`MAIR_EL1_VALUE`] (what
    /// `PAR_EL1.ATTR` reports for a page of this type).
    pub const fn mair_attribute(self) -> u8 {
        (MAIR_EL1_VALUE >> (8 * self.mair_index())) as u8
    }

    /// The memory type at attribute index `index` of [`MAIR_EL1_VALUE`].
    pub const fn from_mair_index(index: u64) -> Option<Self> {
        match index {
            0 => Some(Self::Device),
            1 => Some(Self::NormalWriteBack),
            2 => Some(Self::NormalNonCacheable),
            _ => None,
        }
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Device => "Device-nGnRE",
            Self::NormalWriteBack => "Normal WB",
            Self::NormalNonCacheable => "Normal NC",
        })
    }
}

/// MAIR_EL1: index 0 Device-nGnRE (0x04), index 1 Normal inner/outer
/// write-back read/write-allocate non-transient (0xff), index 2 Normal
/// inner/outer non-cacheable (0x44); indices 3 to 7 unused (0x00).
pub const MAIR_EL1_VALUE: u64 = 0x0044_ff04;

/// Type and permissions of a kernel mapping.
///
/// Every mapping is privileged-only (EL0 has no access and may not execute)
/// and has its access flag set. Shareability follows the memory type: inner
/// shareable for Normal write-back (Xen requires memory shared with it to be
/// Normal write-back inner shareable); outer shareable for Normal
/// non-cacheable and Device, which the architecture treats as outer
/// shareable whatever the descriptor says.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct MapAttributes {
    /// The memory type.
    pub memory: MemoryType,
    /// Whether EL1 may write (otherwise read-only).
    pub writable: bool,
    /// Whether EL1 may execute (otherwise privileged execute-never).
    pub executable: bool,
}

impl MapAttributes {
    /// Kernel text: Normal write-back, read-only, executable.
    pub const TEXT: Self = Self {
        memory: MemoryType::NormalWriteBack,
        writable: false,
        executable: true,
    };
    /// Read-only data: Normal write-back, read-only, execute-never.
    pub const READ_ONLY: Self = Self {
        memory: MemoryType::NormalWriteBack,
        writable: false,
        executable: false,
    };
    /// Data, BSS, stacks and the linear map: Normal write-back, read-write,
    /// execute-never.
    pub const READ_WRITE: Self = Self {
        memory: MemoryType::NormalWriteBack,
        writable: true,
        executable: false,
    };
    /// Device registers: Device-nGnRE, read-write, execute-never.
    pub const DEVICE: Self = Self {
        memory: MemoryType::Device,
        writable: true,
        executable: false,
    };
    /// No-map pool windows: Normal non-cacheable, read-write, execute-never.
    pub const NON_CACHEABLE: Self = Self {
        memory: MemoryType::NormalNonCacheable,
        writable: true,
        executable: false,
    };

    /// Read-write, execute-never memory of the given type.
    pub const fn read_write(memory: MemoryType) -> Self {
        Self {
            memory,
            writable: true,
            executable: false,
        }
    }

    /// Whether the builder accepts these attributes: an executable mapping
    /// must be read-only (W^X) and Normal write-back (no execution from
    /// device or uncached memory).
    pub const fn is_permitted(&self) -> bool {
        !self.executable || (!self.writable && matches!(self.memory, MemoryType::NormalWriteBack))
    }
}

impl fmt::Display for MapAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match (self.writable, self.executable) {
            (true, true) => "RWX",
            (true, false) => "RW",
            (false, true) => "RX",
            (false, false) => "RO",
        };
        write!(f, "{} {access}", self.memory)
    }
}

/// Why no TCR_EL1 value could be computed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TcrError {
    /// `ID_AA64MMFR0_EL1.PARange` held a value the architecture does not define.
    UnknownPaRange(u8),
}

impl fmt::Display for TcrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPaRange(value) => {
                write!(
                    f,
                    "ID_AA64MMFR0_EL1.PARange = {value:#x} is not a defined physical address size"
                )
            }
        }
    }
}

/// Virtual address bits of each half: T0SZ = T1SZ = 64 - 48.
const REGION_SIZE_OFFSET: u64 = 16;

/// The TCR_EL1 value for this crate's tables: 4 KiB granule in both halves,
/// 48-bit virtual addresses in each (T0SZ = T1SZ = 16), table walks
/// inner-shareable and inner/outer write-back read/write-allocate, 8-bit
/// ASIDs taken from TTBR0_EL1, no top-byte ignore, no hardware access-flag
/// or dirty-state updates.
///
/// `pa_range` is `ID_AA64MMFR0_EL1.PARange`. IPS is set to it, capped at
/// 48 bits: descriptors with a 4 KiB granule (without FEAT_LPA2) carry
/// 48-bit output addresses, so a larger physical address size buys nothing.
pub fn tcr_el1(pa_range: u8) -> Result<u64, TcrError> {
    let ips = match pa_range {
        0 => TCR_EL1::IPS::Bits_32,
        1 => TCR_EL1::IPS::Bits_36,
        2 => TCR_EL1::IPS::Bits_40,
        3 => TCR_EL1::IPS::Bits_42,
        4 => TCR_EL1::IPS::Bits_44,
        // 5 = 48 bits, 6 = 52 bits (FEAT_LPA), 7 = 56 bits (FEAT_D128).
        5..=7 => TCR_EL1::IPS::Bits_48,
        other => return Err(TcrError::UnknownPaRange(other)),
    };
    let tcr = InMemoryRegister::<u64, TCR_EL1::Register>::new(0);
    tcr.write(
        ips + TCR_EL1::HD::Disable
            + TCR_EL1::HA::Disable
            + TCR_EL1::TBI0::Used
            + TCR_EL1::TBI1::Used
            + TCR_EL1::AS::ASID8Bits
            + TCR_EL1::A1::TTBR0
            + TCR_EL1::TG0::KiB_4
            + TCR_EL1::SH0::Inner
            + TCR_EL1::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::EPD0::EnableTTBR0Walks
            + TCR_EL1::T0SZ.val(REGION_SIZE_OFFSET)
            + TCR_EL1::TG1::KiB_4
            + TCR_EL1::SH1::Inner
            + TCR_EL1::ORGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::IRGN1::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::EPD1::EnableTTBR1Walks
            + TCR_EL1::T1SZ.val(REGION_SIZE_OFFSET),
    );
    Ok(tcr.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aarch64_cpu::registers::MAIR_EL1;

    #[test]
    fn mair_value_matches_the_named_attributes() {
        let mair = InMemoryRegister::<u64, MAIR_EL1::Register>::new(0);
        mair.write(
            MAIR_EL1::Attr0_Device::nonGathering_nonReordering_EarlyWriteAck
                + MAIR_EL1::Attr1_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc
                + MAIR_EL1::Attr1_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc
                + MAIR_EL1::Attr2_Normal_Outer::NonCacheable
                + MAIR_EL1::Attr2_Normal_Inner::NonCacheable,
        );
        assert_eq!(mair.get(), MAIR_EL1_VALUE);
        for memory in [
            MemoryType::Device,
            MemoryType::NormalWriteBack,
            MemoryType::NormalNonCacheable,
        ] {
            let byte = (MAIR_EL1_VALUE >> (8 * memory.mair_index())) & 0xff;
            let expected = match memory {
                MemoryType::Device => 0x04,
                MemoryType::NormalWriteBack => 0xff,
                MemoryType::NormalNonCacheable => 0x44,
            };
            assert_eq!(byte, expected, "{memory}");
            assert_eq!(
                MemoryType::from_mair_index(memory.mair_index()),
                Some(memory)
            );
        }
        assert_eq!(MemoryType::from_mair_index(3), None);
    }

    #[test]
    fn tcr_for_a_48_bit_machine() {
        // Worked out by hand from the Arm ARM field layout:
        // T0SZ=16 [5:0], IRGN0=01 [9:8], ORGN0=01 [11:10], SH0=11 [13:12], TG0=00 [15:14],
        // T1SZ=16 [21:16], IRGN1=01 [25:24], ORGN1=01 [27:26], SH1=11 [29:28], TG1=10 [31:30],
        // IPS=101 [34:32]; everything else 0.
        assert_eq!(tcr_el1(5), Ok(0x0000_0005_b510_3510));
    }

    #[test]
    fn tcr_ips_follows_pa_range_up_to_48_bits() {
        let ips = |pa_range| (tcr_el1(pa_range).unwrap() >> 32) & 0b111;
        assert_eq!(ips(0), 0b000);
        assert_eq!(ips(2), 0b010);
        assert_eq!(ips(4), 0b100);
        assert_eq!(ips(5), 0b101);
        assert_eq!(ips(6), 0b101, "52-bit PA capped to 48");
        assert_eq!(ips(7), 0b101, "56-bit PA capped to 48");
        assert_eq!(tcr_el1(8), Err(TcrError::UnknownPaRange(8)));
        assert_eq!(
            TcrError::UnknownPaRange(8).to_string(),
            "ID_AA64MMFR0_EL1.PARange = 0x8 is not a defined physical address size"
        );
    }

    #[test]
    fn executable_mappings_must_be_read_only_write_back() {
        assert!(MapAttributes::TEXT.is_permitted());
        assert!(MapAttributes::READ_WRITE.is_permitted());
        assert!(MapAttributes::DEVICE.is_permitted());
        assert!(
            !MapAttributes {
                writable: true,
                ..MapAttributes::TEXT
            }
            .is_permitted()
        );
        assert!(
            !MapAttributes {
                memory: MemoryType::Device,
                ..MapAttributes::TEXT
            }
            .is_permitted()
        );
        assert_eq!(MapAttributes::TEXT.to_string(), "Normal WB RX");
        assert_eq!(MapAttributes::NON_CACHEABLE.to_string(), "Normal NC RW");
    }
}
