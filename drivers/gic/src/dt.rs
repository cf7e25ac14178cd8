//! Decoding the GIC's three-cell device-tree interrupt specifiers.

use core::fmt;

use crate::{IntId, IntKind, Trigger};

/// First cell: the specifier names an SPI.
const TYPE_SPI: u32 = 0;
/// First cell: the specifier names a PPI.
const TYPE_PPI: u32 = 1;
/// Third cell, bits \[3:0\]: the trigger type (the bits above hold a GICv2
/// PPI CPU mask, irrelevant here).
const TRIGGER_MASK: u32 = 0xf;
/// Trigger type: rising edge.
const EDGE_RISING: u32 = 1;
/// Trigger type: falling edge.
const EDGE_FALLING: u32 = 2;
/// Trigger type: active high level.
const LEVEL_HIGH: u32 = 4;
/// Trigger type: active low level.
const LEVEL_LOW: u32 = 8;

/// Why a device-tree interrupt specifier could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtInterruptError {
    /// The first cell is neither 0 (SPI) nor 1 (PPI); the GICv3 binding's
    /// extended SPI (2) and PPI (3) ranges are not supported.
    UnsupportedType(u32),
    /// The second cell is beyond the interrupts of that kind.
    NumberOutOfRange {
        /// Kind named by the first cell.
        kind: IntKind,
        /// The second cell.
        number: u32,
    },
    /// The third cell's trigger bits are not exactly one of rising edge (1),
    /// falling edge (2), level high (4) or level low (8).
    UnsupportedTrigger(u32),
}

impl fmt::Display for DtInterruptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedType(kind) => {
                write!(
                    f,
                    "interrupt type {kind} is not supported (0 = SPI, 1 = PPI)"
                )
            }
            Self::NumberOutOfRange { kind, number } => write!(f, "{kind} {number} does not exist"),
            Self::UnsupportedTrigger(flags) => write!(
                f,
                "interrupt flags {flags:#x} name no single trigger type (1/2 = edge, 4/8 = level)"
            ),
        }
    }
}

impl core::error::Error for DtInterruptError {}

/// Decodes a GIC interrupt specifier `<type number flags>` (the
/// `interrupts` property of a node whose parent is the GIC, with
/// `#interrupt-cells = <3>`): SPI `n` is INTID `32 + n`, PPI `n` is INTID
/// `16 + n`; flags 1 or 2 mean edge-triggered, 4 or 8 level-sensitive.
///
/// Xen's event-channel upcall, `<1 15 0xf08>` for a domU, decodes to
/// INTID 31, level.
pub fn decode_interrupt_specifier(cells: [u32; 3]) -> Result<(IntId, Trigger), DtInterruptError> {
    let [kind, number, flags] = cells;
    let kind = match kind {
        TYPE_SPI => IntKind::Spi,
        TYPE_PPI => IntKind::Ppi,
        other => return Err(DtInterruptError::UnsupportedType(other)),
    };
    let intid = IntId::of_kind(kind, number)
        .map_err(|_| DtInterruptError::NumberOutOfRange { kind, number })?;
    let trigger = match flags & TRIGGER_MASK {
        EDGE_RISING | EDGE_FALLING => Trigger::Edge,
        LEVEL_HIGH | LEVEL_LOW => Trigger::Level,
        _ => return Err(DtInterruptError::UnsupportedTrigger(flags)),
    };
    Ok((intid, trigger))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(cells: [u32; 3]) -> (u32, Trigger) {
        let (intid, trigger) = decode_interrupt_specifier(cells).unwrap();
        (intid.raw(), trigger)
    }

    #[test]
    fn spis_start_at_32() {
        assert_eq!(decoded([0, 0, 4]), (32, Trigger::Level));
        // QEMU virt's first virtio-mmio transport: SPI 16, rising edge.
        assert_eq!(decoded([0, 16, 1]), (48, Trigger::Edge));
        assert_eq!(decoded([0, 987, 4]), (1019, Trigger::Level));
    }

    #[test]
    fn ppis_start_at_16() {
        // Xen's upcall: domU PPI 15, dom0 (as measured) PPI 0; level low
        // with a GICv2 CPU mask of 0xf.
        assert_eq!(decoded([1, 15, 0xf08]), (31, Trigger::Level));
        assert_eq!(decoded([1, 0, 0xf08]), (16, Trigger::Level));
        // The arch timer's virtual timer: PPI 11.
        assert_eq!(decoded([1, 11, 0xf08]), (27, Trigger::Level));
        assert_eq!(decoded([1, 14, 0x104]), (30, Trigger::Level));
    }

    #[test]
    fn trigger_types() {
        assert_eq!(decoded([0, 5, 1]).1, Trigger::Edge);
        assert_eq!(decoded([0, 5, 2]).1, Trigger::Edge);
        assert_eq!(decoded([0, 5, 4]).1, Trigger::Level);
        assert_eq!(decoded([0, 5, 8]).1, Trigger::Level);
        for flags in [0, 3, 5, 0xc, 0xf, 0xf00] {
            assert_eq!(
                decode_interrupt_specifier([0, 5, flags]),
                Err(DtInterruptError::UnsupportedTrigger(flags))
            );
        }
    }

    #[test]
    fn bad_types_and_numbers() {
        assert_eq!(
            decode_interrupt_specifier([2, 0, 4]),
            Err(DtInterruptError::UnsupportedType(2))
        );
        assert_eq!(
            decode_interrupt_specifier([1, 16, 4]),
            Err(DtInterruptError::NumberOutOfRange {
                kind: IntKind::Ppi,
                number: 16
            })
        );
        assert_eq!(
            decode_interrupt_specifier([0, 988, 4]),
            Err(DtInterruptError::NumberOutOfRange {
                kind: IntKind::Spi,
                number: 988
            })
        );
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            DtInterruptError::UnsupportedTrigger(0).to_string(),
            "interrupt flags 0x0 name no single trigger type (1/2 = edge, 4/8 = level)"
        );
    }
}
