//! From the entry code to a running kernel.

use alloc::boxed::Box;

use log::{error, info, warn};
use tidepool_dt::{AddrRange, ConsoleLine, DeviceTree, PsciMethod, Uart, UartKind};
use tidepool_mm::PhysRange;

use crate::arch::aarch64::{linker, psci::Conduit};
use crate::bootargs::{Bootargs, LogLevel};
use crate::console::{self, Backend};
use crate::early_dt;
use crate::shutdown::{PowerControl, set_power_control, shutdown};
use crate::timer;
use crate::xen::{self, ShutdownReason};

/// The UART used when there is no usable device tree: QEMU `virt`'s PL011,
/// unless the build sets `TIDEPOOL_EARLY_UART` (hex) for another board.
const EARLY_UART: usize = match option_env!("TIDEPOOL_EARLY_UART") {
    Some(hex) => parse_hex(hex),
    None => 0x0900_0000,
};

const fn parse_hex(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = if bytes.len() > 2 && bytes[0] == b'0' && (bytes[1] == b'x' || bytes[1] == b'X') {
        2
    } else {
        0
    };
    let mut value = 0usize;
    while i < bytes.len() {
        let digit = match bytes[i] {
            b'0'..=b'9' => bytes[i] - b'0',
            b'a'..=b'f' => bytes[i] - b'a' + 10,
            b'A'..=b'F' => bytes[i] - b'A' + 10,
            _ => panic!("TIDEPOOL_EARLY_UART must be a hex address"),
        };
        value = value * 16 + digit as usize;
        i += 1;
    }
    value
}

/// Called by the entry code (boot/src/entry.S) with the MMU off, on the
/// kernel stack, BSS cleared and relocations applied.
#[unsafe(no_mangle)]
extern "C" fn tidepool_entry(dtb_addr: usize, entry_el: u64, load_base: usize) -> ! {
    // The kernel's own boot time runs from here, without the hypervisor's
    // or firmware's before it.
    let entry_us = timer::uptime_us();
    // Until the device tree says otherwise, power off the way QEMU's virt
    // board expects: its PSCI sits behind SMC when the guest owns EL2.
    set_power_control(PowerControl::Psci(if entry_el == 2 {
        Conduit::Smc
    } else {
        Conduit::Hvc
    }));

    // The boot heap (in BSS) holds the device tree's reading until the
    // memory plan has placed the main heap.
    crate::heap::init_boot_region();
    let image = linker::image_layout().image;
    let busy = AddrRange::new(image.start as u64, (image.end - image.start) as u64);
    // SAFETY: the boot protocol hands over the blob at x0 for the kernel's
    // lifetime; a null, misaligned or magic-less pointer is rejected before
    // anything beyond its 8-byte header is read.
    let blob = unsafe { early_dt::blob_at(dtb_addr) };
    // The one reading of the device tree: the console, the power control
    // and the memory plan all come from it.
    let parsed = blob.and_then(|blob| {
        DeviceTree::from_dtb_with(blob, busy.as_slice())
            .map(|dt| (blob, &*Box::leak(Box::new(dt))))
            .map_err(early_dt::DtbError::Structure)
    });
    let (dt_blob, dt) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            console::select(Backend::Pl011(EARLY_UART));
            crate::logger::init(LogLevel::Info);
            banner(entry_el, load_base, dtb_addr);
            error!("boot: no usable device tree at {dtb_addr:#x}: {err}");
            error!(
                "boot: cannot continue without a device tree (console: build-time early UART {EARLY_UART:#x})"
            );
            shutdown(ShutdownReason::Crash);
        }
    };

    let platform = &dt.platform;
    let under_xen = platform.xen;
    let bootargs = platform.chosen.bootargs.as_deref().unwrap_or("");
    let args = Bootargs::parse(bootargs);
    // `console-uart=` chooses the UART, also under Xen (which removes
    // stdout-path from dom0's tree). Otherwise under Xen the console is
    // Xen's console_io, except on an i.MX UART: Xen hides the UART it
    // drives itself from its guests, and a PL011 in a guest's tree is Xen's
    // emulation, but an i.MX UART in a guest's tree is the real one, left to
    // it (Xen 4.17 has no driver for it; its console_io output goes
    // nowhere).
    let chosen_uart = args.console_uart.map(|spec| platform.uart(spec));
    let uart_backend = |uart: &Uart| match uart.kind {
        UartKind::Imx => Backend::ImxUart(uart.reg.base() as usize),
        UartKind::Pl011 | UartKind::SbsaUart => Backend::Pl011(uart.reg.base() as usize),
    };
    let console = match (chosen_uart, under_xen, platform.stdout_uart()) {
        (Some(Some(uart)), _, _) => uart_backend(uart),
        (_, _, Some(uart)) if uart.kind == UartKind::Imx => uart_backend(uart),
        (_, true, _) => Backend::Xen,
        (_, false, Some(uart)) => uart_backend(uart),
        (_, false, None) => Backend::Pl011(EARLY_UART),
    };
    console::select(console);
    set_power_control(
        match (under_xen, platform.psci.as_ref().map(|p| p.method)) {
            (true, _) => PowerControl::Xen,
            (false, Some(PsciMethod::Smc)) => PowerControl::Psci(Conduit::Smc),
            (false, Some(PsciMethod::Hvc)) => PowerControl::Psci(Conduit::Hvc),
            (false, None) => PowerControl::Psci(if entry_el == 2 {
                Conduit::Smc
            } else {
                Conduit::Hvc
            }),
        },
    );
    crate::logger::init(args.log_level);
    banner(entry_el, load_base, dtb_addr);
    if under_xen {
        let v = xen::version();
        info!(
            "xen: version {}.{}{} console={console}",
            v.major,
            v.minor,
            v.extra_str()
        );
    } else {
        info!("boot: no hypervisor, console={console}");
    }
    for problem in args.errors() {
        warn!("{problem}");
    }
    if let (Some(None), Some(spec)) = (chosen_uart, args.console_uart) {
        warn!("boot: console-uart={spec} names no UART this kernel drives; console={console}");
    }
    info!("boot: bootargs \"{bootargs}\"");
    for line in dt.plan.console_lines() {
        match line {
            ConsoleLine::Error(_) => warn!("{line}"),
            _ => info!("{line}"),
        }
    }
    for problem in &dt.platform.errors {
        warn!("dt: {problem}");
    }
    let dtb = PhysRange::new(dtb_addr as u64, dt_blob.len() as u64);
    let memory = match crate::memory::bring_up(dt, dtb, args.heap_size.map(|size| size as u64)) {
        Ok(memory) => memory,
        Err(err) => {
            error!("mm: {err}");
            shutdown(ShutdownReason::Crash);
        }
    };
    if let Err(err) = crate::platform::init(dt, memory) {
        error!("{err}");
        shutdown(ShutdownReason::Crash);
    }
    // Xen's own messages went to its console ring only, unless Xen's
    // console is the one this kernel writes to.
    if under_xen && console != Backend::Xen {
        crate::xen::print_console_ring();
    }

    // GNTTABOP_cache_flush takes machine addresses: only a direct-mapped
    // domain (dom0 here) can name its pages by their guest-physical address.
    let flush = match crate::xen::flush::XenFlush::new() {
        Ok(flush) => Some(flush),
        Err(reason) => {
            if under_xen {
                info!("dma: no xen cache flush: {reason}");
            }
            None
        }
    };
    let mut dma = match crate::dma::Dma::new(dt, memory, flush) {
        Ok(dma) => dma,
        Err(err) => {
            error!("{err}");
            shutdown(ShutdownReason::Crash);
        }
    };

    crate::selftest::run_requested(&args, memory);
    if args.selftest("dma") {
        crate::dma_selftest::run(&mut dma, dt);
    }
    if args.selftest("dma-naive") {
        crate::dma_selftest::run_naive(&mut dma, dt);
    }
    connect_xenstore(&memory.layout.address_map);
    let mut disks = crate::block::probe(dt, &mut dma, args.wait, args.blk_pv_grants);
    crate::block::run_requested(&args, &mut disks, &mut dma);
    // The monitor's `blk` commands use the disks until it powers off, and
    // closes them then; otherwise they close now, disk work or not.
    if !args.monitor {
        crate::block::close_all(&mut disks, &mut dma);
    }

    if args.monitor {
        // Without input there is no monitor: say why and power off.
        let console_uart = match console {
            Backend::ImxUart(base) => Some(base as u64),
            _ => None,
        };
        match crate::console_input::start_for_platform(dt, memory, console_uart) {
            Ok(source) => info!("monitor: input {source}"),
            Err(err) => {
                error!("monitor: no console input: {err}");
                crate::block::close_all(&mut disks, &mut dma);
                shutdown(ShutdownReason::PowerOff)
            }
        }
    }
    let (heap_used, heap_total) = crate::heap::usage();
    info!(
        "boot: ready uptime_us={} since_entry_us={} heap_used={heap_used} heap_total={heap_total}",
        timer::uptime_us(),
        timer::uptime_us() - entry_us
    );
    if !args.monitor {
        shutdown(ShutdownReason::PowerOff)
    }
    crate::monitor::run(crate::monitor::Monitor {
        dt,
        dtb: crate::memory::dtb_in_linear_map(memory, dtb),
        memory,
        dma,
        disks,
    })
}

/// Connects to xenstore when the toolstack gave this domain a store page
/// (an `xl` guest) and says who the domain is there.
fn connect_xenstore(map: &tidepool_mm::AddressMap) {
    use tidepool_xen_abi::xenstore::TxId;
    match xen::store::init(map) {
        Ok(page) => {
            let name = xen::store::with(|xs| xs.read(TxId::NONE, "name"));
            match name {
                Some(Ok(name)) => info!(
                    "xenstore: connected gpa={} evtchn={} name={name}",
                    page.gpa, page.port.0
                ),
                Some(Err(err)) => error!("xenstore: read name: {err}"),
                None => {}
            }
        }
        Err(xen::store::StoreSetupError::NoStore) => {}
        Err(err) => error!("xenstore: {err}"),
    }
}

fn banner(entry_el: u64, load_base: usize, dtb_addr: usize) {
    let image = linker::image_layout().image;
    info!(
        "boot: tidepool {} el={entry_el} load={load_base:#x} image_size={:#x} dtb={dtb_addr:#x}",
        env!("CARGO_PKG_VERSION"),
        image.len()
    );
}
