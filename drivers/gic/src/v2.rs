//! GICv2 (`arm,gic-400`, `arm,cortex-a15-gic`, `arm,cortex-a9-gic`):
//! a memory-mapped distributor and CPU interface.
//!
//! Interrupt groups: this driver leaves every interrupt in Group 0 where it
//! can change groups at all. An EL1 kernel only controls GICD_IGROUPR on a
//! GICv2 without the Security Extensions (QEMU `virt` without `secure=on`);
//! there its accesses count as Secure, and a Secure read of GICC_IAR returns
//! 1022 for a Group 1 interrupt unless AckCtl is set, while Group 0 is
//! signalled as IRQ (FIQEn stays 0). Elsewhere IGROUPR is RAZ/WI to the
//! kernel: with the Security Extensions the firmware has put the interrupts
//! in Group 1, which the Non-secure view enables with bit 0 of GICD_CTLR and
//! GICC_CTLR; Xen's virtual GICv2 injects Group 0 interrupts, enabled by the
//! same bit 0 of its virtual CPU interface.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

use crate::common::{self, GICD_TYPER, InterruptBank};
use crate::mmio::{DeviceRegisters, Mmio};
use crate::{Acknowledged, GicError, IntId, IntKind, Trigger};

register_bitfields! {u32,
    /// Distributor Control Register.
    GICD_CTLR [
        /// Forward pending interrupts to the CPU interfaces (EnableGrp0
        /// without the Security Extensions, the Group 1 enable in the
        /// Non-secure view).
        Enable OFFSET(0) NUMBITS(1) []
    ],
    /// CPU Interface Control Register.
    GICC_CTLR [
        /// Signal interrupts to the processor (same meaning as
        /// GICD_CTLR.Enable). The other bits stay 0: EOImode 0 (EOIR both
        /// drops priority and deactivates), FIQEn 0 (Group 0 as IRQ).
        Enable OFFSET(0) NUMBITS(1) []
    ],
    /// Interrupt Priority Mask Register.
    GICC_PMR [
        /// Only interrupts more urgent (lower) than this are signalled.
        Priority OFFSET(0) NUMBITS(8) []
    ],
    /// Interrupt Acknowledge Register (also the layout written to EOIR).
    GICC_IAR [
        /// The acknowledged INTID (1020–1023: spurious or none).
        InterruptID OFFSET(0) NUMBITS(10) [],
        /// For an SGI, the CPU interface that requested it.
        CPUID OFFSET(10) NUMBITS(3) []
    ]
}

register_structs! {
    /// GICv2 distributor registers used by this driver.
    DistributorRegisters {
        (0x000 => ctlr: ReadWrite<u32, GICD_CTLR::Register>),
        (0x004 => typer: ReadOnly<u32, GICD_TYPER::Register>),
        (0x008 => _identification_and_reserved),
        (0x080 => igroupr: [ReadWrite<u32>; 32]),
        (0x100 => isenabler: [WriteOnly<u32>; 32]),
        (0x180 => icenabler: [WriteOnly<u32>; 32]),
        (0x200 => _pending_and_active),
        (0x400 => ipriorityr: [ReadWrite<u8>; 1020]),
        (0x7fc => _reserved_before_targets),
        (0x800 => itargetsr: [ReadWrite<u8>; 1020]),
        (0xbfc => _reserved_before_config),
        (0xc00 => icfgr: [ReadWrite<u32>; 64]),
        (0xd00 => @END),
    },

    /// GICv2 CPU interface registers used by this driver.
    CpuInterfaceRegisters {
        (0x00 => ctlr: ReadWrite<u32, GICC_CTLR::Register>),
        (0x04 => pmr: ReadWrite<u32, GICC_PMR::Register>),
        (0x08 => _binary_point),
        (0x0c => iar: ReadOnly<u32, GICC_IAR::Register>),
        (0x10 => eoir: WriteOnly<u32, GICC_IAR::Register>),
        (0x14 => @END),
    }
}

impl DeviceRegisters for DistributorRegisters {}
impl DeviceRegisters for CpuInterfaceRegisters {}

/// Number of INTIDs whose GICD_ITARGETSR bytes are banked per CPU and read
/// back as the reading CPU's own target mask (SGIs and PPIs).
const PRIVATE_INTIDS: usize = 32;

/// A GICv2 distributor register block.
pub struct Distributor {
    registers: Mmio<DistributorRegisters>,
}

impl Distributor {
    /// The distributor whose registers start at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of a GICv2 distributor's register block
    /// (at least 4 KiB, 4 KiB-aligned), mapped as Device memory for the rest
    /// of the kernel's life, and nothing else drives that distributor.
    #[allow(unsafe_code)]
    pub unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: the caller's guarantee is `Mmio::at`'s.
            registers: unsafe { Mmio::at(base) },
        }
    }

    fn bank(&self) -> InterruptBank<'static> {
        let registers = self.registers.get();
        InterruptBank {
            isenabler: &registers.isenabler,
            icenabler: &registers.icenabler,
            ipriorityr: &registers.ipriorityr,
            icfgr: &registers.icfgr,
        }
    }
}

/// A GICv2 CPU interface register block (the banked one of the CPU that
/// accesses it).
pub struct CpuInterface {
    registers: Mmio<CpuInterfaceRegisters>,
}

impl CpuInterface {
    /// The CPU interface whose registers start at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of a GICv2 CPU interface's register
    /// block (at least 256 bytes, 4 KiB-aligned), mapped as Device memory for
    /// the rest of the kernel's life, and nothing else drives it.
    #[allow(unsafe_code)]
    pub unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: the caller's guarantee is `Mmio::at`'s.
            registers: unsafe { Mmio::at(base) },
        }
    }
}

/// A GICv2 as seen by one CPU.
///
/// Configuration methods do read-modify-writes of registers shared by 16
/// interrupts (GICD_ICFGR); configure interrupts from one CPU at a time.
pub struct GicV2 {
    distributor: Distributor,
    cpu_interface: CpuInterface,
    intid_limit: u32,
    cpu_target: u8,
}

impl GicV2 {
    /// Takes over a GICv2, reading how many interrupts it implements and the
    /// target mask of the CPU calling this.
    ///
    /// On a uniprocessor GIC the target registers read as zero (and ignore
    /// writes); CPU interface 0 is then assumed.
    pub fn new(distributor: Distributor, cpu_interface: CpuInterface) -> Self {
        let registers = distributor.registers.get();
        let intid_limit = common::intid_limit(registers.typer.read(GICD_TYPER::ITLinesNumber));
        let own_mask = registers.itargetsr[..PRIVATE_INTIDS]
            .iter()
            .map(common::load)
            .find(|&mask| mask != 0);
        Self {
            distributor,
            cpu_interface,
            intid_limit,
            cpu_target: own_mask.unwrap_or(1),
        }
    }

    /// One past the highest INTID the distributor implements.
    pub fn intid_limit(&self) -> u32 {
        self.intid_limit
    }

    /// Resets the distributor to a known state and enables it: every
    /// interrupt disabled (the SPIs, and the SGIs and PPIs of the calling CPU)
    /// and in Group 0 where groups are writable (see the module
    /// documentation).
    pub fn init_distributor(&self) {
        let registers = self.distributor.registers.get();
        registers.ctlr.write(GICD_CTLR::Enable::CLEAR);
        let words = common::bit_registers(self.intid_limit);
        for group in &registers.igroupr[..words] {
            common::store(group, 0);
        }
        for disable in &registers.icenabler[..words] {
            common::store(disable, u32::MAX);
        }
        registers.ctlr.write(GICD_CTLR::Enable::SET);
    }

    /// Enables the calling CPU's interface: no priority masking, interrupts
    /// signalled, EOI both drops priority and deactivates.
    pub fn init_cpu_interface(&self) {
        let registers = self.cpu_interface.registers.get();
        registers.pmr.write(GICC_PMR::Priority.val(0xff));
        registers.ctlr.write(GICC_CTLR::Enable::SET);
    }

    /// Configures and enables an interrupt: priority, trigger (SGIs are always
    /// edge) and, for an SPI, delivery to the calling CPU. PPIs' trigger is
    /// implementation defined (Xen ignores it) and is written anyway.
    pub fn enable(&self, intid: IntId, trigger: Trigger, priority: u8) -> Result<(), GicError> {
        common::check_request(intid, trigger, priority, self.intid_limit)?;
        let bank = self.distributor.bank();
        bank.disable(intid);
        bank.set_priority(intid, priority);
        if intid.kind() != IntKind::Sgi {
            bank.set_trigger(intid, trigger);
        }
        if intid.kind() == IntKind::Spi {
            self.distributor.registers.itargetsr[intid.raw() as usize].set(self.cpu_target);
        }
        bank.enable(intid);
        Ok(())
    }

    /// Disables an interrupt.
    pub fn disable(&self, intid: IntId) -> Result<(), GicError> {
        common::check_exists(intid, self.intid_limit)?;
        self.distributor.bank().disable(intid);
        Ok(())
    }

    /// Acknowledges the highest-priority pending interrupt (GICC_IAR), or
    /// `None` if nothing is pending (spurious INTID).
    pub fn acknowledge(&self) -> Option<Acknowledged> {
        let iar = self.cpu_interface.registers.iar.get();
        let intid = IntId::new(GICC_IAR::InterruptID.read(iar)).ok()?;
        Some(Acknowledged { intid, iar })
    }

    /// Completes an acknowledged interrupt (GICC_EOIR, with the value read
    /// from GICC_IAR so that an SGI's source CPU is included).
    pub fn end_of_interrupt(&self, acknowledged: Acknowledged) {
        self.cpu_interface.registers.eoir.set(acknowledged.iar);
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use crate::testing::FakeRegisters;

    const GICD_CTLR_OFFSET: usize = 0x000;
    const GICD_TYPER_OFFSET: usize = 0x004;
    const GICD_IGROUPR: usize = 0x080;
    const GICD_ISENABLER: usize = 0x100;
    const GICD_ICENABLER: usize = 0x180;
    const GICD_IPRIORITYR: usize = 0x400;
    const GICD_ITARGETSR: usize = 0x800;
    const GICD_ICFGR: usize = 0xc00;
    const GICC_CTLR_OFFSET: usize = 0x00;
    const GICC_PMR_OFFSET: usize = 0x04;
    const GICC_IAR_OFFSET: usize = 0x0c;
    const GICC_EOIR: usize = 0x10;

    /// A GICv2 over plain memory with ITLinesNumber = 2 (96 INTIDs) and this
    /// CPU's target mask `own_mask` in the banked ITARGETSR bytes.
    fn fake_gic(own_mask: u8) -> (GicV2, FakeRegisters, FakeRegisters) {
        let gicd = FakeRegisters::new(0x1000);
        let gicc = FakeRegisters::new(0x1000);
        gicd.write32(GICD_TYPER_OFFSET, 2);
        for intid in 0..32 {
            gicd.write8(GICD_ITARGETSR + intid, own_mask);
        }
        // SAFETY: the fakes are leaked, zero-initialised, 8-byte aligned
        // allocations larger than the register blocks.
        let gic = unsafe {
            GicV2::new(
                Distributor::new(gicd.base()),
                CpuInterface::new(gicc.base()),
            )
        };
        (gic, gicd, gicc)
    }

    #[test]
    fn new_reads_limit_and_target() {
        let (gic, _, _) = fake_gic(0x04);
        assert_eq!(gic.intid_limit(), 96);
        assert_eq!(gic.cpu_target, 0x04);
        let (uniprocessor, _, _) = fake_gic(0);
        assert_eq!(uniprocessor.cpu_target, 0x01);
    }

    #[test]
    fn init_distributor_disables_everything_and_enables() {
        let (gic, gicd, _) = fake_gic(1);
        for word in 0..3 {
            gicd.write32(GICD_IGROUPR + 4 * word, u32::MAX);
        }
        gic.init_distributor();
        for word in 0..3 {
            assert_eq!(gicd.read32(GICD_IGROUPR + 4 * word), 0, "IGROUPR{word}");
            assert_eq!(
                gicd.read32(GICD_ICENABLER + 4 * word),
                u32::MAX,
                "ICENABLER{word}"
            );
        }
        // Nothing beyond the implemented interrupts is touched.
        assert_eq!(gicd.read32(GICD_ICENABLER + 12), 0);
        assert_eq!(gicd.read32(GICD_CTLR_OFFSET), 1);
    }

    #[test]
    fn init_cpu_interface_unmasks_and_enables() {
        let (gic, _, gicc) = fake_gic(1);
        gic.init_cpu_interface();
        assert_eq!(gicc.read32(GICC_PMR_OFFSET), 0xff);
        assert_eq!(gicc.read32(GICC_CTLR_OFFSET), 1);
    }

    #[test]
    fn enable_spi_sets_priority_trigger_target_and_enable() {
        let (gic, gicd, _) = fake_gic(0x02);
        let spi = IntId::spi(40).unwrap(); // INTID 72
        gicd.write32(GICD_ICFGR + 4 * 4, 0x5555_5555);
        gic.enable(spi, Trigger::Edge, 0x80).unwrap();
        assert_eq!(gicd.read32(GICD_ICENABLER + 4 * 2), 1 << 8);
        assert_eq!(gicd.read8(GICD_IPRIORITYR + 72), 0x80);
        // INTID 72 is field 8 of ICFGR4: edge bit 17; other fields kept.
        assert_eq!(gicd.read32(GICD_ICFGR + 4 * 4), 0x5555_5555 | 1 << 17);
        assert_eq!(gicd.read8(GICD_ITARGETSR + 72), 0x02);
        assert_eq!(gicd.read32(GICD_ISENABLER + 4 * 2), 1 << 8);

        gic.enable(spi, Trigger::Level, 0x80).unwrap();
        assert_eq!(gicd.read32(GICD_ICFGR + 4 * 4), 0x5555_5555);
    }

    #[test]
    fn enable_ppi_uses_banked_registers_without_target() {
        let (gic, gicd, _) = fake_gic(0x01);
        let timer = IntId::ppi(11).unwrap(); // INTID 27
        gic.enable(timer, Trigger::Level, 0xa0).unwrap();
        assert_eq!(gicd.read8(GICD_IPRIORITYR + 27), 0xa0);
        assert_eq!(gicd.read32(GICD_ISENABLER), 1 << 27);
        // The banked target byte still holds what the fake put there.
        assert_eq!(gicd.read8(GICD_ITARGETSR + 27), 0x01);
        gic.enable(timer, Trigger::Edge, 0xa0).unwrap();
        assert_eq!(gicd.read32(GICD_ICFGR + 4), 1 << 23);
    }

    #[test]
    fn enable_sgi_leaves_config_alone() {
        let (gic, gicd, _) = fake_gic(0x01);
        gic.enable(IntId::sgi(3).unwrap(), Trigger::Edge, 0x10)
            .unwrap();
        assert_eq!(gicd.read32(GICD_ICFGR), 0);
        assert_eq!(gicd.read32(GICD_ISENABLER), 1 << 3);
    }

    #[test]
    fn out_of_range_spi_is_rejected_untouched() {
        let (gic, gicd, _) = fake_gic(0x01);
        let spi = IntId::spi(64).unwrap(); // INTID 96, limit 96
        assert_eq!(
            gic.enable(spi, Trigger::Level, 0xa0),
            Err(GicError::IntIdOutOfRange {
                intid: spi,
                limit: 96
            })
        );
        assert_eq!(
            gic.disable(spi),
            Err(GicError::IntIdOutOfRange {
                intid: spi,
                limit: 96
            })
        );
        assert_eq!(gicd.read32(GICD_ICENABLER + 12), 0);
        assert_eq!(gicd.read8(GICD_IPRIORITYR + 96), 0);
    }

    #[test]
    fn disable_writes_clear_enable() {
        let (gic, gicd, _) = fake_gic(0x01);
        gic.disable(IntId::spi(0).unwrap()).unwrap();
        assert_eq!(gicd.read32(GICD_ICENABLER + 4), 1);
    }

    #[test]
    fn acknowledge_and_complete_sgi_keeps_source_cpu() {
        let (gic, _, gicc) = fake_gic(0x01);
        gicc.write32(GICC_IAR_OFFSET, 2 << 10 | 5);
        let acknowledged = gic.acknowledge().unwrap();
        assert_eq!(acknowledged.intid(), IntId::sgi(5).unwrap());
        gic.end_of_interrupt(acknowledged);
        assert_eq!(gicc.read32(GICC_EOIR), 2 << 10 | 5);
    }

    #[test]
    fn spurious_intids_are_none() {
        let (gic, _, gicc) = fake_gic(0x01);
        for spurious in [1020, 1021, 1022, 1023] {
            gicc.write32(GICC_IAR_OFFSET, spurious);
            assert_eq!(gic.acknowledge(), None);
        }
        gicc.write32(GICC_IAR_OFFSET, 33);
        assert_eq!(
            gic.acknowledge().map(|a| a.intid()),
            Some(IntId::spi(1).unwrap())
        );
    }
}
