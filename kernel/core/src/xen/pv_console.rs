//! The PV console as the kernel's console when running as an `xl` guest:
//! a release Xen drops a domU's `console_io` writes, so `xl console` and
//! xenconsoled's log see only this ring (`tidepool_xen_abi::console`).
//!
//! Lock-free like the rest of the console: the page and port are published
//! once, and a line is copied in and the back end notified with one
//! `EVTCHNOP_send`. When the ring is full the writer waits for xenconsoled
//! up to [`FULL_WAIT_US`]; a back end that does not drain it in that time is
//! taken as gone, and later lines are dropped without waiting until it
//! drains again, so a dead console never stalls the kernel. Input (what
//! `xl console` types) is read from the same page by
//! `crate::console_input::PvConsoleInput`.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use tidepool_mm::AddressMap;
use tidepool_xen_abi::console::{self as ring, ConsoleInterface};
use tidepool_xen_abi::{EvtchnPort, Hypervisor};

use super::Xen;
use super::pv::{self, RingPage};
use crate::timer;

/// How long a writer waits for room in a full ring.
const FULL_WAIT_US: u64 = 200_000;

static PAGE: AtomicPtr<ConsoleInterface> = AtomicPtr::new(core::ptr::null_mut());
static PORT: AtomicU32 = AtomicU32::new(0);
static STALLED: AtomicBool = AtomicBool::new(false);

/// Attaches to the console page `HVM_PARAM_CONSOLE_PFN` named, through its
/// window in `map`, and makes it the console (replaying the lines written
/// before). Returns the page, or `None` when there is none.
pub fn init(map: &AddressMap) -> Option<RingPage> {
    let page = pv::pages().console?;
    let va = map.window_address(page.gpa)?;
    PORT.store(page.port.0, Ordering::Relaxed);
    // SAFETY: the window maps this whole page read-write as Normal
    // write-back memory for the kernel's lifetime and nothing else in the
    // kernel uses it; `ConsoleInterface` (3088 bytes, 4-byte aligned, the
    // page is 4 KiB-aligned) is made of atomics only, so the back end
    // writing it concurrently is sound.
    let shared: &'static ConsoleInterface = unsafe { &*(va.0 as *const ConsoleInterface) };
    PAGE.store(core::ptr::from_ref(shared).cast_mut(), Ordering::Release);
    crate::console::select_pv();
    Some(page)
}

fn page() -> Option<&'static ConsoleInterface> {
    // SAFETY: null, or made from a `&'static ConsoleInterface` in `init`.
    unsafe { PAGE.load(Ordering::Acquire).as_ref() }
}

fn notify() {
    // A refused notification leaves the bytes in the ring for the next one.
    let _ = Xen.evtchn_send(EvtchnPort(PORT.load(Ordering::Relaxed)));
}

/// Writes `bytes` to the ring (see the module docs for a full ring).
/// Returns false if there is no ring or the back end corrupted it.
pub fn write(bytes: &[u8]) -> bool {
    let Some(page) = page() else {
        return false;
    };
    let mut rest = bytes;
    let mut deadline = None;
    while !rest.is_empty() {
        match ring::write(page, rest) {
            Err(_) => return false,
            Ok(0) => {
                if STALLED.load(Ordering::Relaxed) {
                    return true;
                }
                let now = timer::uptime_us();
                let until = *deadline.get_or_insert(now + FULL_WAIT_US);
                if now >= until {
                    STALLED.store(true, Ordering::Relaxed);
                    return true;
                }
                notify();
                core::hint::spin_loop();
            }
            Ok(n) => {
                STALLED.store(false, Ordering::Relaxed);
                rest = &rest[n..];
                deadline = None;
            }
        }
    }
    notify();
    true
}

/// The console's event channel, once the PV console is the console.
pub fn port() -> Option<EvtchnPort> {
    page().map(|_| EvtchnPort(PORT.load(Ordering::Relaxed)))
}

/// Takes pending console input into `buf`; returns how many bytes (0 when
/// there is no PV console, nothing was typed, or the back end corrupted the
/// ring).
pub fn read(buf: &mut [u8]) -> usize {
    let Some(page) = page() else {
        return 0;
    };
    match ring::read(page, buf) {
        Ok(0) | Err(_) => 0,
        Ok(n) => {
            // Room was made: xenconsoled may be waiting to put more in.
            notify();
            n
        }
    }
}
