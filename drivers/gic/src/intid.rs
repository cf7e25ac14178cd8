//! Interrupt identifiers, kinds and trigger modes.

use core::fmt;

use crate::GicError;

/// Number of SGIs (INTIDs 0–15).
const SGI_COUNT: u32 = 16;
/// Number of PPIs (INTIDs 16–31).
const PPI_COUNT: u32 = 16;
/// First SPI (INTID 32).
const SPI_BASE: u32 = SGI_COUNT + PPI_COUNT;
/// First special INTID (1020–1023: spurious and reserved); SPIs end below it.
pub(crate) const SPECIAL_INTID_BASE: u32 = 1020;
/// Number of SPIs the architecture allows (INTIDs 32–1019).
const SPI_COUNT: u32 = SPECIAL_INTID_BASE - SPI_BASE;

/// The kind of an interrupt, which decides where it is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntKind {
    /// Software-generated interrupt (INTID 0–15), private to a CPU.
    Sgi,
    /// Private peripheral interrupt (INTID 16–31), such as a timer or Xen's
    /// event-channel upcall.
    Ppi,
    /// Shared peripheral interrupt (INTID 32–1019), such as a device's line.
    Spi,
}

impl IntKind {
    /// Number of interrupts of this kind the architecture defines.
    const fn count(self) -> u32 {
        match self {
            Self::Sgi => SGI_COUNT,
            Self::Ppi => PPI_COUNT,
            Self::Spi => SPI_COUNT,
        }
    }

    /// First INTID of this kind.
    const fn base(self) -> u32 {
        match self {
            Self::Sgi => 0,
            Self::Ppi => SGI_COUNT,
            Self::Spi => SPI_BASE,
        }
    }
}

impl fmt::Display for IntKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sgi => "SGI",
            Self::Ppi => "PPI",
            Self::Spi => "SPI",
        })
    }
}

/// An SGI, PPI or SPI interrupt identifier (INTID 0–1019).
///
/// Special INTIDs (1020–1023), LPIs and the extended ranges are not
/// representable: this driver neither configures nor delivers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntId(u32);

impl IntId {
    /// The INTID with this raw value.
    pub const fn new(raw: u32) -> Result<Self, GicError> {
        if raw < SPECIAL_INTID_BASE {
            Ok(Self(raw))
        } else {
            Err(GicError::NotAnInterrupt(raw))
        }
    }

    /// SGI `number` (0–15), INTID `number`.
    pub const fn sgi(number: u32) -> Result<Self, GicError> {
        Self::of_kind(IntKind::Sgi, number)
    }

    /// PPI `number` (0–15), INTID `16 + number`: the numbering of device-tree
    /// interrupt specifiers and of the Arm ARM (the virtual timer is PPI 11).
    pub const fn ppi(number: u32) -> Result<Self, GicError> {
        Self::of_kind(IntKind::Ppi, number)
    }

    /// SPI `number` (0–987), INTID `32 + number`: the numbering of
    /// device-tree interrupt specifiers.
    pub const fn spi(number: u32) -> Result<Self, GicError> {
        Self::of_kind(IntKind::Spi, number)
    }

    /// Interrupt `number` of `kind`, counted from the first INTID of that kind.
    pub const fn of_kind(kind: IntKind, number: u32) -> Result<Self, GicError> {
        if number < kind.count() {
            Ok(Self(kind.base() + number))
        } else {
            Err(GicError::NumberOutOfRange { kind, number })
        }
    }

    /// The raw INTID.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Whether this is an SGI, a PPI or an SPI.
    pub const fn kind(self) -> IntKind {
        if self.0 < SGI_COUNT {
            IntKind::Sgi
        } else if self.0 < SPI_BASE {
            IntKind::Ppi
        } else {
            IntKind::Spi
        }
    }

    /// The number within its kind (SPI 5 is INTID 37 and number 5).
    pub const fn number(self) -> u32 {
        self.0 - self.kind().base()
    }

    /// Whether the interrupt is private to a CPU (SGI or PPI), so configured
    /// per CPU (GICv3 redistributor, GICv2 banked distributor registers).
    pub const fn is_private(self) -> bool {
        self.0 < SPI_BASE
    }

    /// Index of the 32-bit register holding this INTID's bit in a
    /// one-bit-per-interrupt register array (IGROUPR, ISENABLER, ICENABLER),
    /// and the bit's mask in it.
    pub(crate) const fn bit_position(self) -> (usize, u32) {
        ((self.0 / 32) as usize, 1 << (self.0 % 32))
    }

    /// Index of the 32-bit ICFGR register holding this INTID's two-bit
    /// field, and the mask of the field's upper bit (1 = edge-triggered).
    pub(crate) const fn edge_bit_position(self) -> (usize, u32) {
        ((self.0 / 16) as usize, 1 << ((self.0 % 16) * 2 + 1))
    }
}

impl fmt::Display for IntId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INTID {} ({} {})", self.0, self.kind(), self.number())
    }
}

/// How an interrupt line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Level-sensitive: pending while the line is asserted (high or low at
    /// the device; the GIC sees an asserted level either way).
    Level,
    /// Edge-triggered: pending once per assertion.
    Edge,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Level => "level",
            Self::Edge => "edge",
        })
    }
}

/// A middle priority for ordinary interrupts (lower values are more urgent).
pub const DEFAULT_PRIORITY: u8 = 0xa0;

/// The least urgent priority value, which the priority mask of `0xff` never
/// lets through on a GIC implementing all eight priority bits.
pub(crate) const MASKED_PRIORITY: u8 = 0xff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_architectural_ranges() {
        assert_eq!(IntId::sgi(0).unwrap().raw(), 0);
        assert_eq!(IntId::sgi(15).unwrap().raw(), 15);
        assert_eq!(IntId::ppi(0).unwrap().raw(), 16);
        assert_eq!(IntId::ppi(11).unwrap().raw(), 27);
        assert_eq!(IntId::ppi(15).unwrap().raw(), 31);
        assert_eq!(IntId::spi(0).unwrap().raw(), 32);
        assert_eq!(IntId::spi(987).unwrap().raw(), 1019);
    }

    #[test]
    fn numbers_beyond_a_kind_are_rejected() {
        assert_eq!(
            IntId::sgi(16),
            Err(GicError::NumberOutOfRange {
                kind: IntKind::Sgi,
                number: 16
            })
        );
        assert_eq!(
            IntId::ppi(16),
            Err(GicError::NumberOutOfRange {
                kind: IntKind::Ppi,
                number: 16
            })
        );
        assert_eq!(
            IntId::spi(988),
            Err(GicError::NumberOutOfRange {
                kind: IntKind::Spi,
                number: 988
            })
        );
    }

    #[test]
    fn special_intids_are_not_interrupts() {
        assert!(IntId::new(1019).is_ok());
        for raw in [1020, 1021, 1022, 1023, 8192] {
            assert_eq!(IntId::new(raw), Err(GicError::NotAnInterrupt(raw)));
        }
    }

    #[test]
    fn kind_and_number_round_trip() {
        for raw in 0..SPECIAL_INTID_BASE {
            let id = IntId::new(raw).unwrap();
            assert_eq!(IntId::of_kind(id.kind(), id.number()), Ok(id));
            assert_eq!(id.is_private(), raw < 32);
        }
    }

    #[test]
    fn enable_bit_positions() {
        assert_eq!(IntId::new(0).unwrap().bit_position(), (0, 1));
        assert_eq!(IntId::new(27).unwrap().bit_position(), (0, 1 << 27));
        assert_eq!(IntId::new(32).unwrap().bit_position(), (1, 1));
        assert_eq!(IntId::new(79).unwrap().bit_position(), (2, 1 << 15));
        assert_eq!(IntId::new(1019).unwrap().bit_position(), (31, 1 << 27));
    }

    #[test]
    fn config_bit_positions() {
        // ICFGR<n> holds INTIDs 16n..16n+15, two bits each; bit 2m+1 is edge.
        assert_eq!(IntId::new(0).unwrap().edge_bit_position(), (0, 1 << 1));
        assert_eq!(IntId::new(16).unwrap().edge_bit_position(), (1, 1 << 1));
        assert_eq!(IntId::new(27).unwrap().edge_bit_position(), (1, 1 << 23));
        assert_eq!(IntId::new(31).unwrap().edge_bit_position(), (1, 1 << 31));
        assert_eq!(IntId::new(48).unwrap().edge_bit_position(), (3, 1 << 1));
        assert_eq!(IntId::new(1019).unwrap().edge_bit_position(), (63, 1 << 23));
    }

    #[test]
    fn display_names_kind_and_number() {
        assert_eq!(IntId::ppi(11).unwrap().to_string(), "INTID 27 (PPI 11)");
        assert_eq!(IntId::spi(1).unwrap().to_string(), "INTID 33 (SPI 1)");
    }
}
