//! Interrupts: the GIC the device tree names (v2 or v3; Xen gives a guest
//! the host's version), one handler per INTID, and dispatch from the IRQ
//! vector.
//!
//! Handlers are `&'static` functions or closures registered once per INTID
//! at setup time; the IRQ path takes no lock and never allocates: it
//! acknowledges the interrupt, calls the handler and signals the end of the
//! interrupt. The kernel runs on one CPU, the boot CPU, whose CPU interface
//! and (v3) redistributor are the ones set up here.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use log::info;
use spin::Once;
use tidepool_dt::{GicInterrupt, GicVersion, InterruptKind, Platform};
use tidepool_gic::{
    Affinity, DEFAULT_PRIORITY, DtInterruptError, Gic, GicError, GicV2, GicV3, IntId, Trigger,
    decode_interrupt_specifier, v2, v3,
};
use tidepool_mm::{AddressMap, PhysAddr};

use crate::arch::aarch64::cpu;

/// An interrupt handler: called on the IRQ path with the INTID it was
/// registered for, with IRQs masked. It must clear the interrupt's cause
/// (a level-triggered line stays pending otherwise), must not allocate, and
/// must not wait.
pub type Handler = &'static (dyn Fn(IntId) + Sync);

/// One past the largest SGI, PPI or SPI INTID.
const INTID_LIMIT: usize = 1020;

static GIC: Once<Gic> = Once::new();
static HANDLERS: [Once<Handler>; INTID_LIMIT] = [const { Once::new() }; INTID_LIMIT];
/// Interrupts taken per INTID (handled or not).
static COUNTS: [AtomicU64; INTID_LIMIT] = [const { AtomicU64::new(0) }; INTID_LIMIT];

/// Why interrupts could not be set up or an interrupt not registered.
#[derive(Debug)]
pub enum IrqError {
    /// The device tree names no (usable) GIC.
    NoController,
    /// A GIC register block has no window in the address map.
    NotMapped {
        /// The GIC node.
        path: &'static str,
        /// The block's physical address.
        phys: u64,
    },
    /// A GICv3 node without a redistributor region.
    NoRedistributors {
        /// The GIC node.
        path: &'static str,
    },
    /// A GICv2 node without a CPU interface.
    NoCpuInterface {
        /// The GIC node.
        path: &'static str,
    },
    /// The GIC driver refused.
    Gic(GicError),
    /// A device-tree interrupt specifier the GIC driver cannot use.
    Specifier(DtInterruptError),
    /// The INTID already has a handler.
    AlreadyRegistered(IntId),
}

impl fmt::Display for IrqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoController => f.write_str("the device tree names no interrupt controller"),
            Self::NotMapped { path, phys } => {
                write!(f, "{path}: register block {phys:#x} has no window")
            }
            Self::NoRedistributors { path } => {
                write!(f, "{path}: GICv3 without a redistributor region")
            }
            Self::NoCpuInterface { path } => write!(f, "{path}: GICv2 without a CPU interface"),
            Self::Gic(error) => write!(f, "GIC: {error}"),
            Self::Specifier(error) => write!(f, "interrupt specifier: {error}"),
            Self::AlreadyRegistered(intid) => write!(f, "{intid} already has a handler"),
        }
    }
}

impl From<GicError> for IrqError {
    fn from(error: GicError) -> Self {
        Self::Gic(error)
    }
}

/// The virtual address of a GIC register block, from its window.
fn window(map: &AddressMap, path: &'static str, phys: u64) -> Result<usize, IrqError> {
    map.window_address(PhysAddr(phys))
        .map(|va| va.0 as usize)
        .ok_or(IrqError::NotMapped { path, phys })
}

/// Takes over the GIC named by the device tree and enables the boot CPU's
/// interface. Interrupts stay masked (PSTATE.I) until [`unmask`].
pub fn init(platform: &'static Platform, map: &AddressMap) -> Result<(), IrqError> {
    let node = platform.gic.as_ref().ok_or(IrqError::NoController)?;
    let path = node.path.as_str();
    let distributor = window(map, path, node.distributor.base())?;
    let gic = match node.version {
        GicVersion::V2 => {
            let cpu_interface = node
                .cpu_interface
                .ok_or(IrqError::NoCpuInterface { path })?;
            let cpu_interface = window(map, path, cpu_interface.base())?;
            // SAFETY: both addresses are the windows the memory plan mapped
            // as Device memory for this GIC node's distributor and CPU
            // interface, for the kernel's lifetime; this is the only driver
            // of the GIC (`GIC` is set once).
            let (distributor, cpu_interface) = unsafe {
                (
                    v2::Distributor::new(distributor),
                    v2::CpuInterface::new(cpu_interface),
                )
            };
            Gic::V2(GicV2::new(distributor, cpu_interface))
        }
        GicVersion::V3 => {
            // The boot CPU's redistributor is looked for in the first region.
            let region = node
                .redistributors
                .first()
                .ok_or(IrqError::NoRedistributors { path })?;
            let base = window(map, path, region.base())?;
            // SAFETY: the windows map this GIC node's distributor and its
            // whole first redistributor region as Device memory for the
            // kernel's lifetime; this is the only driver of the GIC.
            let (distributor, redistributors) = unsafe {
                (
                    v3::Distributor::new(distributor),
                    v3::Redistributors::new(base, region.size() as usize),
                )
            };
            Gic::V3(GicV3::new(
                distributor,
                redistributors,
                Affinity::current(),
            )?)
        }
    };
    gic.init_distributor()?;
    gic.init_cpu_interface()?;
    info!(
        "irq: GICv{} {path} distributor {:#x} intids={}",
        gic.version(),
        node.distributor.base(),
        gic.intid_limit()
    );
    GIC.call_once(|| gic);
    Ok(())
}

/// The INTID and trigger of a device-tree interrupt (a device's
/// `interrupts` entry as [`tidepool_dt`] decoded it).
pub fn from_device_tree(interrupt: &GicInterrupt) -> Result<(IntId, Trigger), IrqError> {
    let kind = match interrupt.kind {
        InterruptKind::Spi => 0,
        InterruptKind::Ppi => 1,
    };
    decode_interrupt_specifier([kind, interrupt.number, interrupt.flags])
        .map_err(IrqError::Specifier)
}

/// Routes `intid` to `handler` and enables it at the GIC (an SPI is
/// delivered to the boot CPU). Each INTID takes one handler, for good.
pub fn register(intid: IntId, trigger: Trigger, handler: Handler) -> Result<(), IrqError> {
    let gic = GIC.get().ok_or(IrqError::NoController)?;
    let mut installed = false;
    HANDLERS[intid.raw() as usize].call_once(|| {
        installed = true;
        handler
    });
    if !installed {
        return Err(IrqError::AlreadyRegistered(intid));
    }
    gic.enable(intid, trigger, DEFAULT_PRIORITY)?;
    Ok(())
}

/// Enables `intid` at the GIC with no handler: only for the self-test that
/// shows the fatal report of an interrupt nobody handles.
pub fn enable_unhandled(intid: IntId, trigger: Trigger) -> Result<(), IrqError> {
    let gic = GIC.get().ok_or(IrqError::NoController)?;
    gic.enable(intid, trigger, DEFAULT_PRIORITY)?;
    Ok(())
}

/// Every INTID with a handler, with the interrupts taken on it so far,
/// in INTID order.
pub fn registered() -> impl Iterator<Item = (u32, u64)> {
    HANDLERS
        .iter()
        .zip(&COUNTS)
        .enumerate()
        .filter(|(_, (handler, _))| handler.get().is_some())
        .map(|(intid, (_, count))| (intid as u32, count.load(Ordering::Relaxed)))
}

/// The GIC's version, once [`init`] has run.
pub fn gic_version() -> Option<u8> {
    GIC.get().map(|gic| gic.version())
}

/// Unmasks IRQs on this CPU: from here on, registered interrupts are taken.
pub fn unmask() {
    cpu::unmask_irqs();
}

/// Runs `f` with IRQs masked on this CPU, restoring the previous state
/// after: for state an interrupt handler also touches.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_masked = cpu::irqs_masked();
    cpu::mask_irqs();
    let result = f();
    if !was_masked {
        cpu::unmask_irqs();
    }
    result
}

/// Handles one interrupt from the IRQ vector: acknowledge, run its handler,
/// end it. A spurious acknowledge (nothing pending any more) counts as
/// handled. Returns `false` when nothing could handle it: no GIC, or an
/// INTID without a handler (ended, and named on the console), which the
/// exception path reports as fatal.
pub fn dispatch() -> bool {
    let Some(gic) = GIC.get() else {
        return false;
    };
    let Some(acknowledged) = gic.acknowledge() else {
        return true;
    };
    let intid = acknowledged.intid();
    COUNTS[intid.raw() as usize].fetch_add(1, Ordering::Relaxed);
    match HANDLERS[intid.raw() as usize].get() {
        Some(handler) => {
            handler(intid);
            gic.end_of_interrupt(acknowledged);
            true
        }
        None => {
            gic.end_of_interrupt(acknowledged);
            crate::console::write_line(format_args!("irq: {intid} has no handler"));
            false
        }
    }
}
