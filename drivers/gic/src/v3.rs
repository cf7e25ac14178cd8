//! GICv3 (`arm,gic-v3`): a memory-mapped distributor, one memory-mapped
//! redistributor per CPU, and the CPU interface in system registers.
//!
//! Everything is put in Non-secure Group 1, signalled as IRQ and acknowledged
//! through ICC_IAR1_EL1. An EL1 kernel can only write GICD_IGROUPR when the
//! GIC has a single Security state (QEMU `virt` without `secure=on`); with
//! two, the firmware has done it, and Xen's virtual GICv3 delivers Group 1.
//! GICD_IGRPMODR is never written: it reads as zero and ignores writes in
//! both of those cases, which is the Non-secure Group 1 setting.

use tidepool_poll::poll_until;
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

use crate::common::{self, GICD_TYPER, InterruptBank};
use crate::error::RegisterBlock;
use crate::mmio::{DeviceRegisters, Mmio};
use crate::{Affinity, GicError, IntId, IntKind, Trigger};

register_bitfields! {u32,
    /// Distributor Control Register (Non-secure view; with a single Security
    /// state bit 0 is EnableGrp0 and bit 1 EnableGrp1, the same positions).
    GICD_CTLR [
        /// Enable Group 1 interrupts in the non-affinity-routed view
        /// (EnableGrp0 with a single Security state; nothing uses Group 0).
        EnableGrp1 OFFSET(0) NUMBITS(1) [],
        /// Enable affinity-routed Non-secure Group 1 interrupts.
        EnableGrp1A OFFSET(1) NUMBITS(1) [],
        /// Affinity routing (RAO/WI on GICs that only support it).
        ARE_NS OFFSET(4) NUMBITS(1) [],
        /// Register Write Pending: an earlier CTLR or ICENABLER write is not
        /// yet in effect.
        RWP OFFSET(31) NUMBITS(1) []
    ],
    /// Redistributor Control Register.
    GICR_CTLR [
        /// Register Write Pending for the SGI frame's ICENABLER0.
        RWP OFFSET(3) NUMBITS(1) []
    ],
    /// Redistributor Wake Register.
    GICR_WAKER [
        /// Set while the CPU is treated as asleep; clear to wake.
        ProcessorSleep OFFSET(1) NUMBITS(1) [],
        /// Set until the redistributor's interface to the CPU is awake.
        ChildrenAsleep OFFSET(2) NUMBITS(1) []
    ]
}

register_bitfields! {u64,
    /// Interrupt Routing Register (one per SPI).
    GICD_IROUTER [
        /// Affinity level 0 of the target CPU.
        Aff0 OFFSET(0) NUMBITS(8) [],
        /// Affinity level 1 of the target CPU.
        Aff1 OFFSET(8) NUMBITS(8) [],
        /// Affinity level 2 of the target CPU.
        Aff2 OFFSET(16) NUMBITS(8) [],
        /// Routing mode.
        InterruptRoutingMode OFFSET(31) NUMBITS(1) [
            /// Deliver to the CPU named by the affinity fields.
            Targeted = 0
        ],
        /// Affinity level 3 of the target CPU.
        Aff3 OFFSET(32) NUMBITS(8) []
    ],
    /// Redistributor Type Register.
    GICR_TYPER [
        /// Virtual LPIs supported: the redistributor then has two more 64 KiB
        /// frames (VLPI and reserved), four in all.
        VLPIS OFFSET(1) NUMBITS(1) [],
        /// This is the last redistributor of the region.
        Last OFFSET(4) NUMBITS(1) [],
        /// Affinity of the CPU this redistributor serves, Aff3 in the top byte.
        Affinity OFFSET(32) NUMBITS(32) []
    ]
}

/// Number of SPIs the architecture allows, hence GICD_IROUTER registers.
const SPI_ROUTERS: usize = 988;

register_structs! {
    /// GICv3 distributor registers used by this driver.
    DistributorRegisters {
        (0x0000 => ctlr: ReadWrite<u32, GICD_CTLR::Register>),
        (0x0004 => typer: ReadOnly<u32, GICD_TYPER::Register>),
        (0x0008 => _identification_and_reserved),
        (0x0080 => igroupr: [ReadWrite<u32>; 32]),
        (0x0100 => isenabler: [WriteOnly<u32>; 32]),
        (0x0180 => icenabler: [WriteOnly<u32>; 32]),
        (0x0200 => _pending_and_active),
        (0x0400 => ipriorityr: [ReadWrite<u8>; 1020]),
        (0x07fc => _legacy_targets),
        (0x0c00 => icfgr: [ReadWrite<u32>; 64]),
        (0x0d00 => _group_modifiers_and_reserved),
        (0x6100 => irouter: [ReadWrite<u64, GICD_IROUTER::Register>; SPI_ROUTERS]),
        (0x7fe0 => @END),
    },

    /// The control frame (RD_base) of a redistributor.
    ControlFrame {
        (0x0000 => ctlr: ReadOnly<u32, GICR_CTLR::Register>),
        (0x0004 => _identification),
        (0x0008 => typer: ReadOnly<u64, GICR_TYPER::Register>),
        (0x0010 => _status),
        (0x0014 => waker: ReadWrite<u32, GICR_WAKER::Register>),
        (0x0018 => _lpi_and_reserved),
        (0x10000 => @END),
    },

    /// The SGI and PPI frame (SGI_base) of a redistributor.
    SgiFrame {
        (0x0000 => _reserved),
        (0x0080 => igroupr0: ReadWrite<u32>),
        (0x0084 => _reserved_before_set_enable),
        (0x0100 => isenabler0: WriteOnly<u32>),
        (0x0104 => _reserved_before_clear_enable),
        (0x0180 => icenabler0: WriteOnly<u32>),
        (0x0184 => _pending_and_active),
        (0x0400 => ipriorityr: [ReadWrite<u8>; 32]),
        (0x0420 => _reserved_before_config),
        (0x0c00 => icfgr: [ReadWrite<u32>; 2]),
        (0x0c08 => _group_modifier_and_reserved),
        (0x10000 => @END),
    },

    /// One redistributor without virtual LPIs: two 64 KiB frames.
    RedistributorRegisters {
        (0x00000 => control: ControlFrame),
        (0x10000 => sgi: SgiFrame),
        (0x20000 => @END),
    }
}

impl DeviceRegisters for DistributorRegisters {}
impl DeviceRegisters for RedistributorRegisters {}

/// A GICv3 distributor register block.
pub struct Distributor {
    registers: Mmio<DistributorRegisters>,
}

impl Distributor {
    /// The distributor whose registers start at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of a GICv3 distributor's register block
    /// (64 KiB, 64 KiB-aligned), mapped as Device memory for the rest of the
    /// kernel's life, and nothing else drives that distributor.
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

    fn wait_for_writes(&self) -> Result<(), GicError> {
        poll_until(
            || !self.registers.ctlr.is_set(GICD_CTLR::RWP),
            GicError::WritePendingTimeout(RegisterBlock::Distributor),
        )
    }
}

/// A region of GICv3 redistributors (one `reg` entry of the device-tree
/// node's redistributor regions).
pub struct Redistributors {
    frames: Mmio<[RedistributorRegisters]>,
}

impl Redistributors {
    /// The redistributors in the `size` bytes starting at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of a GICv3 redistributor region
    /// (64 KiB-aligned), whose `size` bytes are all mapped as Device memory
    /// for the rest of the kernel's life, and nothing else drives the
    /// redistributor this driver picks from it.
    #[allow(unsafe_code)]
    pub unsafe fn new(base: usize, size: usize) -> Self {
        let count = size / size_of::<RedistributorRegisters>();
        // SAFETY: the caller guarantees that the `count` whole redistributors
        // of the region are mapped for the kernel's lifetime; the registers
        // are `UnsafeCell`-based, so shared references permit device changes.
        let frames =
            unsafe { core::slice::from_raw_parts(base as *const RedistributorRegisters, count) };
        Self {
            frames: Mmio::new(frames),
        }
    }

    /// The redistributor whose GICR_TYPER reports `affinity`, walking the
    /// region until the one marked Last (or the end of the region).
    fn find(&self, affinity: Affinity) -> Result<&'static RedistributorRegisters, GicError> {
        let frames = self.frames.get();
        let mut index = 0;
        let mut examined = 0;
        while let Some(redistributor) = frames.get(index) {
            examined += 1;
            let typer = redistributor.control.typer.extract();
            if Affinity::from_packed(typer.read(GICR_TYPER::Affinity) as u32) == affinity {
                return Ok(redistributor);
            }
            if typer.is_set(GICR_TYPER::Last) {
                break;
            }
            index += if typer.is_set(GICR_TYPER::VLPIS) {
                2
            } else {
                1
            };
        }
        Err(GicError::RedistributorNotFound { affinity, examined })
    }
}

/// A GICv3 as seen by one CPU: the distributor, that CPU's redistributor,
/// and (on aarch64) its system-register CPU interface.
///
/// Configuration methods do read-modify-writes of registers shared by 16
/// interrupts (ICFGR); configure interrupts from one CPU at a time. The CPU
/// interface methods act on the CPU that calls them, which must be the one
/// whose affinity this handle was built for.
pub struct GicV3 {
    distributor: Distributor,
    redistributor: Mmio<RedistributorRegisters>,
    affinity: Affinity,
    intid_limit: u32,
}

impl GicV3 {
    /// Takes over a GICv3 for the CPU with `affinity` (see
    /// [`Affinity::from_mpidr`]), finding that CPU's redistributor in the
    /// region.
    pub fn new(
        distributor: Distributor,
        redistributors: Redistributors,
        affinity: Affinity,
    ) -> Result<Self, GicError> {
        let redistributor = Mmio::new(redistributors.find(affinity)?);
        let intid_limit =
            common::intid_limit(distributor.registers.typer.read(GICD_TYPER::ITLinesNumber));
        Ok(Self {
            distributor,
            redistributor,
            affinity,
            intid_limit,
        })
    }

    /// One past the highest INTID the distributor implements.
    pub fn intid_limit(&self) -> u32 {
        self.intid_limit
    }

    /// The affinity of the CPU this handle serves.
    pub fn affinity(&self) -> Affinity {
        self.affinity
    }

    /// Resets the distributor to a known state and enables it with affinity
    /// routing and Group 1, then wakes this CPU's redistributor and disables
    /// its SGIs and PPIs. All SPIs are disabled and put in Group 1.
    pub fn init_distributor(&self) -> Result<(), GicError> {
        let registers = self.distributor.registers.get();
        registers.ctlr.write(GICD_CTLR::ARE_NS::SET);
        self.distributor.wait_for_writes()?;
        // Register 0 (SGIs, PPIs) is the redistributor's business under
        // affinity routing.
        let words = 1..common::bit_registers(self.intid_limit);
        for group in &registers.igroupr[words.clone()] {
            common::store(group, u32::MAX);
        }
        for disable in &registers.icenabler[words] {
            common::store(disable, u32::MAX);
        }
        self.distributor.wait_for_writes()?;
        registers.ctlr.write(
            GICD_CTLR::ARE_NS::SET + GICD_CTLR::EnableGrp1A::SET + GICD_CTLR::EnableGrp1::SET,
        );
        self.distributor.wait_for_writes()?;

        self.wake_redistributor()?;
        let sgi = &self.redistributor.sgi;
        sgi.igroupr0.set(u32::MAX);
        sgi.icenabler0.set(u32::MAX);
        self.wait_for_redistributor_writes()
    }

    /// Configures and enables an interrupt: priority, trigger (SGIs are always
    /// edge) and, for an SPI, routing to this CPU. SGIs and PPIs are set in
    /// this CPU's redistributor. PPIs' trigger is implementation defined and
    /// written anyway.
    pub fn enable(&self, intid: IntId, trigger: Trigger, priority: u8) -> Result<(), GicError> {
        common::check_request(intid, trigger, priority, self.intid_limit)?;
        let bank = self.bank_for(intid);
        bank.disable(intid);
        self.wait_for_writes_to(intid)?;
        bank.set_priority(intid, priority);
        if intid.kind() != IntKind::Sgi {
            bank.set_trigger(intid, trigger);
        }
        if intid.kind() == IntKind::Spi {
            let affinity = self.affinity;
            self.distributor.registers.irouter[intid.number() as usize].write(
                GICD_IROUTER::InterruptRoutingMode::Targeted
                    + GICD_IROUTER::Aff3.val(affinity.aff3().into())
                    + GICD_IROUTER::Aff2.val(affinity.aff2().into())
                    + GICD_IROUTER::Aff1.val(affinity.aff1().into())
                    + GICD_IROUTER::Aff0.val(affinity.aff0().into()),
            );
        }
        bank.enable(intid);
        Ok(())
    }

    /// Disables an interrupt and waits until the GIC has stopped forwarding it.
    pub fn disable(&self, intid: IntId) -> Result<(), GicError> {
        common::check_exists(intid, self.intid_limit)?;
        self.bank_for(intid).disable(intid);
        self.wait_for_writes_to(intid)
    }

    fn bank_for(&self, intid: IntId) -> InterruptBank<'static> {
        if intid.is_private() {
            let sgi = &self.redistributor.get().sgi;
            InterruptBank {
                isenabler: core::slice::from_ref(&sgi.isenabler0),
                icenabler: core::slice::from_ref(&sgi.icenabler0),
                ipriorityr: &sgi.ipriorityr,
                icfgr: &sgi.icfgr,
            }
        } else {
            self.distributor.bank()
        }
    }

    fn wait_for_writes_to(&self, intid: IntId) -> Result<(), GicError> {
        if intid.is_private() {
            self.wait_for_redistributor_writes()
        } else {
            self.distributor.wait_for_writes()
        }
    }

    fn wait_for_redistributor_writes(&self) -> Result<(), GicError> {
        poll_until(
            || !self.redistributor.control.ctlr.is_set(GICR_CTLR::RWP),
            GicError::WritePendingTimeout(RegisterBlock::Redistributor(self.affinity)),
        )
    }

    fn wake_redistributor(&self) -> Result<(), GicError> {
        let waker = &self.redistributor.control.waker;
        waker.modify(GICR_WAKER::ProcessorSleep::CLEAR);
        poll_until(
            || !waker.is_set(GICR_WAKER::ChildrenAsleep),
            GicError::WakeTimeout(self.affinity),
        )
    }
}

#[cfg(target_arch = "aarch64")]
mod cpu_interface {
    use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

    use super::GicV3;
    use crate::sysreg::{
        ICC_CTLR, ICC_CTLR_EL1, ICC_EOIR1, ICC_EOIR1_EL1, ICC_IAR1, ICC_IAR1_EL1, ICC_IGRPEN1,
        ICC_IGRPEN1_EL1, ICC_PMR, ICC_PMR_EL1, ICC_SRE, ICC_SRE_EL1, instruction_barrier,
    };
    use crate::{Acknowledged, GicError, IntId};

    impl GicV3 {
        /// Enables the calling CPU's system-register interface: system
        /// register access (ICC_SRE_EL1.SRE, only written if still clear), no
        /// priority masking, EOI both drops priority and deactivates, Group 1
        /// signalled.
        pub fn init_cpu_interface(&self) -> Result<(), GicError> {
            if !ICC_SRE.is_set(ICC_SRE_EL1::SRE) {
                ICC_SRE.modify(ICC_SRE_EL1::SRE::SET);
                instruction_barrier();
                if !ICC_SRE.is_set(ICC_SRE_EL1::SRE) {
                    return Err(GicError::SystemRegistersDisabled);
                }
            }
            ICC_PMR.write(ICC_PMR_EL1::Priority.val(0xff));
            ICC_CTLR.modify(ICC_CTLR_EL1::EOImode::DropAndDeactivate);
            ICC_IGRPEN1.write(ICC_IGRPEN1_EL1::Enable::SET);
            instruction_barrier();
            Ok(())
        }

        /// Acknowledges the highest-priority pending Group 1 interrupt
        /// (ICC_IAR1_EL1), or `None` if nothing is pending (spurious INTID).
        pub fn acknowledge(&self) -> Option<Acknowledged> {
            let iar = ICC_IAR1.read(ICC_IAR1_EL1::INTID) as u32;
            let intid = IntId::new(iar).ok()?;
            Some(Acknowledged { intid, iar })
        }

        /// Completes an acknowledged interrupt (ICC_EOIR1_EL1).
        pub fn end_of_interrupt(&self, acknowledged: Acknowledged) {
            ICC_EOIR1.write(ICC_EOIR1_EL1::INTID.val(acknowledged.iar.into()));
            instruction_barrier();
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use crate::testing::FakeRegisters;

    const GICD_CTLR_OFFSET: usize = 0x0000;
    const GICD_TYPER_OFFSET: usize = 0x0004;
    const GICD_IGROUPR: usize = 0x0080;
    const GICD_ISENABLER: usize = 0x0100;
    const GICD_ICENABLER: usize = 0x0180;
    const GICD_IPRIORITYR: usize = 0x0400;
    const GICD_ICFGR: usize = 0x0c00;
    const GICD_IROUTER: usize = 0x6000;
    const GICR_STRIDE: usize = 0x2_0000;
    const GICR_CTLR_OFFSET: usize = 0x0000;
    const GICR_TYPER_OFFSET: usize = 0x0008;
    const GICR_WAKER_OFFSET: usize = 0x0014;
    const SGI_BASE: usize = 0x1_0000;
    const GICR_IGROUPR0: usize = SGI_BASE + 0x0080;
    const GICR_ISENABLER0: usize = SGI_BASE + 0x0100;
    const GICR_ICENABLER0: usize = SGI_BASE + 0x0180;
    const GICR_IPRIORITYR: usize = SGI_BASE + 0x0400;
    const GICR_ICFGR1: usize = SGI_BASE + 0x0c04;
    const TYPER_VLPIS: u64 = 1 << 1;
    const TYPER_LAST: u64 = 1 << 4;
    const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

    /// A distributor with ITLinesNumber = 8 (288 INTIDs, as QEMU `virt`).
    fn fake_distributor() -> FakeRegisters {
        let gicd = FakeRegisters::new(0x1_0000);
        gicd.write32(GICD_TYPER_OFFSET, 8);
        gicd
    }

    /// A redistributor region of `slots` 128 KiB slots; `typers` gives the
    /// GICR_TYPER of the redistributors, at the slot where each starts.
    fn fake_redistributors(slots: usize, typers: &[(usize, u64)]) -> FakeRegisters {
        let gicr = FakeRegisters::new(slots * GICR_STRIDE);
        for &(slot, typer) in typers {
            gicr.write64(slot * GICR_STRIDE + GICR_TYPER_OFFSET, typer);
            gicr.write32(
                slot * GICR_STRIDE + GICR_WAKER_OFFSET,
                WAKER_PROCESSOR_SLEEP,
            );
        }
        gicr
    }

    fn typer(affinity: Affinity) -> u64 {
        let packed = u32::from_be_bytes([
            affinity.aff3(),
            affinity.aff2(),
            affinity.aff1(),
            affinity.aff0(),
        ]);
        u64::from(packed) << 32
    }

    fn fake_gic(
        affinity: Affinity,
        typers: &[(usize, u64)],
        slots: usize,
    ) -> Result<(GicV3, FakeRegisters, FakeRegisters), GicError> {
        let gicd = fake_distributor();
        let gicr = fake_redistributors(slots, typers);
        // SAFETY: the fakes are leaked, zero-initialised, 8-byte aligned
        // allocations at least as large as the register blocks.
        let gic = unsafe {
            GicV3::new(
                Distributor::new(gicd.base()),
                Redistributors::new(gicr.base(), gicr.len()),
                affinity,
            )?
        };
        Ok((gic, gicd, gicr))
    }

    const CPU0: Affinity = Affinity::new(0, 0, 0, 0);
    const CPU1: Affinity = Affinity::new(0, 0, 0, 1);
    const CPU_FAR: Affinity = Affinity::new(1, 2, 3, 4);

    #[test]
    fn finds_redistributor_by_affinity() {
        let typers = [
            (0, typer(CPU0)),
            (1, typer(CPU1)),
            (2, typer(CPU_FAR) | TYPER_LAST),
        ];
        let (gic, _, gicr) = fake_gic(CPU_FAR, &typers, 3).unwrap();
        assert_eq!(gic.affinity(), CPU_FAR);
        gic.init_distributor().unwrap();
        // Only the third redistributor was woken and configured.
        assert_eq!(gicr.read32(2 * GICR_STRIDE + GICR_WAKER_OFFSET), 0);
        assert_eq!(gicr.read32(GICR_WAKER_OFFSET), WAKER_PROCESSOR_SLEEP);
        assert_eq!(gicr.read32(2 * GICR_STRIDE + GICR_ICENABLER0), u32::MAX);
        assert_eq!(gicr.read32(GICR_ICENABLER0), 0);
    }

    #[test]
    fn walk_stops_at_last() {
        let typers = [(0, typer(CPU0) | TYPER_LAST), (1, typer(CPU1))];
        let error = fake_gic(CPU1, &typers, 2).err();
        assert_eq!(
            error,
            Some(GicError::RedistributorNotFound {
                affinity: CPU1,
                examined: 1
            })
        );
    }

    #[test]
    fn walk_stops_at_region_end() {
        let typers = [(0, typer(CPU0)), (1, typer(CPU1))];
        let error = fake_gic(CPU_FAR, &typers, 2).err();
        assert_eq!(
            error,
            Some(GicError::RedistributorNotFound {
                affinity: CPU_FAR,
                examined: 2
            })
        );
    }

    #[test]
    fn region_smaller_than_a_redistributor_has_none() {
        let gicd = fake_distributor();
        let gicr = FakeRegisters::new(GICR_STRIDE);
        // SAFETY: as in `fake_gic`; the region claims less than one slot.
        let result = unsafe {
            GicV3::new(
                Distributor::new(gicd.base()),
                Redistributors::new(gicr.base(), GICR_STRIDE - 1),
                CPU0,
            )
        };
        assert_eq!(
            result.err(),
            Some(GicError::RedistributorNotFound {
                affinity: CPU0,
                examined: 0
            })
        );
    }

    #[test]
    fn vlpi_redistributors_take_two_slots() {
        // GICv4: each redistributor is four 64 KiB frames. Slot 1 is the
        // first one's VLPI frames and must not be read as a redistributor.
        let typers = [
            (0, typer(CPU0) | TYPER_VLPIS),
            (1, typer(CPU1)),
            (2, typer(CPU_FAR) | TYPER_VLPIS | TYPER_LAST),
        ];
        assert!(fake_gic(CPU_FAR, &typers, 4).is_ok());
        let error = fake_gic(CPU1, &typers, 4).err();
        assert_eq!(
            error,
            Some(GicError::RedistributorNotFound {
                affinity: CPU1,
                examined: 2
            })
        );
    }

    #[test]
    fn init_distributor_configures_spis_and_enables() {
        let (gic, gicd, gicr) = fake_gic(CPU0, &[(0, typer(CPU0) | TYPER_LAST)], 1).unwrap();
        assert_eq!(gic.intid_limit(), 288);
        gic.init_distributor().unwrap();
        assert_eq!(gicd.read32(GICD_CTLR_OFFSET), 1 << 4 | 1 << 1 | 1);
        // Register 0 belongs to the redistributor; 1..9 cover the SPIs.
        assert_eq!(gicd.read32(GICD_IGROUPR), 0);
        assert_eq!(gicd.read32(GICD_ICENABLER), 0);
        for word in 1..9 {
            assert_eq!(
                gicd.read32(GICD_IGROUPR + 4 * word),
                u32::MAX,
                "IGROUPR{word}"
            );
            assert_eq!(
                gicd.read32(GICD_ICENABLER + 4 * word),
                u32::MAX,
                "ICENABLER{word}"
            );
        }
        assert_eq!(gicd.read32(GICD_ICENABLER + 4 * 9), 0);
        assert_eq!(gicr.read32(GICR_WAKER_OFFSET), 0);
        assert_eq!(gicr.read32(GICR_IGROUPR0), u32::MAX);
        assert_eq!(gicr.read32(GICR_ICENABLER0), u32::MAX);
    }

    #[test]
    fn wake_times_out_when_children_stay_asleep() {
        let (gic, _, gicr) = fake_gic(CPU1, &[(0, typer(CPU1) | TYPER_LAST)], 1).unwrap();
        gicr.write32(
            GICR_WAKER_OFFSET,
            WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP,
        );
        assert_eq!(gic.init_distributor(), Err(GicError::WakeTimeout(CPU1)));
        assert_eq!(gicr.read32(GICR_WAKER_OFFSET), WAKER_CHILDREN_ASLEEP);
    }

    #[test]
    fn stuck_write_pending_is_reported() {
        let (gic, gicd, gicr) = fake_gic(CPU1, &[(0, typer(CPU1) | TYPER_LAST)], 1).unwrap();
        gicr.write32(GICR_CTLR_OFFSET, 1 << 3);
        let ppi = IntId::ppi(4).unwrap();
        assert_eq!(
            gic.disable(ppi),
            Err(GicError::WritePendingTimeout(RegisterBlock::Redistributor(
                CPU1
            )))
        );
        // A distributor whose RWP never clears.
        gicd.write32(GICD_CTLR_OFFSET, 1 << 31);
        assert_eq!(
            gic.disable(IntId::spi(0).unwrap()),
            Err(GicError::WritePendingTimeout(RegisterBlock::Distributor))
        );
    }

    #[test]
    fn enable_spi_routes_to_this_cpu() {
        let (gic, gicd, _) = fake_gic(CPU_FAR, &[(0, typer(CPU_FAR) | TYPER_LAST)], 1).unwrap();
        let spi = IntId::spi(16).unwrap(); // INTID 48, as QEMU's first virtio-mmio transport
        gic.enable(spi, Trigger::Edge, 0x90).unwrap();
        assert_eq!(gicd.read32(GICD_ICENABLER + 4), 1 << 16);
        assert_eq!(gicd.read8(GICD_IPRIORITYR + 48), 0x90);
        assert_eq!(gicd.read32(GICD_ICFGR + 4 * 3), 1 << 1);
        assert_eq!(gicd.read64(GICD_IROUTER + 8 * 48), 0x01_0002_0304);
        assert_eq!(gicd.read32(GICD_ISENABLER + 4), 1 << 16);
    }

    #[test]
    fn enable_ppi_goes_to_the_redistributor() {
        let (gic, gicd, gicr) = fake_gic(CPU0, &[(0, typer(CPU0) | TYPER_LAST)], 1).unwrap();
        let upcall = IntId::ppi(15).unwrap(); // INTID 31, Xen's domU event channel
        gic.enable(upcall, Trigger::Level, 0xa0).unwrap();
        assert_eq!(gicr.read32(GICR_ICENABLER0), 1 << 31);
        assert_eq!(gicr.read8(GICR_IPRIORITYR + 31), 0xa0);
        assert_eq!(gicr.read32(GICR_ICFGR1), 0);
        assert_eq!(gicr.read32(GICR_ISENABLER0), 1 << 31);
        gic.enable(upcall, Trigger::Edge, 0xa0).unwrap();
        assert_eq!(gicr.read32(GICR_ICFGR1), 1 << 31);
        // The distributor's banked copies are not used under affinity routing.
        assert_eq!(gicd.read32(GICD_ISENABLER), 0);
        assert_eq!(gicd.read8(GICD_IPRIORITYR + 31), 0);
    }

    #[test]
    fn out_of_range_spi_is_rejected() {
        let (gic, gicd, _) = fake_gic(CPU0, &[(0, typer(CPU0) | TYPER_LAST)], 1).unwrap();
        let spi = IntId::spi(256).unwrap(); // INTID 288, limit 288
        assert_eq!(
            gic.enable(spi, Trigger::Level, 0xa0),
            Err(GicError::IntIdOutOfRange {
                intid: spi,
                limit: 288
            })
        );
        assert_eq!(gicd.read64(GICD_IROUTER + 8 * 288), 0);
    }
}
