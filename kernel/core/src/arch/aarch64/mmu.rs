//! Turning the MMU on and installing translation tables. The tables
//! themselves are built by tidepool-mm; this module only writes registers.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ID_AA64MMFR0_EL1, MAIR_EL1, ReadWriteable, Readable, SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1,
    Writeable,
};

use tidepool_mm::CacheOp;

use super::cache::maintain_range;

/// Invalidates all EL1 TLB entries of this CPU (inner shareable) and waits.
fn invalidate_tlb() {
    barrier::dsb(barrier::ISHST);
    // SAFETY: TLBI VMALLE1IS only drops cached translations.
    unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack)) };
    barrier::dsb(barrier::ISH);
    barrier::isb(barrier::SY);
}

/// Enables the MMU and the caches with the given tables.
///
/// `written_uncached` lists the ranges the kernel wrote with the MMU off
/// (the image's data, BSS, stacks and tables) and the ranges it will keep
/// reading (the device tree): their cache lines are invalidated first, so no
/// line a loader left behind can shadow what is in memory once caches are on.
///
/// # Safety
/// `ttbr0` and `ttbr1` must be the physical addresses of valid level-0 tables
/// for `tcr`, using attribute indices defined by `mair`, that map the running
/// code, its stack and everything it touches next at their current addresses
/// with compatible permissions. Every range of `written_uncached` is the
/// kernel's own memory, written only with the caches off, so that whatever
/// its cache lines hold may be discarded.
pub unsafe fn enable(
    mair: u64,
    tcr: u64,
    ttbr0: u64,
    ttbr1: u64,
    written_uncached: &[(usize, usize)],
) {
    for &(start, len) in written_uncached {
        // SAFETY: the MMU is off, so every address is mapped (flat); the
        // caller vouches that the ranges are the kernel's own, written only
        // with the caches off: any line in them is a stale copy to discard.
        unsafe { maintain_range(CacheOp::Invalidate, start, len) };
    }
    MAIR_EL1.set(mair);
    TCR_EL1.set(tcr);
    TTBR0_EL1.set(ttbr0);
    TTBR1_EL1.set(ttbr1);
    barrier::isb(barrier::SY);
    invalidate_tlb();
    // Instruction cache: discard anything fetched before the tables existed.
    // SAFETY: IC IALLU only invalidates instruction-cache contents.
    unsafe { core::arch::asm!("ic iallu", options(nostack)) };
    barrier::dsb(barrier::NSH);
    barrier::isb(barrier::SY);
    SCTLR_EL1.modify(
        SCTLR_EL1::M::Enable
            + SCTLR_EL1::C::Cacheable
            + SCTLR_EL1::I::Cacheable
            + SCTLR_EL1::SA::Enable,
    );
    barrier::isb(barrier::SY);
}

/// `ID_AA64MMFR0_EL1.PARange`: the physical address size this CPU supports.
pub fn pa_range() -> u8 {
    ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange) as u8
}

/// Asks the MMU to translate `va` for an EL1 read (`AT S1E1R`) and returns
/// `PAR_EL1` as it says it (decoded by `tidepool_mm::verify::Par`). Unlike a
/// load, this cannot fault, and unlike `DC` by VA (a no-op in QEMU), QEMU
/// performs it.
pub fn translate_read(va: u64) -> u64 {
    let par: u64;
    // SAFETY: AT only writes PAR_EL1, which is then read (aarch64-cpu does
    // not declare PAR_EL1); no memory the program sees is accessed. The two
    // run in one asm block, so nothing between them can overwrite PAR_EL1.
    unsafe {
        core::arch::asm!(
            "at s1e1r, {va}",
            "isb",
            "mrs {par}, par_el1",
            va = in(reg) va,
            par = out(reg) par,
            options(nostack),
        );
    }
    par
}
