//! The kernel's Xen interface: every hypercall goes through [`Xen`], the
//! `tidepool-xen-abi` [`Hypervisor`], with typed results.
//!
//! At boot ([`init`], when the device tree has a `/hypervisor` node) the
//! kernel reads Xen's feature flags, maps the shared-info page and takes
//! the event-channel upcall ([`events`]), and maps the grant table
//! ([`grants`]). [`flush`] is `GNTTABOP_cache_flush` for the DMA layer.
//! The console, version and shutdown calls below also work before the MMU
//! is on, take no lock and never allocate.

pub mod events;
pub mod flush;
pub mod grants;
pub mod pv;
pub mod pv_console;
pub mod store;

use core::fmt;

use log::{info, warn};
use spin::Once;
use tidepool_dt::Hypervisor as HypervisorNode;
use tidepool_xen_abi::{
    DomId, Hypercall, Hypervisor, XenError, XenExtraVersion, XenFeature, XenFeatures,
};

use tidepool_mm::CacheOp;

use crate::arch::aarch64::cache::maintain_range;
use crate::arch::aarch64::hypercall::hypercall;
use crate::irq::IrqError;
use crate::memory_plan::MemorySetup;

/// The running hypervisor: every typed hypercall of `tidepool-xen-abi` goes
/// through here.
pub struct Xen;

// SAFETY: `call` issues exactly the hypercall `Hypercall::registers`
// describes, once, returns Xen's x0 unchanged and keeps nothing; the cache
// maintenance around it touches only the call's own buffers.
unsafe impl Hypervisor for Xen {
    fn call(&mut self, mut call: Hypercall<'_>) -> i64 {
        let buffers = call.guest_buffers();
        for buffer in buffers.iter().flatten() {
            prepare_range_for_xen(buffer.address as usize, buffer.len);
        }
        let registers = call.registers();
        // SAFETY: `Hypercall` borrows every buffer its registers point at,
        // with the size Xen accesses, for the whole call; a variant that
        // names memory by address (a frame, a mapping, machine addresses)
        // carries arguments only `tidepool-xen-abi`'s typed methods build,
        // from tokens whose owners vouched for that memory in `unsafe`.
        let rc = unsafe { hypercall(registers.number, registers.args) };
        // What Xen wrote went through its cacheable mapping: drop stale lines
        // before uncached reads (nothing to do once the caches are on).
        for buffer in buffers.iter().flatten() {
            prepare_range_for_xen(buffer.address as usize, buffer.len);
        }
        rc
    }
}

/// Before the MMU is on the kernel's stores bypass the cache, while Xen reads
/// and writes guest memory through its own cacheable mapping. A buffer handed
/// to Xen is therefore cleaned and invalidated to the point of coherency
/// first, so Xen cannot read a stale line, and again after the call, so the
/// kernel's uncached reads cannot be overtaken by a stale line later; QEMU
/// models no caches, so this is a real-hardware obligation no emulated test
/// can see. Once the caches are on, Xen and the kernel see memory through
/// the same cacheable attributes and buffers need no maintenance.
fn prepare_range_for_xen(start: usize, len: usize) {
    if !crate::arch::aarch64::cpu::caches_enabled() {
        // SAFETY: the buffer is borrowed by the hypercall (so mapped: flat,
        // with the MMU off); clean+invalidate loses no data.
        unsafe { maintain_range(CacheOp::CleanInvalidate, start, len) };
    }
}

/// Writes `bytes` to Xen's console (`CONSOLEIO_write`). Errors are ignored:
/// there is nowhere else to report them.
pub fn console_write(bytes: &[u8]) {
    let _ = Xen.console_write(bytes);
}

/// Prints Xen's console ring (`XEN_SYSCTL_readconsole`), for a dom0 whose
/// console is a UART Xen does not drive: Xen's messages are otherwise
/// invisible. A refusal (a domain without the privilege) is a warning.
pub fn print_console_ring() {
    /// Calls before giving up on a Xen that keeps writing.
    const MAX_READS: usize = 64;
    let mut buffer = alloc::vec![0u8; 4096];
    let result = tidepool_xen_abi::read_console_lines(&mut Xen, &mut buffer, MAX_READS, |line| {
        let text = core::str::from_utf8(line).unwrap_or("(not UTF-8)");
        info!("xen: ring: {}", text.trim_end());
    });
    match result {
        Ok(summary) => info!(
            "xen: console ring printed bytes={} lines={}",
            summary.bytes, summary.lines
        ),
        Err(err) => warn!("xen: console ring not readable: {err}"),
    }
}

/// Xen's version as `xen_version` reports it.
#[derive(Clone, Copy, Debug)]
pub struct XenVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// `XENVER_extraversion` (e.g. ".7").
    extra: XenExtraVersion,
}

impl XenVersion {
    /// The extra version as text.
    pub fn extra_str(&self) -> &str {
        self.extra.as_str()
    }
}

/// Queries `xen_version` (`XENVER_version` and `XENVER_extraversion`). A
/// failure is reported as a warning and reads as version 0.0.
pub fn version() -> XenVersion {
    let mut xen = Xen;
    let version = xen.xen_version().unwrap_or_else(|err| {
        warn!("xen: {err}");
        tidepool_xen_abi::XenVersion::from_raw(0)
    });
    let extra = xen.xen_extra_version().unwrap_or_else(|err| {
        warn!("xen: {err}");
        XenExtraVersion::default()
    });
    XenVersion {
        major: version.major,
        minor: version.minor,
        extra,
    }
}

/// Shutdown reasons for `SCHEDOP_shutdown`.
#[derive(Clone, Copy, Debug)]
pub enum ShutdownReason {
    /// SHUTDOWN_poweroff.
    PowerOff,
    /// SHUTDOWN_reboot.
    Reboot,
    /// SHUTDOWN_crash.
    Crash,
}

/// `SCHEDOP_shutdown`; returns only if Xen refused.
pub fn shutdown(reason: ShutdownReason) -> Result<(), XenError> {
    Xen.sched_shutdown(match reason {
        ShutdownReason::PowerOff => tidepool_xen_abi::ShutdownReason::PowerOff,
        ShutdownReason::Reboot => tidepool_xen_abi::ShutdownReason::Reboot,
        ShutdownReason::Crash => tidepool_xen_abi::ShutdownReason::Crash,
    })
}

/// What the kernel learned about its domain at [`init`].
#[derive(Clone, Copy, Debug)]
pub struct Domain {
    /// This domain's id.
    pub id: DomId,
    /// Xen's feature flags (`XENVER_get_features`, submap 0).
    pub features: XenFeatures,
    /// The device tree's `/hypervisor` node.
    pub node: &'static HypervisorNode,
}

impl Domain {
    /// Whether guest-physical addresses are machine addresses here: Xen says
    /// the domain is direct-mapped, or it is dom0 (which Xen on Arm always
    /// maps 1:1) and Xen does not say otherwise.
    pub fn direct_mapped(&self) -> bool {
        self.features.has(XenFeature::DirectMapped)
            || (self.features.has(XenFeature::Dom0)
                && !self.features.has(XenFeature::NotDirectMapped))
    }
}

static DOMAIN: Once<Domain> = Once::new();

/// This domain, once [`init`] has run (`None` without Xen).
pub fn domain() -> Option<&'static Domain> {
    DOMAIN.get()
}

/// Why the Xen platform could not be set up.
#[derive(Debug)]
pub enum XenSetupError {
    /// `XENVER_get_features` failed.
    Features(XenError),
    /// Learning the domain id (an unbound loopback port and its status)
    /// failed.
    DomainId(events::EventChannelError),
    /// The memory plan has no page for the shared-info frame: the
    /// hypervisor node lists no extended region.
    NoSharedInfoPage,
    /// Xen refused to map the shared-info page.
    SharedInfo(XenError),
    /// The shared-info page has no window in the address map.
    SharedInfoNotMapped {
        /// Its guest-physical address.
        gpa: u64,
    },
    /// The event-channel upcall interrupt could not be registered.
    Upcall(IrqError),
    /// The grant table could not be set up.
    Grants(grants::GrantSetupError),
}

impl fmt::Display for XenSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Features(error) => write!(f, "features: {error}"),
            Self::DomainId(error) => write!(f, "domain id: {error}"),
            Self::NoSharedInfoPage => {
                f.write_str("no page for shared info: the hypervisor node lists no extended region")
            }
            Self::SharedInfo(error) => write!(f, "shared info: {error}"),
            Self::SharedInfoNotMapped { gpa } => {
                write!(f, "shared info at gpa {gpa:#x} has no window")
            }
            Self::Upcall(error) => write!(f, "event channel upcall: {error}"),
            Self::Grants(error) => write!(f, "grant table: {error}"),
        }
    }
}

/// Sets up the Xen platform from the `/hypervisor` node: feature flags,
/// shared info and event channels, the grant table. The interrupt
/// controller must be up ([`crate::irq::init`]); IRQs may still be masked.
pub fn init(
    node: &'static HypervisorNode,
    memory: &'static MemorySetup<'static>,
) -> Result<(), XenSetupError> {
    let features = Xen.xen_features().map_err(XenSetupError::Features)?;
    info!("xen: features {features}");
    events::init(node, memory)?;
    let id = events::own_domain_id().map_err(XenSetupError::DomainId)?;
    let domain = DOMAIN.call_once(|| Domain { id, features, node });
    info!(
        "xen: domain {id} {}",
        if domain.direct_mapped() {
            "direct-mapped (guest-physical = machine)"
        } else {
            "not direct-mapped"
        }
    );
    grants::init(node, &memory.layout.address_map).map_err(XenSetupError::Grants)
}
