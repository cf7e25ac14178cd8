//! `selftest=xen`: the platform at work, each result on the console for the
//! boot tests. Everywhere: the timer interrupt wakes a sleep, and a wait
//! times out. Under Xen also: event channels deliver (IPI and interdomain
//! loopback, masked and unmasked), a VIRQ binds, grants are made, refused
//! to end while mapped, exhausted and ended, and `GNTTABOP_cache_flush`
//! runs on own RAM and on every no-map pool's first page. A result that
//! cannot be right ends the boot with an `error:` line and a crash.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt::Display;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use log::{error, info};
use tidepool_dma::{DmaDirection, SyncPoint, cache_op_for};
use tidepool_mm::{AddressMap, PAGE_SIZE, PhysRange, RegionKind, VirtAddr};
use tidepool_xen_abi::grant::GRANT_ENTRIES_PER_FRAME;
use tidepool_xen_abi::{
    CacheFlushError, EvtchnPort, EvtchnState, GrantAccess, GrantError, GrantNotEnded,
    GrantableFrame, Hypervisor, VacantFrame, Virq, cache_flush_available,
};

use crate::memory_plan::MemorySetup;
use crate::shutdown::shutdown;
use crate::timer::{self, WaitError};
use crate::xen::events;
use crate::xen::flush::XenFlush;
use crate::xen::grants::{self, GrantTableError};
use crate::xen::{self, Domain, ShutdownReason, Xen};

/// How long a sleep the timer check asks for.
const SLEEP: Duration = Duration::from_millis(1);
/// How long an event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_millis(100);

/// A page of the heap, for grants and flushes.
#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// Three pages of the heap, for a flush of several pages.
#[repr(C, align(4096))]
struct ThreePages([u8; 3 * PAGE_SIZE as usize]);

static IPI_EVENTS: AtomicU32 = AtomicU32::new(0);
static LOOPBACK_EVENTS: AtomicU32 = AtomicU32::new(0);

fn count_ipi(_: EvtchnPort) {
    IPI_EVENTS.fetch_add(1, Ordering::SeqCst);
}

fn count_loopback(_: EvtchnPort) {
    LOOPBACK_EVENTS.fetch_add(1, Ordering::SeqCst);
}

fn ignore_event(_: EvtchnPort) {}

/// Ends the boot: the self-test found something wrong.
fn fail(what: impl Display) -> ! {
    error!("selftest: xen: {what}");
    shutdown(ShutdownReason::Crash)
}

/// The value, or the end of the boot naming `what` failed.
fn check<T, E: Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| fail(format_args!("{what}: {error}")))
}

/// Runs the platform self-test (see the module documentation).
pub fn run(memory: &MemorySetup<'_>) {
    timer_fires();
    let Some(domain) = xen::domain() else {
        info!("selftest: xen: no hypervisor: timer only");
        return;
    };
    let map = &memory.layout.address_map;
    event_channels(domain);
    grants(domain, memory);
    cache_flush(map);
}

fn timer_fires() {
    let (fired_before, _) = timer::fired();
    let start = timer::now();
    check("sleep", timer::sleep(SLEEP));
    let (fired, at) = timer::fired();
    if fired == fired_before {
        fail("a sleep ended without the timer interrupt");
    }
    info!(
        "timer: interrupt fired after {} us (sleep of {} us)",
        at.saturating_duration_since(start).as_micros(),
        SLEEP.as_micros()
    );
    match timer::wait_for(SLEEP, || false) {
        Err(WaitError::TimedOut { waited }) => info!(
            "timer: wait_for {} us timed out after {} us",
            SLEEP.as_micros(),
            waited.as_micros()
        ),
        other => fail(format_args!(
            "a wait for a condition that never holds ended with {other:?}"
        )),
    }
}

/// Waits until `counter` exceeds `seen`, or fails naming `what`.
fn wait_for_event(what: &str, counter: &AtomicU32, seen: u32) -> Duration {
    let start = timer::now();
    check(
        what,
        timer::wait_for(EVENT_TIMEOUT, || counter.load(Ordering::SeqCst) > seen),
    );
    start.elapsed()
}

fn event_channels(domain: &Domain) {
    let ipi = check("bind_ipi", events::bind_ipi(&count_ipi));
    check("send", events::send(ipi));
    let took = wait_for_event("IPI loopback", &IPI_EVENTS, 0);
    info!(
        "xen: event channel {ipi} (ipi vcpu0) delivered after {} us, upcalls={}",
        took.as_micros(),
        events::upcalls()
    );

    // Masked, an event stays pending; unmasking has Xen deliver it.
    check("mask", events::mask(ipi));
    check("send", events::send(ipi));
    match timer::wait_for(SLEEP, || IPI_EVENTS.load(Ordering::SeqCst) > 1) {
        Err(WaitError::TimedOut { .. }) => {}
        other => fail(format_args!(
            "an event on masked {ipi} was delivered ({other:?})"
        )),
    }
    check("unmask", events::unmask(ipi));
    wait_for_event("event pending across unmask", &IPI_EVENTS, 1);
    info!("xen: event channel {ipi} masked: held; unmasked: delivered");
    check("close", events::close(ipi));

    let unbound = check(
        "alloc_unbound",
        events::alloc_unbound(domain.id, &count_loopback),
    );
    let bound = check(
        "bind_interdomain",
        events::bind_interdomain(domain.id, unbound, &ignore_event),
    );
    check("send", events::send(bound));
    let took = wait_for_event("interdomain loopback", &LOOPBACK_EVENTS, 0);
    info!(
        "xen: event channel {unbound} <- {bound} (interdomain loopback {}) delivered after {} us",
        domain.id,
        took.as_micros()
    );
    check("close", events::close(bound));
    check("close", events::close(unbound));

    let virq = check("bind_virq", events::bind_virq(Virq::DEBUG, &ignore_event));
    match check("status", events::state(virq)) {
        EvtchnState::Virq(Virq::DEBUG) => info!("xen: event channel {virq} bound to VIRQ_DEBUG"),
        state => fail(format_args!("{virq} bound to VIRQ_DEBUG reports {state:?}")),
    }
    check("close", events::close(virq));
}

/// The physical address of a heap object.
fn phys_of<T>(map: &AddressMap, object: &T) -> u64 {
    let va = VirtAddr(core::ptr::from_ref(object) as u64);
    check("heap address", map.virt_to_phys(va)).0
}

fn grants(domain: &Domain, memory: &MemorySetup<'_>) {
    let map = &memory.layout.address_map;
    let page = Box::new(Page([0; PAGE_SIZE as usize]));
    let gfn = phys_of(map, &*page) / PAGE_SIZE;
    // SAFETY: `page` is this function's own heap page, freed only at its end
    // after every grant of it has ended (a grant that cannot be ended ends
    // the boot instead), and its contents are not touched meanwhile; the
    // grants go to this domain itself.
    let grantable = || unsafe { GrantableFrame::new(gfn) };
    let writable = check(
        "grant rw",
        grants::grant(domain.id, grantable(), GrantAccess::ReadWrite),
    );
    let readable = check(
        "grant ro",
        grants::grant(domain.id, grantable(), GrantAccess::ReadOnly),
    );

    // This domain maps its own grant, at the page after shared info (free
    // guest-physical space in the same extended region), so Xen marks the
    // entry in use.
    let shared_info = memory
        .shared_info
        .unwrap_or_else(|| fail("no shared-info page"));
    let target = shared_info.base.0 + PAGE_SIZE;
    let in_extended_region = domain
        .node
        .extended_regions
        .iter()
        .any(|r| r.base() <= target && target + PAGE_SIZE <= r.end());
    if !in_extended_region {
        fail(format_args!(
            "no free page after shared info for a grant mapping (gpa {target:#x})"
        ));
    }
    // SAFETY: the page lies in an extended region (checked above), space
    // Xen guarantees unused, and nothing in the kernel maps or uses it (the
    // memory plan gave shared info only the page before it).
    let at = unsafe { VacantFrame::new(target / PAGE_SIZE) };
    let mapping = check(
        "map own grant",
        Xen.grant_map(domain.id, writable.gref(), at, GrantAccess::ReadWrite),
    );
    let writable_ref = writable.gref();
    let writable = match grants::end(writable) {
        Err(GrantNotEnded {
            grant,
            error: GrantError::InUse { flags, .. },
        }) => {
            info!(
                "xen: grant {writable_ref} of gfn {gfn:#x} mapped at gpa {target:#x}: end refused while in use (flags {flags:#x}), grant kept"
            );
            grant
        }
        // Display, not Debug: the derived Debug of `GrantError`, which holds
        // a `XenError`, put about 6 KiB of code and names in the Image.
        Err(other) => fail(format_args!(
            "ending mapped {writable_ref} gave {other}, not InUse"
        )),
        Ok(()) => fail(format_args!(
            "ending mapped {writable_ref} succeeded, not InUse"
        )),
    };
    check("unmap own grant", Xen.grant_unmap(mapping));
    let readable_ref = readable.gref();
    check("end rw grant", grants::end(writable));

    // Granting until refused grows the table a frame at a time up to its
    // limit, and only there is a grant refused. The read-only grant stays
    // for it: the count must leave out grants made before.
    let before = check("usage", grants::usage());
    let mut held = Vec::new();
    let most = before.limit * GRANT_ENTRIES_PER_FRAME;
    if held.try_reserve_exact(most).is_err() {
        fail(format_args!("no memory to hold {most} grants"));
    }
    let exhausted = loop {
        match grants::grant(domain.id, grantable(), GrantAccess::ReadOnly) {
            Ok(gref) => held.push(gref),
            Err(error) => break error,
        }
    };
    if !matches!(
        exhausted,
        GrantTableError::Table(GrantError::Exhausted { .. })
    ) {
        fail(format_args!(
            "granting until full ended with {exhausted}, not exhaustion"
        ));
    }
    let granted = held.len();
    for grant in held {
        check("end grant", grants::end(grant));
    }
    let after = check("usage", grants::usage());
    // Every usable entry was granted: those in use before, and ours.
    if granted != after.usable - before.in_use
        || after.in_use != before.in_use
        || after.frames != after.limit
    {
        fail(format_args!(
            "{granted} grants before exhaustion with {} in use before, {} of {} usable after, {} of {} frames",
            before.in_use, after.in_use, after.usable, after.frames, after.limit
        ));
    }
    info!(
        "xen: grant table full after {granted} grants besides {} held ({exhausted}); all ended, {} free",
        before.in_use,
        after.usable - after.in_use
    );
    check("end ro grant", grants::end(readable));
    info!(
        "xen: grant {writable_ref} (rw) and {readable_ref} (ro) of gfn {gfn:#x} to {} made and ended",
        domain.id
    );
    drop(page);
}

fn cache_flush(map: &AddressMap) {
    match check("cache_flush probe", cache_flush_available(&mut Xen)) {
        true => info!("xen: cache_flush available"),
        false => fail("GNTTABOP_cache_flush is not implemented (ENOSYS)"),
    }
    let op_to_device = cache_op_for(SyncPoint::ForDevice, DmaDirection::ToDevice)
        .unwrap_or_else(|| fail("no flush for a sync for the device"));
    let op_from_device = cache_op_for(SyncPoint::ForDevice, DmaDirection::FromDevice)
        .unwrap_or_else(|| fail("no flush for a sync before a device write"));
    let mut flush = XenFlush::new();

    let page = Box::new(Page([0; PAGE_SIZE as usize]));
    let pages = Box::new(ThreePages([0; 3 * PAGE_SIZE as usize]));
    // One whole page, and a range that starts and ends inside pages.
    let ranges = [
        (
            PhysRange::new(phys_of(map, &*page), PAGE_SIZE),
            op_to_device,
        ),
        (
            PhysRange::new(phys_of(map, &*pages) + 0x100, 2 * PAGE_SIZE),
            op_from_device,
        ),
    ];
    for (range, op) in ranges {
        let flush = match &mut flush {
            Ok(flush) => flush,
            Err(reason) => {
                info!(
                    "xen: cache_flush own-ram {:#x}: not issued: cache_flush: {reason}",
                    range.base.0
                );
                continue;
            }
        };
        // SAFETY: the pages are this function's own heap allocations, and
        // neither operation discards data (clean, clean+invalidate).
        match unsafe { flush.flush_range(op, range) } {
            Ok(done) => info!(
                "xen: cache_flush own-ram {:#x}+{:#x} pages={} hypercalls={} ok ({op})",
                range.base.0, range.size, done.pages, done.hypercalls
            ),
            Err(error) => fail(format_args!("cache_flush of own RAM: {error}")),
        }
    }

    let pools = map
        .regions()
        .iter()
        .filter(|r| r.kind == RegionKind::NoMapPool);
    for pool in pools {
        let page = PhysRange::new(pool.phys.base.0, PAGE_SIZE);
        let flush = match &mut flush {
            Ok(flush) => flush,
            Err(reason) => {
                info!(
                    "xen: cache_flush pool {} page {:#x} -> not issued: cache_flush: {reason}",
                    pool.name, page.base.0
                );
                continue;
            }
        };
        // SAFETY: clean+invalidate loses no data; the pools are not in use
        // yet (the self-test runs before any device is set up).
        match unsafe { flush.flush_range(op_from_device, page) } {
            Ok(done) => info!(
                "xen: cache_flush pool {} page {:#x} -> ok pages={} hypercalls={}",
                pool.name, page.base.0, done.pages, done.hypercalls
            ),
            Err(CacheFlushError::Refused(refusal)) => info!(
                "xen: cache_flush pool {} page {:#x} -> {} ({refusal})",
                pool.name,
                page.base.0,
                refusal.errno.name().unwrap_or("unknown errno")
            ),
            Err(error) => info!(
                "xen: cache_flush pool {} page {:#x} -> not issued: {error}",
                pool.name, page.base.0
            ),
        }
    }
}
