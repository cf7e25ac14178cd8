//! Event channels, 2-level ABI: the shared-info page, the upcall interrupt
//! and a handler per port.
//!
//! The shared-info page is mapped with `XENMEM_add_to_physmap` at the page
//! the memory plan took from the hypervisor node's first extended region
//! (a window of Normal write-back memory, as Xen's Arm ABI requires). The
//! kernel runs on vCPU 0 and uses the legacy `vcpu_info` slot in shared
//! info. Every port starts masked; binding a port registers its handler and
//! then unmasks it.
//!
//! The upcall (the hypervisor node's PPI) scans pending, unmasked ports and
//! calls their handlers with IRQs masked: handlers must not allocate, wait,
//! or bind and close ports.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use log::info;
use spin::{Mutex, Once};
use tidepool_dt::Hypervisor as HypervisorNode;
use tidepool_gic::IntId;
use tidepool_mm::PhysAddr;
use tidepool_xen_abi::{
    DomId, EventDispatcher, EventError, EventHandler, EvtchnPort, EvtchnState, Hypervisor,
    SharedInfo, VacantFrame, Virq, XenError, XenMapSpace,
};

use super::{Xen, XenSetupError};
use crate::irq;
use crate::memory_plan::MemorySetup;

/// Ports that can have a handler at once.
const MAX_HANDLERS: usize = 64;

/// The page size of guest frame numbers.
const PAGE_SHIFT: u32 = 12;

/// The vCPU the kernel runs on.
const BOOT_VCPU: u32 = 0;

static SHARED_INFO: Once<&'static SharedInfo> = Once::new();
static DISPATCHER: Mutex<EventDispatcher<'static, MAX_HANDLERS>> =
    Mutex::new(EventDispatcher::new());
static UPCALLS: AtomicU64 = AtomicU64::new(0);

/// Why an event-channel operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventChannelError {
    /// Shared info is not mapped (not under Xen, or before [`init`]).
    NotSetUp,
    /// The hypercall failed.
    Xen(XenError),
    /// The port bookkeeping refused.
    Port(EventError),
    /// `EVTCHNOP_status` reported a state other than the one expected.
    UnexpectedState {
        /// The port.
        port: EvtchnPort,
        /// What Xen reported.
        state: EvtchnState,
    },
}

impl fmt::Display for EventChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSetUp => f.write_str("event channels are not set up"),
            Self::Xen(error) => error.fmt(f),
            Self::Port(error) => error.fmt(f),
            Self::UnexpectedState { port, state } => {
                write!(f, "{port} is in an unexpected state: {state:?}")
            }
        }
    }
}

impl From<XenError> for EventChannelError {
    fn from(error: XenError) -> Self {
        Self::Xen(error)
    }
}

impl From<EventError> for EventChannelError {
    fn from(error: EventError) -> Self {
        Self::Port(error)
    }
}

fn shared_info() -> Result<&'static SharedInfo, EventChannelError> {
    SHARED_INFO
        .get()
        .copied()
        .ok_or(EventChannelError::NotSetUp)
}

/// Maps shared info, masks every port and takes the upcall interrupt.
pub fn init(
    node: &'static HypervisorNode,
    memory: &'static MemorySetup<'static>,
) -> Result<(), XenSetupError> {
    let page = memory.shared_info.ok_or(XenSetupError::NoSharedInfoPage)?;
    let gpa = page.base.0;
    let va = memory
        .layout
        .address_map
        .window_address(PhysAddr(gpa))
        .ok_or(XenSetupError::SharedInfoNotMapped { gpa })?;
    // SAFETY: the memory plan took this page from an extended region
    // (guest-physical space Xen guarantees unused) for shared info alone:
    // nothing else maps or uses it, and its window is read below only as
    // the `SharedInfo` Xen places there. `init` runs once.
    let frame = unsafe { VacantFrame::new(gpa >> PAGE_SHIFT) };
    Xen.add_to_physmap(XenMapSpace::SharedInfo, 0, frame)
        .map_err(XenSetupError::SharedInfo)?;
    // SAFETY: the window maps this page read-write as Normal write-back
    // memory for the kernel's lifetime, nothing else uses it, and Xen has
    // just put its shared-info page (4 KiB, page-aligned) there. Every field
    // of `SharedInfo` is an atomic, so sharing it with Xen is sound.
    let shared: &'static SharedInfo = unsafe { &*(va.0 as *const SharedInfo) };
    for mask in &shared.evtchn_mask {
        mask.store(u64::MAX, Ordering::SeqCst);
    }
    SHARED_INFO.call_once(|| shared);
    info!("xen: shared info at gpa {gpa:#x} va {va}");

    let (intid, trigger) =
        irq::from_device_tree(&node.event_channel).map_err(XenSetupError::Upcall)?;
    irq::register(intid, trigger, &upcall).map_err(XenSetupError::Upcall)?;
    info!(
        "xen: event channel upcall intid={} {trigger} (2-level, vcpu_info in shared info)",
        intid.raw()
    );
    Ok(())
}

/// The upcall: delivers every pending, unmasked port to its handler.
fn upcall(_: IntId) {
    UPCALLS.fetch_add(1, Ordering::Relaxed);
    if let Some(shared) = SHARED_INFO.get() {
        DISPATCHER
            .lock()
            .handle_upcall(shared, &shared.vcpu_info[BOOT_VCPU as usize]);
    }
}

/// Upcall interrupts taken so far.
pub fn upcalls() -> u64 {
    UPCALLS.load(Ordering::Relaxed)
}

/// The ports bound with a handler, at most [`MAX_HANDLERS`].
pub fn bound_ports() -> alloc::vec::Vec<EvtchnPort> {
    irq::without_interrupts(|| DISPATCHER.lock().ports().collect())
}

/// Registers `handler` for a freshly bound `port` and unmasks it; closes the
/// port again if the handler table refuses it.
fn attach(
    port: EvtchnPort,
    handler: &'static dyn EventHandler,
) -> Result<EvtchnPort, EventChannelError> {
    let registered = irq::without_interrupts(|| DISPATCHER.lock().register(port, handler));
    if let Err(error) = registered {
        // The port was never unmasked: nothing can be pending for a handler.
        Xen.evtchn_close(port)?;
        return Err(error.into());
    }
    unmask(port)?;
    Ok(port)
}

/// Binds `virq` on the boot vCPU to a new port handled by `handler`.
pub fn bind_virq(
    virq: Virq,
    handler: &'static dyn EventHandler,
) -> Result<EvtchnPort, EventChannelError> {
    shared_info()?;
    let port = Xen.evtchn_bind_virq(virq, BOOT_VCPU)?;
    attach(port, handler)
}

/// A new port for notifying the boot vCPU of this domain (an IPI), handled
/// by `handler`.
pub fn bind_ipi(handler: &'static dyn EventHandler) -> Result<EvtchnPort, EventChannelError> {
    shared_info()?;
    let port = Xen.evtchn_bind_ipi(BOOT_VCPU)?;
    attach(port, handler)
}

/// A new port that `remote` may connect to with `EVTCHNOP_bind_interdomain`
/// (a back end's side of a channel), handled by `handler`.
/// [`DomId::SELF`] makes a loopback port.
pub fn alloc_unbound(
    remote: DomId,
    handler: &'static dyn EventHandler,
) -> Result<EvtchnPort, EventChannelError> {
    shared_info()?;
    let port = Xen.evtchn_alloc_unbound(remote)?;
    attach(port, handler)
}

/// Connects to `remote`'s unbound `remote_port` (a front end's side of a
/// channel), handled by `handler`.
pub fn bind_interdomain(
    remote: DomId,
    remote_port: EvtchnPort,
    handler: &'static dyn EventHandler,
) -> Result<EvtchnPort, EventChannelError> {
    shared_info()?;
    let port = Xen.evtchn_bind_interdomain(remote, remote_port)?;
    attach(port, handler)
}

/// Takes a port the toolstack bound before the kernel started (the PV
/// console's and xenstore's, named by `HVM_PARAM_*`), handled by `handler`.
pub fn bind_existing(
    port: EvtchnPort,
    handler: &'static dyn EventHandler,
) -> Result<EvtchnPort, EventChannelError> {
    shared_info()?;
    attach(port, handler)
}

/// Notifies the other end of `port`.
pub fn send(port: EvtchnPort) -> Result<(), EventChannelError> {
    Ok(Xen.evtchn_send(port)?)
}

/// Masks `port`: its events stay pending, undelivered, until [`unmask`].
pub fn mask(port: EvtchnPort) -> Result<(), EventChannelError> {
    Ok(shared_info()?.mask(port)?)
}

/// Unmasks `port` with `EVTCHNOP_unmask`: Xen clears the mask bit and, if an
/// event arrived while the port was masked (which raised no upcall), raises
/// the upcall now. (A local clear of the bit would lose that event.)
pub fn unmask(port: EvtchnPort) -> Result<(), EventChannelError> {
    shared_info()?;
    Ok(Xen.evtchn_unmask(port)?)
}

/// Closes `port`: masks it, removes its handler and frees it in Xen.
pub fn close(port: EvtchnPort) -> Result<(), EventChannelError> {
    let shared = shared_info()?;
    shared.mask(port)?;
    irq::without_interrupts(|| DISPATCHER.lock().unregister(port))?;
    Xen.evtchn_close(port)?;
    shared.clear_pending(port)?;
    Ok(())
}

/// What `port` is bound to (`EVTCHNOP_status`).
pub fn state(port: EvtchnPort) -> Result<EvtchnState, EventChannelError> {
    Ok(Xen.evtchn_status(port)?.state)
}

/// This domain's id, which no hypercall reports directly: Xen records a
/// `DOMID_SELF` loopback port's remote end as the caller's own id, and
/// `EVTCHNOP_status` reads it back.
pub fn own_domain_id() -> Result<DomId, EventChannelError> {
    let port = Xen.evtchn_alloc_unbound(DomId::SELF)?;
    let state = Xen.evtchn_status(port).map(|status| status.state);
    Xen.evtchn_close(port)?;
    match state? {
        EvtchnState::Unbound { remote_dom } => Ok(remote_dom),
        state => Err(EventChannelError::UnexpectedState { port, state }),
    }
}
