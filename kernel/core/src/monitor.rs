//! The console monitor (bootarg `monitor`): after the boot work, read
//! command lines from the console and answer each with `subsystem:
//! key=value` records, the boot report's form.
//!
//! What a byte or a word means is decided by `tidepool-monitor`
//! (host-tested); this module moves bytes from [`crate::console_input`]
//! into its line editor, echoes through the console, and runs commands with
//! the printers the boot report uses.

use alloc::vec::Vec;
use core::time::Duration;

use log::{error, info};
use tidepool_block::pattern::{DiskPattern, SECTOR_BYTES};
use tidepool_block::{BlockDriver, DiskLimits};
use tidepool_dt::DeviceTree;
use tidepool_monitor::{BlkCommand, COMMANDS, Command, Echo, LineEditor, PROMPT, hexdump};

use crate::block::{AnyDisk, Disk, with_disk};
use crate::console;
use crate::console_input;
use crate::dma::Dma;
use crate::memory_plan::MemorySetup;
use crate::xen::{self, ShutdownReason};

/// Everything the commands look at.
pub struct Monitor {
    /// The device tree as read at boot.
    pub dt: &'static DeviceTree,
    /// The blob itself (for `dt PATH`), if it is in the linear map.
    pub dtb: Option<&'static [u8]>,
    /// The memory layout.
    pub memory: &'static MemorySetup<'static>,
    /// The DMA layer.
    pub dma: Dma,
    /// The block devices.
    pub disks: Vec<AnyDisk>,
}

/// The editor's echo: straight to the console.
struct ConsoleEcho;

impl Echo for ConsoleEcho {
    fn echo(&mut self, bytes: &[u8]) {
        console::write_bytes(bytes);
    }
}

/// How often the monitor, waiting for input, tends the disks that want it
/// (a PV disk whose back end may leave: `xl block-detach` waits for it to
/// close, at most 10 s before libxl removes the device by force).
const TEND_PERIOD: Duration = Duration::from_millis(100);

/// Reads and runs commands until one powers off or reboots. Between
/// commands, and every [`TEND_PERIOD`] while it waits for input, it tends
/// the disks ([`crate::block::tend_all`]).
pub fn run(mut monitor: Monitor) -> ! {
    let mut editor = LineEditor::new();
    let mut reported = (0, 0);
    let mut tended = crate::block::tend_all(&mut monitor.disks, &mut monitor.dma);
    console::write_bytes(PROMPT.as_bytes());
    loop {
        let waited = match tended {
            0 => console_input::wait(),
            _ => console_input::wait_at_most(TEND_PERIOD),
        };
        let still = crate::block::tend_all(&mut monitor.disks, &mut monitor.dma);
        if still < tended {
            // A disk closed and printed its lines after the prompt (and
            // what was typed of a line so far).
            console::write_bytes(PROMPT.as_bytes());
            editor.redraw(&mut ConsoleEcho);
        }
        tended = still;
        if let Err(err) = waited {
            error!("monitor: cannot wait for input: {err}");
            crate::shutdown::shutdown(ShutdownReason::Crash);
        }
        while let Some(byte) = console_input::read() {
            let Some(line) = editor.feed(byte, &mut ConsoleEcho) else {
                continue;
            };
            let lost = console_input::dropped();
            if lost != reported {
                log::warn!(
                    "monitor: input lost: ring_full={} device_errors={}",
                    lost.0,
                    lost.1
                );
                reported = lost;
            }
            match Command::parse(line.as_str()) {
                Ok(Some(command)) => {
                    // `log` sets the level of the kernel's own messages; a
                    // command's answer (info records) is printed whatever
                    // the level is.
                    let level = log::max_level();
                    log::set_max_level(level.max(log::LevelFilter::Info));
                    monitor.execute(command);
                    if !matches!(command, Command::Log(_)) {
                        log::set_max_level(level);
                    }
                    tended = crate::block::tend_all(&mut monitor.disks, &mut monitor.dma);
                }
                Ok(None) => {}
                Err(err) => error!("monitor: {err}"),
            }
            console::write_bytes(PROMPT.as_bytes());
        }
    }
}

impl Monitor {
    fn execute(&mut self, command: Command<'_>) {
        match command {
            Command::Help => {
                for (usage, about) in COMMANDS {
                    info!("monitor: command=\"{usage}\" about=\"{about}\"");
                }
            }
            Command::Mem => self.mem(),
            Command::Pools => {
                let reserved = self.dt.plan.reserved();
                self.dma.print_pools(|name| {
                    reserved
                        .iter()
                        .find(|r| r.path == name)
                        .map(|r| r.users.as_slice())
                });
                self.dma.print_usage("now");
            }
            Command::Dma { device } => self.dma_stats(device),
            Command::Dt { path } => self.dt(path),
            Command::Xen => xen_report(),
            Command::Irq => {
                info!(
                    "irq: GICv{} registered={}",
                    crate::irq::gic_version().unwrap_or(0),
                    crate::irq::registered().count()
                );
                for (intid, count) in crate::irq::registered() {
                    let owner = self.dt.platform.interrupt_owner(intid).unwrap_or("?");
                    info!("irq: intid={intid} count={count} device={owner}");
                }
            }
            Command::Blk(command) => self.blk(command),
            Command::Log(level) => {
                log::set_max_level(level);
                // Printed whatever the new level, so the change is seen.
                console::write_line(format_args!(
                    "log: level={}",
                    level.as_str().to_ascii_lowercase()
                ));
            }
            Command::PowerOff => self.shut_down(ShutdownReason::PowerOff),
            Command::Reboot => self.shut_down(ShutdownReason::Reboot),
        }
    }

    fn mem(&self) {
        for line in self.dt.plan.console_lines() {
            info!("{line}");
        }
        crate::memory::print_mappings(self.memory, true);
        let (used, total) = crate::heap::usage();
        info!("mm: heap {} used={used} total={total}", self.memory.heap);
    }

    /// Closes the disks (a PV disk tells its back end), then powers off or
    /// reboots.
    fn shut_down(&mut self, reason: ShutdownReason) -> ! {
        crate::block::close_all(&mut self.disks, &mut self.dma);
        crate::shutdown::shutdown(reason)
    }

    fn dma_stats(&self, device: Option<&str>) {
        let mut shown = 0;
        for disk in self
            .disks
            .iter()
            .filter(|d| device.is_none_or(|name| matches(d, name)))
        {
            disk.print_dma_stats();
            shown += 1;
        }
        match device {
            Some(name) if shown == 0 => error!("monitor: dma: no DMA device {name}"),
            None if shown == 0 => info!("dma: devices=0"),
            _ => {}
        }
    }

    fn dt(&self, path: &str) {
        let Some(dtb) = self.dtb else {
            error!("monitor: dt: the device tree is not in the linear map");
            return;
        };
        match tidepool_dt::describe_node(dtb, path) {
            Ok(node) => {
                for (name, value) in &node.properties {
                    info!("dt: {} {name}={value}", node.path);
                }
                for child in &node.children {
                    info!("dt: {} child={child}", node.path);
                }
            }
            Err(err) => error!("monitor: dt: {err}"),
        }
    }

    /// Runs `f` on the block device called `name` (see [`matches()`]).
    fn with_disk(&mut self, name: &str, f: impl FnOnce(&mut AnyDisk, &mut Dma)) {
        match self.disks.iter_mut().find(|d| matches(d, name)) {
            Some(disk) => f(disk, &mut self.dma),
            None => error!("monitor: blk: no block device {name}"),
        }
    }

    fn blk(&mut self, command: BlkCommand<'_>) {
        match command {
            BlkCommand::List => {
                info!("blk: devices={}", self.disks.len());
                for disk in &self.disks {
                    disk.print_info();
                }
            }
            BlkCommand::Read { device, lba, count } => {
                self.with_disk(
                    device,
                    |any, dma| with_disk!(any, disk => read(disk, dma, lba, count)),
                );
            }
            BlkCommand::Verify { device, seed } => self.with_disk(device, |any, dma| {
                let expected = DiskPattern {
                    seed,
                    written: None,
                };
                with_disk!(any, disk => {
                    crate::block::verify(disk, dma, expected);
                });
            }),
            BlkCommand::Bench { device, mib } => self.with_disk(device, |any, dma| {
                with_disk!(any, disk => {
                    if let Err(err) = crate::block::bench(disk, dma, mib, crate::block::BENCH_READS) {
                        error!("blk: bench {}: {err}", disk.name());
                    }
                })
            }),
        }
    }
}

/// Whether `name` names `disk`: its device-tree path, or the node name
/// after the last `/`.
fn matches(disk: &AnyDisk, name: &str) -> bool {
    let path = disk.name();
    path == name || path.rsplit('/').next() == Some(name)
}

/// `blk read`: sector `lba` as hex-dump records, then the FNV-1a checksum
/// of the sectors after it, computed in place as each request completes
/// (`Disk::read_with`: no buffer for the whole range).
fn read<D: BlockDriver<'static>>(disk: &mut Disk<D>, dma: &mut Dma, lba: u64, count: u64) {
    // Nothing is read of a range that does not fit; the driver checks each
    // request again, against its block size too.
    let limits = DiskLimits {
        block_sectors: 1,
        max_bytes: u64::MAX,
        capacity: disk.device().capacity(),
    };
    // `count` is at most MAX_READ_SECTORS: no overflow.
    if let Err(err) = limits.check(lba, count * SECTOR_BYTES as u64) {
        error!("monitor: blk read: {}: {err}", disk.name());
        return;
    }
    let mut first = [0u8; SECTOR_BYTES];
    let mut rest = hexdump::Fnv1a64::new();
    let mut take = |at: u64, bytes: &[u8]| {
        let bytes = if at == lba {
            let (sector, after) = bytes.split_at(SECTOR_BYTES);
            first.copy_from_slice(sector);
            after
        } else {
            bytes
        };
        rest.update(bytes);
    };
    if let Err(err) = disk.read_with(dma, lba, count, &mut take) {
        error!(
            "blk: {} read of sectors {lba}+{count} failed: {err}",
            disk.name()
        );
        return;
    }
    for line in hexdump::lines(&first) {
        info!("blk: dump {} lba={lba} {line}", disk.name());
    }
    info!(
        "blk: read {} lba={lba} sectors={count} rest_sectors={} rest_fnv1a64={:#018x}",
        disk.name(),
        count - 1,
        rest.value()
    );
}

/// `xen`: version, features, domain, event channels and grants.
fn xen_report() {
    let Some(domain) = xen::domain() else {
        info!("xen: none (no hypervisor)");
        return;
    };
    let version = xen::version();
    info!(
        "xen: version {}.{}{} domain={} direct-mapped={}",
        version.major,
        version.minor,
        version.extra_str(),
        domain.id,
        if domain.direct_mapped() { "yes" } else { "no" }
    );
    info!("xen: features {}", domain.features);
    let ports = xen::events::bound_ports();
    let mut list = alloc::string::String::new();
    for (i, port) in ports.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&alloc::format!("{}", port.0));
    }
    info!(
        "xen: event-channels bound={} ports={} upcalls={}",
        ports.len(),
        if list.is_empty() { "none" } else { &list },
        xen::events::upcalls()
    );
    match xen::grants::usage() {
        Ok(u) => info!(
            "xen: grants in_use={} usable={} frames={} limit={}",
            u.in_use, u.usable, u.frames, u.limit
        ),
        Err(err) => error!("xen: grants: {err}"),
    }
}
