//! Event channels with the 2-level ABI: the `event_channel_op` arguments
//! (`xen/include/public/event_channel.h`), the `shared_info` and `vcpu_info`
//! layouts (`xen/include/public/xen.h`, arm64), the upcall scan and a
//! dispatch table.
//!
//! Xen and the guest share `shared_info` and `vcpu_info` while both run, so
//! every field is an atomic: the scan needs no `unsafe`, and the kernel's one
//! obligation is to hand out `&SharedInfo`/`&VcpuInfo` only for memory that
//! Xen really mapped there.

use core::fmt;
use core::sync::atomic::{AtomicI8, AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::domain::DomId;

/// Ports of the 2-level ABI: 64 selector bits × 64 bits per word.
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

/// Ports per `evtchn_pending`/`evtchn_mask` word (`xen_ulong_t`).
const PORTS_PER_WORD: u32 = 64;

/// Words of `evtchn_pending` and `evtchn_mask`.
const EVTCHN_WORDS: usize = 64;

/// An event-channel port.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EvtchnPort(pub u32);

impl fmt::Display for EvtchnPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// A virtual interrupt (`VIRQ_*`), bound to a port with
/// `EVTCHNOP_bind_virq`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Virq(pub u32);

impl Virq {
    /// `VIRQ_TIMER`: per-vCPU timer (on Arm the guest uses the arch timer).
    pub const TIMER: Virq = Virq(xen_sys::VIRQ_TIMER);
    /// `VIRQ_DEBUG`: request to dump debug information.
    pub const DEBUG: Virq = Virq(xen_sys::VIRQ_DEBUG);
    /// `VIRQ_CONSOLE`: bytes arrived on the emergency console (dom0).
    pub const CONSOLE: Virq = Virq(xen_sys::VIRQ_CONSOLE);
    /// `VIRQ_DOM_EXC`: exceptional event for some domain (dom0).
    pub const DOM_EXC: Virq = Virq(xen_sys::VIRQ_DOM_EXC);
    /// `VIRQ_TBUF`: trace buffer has records.
    pub const TBUF: Virq = Virq(xen_sys::VIRQ_TBUF);
    /// `VIRQ_DEBUGGER`: a domain paused for debugging.
    pub const DEBUGGER: Virq = Virq(xen_sys::VIRQ_DEBUGGER);
    /// `VIRQ_XENOPROF`: profiling sample available.
    pub const XENOPROF: Virq = Virq(xen_sys::VIRQ_XENOPROF);
    /// `VIRQ_CON_RING`: bytes arrived on the console ring.
    pub const CON_RING: Virq = Virq(xen_sys::VIRQ_CON_RING);
    /// `VIRQ_PCPU_STATE`: a physical CPU changed state.
    pub const PCPU_STATE: Virq = Virq(xen_sys::VIRQ_PCPU_STATE);
    /// `VIRQ_MEM_EVENT`: a memory event occurred.
    pub const MEM_EVENT: Virq = Virq(xen_sys::VIRQ_MEM_EVENT);
    /// `VIRQ_ARGO`: Argo message notification.
    pub const ARGO: Virq = Virq(xen_sys::VIRQ_ARGO);
    /// `VIRQ_ENOMEM`: Xen is low on heap memory.
    pub const ENOMEM: Virq = Virq(xen_sys::VIRQ_ENOMEM);
    /// `VIRQ_XENPMU`: PMU interrupt.
    pub const XENPMU: Virq = Virq(xen_sys::VIRQ_XENPMU);
}

/// `struct evtchn_alloc_unbound`: a port that `remote_dom` may bind to.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnAllocUnbound {
    /// Domain that owns the port (`DOMID_SELF`).
    pub dom: u16,
    /// Domain allowed to bind to it.
    pub remote_dom: u16,
    /// OUT: the new port.
    pub port: u32,
}

crate::assert_layout!(EvtchnAllocUnbound, size 8, align 4, dom @ 0, remote_dom @ 2, port @ 4);

/// `struct evtchn_bind_interdomain`: connect to a remote unbound port.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnBindInterdomain {
    /// The remote domain.
    pub remote_dom: u16,
    /// The remote domain's unbound port.
    pub remote_port: u32,
    /// OUT: the local port.
    pub local_port: u32,
}

crate::assert_layout!(EvtchnBindInterdomain, size 12, align 4,
    remote_dom @ 0, remote_port @ 4, local_port @ 8);

/// `struct evtchn_bind_virq`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnBindVirq {
    /// `VIRQ_*`.
    pub virq: u32,
    /// vCPU to notify.
    pub vcpu: u32,
    /// OUT: the new port.
    pub port: u32,
}

crate::assert_layout!(EvtchnBindVirq, size 12, align 4, virq @ 0, vcpu @ 4, port @ 8);

/// `struct evtchn_bind_ipi`: a port for notifying a vCPU of this domain.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnBindIpi {
    /// vCPU to notify.
    pub vcpu: u32,
    /// OUT: the new port.
    pub port: u32,
}

crate::assert_layout!(EvtchnBindIpi, size 8, align 4, vcpu @ 0, port @ 4);

/// `struct evtchn_send`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnSend {
    /// Port to notify through.
    pub port: u32,
}

crate::assert_layout!(EvtchnSend, size 4, align 4, port @ 0);

/// `struct evtchn_unmask`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnUnmask {
    /// Port to unmask.
    pub port: u32,
}

crate::assert_layout!(EvtchnUnmask, size 4, align 4, port @ 0);

/// `struct evtchn_close`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnClose {
    /// Port to close.
    pub port: u32,
}

crate::assert_layout!(EvtchnClose, size 4, align 4, port @ 0);

/// `struct evtchn_status`: the state of a port.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnStatus {
    /// Domain that owns the port (`DOMID_SELF`).
    pub dom: u16,
    /// The port.
    pub port: u32,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: the vCPU the port notifies.
    pub vcpu: u32,
    /// OUT: the union `u`, as two words: `unbound.dom` and
    /// `interdomain.dom` are the low 16 bits of word 0, `interdomain.port`
    /// is word 1, `pirq` and `virq` are word 0.
    pub u: [u32; 2],
}

crate::assert_layout!(EvtchnStatus, size 24, align 4,
    dom @ 0, port @ 4, status @ 8, vcpu @ 12, u @ 16);

impl EvtchnStatus {
    /// A query of `port` of the calling domain.
    pub const fn query(port: EvtchnPort) -> Self {
        Self {
            dom: DomId::SELF.0,
            port: port.0,
            status: 0,
            vcpu: 0,
            u: [0; 2],
        }
    }

    /// The decoded state.
    pub const fn state(&self) -> EvtchnState {
        // domid_t is the low half of the union's first word (little endian).
        let dom = DomId(self.u[0] as u16);
        match self.status {
            xen_sys::EVTCHNSTAT_closed => EvtchnState::Closed,
            xen_sys::EVTCHNSTAT_unbound => EvtchnState::Unbound { remote_dom: dom },
            xen_sys::EVTCHNSTAT_interdomain => EvtchnState::Interdomain {
                remote_dom: dom,
                remote_port: EvtchnPort(self.u[1]),
            },
            xen_sys::EVTCHNSTAT_pirq => EvtchnState::Pirq(self.u[0]),
            xen_sys::EVTCHNSTAT_virq => EvtchnState::Virq(Virq(self.u[0])),
            xen_sys::EVTCHNSTAT_ipi => EvtchnState::Ipi,
            other => EvtchnState::Unknown(other),
        }
    }
}

/// What a port is bound to, as `EVTCHNOP_status` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EvtchnState {
    /// Not in use.
    Closed,
    /// Waiting for `remote_dom` to bind to it.
    Unbound {
        /// The domain allowed to bind (Xen resolves `DOMID_SELF` to the
        /// caller's own id, which makes this a way to learn it).
        remote_dom: DomId,
    },
    /// Connected to a port of another (or the same) domain.
    Interdomain {
        /// The remote domain.
        remote_dom: DomId,
        /// The remote port.
        remote_port: EvtchnPort,
    },
    /// Bound to a physical IRQ.
    Pirq(u32),
    /// Bound to a virtual IRQ.
    Virq(Virq),
    /// Bound to an IPI.
    Ipi,
    /// A status value `event_channel.h` does not define.
    Unknown(u32),
}

/// The state of a port and the vCPU it notifies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EvtchnPortStatus {
    /// What the port is bound to.
    pub state: EvtchnState,
    /// The vCPU it notifies.
    pub vcpu: u32,
}

/// `struct vcpu_time_info` (arm64). Xen on Arm does not maintain it (guests
/// use the architected timer); it is here for the layout.
#[repr(C)]
#[derive(Debug)]
pub struct VcpuTimeInfo {
    /// Update counter; odd while an update is in progress.
    pub version: AtomicU32,
    /// Padding.
    pub pad0: AtomicU32,
    /// Counter value at the last update.
    pub tsc_timestamp: AtomicU64,
    /// Nanoseconds since boot at the last update.
    pub system_time: AtomicU64,
    /// Counter-to-nanoseconds multiplier (32.32 fixed point).
    pub tsc_to_system_mul: AtomicU32,
    /// Counter shift applied before the multiplication.
    pub tsc_shift: AtomicI8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: AtomicU8,
    /// Padding.
    pub pad1: [AtomicU8; 2],
}

crate::assert_layout!(VcpuTimeInfo, size 32, align 8, version @ 0, pad0 @ 4, tsc_timestamp @ 8,
    system_time @ 16, tsc_to_system_mul @ 24, tsc_shift @ 28, flags @ 29, pad1 @ 30);

impl VcpuTimeInfo {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            version: AtomicU32::new(0),
            pad0: AtomicU32::new(0),
            tsc_timestamp: AtomicU64::new(0),
            system_time: AtomicU64::new(0),
            tsc_to_system_mul: AtomicU32::new(0),
            tsc_shift: AtomicI8::new(0),
            flags: AtomicU8::new(0),
            pad1: [AtomicU8::new(0), AtomicU8::new(0)],
        }
    }
}

impl Default for VcpuTimeInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// `struct vcpu_info` (arm64: no upcall mask, empty `arch_vcpu_info`).
///
/// Slot 0 of [`SharedInfo::vcpu_info`] (the kernel runs on vCPU 0 and does
/// not move it elsewhere with `VCPUOP_register_vcpu_info`).
#[repr(C)]
#[derive(Debug)]
pub struct VcpuInfo {
    /// Set to 1 by Xen when it raises the event upcall; Xen injects the
    /// interrupt only on a 0→1 change, so the guest clears it before scanning.
    pub evtchn_upcall_pending: AtomicU8,
    /// Padding (`evtchn_upcall_mask` on x86).
    pub pad0: AtomicU8,
    /// Bit `w` set: word `w` of `evtchn_pending` may hold pending ports.
    pub evtchn_pending_sel: AtomicU64,
    /// Time information (unused on Arm).
    pub time: VcpuTimeInfo,
}

crate::assert_layout!(VcpuInfo, size 48, align 8,
    evtchn_upcall_pending @ 0, pad0 @ 1, evtchn_pending_sel @ 8, time @ 16);

impl VcpuInfo {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            evtchn_upcall_pending: AtomicU8::new(0),
            pad0: AtomicU8::new(0),
            evtchn_pending_sel: AtomicU64::new(0),
            time: VcpuTimeInfo::new(),
        }
    }
}

impl Default for VcpuInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// `struct shared_info` (arm64: one legacy `vcpu_info`, 64-bit words,
/// empty `arch_shared_info`).
#[repr(C)]
#[derive(Debug)]
pub struct SharedInfo {
    /// The legacy `vcpu_info` of vCPU 0 (`XEN_LEGACY_MAX_VCPUS` is 1 on Arm).
    pub vcpu_info: [VcpuInfo; 1],
    /// Pending bit per port; set by Xen, cleared by the guest.
    pub evtchn_pending: [AtomicU64; EVTCHN_WORDS],
    /// Mask bit per port; written only by the guest.
    pub evtchn_mask: [AtomicU64; EVTCHN_WORDS],
    /// Wall-clock update counter.
    pub wc_version: AtomicU32,
    /// Wall-clock seconds (low 32 bits).
    pub wc_sec: AtomicU32,
    /// Wall-clock nanoseconds.
    pub wc_nsec: AtomicU32,
    /// Wall-clock seconds (high 32 bits).
    pub wc_sec_hi: AtomicU32,
}

crate::assert_layout!(SharedInfo, size 1088, align 8, vcpu_info @ 0, evtchn_pending @ 48,
    evtchn_mask @ 560, wc_version @ 1072, wc_sec @ 1076, wc_nsec @ 1080, wc_sec_hi @ 1084);

/// Splits a port into its word index and bit mask, refusing ports beyond the
/// 2-level range.
fn port_bit(port: EvtchnPort) -> Result<(usize, u64), EventError> {
    if port.0 >= EVTCHN_2L_NR_CHANNELS {
        return Err(EventError::PortOutOfRange(port));
    }
    Ok((
        (port.0 / PORTS_PER_WORD) as usize,
        1 << (port.0 % PORTS_PER_WORD),
    ))
}

impl SharedInfo {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            vcpu_info: [VcpuInfo::new()],
            evtchn_pending: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            evtchn_mask: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            wc_version: AtomicU32::new(0),
            wc_sec: AtomicU32::new(0),
            wc_nsec: AtomicU32::new(0),
            wc_sec_hi: AtomicU32::new(0),
        }
    }

    /// Masks `port`: Xen keeps marking it pending but raises no upcall.
    pub fn mask(&self, port: EvtchnPort) -> Result<(), EventError> {
        let (word, bit) = port_bit(port)?;
        self.evtchn_mask[word].fetch_or(bit, Ordering::SeqCst);
        Ok(())
    }

    /// Clears `port`'s mask bit in guest memory only, and returns whether the
    /// port is pending.
    ///
    /// A port that became pending while masked raised no upcall, and clearing
    /// the bit locally does not raise one either: that edge is lost. So when
    /// this returns `true` the caller must handle the port itself.
    /// `EVTCHNOP_unmask` cannot help afterwards: Xen re-raises the upcall only
    /// when it clears a set mask bit itself (x4.17 `evtchn_2l_unmask`). To
    /// unmask with the re-raise, issue
    /// [`Hypervisor::evtchn_unmask`](crate::Hypervisor::evtchn_unmask)
    /// instead of this.
    pub fn unmask_local(&self, port: EvtchnPort) -> Result<bool, EventError> {
        let (word, bit) = port_bit(port)?;
        self.evtchn_mask[word].fetch_and(!bit, Ordering::SeqCst);
        Ok(self.evtchn_pending[word].load(Ordering::SeqCst) & bit != 0)
    }

    /// Whether `port` is masked.
    pub fn is_masked(&self, port: EvtchnPort) -> Result<bool, EventError> {
        let (word, bit) = port_bit(port)?;
        Ok(self.evtchn_mask[word].load(Ordering::Acquire) & bit != 0)
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: EvtchnPort) -> Result<bool, EventError> {
        let (word, bit) = port_bit(port)?;
        Ok(self.evtchn_pending[word].load(Ordering::Acquire) & bit != 0)
    }

    /// Clears `port`'s pending bit, e.g. after closing it.
    pub fn clear_pending(&self, port: EvtchnPort) -> Result<(), EventError> {
        let (word, bit) = port_bit(port)?;
        self.evtchn_pending[word].fetch_and(!bit, Ordering::SeqCst);
        Ok(())
    }
}

impl Default for SharedInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the upcall scan of the 2-level ABI and calls `deliver` for every
/// pending, unmasked port; returns how many ports it delivered.
///
/// Per round: clear `evtchn_upcall_pending`, exchange `evtchn_pending_sel`
/// with 0, and for each selected word take `pending & !mask`; each port's
/// pending bit is cleared (atomically, confirming it was still set and not
/// masked meanwhile) before `deliver` runs, so an event that arrives during
/// delivery sets it again and is seen. Rounds repeat while Xen has raised
/// `evtchn_upcall_pending` again. Masked ports stay pending, for
/// `EVTCHNOP_unmask` to re-raise.
pub fn scan_pending_events(
    shared: &SharedInfo,
    vcpu: &VcpuInfo,
    mut deliver: impl FnMut(EvtchnPort),
) -> u32 {
    let mut delivered = 0u32;
    loop {
        vcpu.evtchn_upcall_pending.store(0, Ordering::SeqCst);
        let mut selected = vcpu.evtchn_pending_sel.swap(0, Ordering::SeqCst);
        while selected != 0 {
            let word = selected.trailing_zeros();
            selected &= selected - 1;
            let pending = &shared.evtchn_pending[word as usize];
            let mask = &shared.evtchn_mask[word as usize];
            let mut ready = pending.load(Ordering::Acquire) & !mask.load(Ordering::Acquire);
            while ready != 0 {
                let bit_index = ready.trailing_zeros();
                let bit = 1u64 << bit_index;
                ready &= !bit;
                // A handler may have masked or closed this port since the
                // snapshot: deliver only a port still unmasked and pending.
                if mask.load(Ordering::Acquire) & bit != 0 {
                    continue;
                }
                if pending.fetch_and(!bit, Ordering::SeqCst) & bit == 0 {
                    continue;
                }
                deliver(EvtchnPort(word * PORTS_PER_WORD + bit_index));
                delivered = delivered.saturating_add(1);
            }
        }
        if vcpu.evtchn_upcall_pending.load(Ordering::SeqCst) == 0 {
            return delivered;
        }
    }
}

/// Something that handles the events of a port.
pub trait EventHandler: Sync {
    /// Called from the event upcall, after `port`'s pending bit was cleared.
    fn handle_event(&self, port: EvtchnPort);
}

impl<F: Fn(EvtchnPort) + Sync> EventHandler for F {
    fn handle_event(&self, port: EvtchnPort) {
        self(port)
    }
}

/// Errors of event-channel bookkeeping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventError {
    /// The port is beyond the 2-level ABI's 4096 ports.
    PortOutOfRange(EvtchnPort),
    /// The port already has a handler.
    AlreadyRegistered(EvtchnPort),
    /// The port has no handler.
    NotRegistered(EvtchnPort),
    /// Every slot of the dispatch table is taken.
    TableFull {
        /// The table's capacity.
        capacity: usize,
    },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PortOutOfRange(port) => {
                write!(
                    f,
                    "event channel {port} is beyond the 2-level limit of 4096"
                )
            }
            Self::AlreadyRegistered(port) => {
                write!(f, "event channel {port} already has a handler")
            }
            Self::NotRegistered(port) => write!(f, "event channel {port} has no handler"),
            Self::TableFull { capacity } => {
                write!(f, "event handler table is full ({capacity} handlers)")
            }
        }
    }
}

/// What one upcall delivered.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct UpcallSummary {
    /// Events passed to a registered handler.
    pub dispatched: u32,
    /// Events on ports without a handler (dropped, and counted).
    pub unknown: u32,
}

/// A fixed-capacity table from port to handler. Registration takes `&mut
/// self` (setup time); dispatch takes `&self` and never allocates.
pub struct EventDispatcher<'h, const N: usize> {
    slots: [Option<(EvtchnPort, &'h dyn EventHandler)>; N],
    unknown_events: AtomicU64,
}

impl<'h, const N: usize> EventDispatcher<'h, N> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            slots: [None; N],
            unknown_events: AtomicU64::new(0),
        }
    }

    /// Routes the events of `port` to `handler`.
    pub fn register(
        &mut self,
        port: EvtchnPort,
        handler: &'h dyn EventHandler,
    ) -> Result<(), EventError> {
        port_bit(port)?;
        if self.find(port).is_some() {
            return Err(EventError::AlreadyRegistered(port));
        }
        let free = self
            .slots
            .iter_mut()
            .find(|slot| slot.is_none())
            .ok_or(EventError::TableFull { capacity: N })?;
        *free = Some((port, handler));
        Ok(())
    }

    /// Removes the handler of `port`.
    pub fn unregister(&mut self, port: EvtchnPort) -> Result<(), EventError> {
        let slot = self
            .slots
            .iter_mut()
            .find(|slot| matches!(slot, Some((p, _)) if *p == port))
            .ok_or(EventError::NotRegistered(port))?;
        *slot = None;
        Ok(())
    }

    fn find(&self, port: EvtchnPort) -> Option<&'h dyn EventHandler> {
        self.slots
            .iter()
            .flatten()
            .find(|(p, _)| *p == port)
            .map(|&(_, handler)| handler)
    }

    /// Calls the handler of `port`; returns `false` (and counts the event)
    /// if it has none.
    pub fn dispatch(&self, port: EvtchnPort) -> bool {
        match self.find(port) {
            Some(handler) => {
                handler.handle_event(port);
                true
            }
            None => {
                self.unknown_events.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The event upcall: [`scan_pending_events`], dispatching each port.
    pub fn handle_upcall(&self, shared: &SharedInfo, vcpu: &VcpuInfo) -> UpcallSummary {
        let mut summary = UpcallSummary::default();
        scan_pending_events(shared, vcpu, |port| {
            if self.dispatch(port) {
                summary.dispatched = summary.dispatched.saturating_add(1);
            } else {
                summary.unknown = summary.unknown.saturating_add(1);
            }
        });
        summary
    }

    /// The ports that have a handler, in table order.
    pub fn ports(&self) -> impl Iterator<Item = EvtchnPort> + '_ {
        self.slots.iter().flatten().map(|&(port, _)| port)
    }

    /// Events seen on ports without a handler since creation.
    pub fn unknown_events(&self) -> u64 {
        self.unknown_events.load(Ordering::Relaxed)
    }
}

impl<const N: usize> Default for EventDispatcher<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Marks `port` pending the way Xen's 2-level `set_pending` does.
    fn raise(shared: &SharedInfo, vcpu: &VcpuInfo, port: u32) {
        let word = (port / 64) as usize;
        shared.evtchn_pending[word].fetch_or(1 << (port % 64), Ordering::SeqCst);
        if shared.evtchn_mask[word].load(Ordering::SeqCst) & 1 << (port % 64) == 0 {
            vcpu.evtchn_pending_sel
                .fetch_or(1 << word, Ordering::SeqCst);
            vcpu.evtchn_upcall_pending.store(1, Ordering::SeqCst);
        }
    }

    fn collect(shared: &SharedInfo, vcpu: &VcpuInfo) -> Vec<u32> {
        let mut ports = Vec::new();
        let n = scan_pending_events(shared, vcpu, |p| ports.push(p.0));
        assert_eq!(n as usize, ports.len());
        ports
    }

    #[test]
    fn scan_delivers_ports_across_words_and_clears_state() {
        let shared = SharedInfo::new();
        let vcpu = &shared.vcpu_info[0];
        for port in [3, 64, 70, 4095, 1] {
            raise(&shared, vcpu, port);
        }
        assert_eq!(collect(&shared, vcpu), [1, 3, 64, 70, 4095]);
        assert_eq!(vcpu.evtchn_pending_sel.load(Ordering::SeqCst), 0);
        assert_eq!(vcpu.evtchn_upcall_pending.load(Ordering::SeqCst), 0);
        assert!(
            shared
                .evtchn_pending
                .iter()
                .all(|w| w.load(Ordering::SeqCst) == 0)
        );
        assert!(collect(&shared, vcpu).is_empty());
    }

    #[test]
    fn masked_ports_stay_pending_and_undelivered() {
        let shared = SharedInfo::new();
        let vcpu = &shared.vcpu_info[0];
        shared.mask(EvtchnPort(5)).unwrap();
        raise(&shared, vcpu, 6);
        // Pending while masked, in a word already selected by port 6.
        shared.evtchn_pending[0].fetch_or(1 << 5, Ordering::SeqCst);
        assert_eq!(collect(&shared, vcpu), [6]);
        assert!(shared.is_pending(EvtchnPort(5)).unwrap());
        assert!(shared.is_masked(EvtchnPort(5)).unwrap());
        // Unmasking locally reports the pending port: the caller must deliver
        // it itself.
        assert!(shared.unmask_local(EvtchnPort(5)).unwrap());
        assert!(!shared.is_masked(EvtchnPort(5)).unwrap());
        assert!(!shared.unmask_local(EvtchnPort(6)).unwrap());
    }

    #[test]
    fn only_selected_words_are_scanned() {
        let shared = SharedInfo::new();
        let vcpu = &shared.vcpu_info[0];
        // Pending in word 2 but its selector bit is clear: not scanned.
        shared.evtchn_pending[2].store(1, Ordering::SeqCst);
        raise(&shared, vcpu, 0);
        assert_eq!(collect(&shared, vcpu), [0]);
        assert!(shared.is_pending(EvtchnPort(128)).unwrap());
    }

    #[test]
    fn events_raised_during_delivery_are_rescanned() {
        let shared = SharedInfo::new();
        let vcpu = &shared.vcpu_info[0];
        raise(&shared, vcpu, 10);
        let mut seen = Vec::new();
        let n = scan_pending_events(&shared, vcpu, |p| {
            seen.push(p.0);
            if seen.len() == 1 {
                // Xen raises the same port and one in another word meanwhile.
                raise(&shared, vcpu, 10);
                raise(&shared, vcpu, 200);
            }
        });
        assert_eq!(seen, [10, 10, 200]);
        assert_eq!(n, 3);
        assert_eq!(vcpu.evtchn_upcall_pending.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn port_masked_by_an_earlier_handler_is_not_delivered() {
        let shared = SharedInfo::new();
        let vcpu = &shared.vcpu_info[0];
        raise(&shared, vcpu, 1);
        raise(&shared, vcpu, 2);
        let mut seen = Vec::new();
        scan_pending_events(&shared, vcpu, |p| {
            seen.push(p.0);
            shared.mask(EvtchnPort(2)).unwrap();
        });
        assert_eq!(seen, [1]);
        assert!(shared.is_pending(EvtchnPort(2)).unwrap());
    }

    #[test]
    fn status_decodes_every_state() {
        let status = |status: u32, u: [u32; 2]| EvtchnStatus {
            status,
            u,
            ..EvtchnStatus::query(EvtchnPort(5))
        };
        assert_eq!(
            EvtchnStatus::query(EvtchnPort(5)),
            EvtchnStatus {
                dom: 0x7ff0,
                port: 5,
                status: 0,
                vcpu: 0,
                u: [0, 0]
            }
        );
        assert_eq!(status(0, [9, 9]).state(), EvtchnState::Closed);
        // The union's upper half of word 0 is padding: ignored.
        assert_eq!(
            status(1, [0xabcd_0001, 0]).state(),
            EvtchnState::Unbound {
                remote_dom: DomId(1)
            }
        );
        assert_eq!(
            status(2, [0, 7]).state(),
            EvtchnState::Interdomain {
                remote_dom: DomId(0),
                remote_port: EvtchnPort(7)
            }
        );
        assert_eq!(status(3, [40, 0]).state(), EvtchnState::Pirq(40));
        assert_eq!(status(4, [1, 0]).state(), EvtchnState::Virq(Virq::DEBUG));
        assert_eq!(status(5, [0, 0]).state(), EvtchnState::Ipi);
        assert_eq!(status(6, [0, 0]).state(), EvtchnState::Unknown(6));
    }

    #[test]
    fn bit_helpers_refuse_ports_beyond_2l() {
        let shared = SharedInfo::new();
        let port = EvtchnPort(4096);
        assert_eq!(shared.mask(port), Err(EventError::PortOutOfRange(port)));
        assert_eq!(
            shared.is_pending(port),
            Err(EventError::PortOutOfRange(port))
        );
        assert_eq!(
            EventError::PortOutOfRange(port).to_string(),
            "event channel port 4096 is beyond the 2-level limit of 4096"
        );
        shared.mask(EvtchnPort(4095)).unwrap();
        assert_eq!(shared.evtchn_mask[63].load(Ordering::SeqCst), 1 << 63);
        shared.evtchn_pending[63].store(1 << 63, Ordering::SeqCst);
        shared.clear_pending(EvtchnPort(4095)).unwrap();
        assert_eq!(shared.evtchn_pending[63].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dispatcher_routes_and_counts_unknown_ports() {
        let seen = Mutex::new(Vec::new());
        let record = |p: EvtchnPort| seen.lock().unwrap().push(p.0);
        let other = AtomicU32::new(0);
        let count = |_: EvtchnPort| {
            other.fetch_add(1, Ordering::SeqCst);
        };
        let mut dispatcher: EventDispatcher<'_, 4> = EventDispatcher::new();
        dispatcher.register(EvtchnPort(3), &record).unwrap();
        dispatcher.register(EvtchnPort(100), &record).unwrap();
        dispatcher.register(EvtchnPort(7), &count).unwrap();

        let shared = SharedInfo::new();
        let vcpu = &shared.vcpu_info[0];
        for port in [3, 7, 9, 100] {
            raise(&shared, vcpu, port);
        }
        let summary = dispatcher.handle_upcall(&shared, vcpu);
        assert_eq!(
            summary,
            UpcallSummary {
                dispatched: 3,
                unknown: 1
            }
        );
        assert_eq!(*seen.lock().unwrap(), [3, 100]);
        assert_eq!(other.load(Ordering::SeqCst), 1);
        assert_eq!(dispatcher.unknown_events(), 1);
    }

    #[test]
    fn dispatcher_registration_errors() {
        let handler = |_: EvtchnPort| {};
        let mut dispatcher: EventDispatcher<'_, 2> = EventDispatcher::default();
        dispatcher.register(EvtchnPort(1), &handler).unwrap();
        assert_eq!(
            dispatcher.register(EvtchnPort(1), &handler),
            Err(EventError::AlreadyRegistered(EvtchnPort(1)))
        );
        assert_eq!(
            dispatcher.register(EvtchnPort(5000), &handler),
            Err(EventError::PortOutOfRange(EvtchnPort(5000)))
        );
        dispatcher.register(EvtchnPort(2), &handler).unwrap();
        let full = dispatcher.register(EvtchnPort(3), &handler).unwrap_err();
        assert_eq!(full, EventError::TableFull { capacity: 2 });
        assert_eq!(full.to_string(), "event handler table is full (2 handlers)");
        dispatcher.unregister(EvtchnPort(1)).unwrap();
        assert_eq!(dispatcher.ports().collect::<Vec<_>>(), [EvtchnPort(2)]);
        assert_eq!(
            dispatcher.unregister(EvtchnPort(1)),
            Err(EventError::NotRegistered(EvtchnPort(1)))
        );
        dispatcher.register(EvtchnPort(3), &handler).unwrap();
        assert!(dispatcher.dispatch(EvtchnPort(3)));
        assert!(!dispatcher.dispatch(EvtchnPort(1)));
        assert_eq!(dispatcher.unknown_events(), 1);
    }
}
