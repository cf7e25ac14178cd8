//! Console input: what the user types, moved by the receiving device's
//! interrupt into one ring that the monitor reads.
//!
//! Every console that can receive is a [`ConsoleInput`]: it says how its
//! receive interrupt reaches the kernel ([`ConsoleInput::attach`]: a GIC
//! interrupt with [`crate::irq::register`], or an event channel with
//! [`crate::xen::events`]) and how to empty the device
//! ([`ConsoleInput::drain`]); its interrupt handler calls [`receive`].
//! [`start`] takes the one source the kernel reads. The monitor sees only
//! bytes ([`read`], [`wait`]), whatever the device: here Xen's console as
//! dom0 (`CONSOLEIO_read` on `VIRQ_CONSOLE`), the PL011 (bare metal, or
//! Xen's vpl011 in a dom0less domU) and the i.MX UART (bare metal, or as a
//! dom0 that drives it because Xen cannot).
//!
//! The ring ([`InputRing`]) has one producer (the source's interrupt
//! handler, IRQs masked) and one consumer (the monitor): no lock. A full
//! ring drops the newest bytes and counts them ([`dropped`]).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use alloc::boxed::Box;
use spin::Once;
use tidepool_dt::{DeviceTree, Uart, UartKind};
use tidepool_gic::{IntId, Trigger};
use tidepool_imx_uart::ImxUart;
use tidepool_mm::{AddressMap, PhysAddr};
use tidepool_monitor::InputRing;
use tidepool_pl011::Pl011;
use tidepool_xen_abi::{EvtchnPort, Hypervisor, Virq, XenFeature};

use crate::irq::{self, IrqError};
use crate::memory_plan::MemorySetup;
use crate::timer::WaitError;
use crate::xen::Xen;
use crate::xen::events::{self, EventChannelError};

/// Bytes the ring holds: several lines typed ahead of a slow command.
const RING_BYTES: usize = 1024;

static RING: InputRing<RING_BYTES> = InputRing::new();
static DEVICE_ERRORS: AtomicU64 = AtomicU64::new(0);
static SOURCE: Once<&'static dyn ConsoleInput> = Once::new();

/// A console device that receives.
///
/// To add one (an i.MX UART, Xen's PV console for `xl` guests): implement
/// the two methods and `Display` (how the `monitor:` line names it), and
/// pass a `&'static` instance to [`start`].
pub trait ConsoleInput: fmt::Display + Sync {
    /// Routes the device's receive interrupt to a handler that calls
    /// [`receive`], and enables it at the device. Called once, by [`start`].
    fn attach(&'static self) -> Result<(), InputError>;

    /// Moves every byte the device holds, in order, to `deliver`, and
    /// clears the device's receive interrupt. Runs in the interrupt
    /// handler with IRQs masked (and once from [`start`], with IRQs
    /// masked): it must not allocate or wait. A byte the device flags as
    /// damaged is not delivered; count it with [`device_error`].
    fn drain(&self, deliver: &mut dyn FnMut(u8));
}

/// Why console input could not be started.
#[derive(Debug)]
pub enum InputError {
    /// A source was already started.
    AlreadyStarted,
    /// A Xen guest other than the hardware domain with neither a PV console
    /// nor a vpl011.
    NoVpl011,
    /// Bare metal, and `/chosen/stdout-path` names no PL011.
    NoStdoutUart,
    /// The UART node has no usable `interrupts` property.
    NoInterrupt {
        /// The UART node.
        path: &'static str,
    },
    /// The UART has no window in the address map.
    NotMapped {
        /// The UART node.
        path: &'static str,
        /// Its register block.
        phys: u64,
    },
    /// The interrupt could not be registered.
    Irq(IrqError),
    /// The event channel could not be bound.
    Event(EventChannelError),
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyStarted => f.write_str("console input is already started"),
            Self::NoVpl011 => f.write_str("no PV console and no vpl011 (arm,sbsa-uart)"),
            Self::NoStdoutUart => f.write_str("/chosen/stdout-path names no PL011"),
            Self::NoInterrupt { path } => write!(f, "{path} has no usable interrupt"),
            Self::NotMapped { path, phys } => {
                write!(f, "{path}: register block {phys:#x} has no window")
            }
            Self::Irq(error) => write!(f, "irq: {error}"),
            Self::Event(error) => write!(f, "event channel: {error}"),
        }
    }
}

/// Picks the console's input for this platform and starts it: the i.MX
/// UART the console writes to (`console_uart`, its physical address), else
/// Xen's console as the hardware domain, the vpl011 as another Xen guest,
/// the `stdout-path` PL011 on bare metal.
pub fn start_for_platform(
    dt: &'static DeviceTree,
    memory: &'static MemorySetup<'static>,
    console_uart: Option<u64>,
) -> Result<&'static dyn ConsoleInput, InputError> {
    static XEN_CONSOLE: XenConsoleInput = XenConsoleInput::new();
    let map = &memory.layout.address_map;
    let uarts = &dt.platform.uarts;
    let uart_input = |uart: &'static Uart| -> Result<&'static dyn ConsoleInput, InputError> {
        Ok(Box::leak(Box::new(UartInput::new(uart, map)?)))
    };
    static PV_CONSOLE: PvConsoleInput = PvConsoleInput;
    let imx_console = uarts
        .iter()
        .find(|u| u.kind == UartKind::Imx && Some(u.reg.base()) == console_uart);
    let source: &'static dyn ConsoleInput = match crate::xen::domain() {
        _ if let Some(uart) = imx_console => uart_input(uart)?,
        Some(domain) if domain.features.has(XenFeature::Dom0) => &XEN_CONSOLE,
        Some(_) if crate::xen::pv_console::port().is_some() => &PV_CONSOLE,
        Some(_) => uart_input(
            uarts
                .iter()
                .find(|u| u.kind == UartKind::SbsaUart)
                .ok_or(InputError::NoVpl011)?,
        )?,
        None => {
            let stdout = dt.platform.chosen.stdout.as_ref().map(|s| s.path.as_str());
            uart_input(
                uarts
                    .iter()
                    .find(|u| Some(u.path.as_str()) == stdout)
                    .ok_or(InputError::NoStdoutUart)?,
            )?
        }
    };
    start(source)?;
    Ok(source)
}

/// Takes `source` as the console's input: attaches its interrupt, then
/// collects what it received before.
pub fn start(source: &'static dyn ConsoleInput) -> Result<(), InputError> {
    let mut first = false;
    SOURCE.call_once(|| {
        first = true;
        source
    });
    if !first {
        return Err(InputError::AlreadyStarted);
    }
    source.attach()?;
    // Bytes that arrived before the interrupt was attached raised no
    // interrupt that will be seen again; the ring's one producer must not
    // race the handler, hence IRQs masked.
    irq::without_interrupts(receive);
    Ok(())
}

/// Drains the source into the ring: called from the source's interrupt
/// handler.
pub fn receive() {
    let Some(source) = SOURCE.get() else {
        return;
    };
    // A full ring counts what it drops.
    source.drain(&mut |byte| {
        RING.push(byte);
    });
}

/// [`receive`] as an event-channel handler.
fn on_event(_: EvtchnPort) {
    receive();
}

/// [`receive`] as an interrupt handler.
fn on_interrupt(_: IntId) {
    receive();
}

/// Counts a received byte the device flagged as damaged (and dropped).
pub fn device_error() {
    DEVICE_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// The next byte typed, if one is waiting.
pub fn read() -> Option<u8> {
    RING.pop()
}

/// Idles (WFI) until a byte is waiting. Fails only if the kernel cannot
/// wait at all (no timer, IRQs masked).
pub fn wait() -> Result<(), WaitError> {
    // The period only bounds each stretch of WFI; the wait goes on.
    while RING.is_empty() {
        wait_at_most(Duration::from_secs(60))?;
    }
    Ok(())
}

/// Waits until input arrives or `period` passes (running out is no
/// error): for a waiter with other work to look at now and then.
pub fn wait_at_most(period: Duration) -> Result<(), WaitError> {
    match crate::timer::wait_for(period, || !RING.is_empty()) {
        Err(WaitError::TimedOut { .. }) => Ok(()),
        other => other,
    }
}

/// Bytes dropped because the ring was full, and bytes the device flagged
/// as damaged.
pub fn dropped() -> (u64, u64) {
    (RING.dropped(), DEVICE_ERRORS.load(Ordering::Relaxed))
}

/// Xen's console as the hardware domain reads it: `VIRQ_CONSOLE` says
/// bytes arrived, `CONSOLEIO_read` takes them.
pub struct XenConsoleInput {
    port: Once<EvtchnPort>,
}

impl XenConsoleInput {
    /// Not yet bound (see [`ConsoleInput::attach`]).
    pub const fn new() -> Self {
        Self { port: Once::new() }
    }
}

impl fmt::Display for XenConsoleInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("console_io VIRQ_CONSOLE")?;
        match self.port.get() {
            Some(port) => write!(f, " {port}"),
            None => Ok(()),
        }
    }
}

impl ConsoleInput for XenConsoleInput {
    fn attach(&'static self) -> Result<(), InputError> {
        let port = events::bind_virq(Virq::CONSOLE, &on_event).map_err(InputError::Event)?;
        self.port.call_once(|| port);
        Ok(())
    }

    fn drain(&self, deliver: &mut dyn FnMut(u8)) {
        let mut buffer = [0u8; 64];
        // Xen hands over at most what fits; a short read means it is empty.
        // A refused read (not the hardware domain) leaves nothing to take.
        while let Ok(n) = Xen.console_read(&mut buffer) {
            buffer[..n].iter().for_each(|&byte| deliver(byte));
            if n < buffer.len() {
                break;
            }
        }
    }
}

/// Xen's PV console ring (an `xl` guest: what `xl console` types),
/// receiving on the ring's event channel.
pub struct PvConsoleInput;

impl fmt::Display for PvConsoleInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("xen pv console")?;
        match crate::xen::pv_console::port() {
            Some(port) => write!(f, " {port}"),
            None => Ok(()),
        }
    }
}

impl ConsoleInput for PvConsoleInput {
    fn attach(&'static self) -> Result<(), InputError> {
        let port = crate::xen::pv_console::port().ok_or(InputError::NoVpl011)?;
        events::bind_existing(port, &on_event).map_err(InputError::Event)?;
        Ok(())
    }

    fn drain(&self, deliver: &mut dyn FnMut(u8)) {
        let mut buffer = [0u8; 64];
        loop {
            let n = crate::xen::pv_console::read(&mut buffer);
            buffer[..n].iter().for_each(|&byte| deliver(byte));
            if n < buffer.len() {
                break;
            }
        }
    }
}

/// The UART drivers that receive: a PL011 (or Xen's vpl011, an SBSA UART)
/// or an i.MX UART.
enum Receiver {
    Pl011(Pl011),
    Imx(ImxUart),
}

/// A UART receiving by interrupt.
pub struct UartInput {
    uart: Receiver,
    path: &'static str,
    intid: IntId,
    trigger: Trigger,
}

impl UartInput {
    /// The UART of device-tree node `node`, through its window in `map`.
    pub fn new(node: &'static Uart, map: &AddressMap) -> Result<Self, InputError> {
        let path = node.path.as_str();
        let interrupt = node.interrupt.ok_or(InputError::NoInterrupt { path })?;
        let (intid, trigger) = irq::from_device_tree(&interrupt).map_err(InputError::Irq)?;
        let phys = node.reg.base();
        let window = map
            .window_address(PhysAddr(phys))
            .ok_or(InputError::NotMapped { path, phys })?;
        let uart = match node.kind {
            UartKind::Pl011 | UartKind::SbsaUart => {
                // SAFETY: the window maps this UART's register block as
                // Device memory for the kernel's lifetime; the console's
                // transmit path is the only other user, and it programs
                // nothing (it only writes DR and reads FR).
                Receiver::Pl011(unsafe { Pl011::new(window.0 as usize) })
            }
            UartKind::Imx => {
                // SAFETY: as for the PL011; the console's transmit path
                // enabled the UART once and then only writes UTXD and
                // reads UTS.
                Receiver::Imx(unsafe { ImxUart::new(window.0 as usize) })
            }
        };
        Ok(Self {
            uart,
            path,
            intid,
            trigger,
        })
    }
}

impl fmt::Display for UartInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.uart {
            Receiver::Pl011(_) => "pl011",
            Receiver::Imx(_) => "imx-uart",
        };
        write!(
            f,
            "{kind} {} intid={} {}",
            self.path,
            self.intid.raw(),
            self.trigger
        )
    }
}

impl ConsoleInput for UartInput {
    fn attach(&'static self) -> Result<(), InputError> {
        irq::register(self.intid, self.trigger, &on_interrupt).map_err(InputError::Irq)?;
        match &self.uart {
            Receiver::Pl011(uart) => uart.enable_receive_interrupts(),
            Receiver::Imx(uart) => uart.enable_receive_interrupts(),
        }
        Ok(())
    }

    fn drain(&self, deliver: &mut dyn FnMut(u8)) {
        let take = |received: Result<u8, tidepool_serial::ReceiveError>| match received {
            Ok(byte) => deliver(byte),
            Err(_) => device_error(),
        };
        match &self.uart {
            Receiver::Pl011(uart) => uart.drain(take),
            Receiver::Imx(uart) => uart.drain(take),
        }
    }
}
