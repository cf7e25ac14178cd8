//! The kernel's xenstore connection: `tidepool_xen_abi::xenstore` on the
//! store page `HVM_PARAM_STORE_PFN` named, woken by its event channel.
//!
//! Every wait for xenstored is bounded by [`REPLY_TIMEOUT`]; a xenstored
//! that does not answer in time is an error for that request, never a hang.

use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use log::info;
use spin::Mutex;
use tidepool_mm::AddressMap;
use tidepool_xen_abi::xenstore::{StoreChannel, Xenstore, XenstoreInterface};
use tidepool_xen_abi::{EvtchnPort, HvmParam, Hypervisor};

use super::Xen;
use super::events::{self, EventChannelError};
use super::pv;
use crate::timer;

/// How long one wait for xenstored may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dom0less guest waits for dom0 to run `init-dom0less`: dom0
/// boots Linux and starts xenstored meanwhile (tens of seconds emulated).
pub const LATE_TIMEOUT: Duration = Duration::from_secs(180);

/// Set by the store port's handler, cleared by the waiter.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// The store's event channel.
pub struct StorePort {
    port: EvtchnPort,
}

impl StoreChannel for StorePort {
    fn notify(&mut self) {
        // A refused notification shows as a timeout of the wait that follows.
        let _ = Xen.evtchn_send(self.port);
    }

    fn wait(&mut self) -> Result<(), ()> {
        let result = timer::wait_for(REPLY_TIMEOUT, || SIGNALLED.swap(false, Ordering::AcqRel));
        result.map_err(drop)
    }
}

/// The kernel's client.
pub type Store = Xenstore<'static, StorePort>;

static STORE: Mutex<Option<Store>> = Mutex::new(None);

/// Why there is no xenstore connection.
#[derive(Debug)]
pub enum StoreSetupError {
    /// `HVM_PARAM_STORE_PFN` named no page (dom0, or a dom0less guest
    /// without `xen,enhanced`).
    NoStore,
    /// The page has no window in the address map.
    NotMapped,
    /// Its event channel could not be taken.
    Port(EventChannelError),
    /// A dom0less guest's xenstore did not come (no dom0 ran
    /// `init-dom0less`) in [`LATE_TIMEOUT`].
    LateTimeout,
    /// `HVM_PARAM_STORE_PFN` named another page than the one mapped.
    Moved {
        /// The page it named.
        gpa: u64,
    },
}

impl core::fmt::Display for StoreSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoStore => f.write_str("no xenstore page"),
            Self::NotMapped => f.write_str("xenstore page not mapped"),
            Self::Port(error) => write!(f, "xenstore event channel: {error}"),
            Self::LateTimeout => f.write_str("no init-dom0less in dom0 in time"),
            Self::Moved { gpa } => write!(f, "xenstore page moved to {gpa:#x}"),
        }
    }
}

/// Connects to xenstore through the page and port `HVM_PARAM_*` named.
/// Event channels must be set up.
pub fn init(map: &AddressMap) -> Result<pv::RingPage, StoreSetupError> {
    let pages = pv::pages();
    let page = pages
        .store
        .or(pages.store_late)
        .ok_or(StoreSetupError::NoStore)?;
    events::bind_existing(page.port, &|_| SIGNALLED.store(true, Ordering::Release))
        .map_err(StoreSetupError::Port)?;
    if pages.store.is_none() {
        info!(
            "xenstore: waiting for dom0's init-dom0less evtchn={}",
            page.port.0
        );
        timer::wait_for(LATE_TIMEOUT, || SIGNALLED.swap(false, Ordering::AcqRel))
            .map_err(|_| StoreSetupError::LateTimeout)?;
        let pfn = Xen.hvm_get_param(HvmParam::StorePfn).unwrap_or(u64::MAX);
        if pfn.checked_mul(4096) != Some(page.gpa.0) {
            return Err(StoreSetupError::Moved {
                gpa: pfn.wrapping_mul(4096),
            });
        }
    }
    let va = map
        .window_address(page.gpa)
        .ok_or(StoreSetupError::NotMapped)?;
    // SAFETY: the window maps this whole page read-write as Normal
    // write-back memory for the kernel's lifetime and nothing else in the
    // kernel uses it; `XenstoreInterface` (2076 bytes, 4-byte aligned, the
    // page is 4 KiB-aligned) is made of atomics only, so xenstored writing
    // it concurrently is sound.
    let shared: &'static XenstoreInterface = unsafe { &*(va.0 as *const XenstoreInterface) };
    *STORE.lock() = Some(Xenstore::new(shared, StorePort { port: page.port }));
    Ok(page)
}

/// Whether xenstore came late (a dom0less guest): its devices are attached
/// after it boots.
pub fn came_late() -> bool {
    pv::pages().store.is_none() && pv::pages().store_late.is_some()
}

/// Runs `f` with the client, if connected.
pub fn with<R>(f: impl FnOnce(&mut Store) -> R) -> Option<R> {
    STORE.lock().as_mut().map(f)
}
