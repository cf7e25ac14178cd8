//! The real [`Transport`]: `tock-registers` over a mapped virtio-mmio
//! register block. Its constructor is the crate's only door to MMIO.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

use crate::transport::{
    Barrier, ConfigWord, InterruptRegisters, InterruptStatus, ReadRegister, Status, Transport,
    WriteRegister,
};

register_structs! {
    /// The block device's configuration space (virtio 1.2 §5.2.4), the
    /// words the driver reads.
    BlockConfigRegisters {
        (0x00 => capacity_low: ReadOnly<u32>),
        (0x04 => capacity_high: ReadOnly<u32>),
        (0x08 => size_max: ReadOnly<u32>),
        (0x0c => _seg_max_and_geometry),
        (0x14 => blk_size: ReadOnly<u32>),
        (0x18 => @END),
    },

    /// A virtio-mmio transport (virtio 1.2 §4.2.2), with the registers of
    /// the legacy interface (§4.2.4) at the offsets the modern one leaves
    /// reserved.
    VirtioMmioRegisters {
        (0x000 => magic_value: ReadOnly<u32>),
        (0x004 => version: ReadOnly<u32>),
        (0x008 => device_id: ReadOnly<u32>),
        (0x00c => _vendor_id),
        (0x010 => device_features: ReadOnly<u32>),
        (0x014 => device_features_sel: WriteOnly<u32>),
        (0x018 => _reserved_before_driver_features),
        (0x020 => driver_features: WriteOnly<u32>),
        (0x024 => driver_features_sel: WriteOnly<u32>),
        (0x028 => guest_page_size: WriteOnly<u32>),
        (0x02c => _reserved_before_queue_sel),
        (0x030 => queue_sel: WriteOnly<u32>),
        (0x034 => queue_num_max: ReadOnly<u32>),
        (0x038 => queue_num: WriteOnly<u32>),
        (0x03c => queue_align: WriteOnly<u32>),
        (0x040 => queue_pfn: ReadWrite<u32>),
        (0x044 => queue_ready: ReadWrite<u32>),
        (0x048 => _reserved_before_notify),
        (0x050 => queue_notify: WriteOnly<u32>),
        (0x054 => _reserved_before_interrupt),
        (0x060 => interrupt_status: ReadOnly<u32, InterruptStatus::Register>),
        (0x064 => interrupt_ack: WriteOnly<u32, InterruptStatus::Register>),
        (0x068 => _reserved_before_status),
        (0x070 => status: ReadWrite<u32, Status::Register>),
        (0x074 => _reserved_before_queue_desc),
        (0x080 => queue_desc_low: WriteOnly<u32>),
        (0x084 => queue_desc_high: WriteOnly<u32>),
        (0x088 => _reserved_before_queue_driver),
        (0x090 => queue_driver_low: WriteOnly<u32>),
        (0x094 => queue_driver_high: WriteOnly<u32>),
        (0x098 => _reserved_before_queue_device),
        (0x0a0 => queue_device_low: WriteOnly<u32>),
        (0x0a4 => queue_device_high: WriteOnly<u32>),
        (0x0a8 => _reserved_before_config_generation),
        (0x0fc => config_generation: ReadOnly<u32>),
        (0x100 => config: BlockConfigRegisters),
        (0x118 => @END),
    }
}

/// A virtio-mmio register block, mapped for the rest of the kernel's life.
pub struct MmioTransport {
    registers: &'static VirtioMmioRegisters,
}

impl MmioTransport {
    /// The transport whose registers start at virtual address `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of a virtio-mmio register block (at
    /// least 0x200 bytes, 4-byte aligned), mapped as Device memory for the
    /// rest of the kernel's life, and nothing else drives that transport.
    pub unsafe fn new(base: usize) -> Self {
        // SAFETY: the caller guarantees that `base` maps this register block
        // for the kernel's lifetime and that only this driver uses it; every
        // field is an `UnsafeCell`-based register accessed with volatile
        // loads and stores, so a shared reference permits the device's own
        // changes.
        let registers =
            unsafe { &*core::ptr::with_exposed_provenance::<VirtioMmioRegisters>(base) };
        Self { registers }
    }
}

// SAFETY: the register types are `UnsafeCell`-based and so not `Sync`, which
// makes the reference not `Send` to the compiler. The transport is the only
// user of the register block (constructor contract) and moves with its
// driver; every access is one volatile load or store of device memory.
unsafe impl Send for MmioTransport {}

impl Transport for MmioTransport {
    type Interrupt = MmioInterrupt;

    fn read(&self, register: ReadRegister) -> u32 {
        let r = self.registers;
        match register {
            ReadRegister::MagicValue => r.magic_value.get(),
            ReadRegister::Version => r.version.get(),
            ReadRegister::DeviceId => r.device_id.get(),
            ReadRegister::DeviceFeatures => r.device_features.get(),
            ReadRegister::QueueNumMax => r.queue_num_max.get(),
            ReadRegister::QueuePfn => r.queue_pfn.get(),
            ReadRegister::QueueReady => r.queue_ready.get(),
            ReadRegister::InterruptStatus => r.interrupt_status.get(),
            ReadRegister::Status => r.status.get(),
            ReadRegister::ConfigGeneration => r.config_generation.get(),
        }
    }

    fn write(&mut self, register: WriteRegister, value: u32) {
        let r = self.registers;
        match register {
            WriteRegister::DeviceFeaturesSel => r.device_features_sel.set(value),
            WriteRegister::DriverFeatures => r.driver_features.set(value),
            WriteRegister::DriverFeaturesSel => r.driver_features_sel.set(value),
            WriteRegister::GuestPageSize => r.guest_page_size.set(value),
            WriteRegister::QueueSel => r.queue_sel.set(value),
            WriteRegister::QueueNum => r.queue_num.set(value),
            WriteRegister::QueueAlign => r.queue_align.set(value),
            WriteRegister::QueuePfn => r.queue_pfn.set(value),
            WriteRegister::QueueReady => r.queue_ready.set(value),
            WriteRegister::QueueNotify => r.queue_notify.set(value),
            WriteRegister::InterruptAck => r.interrupt_ack.set(value),
            WriteRegister::Status => r.status.set(value),
            WriteRegister::QueueDescLow => r.queue_desc_low.set(value),
            WriteRegister::QueueDescHigh => r.queue_desc_high.set(value),
            WriteRegister::QueueDriverLow => r.queue_driver_low.set(value),
            WriteRegister::QueueDriverHigh => r.queue_driver_high.set(value),
            WriteRegister::QueueDeviceLow => r.queue_device_low.set(value),
            WriteRegister::QueueDeviceHigh => r.queue_device_high.set(value),
        }
    }

    fn read_config(&self, word: ConfigWord) -> u32 {
        let config = &self.registers.config;
        match word {
            ConfigWord::CapacityLow => config.capacity_low.get(),
            ConfigWord::CapacityHigh => config.capacity_high.get(),
            ConfigWord::SizeMax => config.size_max.get(),
            ConfigWord::BlkSize => config.blk_size.get(),
        }
    }

    fn barrier(&self, barrier: Barrier) {
        barrier.execute();
    }

    fn interrupt_registers(&self) -> MmioInterrupt {
        MmioInterrupt {
            registers: self.registers,
        }
    }
}

/// `InterruptStatus` and `InterruptACK` of a [`MmioTransport`], for its
/// interrupt handler.
pub struct MmioInterrupt {
    registers: &'static VirtioMmioRegisters,
}

// SAFETY: as for `MmioTransport`: the block stays mapped, and the value only
// ever makes single volatile accesses to two registers that the transport
// leaves to it once it was handed out (`Transport::interrupt_registers`).
unsafe impl Send for MmioInterrupt {}

// SAFETY: `acknowledge` is a volatile load of `InterruptStatus` and a
// volatile store to `InterruptACK`, with no state of its own; two CPUs
// calling it at once would each acknowledge what they read, which the
// device allows (`InterruptACK` clears only the bits written).
unsafe impl Sync for MmioInterrupt {}

impl InterruptRegisters for MmioInterrupt {
    fn acknowledge(&self) -> u32 {
        let pending = self.registers.interrupt_status.get();
        if pending != 0 {
            self.registers.interrupt_ack.set(pending);
        }
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::boxed::Box;
    use std::vec;

    /// The kernel keeps a device behind a lock shared by CPUs.
    #[test]
    fn a_block_device_on_mmio_can_move_between_cpus() {
        fn send<T: Send>() {}
        send::<crate::BlockDevice<'static, MmioTransport>>();
    }

    /// The register block's layout, checked against the offsets of virtio
    /// 1.2 §4.2.2 by writing through the transport into plain memory.
    #[test]
    fn registers_sit_at_the_offsets_of_the_specification() {
        let memory: &'static mut [u32] = Box::leak(vec![0_u32; 0x200 / 4].into_boxed_slice());
        let base = memory.as_mut_ptr();
        // SAFETY: `base` is a leaked, 4-byte-aligned allocation of 0x200
        // bytes that nothing else uses while the transport exists.
        let mut transport = unsafe { MmioTransport::new(base.expose_provenance()) };
        let writes = [
            (WriteRegister::DeviceFeaturesSel, 0x014),
            (WriteRegister::DriverFeatures, 0x020),
            (WriteRegister::DriverFeaturesSel, 0x024),
            (WriteRegister::GuestPageSize, 0x028),
            (WriteRegister::QueueSel, 0x030),
            (WriteRegister::QueueNum, 0x038),
            (WriteRegister::QueueAlign, 0x03c),
            (WriteRegister::QueuePfn, 0x040),
            (WriteRegister::QueueReady, 0x044),
            (WriteRegister::QueueNotify, 0x050),
            (WriteRegister::InterruptAck, 0x064),
            (WriteRegister::Status, 0x070),
            (WriteRegister::QueueDescLow, 0x080),
            (WriteRegister::QueueDescHigh, 0x084),
            (WriteRegister::QueueDriverLow, 0x090),
            (WriteRegister::QueueDriverHigh, 0x094),
            (WriteRegister::QueueDeviceLow, 0x0a0),
            (WriteRegister::QueueDeviceHigh, 0x0a4),
        ];
        for (value, (register, offset)) in (1..).zip(writes) {
            transport.write(register, value);
            // SAFETY: `offset` is inside the allocation and 4-byte aligned.
            let stored = unsafe { base.byte_add(offset).read_volatile() };
            assert_eq!(stored, value, "{register:?} at {offset:#x}");
        }
        let reads = [
            (ReadRegister::MagicValue, 0x000),
            (ReadRegister::Version, 0x004),
            (ReadRegister::DeviceId, 0x008),
            (ReadRegister::DeviceFeatures, 0x010),
            (ReadRegister::QueueNumMax, 0x034),
            (ReadRegister::QueuePfn, 0x040),
            (ReadRegister::QueueReady, 0x044),
            (ReadRegister::InterruptStatus, 0x060),
            (ReadRegister::Status, 0x070),
            (ReadRegister::ConfigGeneration, 0x0fc),
        ];
        for (value, (register, offset)) in (100..).zip(reads) {
            // SAFETY: as above.
            unsafe { base.byte_add(offset).write_volatile(value) };
            assert_eq!(
                transport.read(register),
                value,
                "{register:?} at {offset:#x}"
            );
        }
        let config = [
            (ConfigWord::CapacityLow, 0x100),
            (ConfigWord::CapacityHigh, 0x104),
            (ConfigWord::SizeMax, 0x108),
            (ConfigWord::BlkSize, 0x114),
        ];
        for (value, (word, offset)) in (200..).zip(config) {
            // SAFETY: as above.
            unsafe { base.byte_add(offset).write_volatile(value) };
            assert_eq!(
                transport.read_config(word),
                value,
                "{word:?} at {offset:#x}"
            );
        }
        // The interrupt half reads InterruptStatus and writes what it read to
        // InterruptACK.
        let interrupt = transport.interrupt_registers();
        // SAFETY: as above.
        unsafe { base.byte_add(0x060).write_volatile(0b11) };
        assert_eq!(interrupt.acknowledge(), 0b11);
        // SAFETY: as above.
        assert_eq!(unsafe { base.byte_add(0x064).read_volatile() }, 0b11);
    }
}
