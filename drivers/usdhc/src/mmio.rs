//! The real [`Controller`]: `tock-registers` over a mapped uSDHC register
//! block. Its constructor is the crate's only door to MMIO.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

use tidepool_block::Barrier;

use crate::regs::{Controller, Reg};

register_structs! {
    /// The uSDHC register block (i.MX 8M Plus reference manual, uSDHC
    /// memory map), the registers the driver uses.
    UsdhcRegisters {
        (0x00 => _ds_addr),
        (0x04 => blk_att: ReadWrite<u32>),
        (0x08 => cmd_arg: ReadWrite<u32>),
        (0x0c => cmd_xfr_typ: ReadWrite<u32>),
        (0x10 => cmd_rsp: [ReadOnly<u32>; 4]),
        (0x20 => _data_buff_acc_port),
        (0x24 => pres_state: ReadOnly<u32>),
        (0x28 => prot_ctrl: ReadWrite<u32>),
        (0x2c => sys_ctrl: ReadWrite<u32>),
        (0x30 => int_status: ReadWrite<u32>),
        (0x34 => int_status_en: ReadWrite<u32>),
        (0x38 => int_signal_en: ReadWrite<u32>),
        (0x3c => autocmd12_err_status: ReadWrite<u32>),
        (0x40 => host_ctrl_cap: ReadOnly<u32>),
        (0x44 => wtmk_lvl: ReadWrite<u32>),
        (0x48 => mix_ctrl: ReadWrite<u32>),
        (0x4c => _reserved_before_force_event),
        (0x50 => _force_event),
        (0x54 => adma_err_status: ReadOnly<u32>),
        (0x58 => adma_sys_addr: ReadWrite<u32>),
        (0x5c => _dll_and_tuning),
        (0xc0 => vend_spec: ReadWrite<u32>),
        (0xc4 => _mmc_boot_and_beyond),
        (0x100 => @END),
    }
}

/// A uSDHC register block, mapped for the rest of the kernel's life.
pub struct Usdhc {
    registers: &'static UsdhcRegisters,
}

impl Usdhc {
    /// The controller whose registers start at virtual address `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of a uSDHC register block (at least
    /// 0x100 bytes, 4-byte aligned), mapped as Device memory for the rest
    /// of the kernel's life; every other user of the block (the kernel's
    /// interrupt handler) only uses [`Self::mask_interrupts`].
    pub unsafe fn new(base: usize) -> Self {
        // SAFETY: the caller guarantees that `base` maps this register block
        // for the kernel's lifetime; every field is an `UnsafeCell`-based
        // register accessed with volatile loads and stores, so a shared
        // reference permits the device's own changes.
        let registers = unsafe { &*core::ptr::with_exposed_provenance::<UsdhcRegisters>(base) };
        Self { registers }
    }

    /// Stops the controller signalling interrupts (clears the signal
    /// enables; the status bits stay for the driver to read). What the
    /// kernel's interrupt handler does: the driver enables the signals
    /// again when it next polls with a command in flight.
    pub fn mask_interrupts(&self) {
        self.registers.int_signal_en.set(0);
    }
}

// SAFETY: the register types are `UnsafeCell`-based and so not `Sync`, which
// makes the reference not `Send` to the compiler. The driver is the one user
// of the block besides the interrupt handler's single signal-enable write
// (constructor contract), and every access is one volatile load or store.
unsafe impl Send for Usdhc {}

impl Controller for Usdhc {
    fn read(&self, reg: Reg) -> u32 {
        let r = self.registers;
        match reg {
            Reg::BlkAtt => r.blk_att.get(),
            Reg::CmdArg => r.cmd_arg.get(),
            Reg::CmdXfrTyp => r.cmd_xfr_typ.get(),
            Reg::CmdRsp(n) => r.cmd_rsp[usize::from(n & 3)].get(),
            Reg::PresState => r.pres_state.get(),
            Reg::ProtCtrl => r.prot_ctrl.get(),
            Reg::SysCtrl => r.sys_ctrl.get(),
            Reg::IntStatus => r.int_status.get(),
            Reg::IntStatusEn => r.int_status_en.get(),
            Reg::IntSignalEn => r.int_signal_en.get(),
            Reg::Autocmd12ErrStatus => r.autocmd12_err_status.get(),
            Reg::HostCtrlCap => r.host_ctrl_cap.get(),
            Reg::WtmkLvl => r.wtmk_lvl.get(),
            Reg::MixCtrl => r.mix_ctrl.get(),
            Reg::AdmaErrStatus => r.adma_err_status.get(),
            Reg::AdmaSysAddr => r.adma_sys_addr.get(),
            Reg::VendSpec => r.vend_spec.get(),
        }
    }

    fn write(&mut self, reg: Reg, value: u32) {
        let r = self.registers;
        match reg {
            Reg::BlkAtt => r.blk_att.set(value),
            Reg::CmdArg => r.cmd_arg.set(value),
            Reg::CmdXfrTyp => r.cmd_xfr_typ.set(value),
            Reg::ProtCtrl => r.prot_ctrl.set(value),
            Reg::SysCtrl => r.sys_ctrl.set(value),
            Reg::IntStatus => r.int_status.set(value),
            Reg::IntStatusEn => r.int_status_en.set(value),
            Reg::IntSignalEn => r.int_signal_en.set(value),
            Reg::Autocmd12ErrStatus => r.autocmd12_err_status.set(value),
            Reg::WtmkLvl => r.wtmk_lvl.set(value),
            Reg::MixCtrl => r.mix_ctrl.set(value),
            Reg::AdmaSysAddr => r.adma_sys_addr.set(value),
            Reg::VendSpec => r.vend_spec.set(value),
            // Read-only registers: a write would be ignored by the hardware.
            Reg::CmdRsp(_) | Reg::PresState | Reg::HostCtrlCap | Reg::AdmaErrStatus => {}
        }
    }

    fn barrier(&self, barrier: Barrier) {
        barrier.execute();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::boxed::Box;
    use std::vec;

    /// The block's layout, checked against the reference manual's offsets
    /// by writing and reading through the controller in plain memory.
    #[test]
    fn registers_sit_at_the_manual_offsets() {
        let memory: &'static mut [u32] = Box::leak(vec![0_u32; 0x100 / 4].into_boxed_slice());
        let base = memory.as_mut_ptr();
        // SAFETY: `base` is a leaked, 4-byte-aligned allocation of 0x100
        // bytes that nothing else uses while the controller exists.
        let mut usdhc = unsafe { Usdhc::new(base.expose_provenance()) };
        let registers = [
            (Reg::BlkAtt, 0x04, true),
            (Reg::CmdArg, 0x08, true),
            (Reg::CmdXfrTyp, 0x0c, true),
            (Reg::CmdRsp(0), 0x10, false),
            (Reg::CmdRsp(1), 0x14, false),
            (Reg::CmdRsp(2), 0x18, false),
            (Reg::CmdRsp(3), 0x1c, false),
            (Reg::PresState, 0x24, false),
            (Reg::ProtCtrl, 0x28, true),
            (Reg::SysCtrl, 0x2c, true),
            (Reg::IntStatus, 0x30, true),
            (Reg::IntStatusEn, 0x34, true),
            (Reg::IntSignalEn, 0x38, true),
            (Reg::Autocmd12ErrStatus, 0x3c, true),
            (Reg::HostCtrlCap, 0x40, false),
            (Reg::WtmkLvl, 0x44, true),
            (Reg::MixCtrl, 0x48, true),
            (Reg::AdmaErrStatus, 0x54, false),
            (Reg::AdmaSysAddr, 0x58, true),
            (Reg::VendSpec, 0xc0, true),
        ];
        for (value, (reg, offset, writable)) in (1..).zip(registers) {
            // SAFETY: `offset` is inside the allocation and 4-byte aligned.
            let word = unsafe { base.byte_add(offset) };
            if writable {
                usdhc.write(reg, value);
                // SAFETY: as above.
                let stored = unsafe { word.read_volatile() };
                assert_eq!(stored, value, "{reg:?} at {offset:#x}");
            }
            // SAFETY: as above.
            unsafe { word.write_volatile(value + 1000) };
            assert_eq!(usdhc.read(reg), value + 1000, "{reg:?} at {offset:#x}");
        }
        usdhc.mask_interrupts();
        assert_eq!(usdhc.read(Reg::IntSignalEn), 0);
    }
}
