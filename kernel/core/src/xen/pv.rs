//! The pages the toolstack shares with a PV guest (`xl create`): the PV
//! console ring and the xenstore ring, each with its event channel, named by
//! `HVM_PARAM_*` rather than the device tree. They lie outside the guest's
//! RAM (0x39000000 and 0x39001000 for an `xl` guest), so the memory plan
//! gives each a Normal write-back window; they are read here, before the
//! MMU is on, so the plan can include them.

use alloc::vec::Vec;

use log::warn;
use spin::Once;
use tidepool_dt::{AddrRange, DeviceTree};
use tidepool_mm::{NamedRange, PAGE_SIZE, PhysAddr, PhysRange};
use tidepool_xen_abi::{EvtchnPort, HvmParam, Hypervisor};

use super::Xen;

/// Name of the console page's window.
pub const CONSOLE_PAGE: &str = "xen pv console";
/// Name of the xenstore page's window.
pub const STORE_PAGE: &str = "xen store";

/// A shared ring page and the event channel that signals it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPage {
    /// Its guest-physical address.
    pub gpa: PhysAddr,
    /// The port bound to the back end.
    pub port: EvtchnPort,
}

/// Where Xen 4.17's `init-dom0less` puts a dom0less guest's xenstore page
/// once dom0 runs it: `GUEST_MAGIC_BASE` (0x39000000) plus
/// `XENSTORE_PFN_OFFSET` (one page). Before that `HVM_PARAM_STORE_PFN` reads
/// all ones; the page is mapped in advance (the address map is fixed once
/// the MMU is on) and the parameter checked against it when it comes.
pub const DOM0LESS_STORE_GPA: u64 = 0x3900_1000;

/// What `HVM_PARAM_*` named.
#[derive(Clone, Copy, Debug, Default)]
pub struct PvPages {
    /// The PV console (an `xl` guest; not dom0, not a dom0less domU on 4.17).
    pub console: Option<RingPage>,
    /// The xenstore ring (not dom0, whose xenstored runs in itself).
    pub store: Option<RingPage>,
    /// A dom0less guest with `xen,enhanced = "enabled"`: xenstore comes
    /// when dom0 runs `init-dom0less`, signalled on this port, at
    /// [`DOM0LESS_STORE_GPA`].
    pub store_late: Option<RingPage>,
}

static PAGES: Once<PvPages> = Once::new();

/// The pages found by [`discover`] (none without Xen or before it ran).
pub fn pages() -> PvPages {
    PAGES.get().copied().unwrap_or_default()
}

/// Reads the console and store parameters. A frame of 0 (not set: dom0) or
/// all ones (a dom0less guest whose xenstore comes later) names no page; a
/// page inside the kernel's RAM is refused (warned): mapping it a second
/// time with other attributes would alias RAM.
pub fn discover(dt: &DeviceTree) -> &'static PvPages {
    PAGES.call_once(|| {
        if dt.platform.hypervisor.is_none() {
            return PvPages::default();
        }
        let ram = dt.plan.linear_map();
        let ring = |pfn: HvmParam, evtchn: HvmParam, what: &str| {
            let frame = Xen.hvm_get_param(pfn).ok()?;
            if frame == 0 || frame == u64::MAX {
                return None;
            }
            let gpa = frame.checked_mul(PAGE_SIZE)?;
            let page = AddrRange::new(gpa, PAGE_SIZE)?;
            if ram.iter().any(|r| r.overlaps(page)) {
                warn!("xen: {what} page {gpa:#x} lies in RAM; not used");
                return None;
            }
            let port = Xen.hvm_get_param(evtchn).ok()?;
            let port = EvtchnPort(u32::try_from(port).ok()?);
            Some(RingPage {
                gpa: PhysAddr(gpa),
                port,
            })
        };
        let store_late = (Xen.hvm_get_param(HvmParam::StorePfn) == Ok(u64::MAX))
            .then(|| Xen.hvm_get_param(HvmParam::StoreEvtchn).ok())
            .flatten()
            .and_then(|port| u32::try_from(port).ok())
            .filter(|&port| port != 0)
            .map(|port| RingPage {
                gpa: PhysAddr(DOM0LESS_STORE_GPA),
                port: EvtchnPort(port),
            });
        PvPages {
            console: ring(HvmParam::ConsolePfn, HvmParam::ConsoleEvtchn, "console"),
            store: ring(HvmParam::StorePfn, HvmParam::StoreEvtchn, "xenstore"),
            store_late,
        }
    })
}

/// The windows the memory plan must add for `pages`.
pub fn windows(pages: &PvPages) -> Vec<NamedRange<'static>> {
    [
        (CONSOLE_PAGE, pages.console),
        (STORE_PAGE, pages.store.or(pages.store_late)),
    ]
    .into_iter()
    .filter_map(|(name, page)| {
        page.map(|p| NamedRange {
            name,
            phys: PhysRange::new(p.gpa.0, PAGE_SIZE),
        })
    })
    .collect()
}
