//! Self-tests selected with `selftest=NAME,...`: deliberate faults whose
//! console reports the boot tests check.

use log::{error, info};
use tidepool_mm::{LINEAR_OFFSET, MappingKind, MemoryType, Region, RegionKind};

use crate::bootargs::Bootargs;
use crate::memory_plan::MemorySetup;
use crate::shutdown::shutdown;
use crate::xen::ShutdownReason;

/// Bytes of each pool the window self-test writes and reads back.
const WINDOW_TEST_BYTES: usize = 4096;

/// Runs every self-test `args` asks for. Fault self-tests do not return.
pub fn run_requested(args: &Bootargs<'_>, memory: &MemorySetup<'_>) {
    let no_map_pools = || {
        memory.layout.address_map.regions().iter().filter(|r| {
            r.kind == RegionKind::NoMapPool && r.name != crate::memory_plan::KERNEL_NC_POOL
        })
    };
    if args.selftest("pool-window") {
        for pool in no_map_pools() {
            pool_window(pool);
        }
    }
    if args.selftest("pool-alias") {
        match no_map_pools().next() {
            Some(pool) => pool_alias(pool),
            None => {
                error!("selftest: pool-alias: no no-map pool in the device tree");
                shutdown(ShutdownReason::Crash);
            }
        }
    }
    if args.selftest("mm-mismatch") {
        mm_mismatch(memory);
    }
    if args.selftest("xen") {
        crate::platform::selftest::run(memory);
    }
    if args.selftest("oom") {
        let (_, total) = crate::heap::usage();
        info!(
            "selftest: allocating {} bytes, more than the heap holds",
            2 * total
        );
        let hog = alloc::vec::Vec::<u8>::with_capacity(2 * total);
        error!(
            "selftest: an allocation larger than the heap succeeded ({} bytes)",
            hog.capacity()
        );
        shutdown(ShutdownReason::Crash);
    }
    if args.selftest("irq-unhandled") {
        unhandled_interrupt();
    }
    if args.selftest("panic") {
        info!("selftest: panic");
        panic!("selftest: deliberate panic");
    }
    if args.selftest("undef") {
        info!("selftest: undefined instruction");
        // SAFETY: deliberately executes a permanently undefined instruction;
        // the exception handler reports it and shuts down.
        unsafe { core::arch::asm!("udf #0x7e1") };
    }
    if args.selftest("brk") {
        info!("selftest: brk");
        // SAFETY: deliberately raises a breakpoint exception, reported as fatal.
        unsafe { core::arch::asm!("brk #0x7e1") };
    }
}

/// Runs the boot's MMU check against a plan that asks for a write-back
/// pool window, to show the fatal report (the tables map it non-cacheable).
fn mm_mismatch(memory: &MemorySetup<'_>) {
    let mut mappings = memory.layout.mappings.clone();
    let Some(window) = mappings
        .iter_mut()
        .find(|m| m.kind == MappingKind::PoolWindow)
    else {
        error!("selftest: mm-mismatch: no pool window");
        shutdown(ShutdownReason::Crash);
    };
    window.attributes.memory = MemoryType::NormalWriteBack;
    info!(
        "selftest: mm-mismatch: expecting {} write-back",
        window.name
    );
    match crate::memory::verify_mappings(&mappings, &memory.layout.address_map) {
        Err(mismatch) => error!("mm: {mismatch}"),
        Ok(_) => error!("selftest: mm-mismatch: the MMU check found nothing"),
    }
    shutdown(ShutdownReason::Crash);
}

/// Writes a pattern through a pool's window and reads it back.
fn pool_window(pool: &Region) {
    let Some(window) = pool.window else {
        error!("selftest: pool {} has no window", pool.name);
        shutdown(ShutdownReason::Crash);
    };
    let len = WINDOW_TEST_BYTES.min(pool.phys.size as usize);
    let words = window.0 as *mut u64;
    let pattern = |i: usize| (pool.phys.base.0 + 8 * i as u64) ^ 0x7469_6465_706f_6f6c;
    for i in 0..len / 8 {
        // SAFETY: the window maps the whole pool read-write (non-cacheable),
        // nothing else uses the pool yet, and `i * 8 < len <= pool size`.
        unsafe { words.add(i).write_volatile(pattern(i)) };
    }
    for i in 0..len / 8 {
        // SAFETY: as above.
        let found = unsafe { words.add(i).read_volatile() };
        if found != pattern(i) {
            error!(
                "selftest: pool {} window {window} mismatch at offset {:#x}: wrote {:#x}, read {found:#x}",
                pool.name,
                i * 8,
                pattern(i)
            );
            shutdown(ShutdownReason::Crash);
        }
    }
    info!(
        "selftest: pool {} window {window} pattern {len} bytes ok",
        pool.name
    );
}

/// Reads a no-map pool's linear alias, which the linear map leaves out: the
/// translation fault's report names the pool.
fn pool_alias(pool: &Region) -> ! {
    let alias = LINEAR_OFFSET + pool.phys.base.0;
    info!(
        "selftest: reading the linear alias {alias:#x} of no-map pool {}",
        pool.name
    );
    // SAFETY: deliberately reads an unmapped address; the fault handler
    // reports it and shuts down, so the read never returns.
    let value = unsafe { (alias as *const u64).read_volatile() };
    error!(
        "selftest: the linear alias of {} is mapped (read {value:#x})",
        pool.name
    );
    shutdown(ShutdownReason::Crash)
}

/// Makes the EL1 physical timer's PPI (INTID 30) fire with no handler
/// registered: the IRQ path names it and the fatal report follows.
fn unhandled_interrupt() -> ! {
    const PHYSICAL_TIMER_PPI: u32 = 14;
    let armed = tidepool_gic::IntId::ppi(PHYSICAL_TIMER_PPI)
        .map_err(crate::irq::IrqError::from)
        .and_then(|intid| crate::irq::enable_unhandled(intid, tidepool_gic::Trigger::Level));
    if let Err(err) = armed {
        error!("selftest: irq-unhandled: {err}");
        shutdown(ShutdownReason::Crash);
    }
    info!("selftest: an interrupt without a handler (EL1 physical timer, INTID 30)");
    crate::arch::aarch64::timer::fire_physical_timer_now();
    let waited = crate::timer::sleep(core::time::Duration::from_millis(100));
    error!("selftest: irq-unhandled: the interrupt never came ({waited:?})");
    shutdown(ShutdownReason::Crash)
}
