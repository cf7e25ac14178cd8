//! Register layouts and logic shared by the GICv2 and GICv3 distributors and
//! the GICv3 redistributor's SGI frame.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::registers::{ReadWrite, WriteOnly};

use crate::intid::{MASKED_PRIORITY, SPECIAL_INTID_BASE};
use crate::{GicError, IntId, IntKind, Trigger};

register_bitfields! {u32,
    /// Interrupt Controller Type Register (same layout in GICv2 and GICv3
    /// for the field used here).
    pub(crate) GICD_TYPER [
        /// The distributor implements `32 * (ITLinesNumber + 1)` INTIDs
        /// (at most 1020).
        ITLinesNumber OFFSET(0) NUMBITS(5) []
    ]
}

/// Writes `value` to `register` with one plain store.
///
/// Loops over register arrays go through this function (and [`load`]),
/// which is never inlined, so that each access is a single `str`/`ldr`
/// without writeback. Inlined into a loop, a volatile access may be compiled
/// with a post- or pre-indexed address (`str w1, [x0], #4`); such an
/// instruction reports no syndrome when it traps, so a hypervisor emulating
/// the register (Xen's virtual GIC) has to decode it itself: Xen 4.17 only
/// decodes the post-indexed form, KVM neither, and the guest gets an abort.
#[inline(never)]
pub(crate) fn store<R: Writeable>(register: &R, value: R::T) {
    register.set(value);
}

/// Reads `register` with one plain load (see [`store`]).
#[inline(never)]
pub(crate) fn load<R: Readable>(register: &R) -> R::T {
    register.get()
}

/// One past the highest INTID a distributor implements, from its
/// GICD_TYPER.ITLinesNumber.
pub(crate) const fn intid_limit(it_lines_number: u32) -> u32 {
    let lines = 32 * (it_lines_number + 1);
    if lines < SPECIAL_INTID_BASE {
        lines
    } else {
        SPECIAL_INTID_BASE
    }
}

/// Number of 32-bit registers of a one-bit-per-interrupt array that cover
/// INTIDs below `limit`.
pub(crate) const fn bit_registers(limit: u32) -> usize {
    limit.div_ceil(32) as usize
}

/// Checks the request common to both GIC versions: the INTID exists on this
/// distributor, an SGI is not asked to be level-triggered, and the priority
/// can be signalled.
pub(crate) fn check_request(
    intid: IntId,
    trigger: Trigger,
    priority: u8,
    limit: u32,
) -> Result<(), GicError> {
    check_exists(intid, limit)?;
    if intid.kind() == IntKind::Sgi && trigger == Trigger::Level {
        return Err(GicError::SgiIsEdgeOnly(intid));
    }
    if priority == MASKED_PRIORITY {
        return Err(GicError::PriorityMasked(intid));
    }
    Ok(())
}

/// Checks that the INTID exists on a distributor implementing INTIDs below
/// `limit` (SGIs and PPIs always exist).
pub(crate) fn check_exists(intid: IntId, limit: u32) -> Result<(), GicError> {
    if intid.raw() < limit {
        Ok(())
    } else {
        Err(GicError::IntIdOutOfRange { intid, limit })
    }
}

/// The per-interrupt configuration registers of a distributor, or of a GICv3
/// redistributor's SGI frame, indexed by INTID from 0.
pub(crate) struct InterruptBank<'a> {
    /// ISENABLER: write 1 to enable.
    pub(crate) isenabler: &'a [WriteOnly<u32>],
    /// ICENABLER: write 1 to disable.
    pub(crate) icenabler: &'a [WriteOnly<u32>],
    /// IPRIORITYR, one byte per INTID.
    pub(crate) ipriorityr: &'a [ReadWrite<u8>],
    /// ICFGR, two bits per INTID.
    pub(crate) icfgr: &'a [ReadWrite<u32>],
}

impl InterruptBank<'_> {
    /// Forwards the interrupt to the CPU interface(s) from now on.
    pub(crate) fn enable(&self, intid: IntId) {
        let (index, mask) = intid.bit_position();
        self.isenabler[index].set(mask);
    }

    /// Stops forwarding the interrupt.
    pub(crate) fn disable(&self, intid: IntId) {
        let (index, mask) = intid.bit_position();
        self.icenabler[index].set(mask);
    }

    /// Sets the interrupt's priority (a byte write, allowed by both GIC
    /// versions and by Xen's emulation).
    pub(crate) fn set_priority(&self, intid: IntId, priority: u8) {
        self.ipriorityr[intid.raw() as usize].set(priority);
    }

    /// Sets the interrupt's trigger. The register is shared by 16 INTIDs, so
    /// this is a read-modify-write; the caller disables the interrupt first.
    pub(crate) fn set_trigger(&self, intid: IntId, trigger: Trigger) {
        let (index, edge) = intid.edge_bit_position();
        let register = &self.icfgr[index];
        let current = register.get();
        register.set(match trigger {
            Trigger::Edge => current | edge,
            Trigger::Level => current & !edge,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intid_limit_follows_it_lines_number() {
        assert_eq!(intid_limit(0), 32);
        // QEMU virt: 256 SPIs.
        assert_eq!(intid_limit(8), 288);
        assert_eq!(intid_limit(30), 992);
        // 31 would mean 1024 INTIDs; the last four are special.
        assert_eq!(intid_limit(31), 1020);
    }

    #[test]
    fn bit_registers_cover_the_limit() {
        assert_eq!(bit_registers(32), 1);
        assert_eq!(bit_registers(288), 9);
        assert_eq!(bit_registers(1020), 32);
    }

    #[test]
    fn requests_are_checked() {
        let ppi = IntId::ppi(11).unwrap();
        let sgi = IntId::sgi(1).unwrap();
        let spi = IntId::spi(300).unwrap();
        assert_eq!(check_request(ppi, Trigger::Level, 0xa0, 64), Ok(()));
        assert_eq!(check_request(sgi, Trigger::Edge, 0, 64), Ok(()));
        assert_eq!(
            check_request(sgi, Trigger::Level, 0, 64),
            Err(GicError::SgiIsEdgeOnly(sgi))
        );
        assert_eq!(
            check_request(ppi, Trigger::Level, 0xff, 64),
            Err(GicError::PriorityMasked(ppi))
        );
        assert_eq!(
            check_request(spi, Trigger::Edge, 0x80, 288),
            Err(GicError::IntIdOutOfRange {
                intid: spi,
                limit: 288
            })
        );
        assert_eq!(check_exists(spi, 1020), Ok(()));
    }
}
