//! Ordering between memory a driver shares with its device and the
//! device's registers.

/// A memory barrier between a driver's accesses of memory it shares with
/// its device (a virtqueue and request regions, an ADMA2 descriptor table)
/// and of the device's registers, for an observer outside the CPUs' inner shareable domain: a
/// device that is not a CPU (a real DMA master, coherent or not), as well
/// as a QEMU or Xen backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Barrier {
    /// The device observes the driver's earlier writes before its later
    /// writes, of memory or registers: `DMB OSHST` on aarch64 (Linux's
    /// `dma_wmb`, and the `__iowmb` in `writel`). Before `avail.idx` is
    /// published, and before `QueueNotify`; before a uSDHC command is issued.
    DmaWrite,
    /// The driver's earlier reads, of memory or registers, complete before
    /// its later reads of memory: `DMB OSHLD` (Linux's `dma_rmb`, and the
    /// `__iormb` in `readl`). After the interrupt's causes are taken and
    /// before the used ring is read, and between `used.idx` and the entries
    /// it publishes.
    DmaRead,
    /// The driver's earlier writes are observed by the device before its
    /// later reads, of memory or registers: `DMB OSH` (Linux's `virtio_mb`
    /// for a device that is not a CPU). Between publishing `avail.idx` and
    /// reading the device's `VIRTQ_USED_F_NO_NOTIFY`: a store then a load,
    /// which neither barrier above orders.
    DmaFull,
}

impl Barrier {
    /// Executes the barrier.
    pub fn execute(self) {
        #[cfg(target_arch = "aarch64")]
        match self {
            Barrier::DmaWrite => asm_barrier::dmb(asm_barrier::OSHST),
            Barrier::DmaRead => asm_barrier::dmb(asm_barrier::OSHLD),
            Barrier::DmaFull => asm_barrier::dmb(asm_barrier::OSH),
        }
        // A host build (the unit tests) has no device to order against:
        // the strongest fence stands in for all three.
        #[cfg(not(target_arch = "aarch64"))]
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(target_arch = "aarch64")]
use aarch64_cpu::asm::barrier as asm_barrier;
