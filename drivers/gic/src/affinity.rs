//! CPU affinity, as GICv3 uses it to route SPIs and to name redistributors.

use core::fmt;

/// A CPU's affinity path `Aff3.Aff2.Aff1.Aff0` (from MPIDR_EL1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    aff3: u8,
    aff2: u8,
    aff1: u8,
    aff0: u8,
}

impl Affinity {
    /// The affinity `aff3.aff2.aff1.aff0`.
    pub const fn new(aff3: u8, aff2: u8, aff1: u8, aff0: u8) -> Self {
        Self {
            aff3,
            aff2,
            aff1,
            aff0,
        }
    }

    /// The affinity fields of an MPIDR_EL1 value: Aff0 in bits \[7:0\], Aff1
    /// \[15:8\], Aff2 \[23:16\], Aff3 \[39:32\]; the other bits (MT, U) are ignored.
    pub const fn from_mpidr(mpidr: u64) -> Self {
        Self {
            aff3: (mpidr >> 32) as u8,
            aff2: (mpidr >> 16) as u8,
            aff1: (mpidr >> 8) as u8,
            aff0: mpidr as u8,
        }
    }

    /// The affinity of the CPU running this code (MPIDR_EL1; under a
    /// hypervisor, the virtual MPIDR it presents).
    #[cfg(target_arch = "aarch64")]
    pub fn current() -> Self {
        use aarch64_cpu::registers::{MPIDR_EL1, Readable};
        Self::from_mpidr(MPIDR_EL1.get())
    }

    /// The affinity in the packed form of GICR_TYPER bits \[63:32\]: Aff3 in
    /// bits \[31:24\] down to Aff0 in \[7:0\].
    pub(crate) const fn from_packed(packed: u32) -> Self {
        Self {
            aff3: (packed >> 24) as u8,
            aff2: (packed >> 16) as u8,
            aff1: (packed >> 8) as u8,
            aff0: packed as u8,
        }
    }

    /// Affinity level 3.
    pub const fn aff3(self) -> u8 {
        self.aff3
    }

    /// Affinity level 2.
    pub const fn aff2(self) -> u8 {
        self.aff2
    }

    /// Affinity level 1.
    pub const fn aff1(self) -> u8 {
        self.aff1
    }

    /// Affinity level 0 (usually the core within a cluster).
    pub const fn aff0(self) -> u8 {
        self.aff0
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}.{}", self.aff3, self.aff2, self.aff1, self.aff0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpidr_fields_are_extracted() {
        // U (bit 30) and MT (bit 24) set, as on many uniprocessor guests.
        let mpidr = 0x0000_0012_4103_0201_u64 | (1 << 30) | (1 << 24);
        let aff = Affinity::from_mpidr(mpidr);
        assert_eq!(aff, Affinity::new(0x12, 0x03, 0x02, 0x01));
        assert_eq!(
            (aff.aff3(), aff.aff2(), aff.aff1(), aff.aff0()),
            (0x12, 0x03, 0x02, 0x01)
        );
    }

    #[test]
    fn qemu_cpu0_mpidr_is_all_zero_affinity() {
        assert_eq!(Affinity::from_mpidr(0x8000_0000), Affinity::new(0, 0, 0, 0));
    }

    #[test]
    fn packed_form_orders_levels_high_to_low() {
        assert_eq!(
            Affinity::from_packed(0x0102_0304),
            Affinity::new(1, 2, 3, 4)
        );
    }

    #[test]
    fn displays_dotted() {
        assert_eq!(Affinity::new(0, 1, 2, 3).to_string(), "0.1.2.3");
    }
}
