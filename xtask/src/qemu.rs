//! QEMU command lines for every way tidepool boots, and running them: on the
//! terminal (`cargo xtask run`) or captured with a deadline (tests, benchmarks).

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::board::Board;
use crate::devicetree::{self, Module, Tree};
use crate::scenario::Scenario;
use crate::{Error, Result, Workspace};

/// Xen's console on QEMU's `virt`: its PL011, by device-tree path.
pub const XEN_VIRT_CONSOLE: &str = "console=dtuart dtuart=/pl011@9000000";
/// Where QEMU's `-kernel` boot puts its device tree; modules must stay clear.
const QEMU_DTB_ADDR: u64 = 0x4800_0000;
/// Where the kernel module for Xen is loaded (below QEMU's DTB).
const XEN_MODULE_ADDR: u64 = 0x4700_0000;
/// Where a loader-only boot (no `-kernel`, no DTB) places the image: clear of
/// the device tree QEMU still writes at the start of RAM (x0 stays 0).
const LOADER_ONLY_ADDR: u64 = 0x4020_0000;

/// How tidepool is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As Xen's dom0 with `dom0_mem`.
    XenDom0 {
        /// `dom0_mem=` value, e.g. "256M".
        dom0_mem: String,
    },
    /// As a dom0less domU with this much memory in KiB (no dom0).
    XenDomU {
        /// Guest memory in KiB.
        memory_kib: u64,
    },
    /// On bare QEMU via `-kernel`.
    Bare,
    /// On bare QEMU via `-device loader` only: no device tree is passed (x0 = 0).
    LoaderOnly,
}

/// The files a boot uses, made or found by [`Machine::prepare`].
struct BootFiles<'f> {
    /// The kernel Image.
    image: &'f Path,
    /// The device tree (every mode but [`Mode::LoaderOnly`]).
    dtb: Option<&'f Path>,
    /// Xen (the Xen modes).
    xen: Option<&'f Path>,
    /// The board's device tree, for a [`Machine::board`] boot (its CPUs and
    /// console decide the command line).
    board_tree: Option<&'f Tree>,
}

/// A virtio block device on the command line.
#[derive(Clone, Debug)]
pub struct Disk {
    /// QEMU `-drive` file= (raw image or blkdebug: spec).
    pub file: String,
    /// Read-only?
    pub read_only: bool,
}

/// Everything that defines one QEMU boot.
#[derive(Clone, Debug)]
pub struct Machine {
    /// How tidepool is started.
    pub mode: Mode,
    /// GIC version, 2 or 3.
    pub gic: u8,
    /// `virtualization=on` (EL2). Forced on for Xen.
    pub virtualization: bool,
    /// Guest RAM (`-m`).
    pub memory: String,
    /// vCPUs.
    pub cpus: u32,
    /// tidepool's own bootargs.
    pub bootargs: String,
    /// Extra Xen command-line words.
    pub xen_args: String,
    /// Device-tree additions from qemu/scenarios/NAME.toml.
    pub scenario: Option<String>,
    /// virtio-mmio block devices (the first gets QEMU's last transport).
    pub disks: Vec<Disk>,
    /// Use the modern (v2) virtio-mmio interface instead of QEMU's legacy default.
    pub modern_virtio: bool,
    /// Count time in guest instructions (`-icount shift=0,sleep=off`: one
    /// instruction per nanosecond, idle time skipped), so guest timings
    /// do not depend on the host.
    pub icount: bool,
    /// A board with its own device tree instead of `virt` (then `disks`
    /// is at most one SD card, and `gic`, `cpus`, `virtualization` and
    /// `modern_virtio` do not apply: the board's tree and model decide).
    pub board: Option<Board>,
}

impl Machine {
    /// Defaults for `mode`.
    pub fn new(mode: Mode) -> Self {
        let virtualization = !matches!(mode, Mode::Bare | Mode::LoaderOnly);
        Self {
            mode,
            gic: 3,
            virtualization,
            memory: "1G".into(),
            cpus: 1,
            bootargs: String::new(),
            xen_args: String::new(),
            scenario: None,
            disks: Vec::new(),
            modern_virtio: false,
            icount: false,
            board: None,
        }
    }

    fn is_xen(&self) -> bool {
        matches!(self.mode, Mode::XenDom0 { .. } | Mode::XenDomU { .. })
    }

    /// The `-machine`/`-cpu`/`-m`/`-smp`/device arguments shared by the real
    /// boot and the `dumpdtb` run, so the dumped tree matches the machine.
    fn hardware_args(&self, dumpdtb: Option<&Path>) -> Vec<String> {
        let mut machine = format!("virt,gic-version={}", self.gic);
        if self.virtualization || self.is_xen() {
            machine.push_str(",virtualization=on");
        }
        if let Some(path) = dumpdtb {
            machine.push_str(&format!(",dumpdtb={}", path.display()));
        }
        let mut args: Vec<String> = [
            "-machine",
            &machine,
            "-cpu",
            "cortex-a57",
            "-m",
            &self.memory,
            "-smp",
            &self.cpus.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // No default NIC: its option ROM (efi-virtio.rom) comes only with
        // ipxe-qemu, a Recommends that a --no-install-recommends install lacks.
        args.extend(["-display", "none", "-no-reboot", "-nic", "none"].map(String::from));
        if self.modern_virtio {
            args.extend(["-global", "virtio-mmio.force-legacy=false"].map(String::from));
        }
        if self.icount {
            args.extend(["-icount", "shift=0,sleep=off"].map(String::from));
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let ro = if disk.read_only { ",readonly=on" } else { "" };
            args.push("-drive".into());
            args.push(format!(
                "if=none,id=disk{i},format=raw,file={}{ro}",
                disk.file
            ));
            // QEMU merges adjacent requests it finds queued together; an
            // injected error then fails every request of the merge (timing
            // decides how many): keep each request its own.
            let merging = if disk.file.starts_with("blkdebug:") {
                ",request-merging=off"
            } else {
                ""
            };
            args.push("-device".into());
            args.push(format!("virtio-blk-device,drive=disk{i}{merging}"));
        }
        args
    }

    /// Writes QEMU's own device tree for this machine to `path` (QEMU's
    /// `dumpdtb`, with the same hardware arguments as the boot).
    pub fn dump_dtb(&self, path: &Path) -> Result<()> {
        let output = QemuCommand::new(self.hardware_args(Some(path))).output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "QEMU dumpdtb failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// Prepares the run directory (device tree) and returns QEMU's command
    /// line (without the console, which [`QemuCommand::run`] adds).
    pub fn prepare(&self, ws: &Workspace, image: &Path, run_dir: &Path) -> Result<QemuCommand> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir.to_path_buf(), e))?;
        if self.board.is_some() && matches!(self.mode, Mode::XenDomU { .. } | Mode::LoaderOnly) {
            return Err(Error::msg(
                "on a board tidepool boots bare or as Xen dom0 (no domU, no loader-only boot)",
            ));
        }
        let board_tree = self.board.map(|board| board.tree(ws)).transpose()?;
        let dtb = match &self.mode {
            Mode::LoaderOnly => None,
            Mode::Bare => Some(self.host_dtb(ws, run_dir, |tree| {
                devicetree::set_bootargs(tree, &self.bootargs)
            })?),
            Mode::XenDom0 { dom0_mem } => {
                let mut module = self.kernel_module(image)?;
                // On a board Xen's console is the tree's stdout-path UART,
                // if Xen has a driver for it (Xen 4.17 has none for the
                // i.MX UART: dom0 drives it, and prints Xen's ring).
                let console = match (self.board, &board_tree) {
                    (Some(board), Some(tree)) => {
                        module.bootargs = board.dom0_bootargs(tree, &module.bootargs)?;
                        "console=dtuart"
                    }
                    _ => XEN_VIRT_CONSOLE,
                };
                let xen_bootargs = format!("{console} dom0_mem={dom0_mem} {}", self.xen_args);
                Some(self.host_dtb(ws, run_dir, |tree| {
                    devicetree::add_xen_dom0(tree, xen_bootargs.trim(), &module)
                })?)
            }
            Mode::XenDomU { memory_kib } => {
                let module = self.kernel_module(image)?;
                // A domU's console_io output reaches Xen's console only at
                // guest_loglvl=all (platform.md).
                let xen_bootargs = format!("{XEN_VIRT_CONSOLE} guest_loglvl=all {}", self.xen_args);
                Some(self.host_dtb(ws, run_dir, |tree| {
                    devicetree::set_xen_bootargs(tree, xen_bootargs.trim())?;
                    devicetree::add_xen_dom0less_domu(tree, "domU1", *memory_kib, 1, true, &module)
                })?)
            }
        };
        let xen = if self.is_xen() {
            Some(crate::tools::xen_image(ws)?)
        } else {
            None
        };
        self.command(&BootFiles {
            image,
            dtb: dtb.as_deref(),
            xen: xen.as_deref(),
            board_tree: board_tree.as_ref(),
        })
    }

    /// QEMU's command line for a boot from `files`.
    fn command(&self, files: &BootFiles<'_>) -> Result<QemuCommand> {
        let needed = |file: Option<&Path>, what: &str| {
            file.map(|f| f.display().to_string())
                .ok_or_else(|| Error::msg(format!("{:?} needs {what}", self.mode)))
        };
        let mut args = match (self.board, files.board_tree) {
            (Some(board), Some(tree)) => board.hardware_args(tree, &self.memory, &self.disks)?,
            (Some(board), None) => {
                return Err(Error::msg(format!(
                    "{} needs its device tree",
                    board.name()
                )));
            }
            (None, _) => self.hardware_args(None),
        };
        let image = files.image.display().to_string();
        match &self.mode {
            Mode::LoaderOnly => {
                args.push("-device".into());
                args.push(format!(
                    "loader,file={image},addr={LOADER_ONLY_ADDR:#x},cpu-num=0,force-raw=on"
                ));
            }
            Mode::Bare => {
                // With -kernel, QEMU rewrites /chosen/bootargs from -append.
                args.extend([
                    "-kernel".into(),
                    image,
                    "-dtb".into(),
                    needed(files.dtb, "a device tree")?,
                    "-append".into(),
                    self.bootargs.clone(),
                ]);
            }
            Mode::XenDom0 { .. } | Mode::XenDomU { .. } => {
                args.extend([
                    "-kernel".into(),
                    needed(files.xen, "Xen")?,
                    "-dtb".into(),
                    needed(files.dtb, "a device tree")?,
                    "-device".into(),
                    format!("loader,file={image},addr={XEN_MODULE_ADDR:#x},force-raw=on"),
                ]);
            }
        }
        Ok(QemuCommand::new(args))
    }

    fn kernel_module(&self, image: &Path) -> Result<Module> {
        let size = std::fs::metadata(image)
            .map_err(|e| Error::io(image.to_path_buf(), e))?
            .len();
        if XEN_MODULE_ADDR + size > QEMU_DTB_ADDR {
            return Err(Error::msg(format!(
                "kernel image ({size} bytes) would overlap QEMU's DTB at {QEMU_DTB_ADDR:#x}"
            )));
        }
        Ok(Module {
            addr: XEN_MODULE_ADDR,
            size,
            bootargs: self.bootargs.clone(),
        })
    }

    /// The machine's device tree (QEMU's own for `virt`, the board's own
    /// for a board: QEMU rewrites its memory node to `-m`), plus the
    /// scenario and `edit`.
    fn host_dtb(
        &self,
        ws: &Workspace,
        run_dir: &Path,
        edit: impl FnOnce(&mut Tree) -> std::result::Result<(), devicetree::DtEditError>,
    ) -> Result<PathBuf> {
        let mut tree = match self.board {
            Some(board) => board.tree(ws)?,
            None => {
                let qemu_dtb = run_dir.join("qemu.dtb");
                self.dump_dtb(&qemu_dtb)?;
                let bytes = std::fs::read(&qemu_dtb).map_err(|e| Error::io(qemu_dtb.clone(), e))?;
                Tree::from_dtb(&bytes).map_err(|e| Error::msg(format!("QEMU's DT: {e}")))?
            }
        };
        if let Some(name) = &self.scenario {
            let path = ws.root.join("qemu/scenarios").join(format!("{name}.toml"));
            let scenario = Scenario::load(&path)
                .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
            let machine = self.board.map_or(crate::scenario::VIRT, Board::name);
            if scenario.machine() != machine {
                return Err(Error::msg(format!(
                    "scenario {name} edits the tree of {}, not of {machine}",
                    scenario.machine()
                )));
            }
            scenario
                .apply(&mut tree)
                .map_err(|e| Error::msg(format!("scenario {name}: {e}")))?;
            eprintln!("xtask: scenario {name}: {}", scenario.description());
        }
        edit(&mut tree).map_err(|e| Error::msg(format!("device tree: {e}")))?;
        let host_dtb = run_dir.join("host.dtb");
        let out = tree
            .to_dtb()
            .map_err(|e| Error::msg(format!("writing DT: {e}")))?;
        std::fs::write(&host_dtb, out).map_err(|e| Error::io(host_dtb.clone(), e))?;
        Ok(host_dtb)
    }
}

/// How a boot ended, as its console says: the guest's own `shutdown:` line
/// (directly, `(dN) ` from a domU through Xen's console, or `(XEN) DOMn: `
/// through a vpl011), or Xen's report of what happened to a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `shutdown: poweroff`, or Xen halting the machine for dom0.
    PowerOff,
    /// `shutdown: reboot`, or Xen restarting the machine for dom0 (QEMU runs
    /// with `-no-reboot`, so nothing boots again).
    Reboot,
    /// `shutdown: crash`, or Xen reporting that a domain crashed.
    Crash,
    /// Xen itself panicked.
    XenPanic,
}

impl Ending {
    /// The ending a console line announces, if any.
    pub fn of_line(line: &str) -> Option<Ending> {
        let mut text = line.trim_end();
        let xen = text.starts_with("(XEN) ");
        // Peel Xen's prefixes: `(XEN) `, a guest's `(d1) `, a vpl011's `DOM1: `.
        loop {
            let peeled = strip_tag(text, "(XEN) ", "")
                .or_else(|| strip_tag(text, "(d", ") "))
                .or_else(|| strip_tag(text, "DOM", ": "));
            match peeled {
                Some(rest) => text = rest,
                None => break,
            }
        }
        if let Some(how) = text.strip_prefix("shutdown: ") {
            return match how.split(' ').next() {
                Some("poweroff") => Some(Self::PowerOff),
                Some("reboot") => Some(Self::Reboot),
                Some("crash") => Some(Self::Crash),
                _ => None,
            };
        }
        if !xen {
            return None;
        }
        if text.starts_with("Hardware Dom0 halted") {
            Some(Self::PowerOff)
        } else if text.starts_with("Hardware Dom0 shutdown: rebooting") {
            Some(Self::Reboot)
        } else if text.starts_with("Hardware Dom0 crashed")
            || (text.starts_with("Domain ") && text.contains(" crashed "))
        {
            Some(Self::Crash)
        } else if text.starts_with("Panic on CPU") {
            Some(Self::XenPanic)
        } else {
            None
        }
    }

    /// Whether the guest ended as asked (power-off or reboot).
    pub fn is_clean(self) -> bool {
        matches!(self, Self::PowerOff | Self::Reboot)
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PowerOff => "guest powered off",
            Self::Reboot => "guest rebooted",
            Self::Crash => "guest crashed",
            Self::XenPanic => "Xen panicked",
        })
    }
}

/// `text` without a leading `open` + digits-or-`XEN` + `close` tag.
fn strip_tag<'t>(text: &'t str, open: &str, close: &str) -> Option<&'t str> {
    let rest = text.strip_prefix(open)?;
    if close.is_empty() {
        return Some(rest);
    }
    let (tag, rest) = rest.split_once(close)?;
    (!tag.is_empty() && tag.bytes().all(|b| b.is_ascii_digit())).then_some(rest)
}

/// How long QEMU may go on after the console announced the ending (Xen
/// prints its own line after the guest's; after a dom0 crash it would wait
/// 5 s before resetting, and after a dom0less domU it never stops).
pub const GRACE: Duration = Duration::from_secs(1);

/// A finished run.
pub struct Captured {
    /// Every console line, in order.
    pub lines: Vec<String>,
    /// When the host read each line, from QEMU's spawn (same order).
    pub arrivals: Vec<Duration>,
    /// QEMU's stderr (empty on the terminal, where it is not captured).
    pub stderr: String,
    /// How the console said the boot ended, and the line that said it first.
    pub ending: Option<(Ending, String)>,
    /// QEMU's exit status, if it exited by itself (not stopped by xtask).
    pub exit: Option<ExitStatus>,
    /// The run hit its deadline and was killed.
    pub timed_out: bool,
    /// Wall time from spawn to the end.
    pub elapsed: Duration,
}

impl Captured {
    /// The last `n` lines, for failure reports.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].join("\n")
    }
}

/// Where QEMU's serial console goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// Captured with a deadline: no input, output and stderr read by xtask.
    Captured(Duration),
    /// On the terminal (`cargo xtask run`): QEMU reads xtask's standard input
    /// itself (`mon:stdio`, so Ctrl-A X and the monitor work), xtask relays
    /// its output as it comes and watches it for the ending; no deadline.
    Terminal,
    /// `cargo xtask run` with commands on a pipe: xtask types them (see
    /// [`Typing`]) into QEMU's serial port (plain `stdio`: QEMU's
    /// multiplexer would take the Ctrl-A that switches Xen's console) and
    /// relays the output as on the terminal; no deadline.
    Piped,
}

/// A QEMU command line built by [`Machine`]. Every QEMU process xtask starts
/// is spawned by this type (`QemuCommand::spawn_args` is the one full
/// argument list), after [`missing_from_base_install`] found nothing.
#[derive(Clone, Debug)]
pub struct QemuCommand {
    args: Vec<String>,
    /// Only Xen's own lines end the run: the guests' consoles share the
    /// line with a Linux dom0 that outlives them (`crate::pv`).
    xen_endings_only: bool,
}

/// The QEMU binary.
const QEMU: &str = "qemu-system-aarch64";

/// How QEMU's console is wired, per [`Console`].
fn console_args(console: Console, qmp: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = match console {
        Console::Captured(_) | Console::Piped => ["-serial", "stdio", "-monitor", "none"]
            .map(String::from)
            .into(),
        Console::Terminal => ["-serial", "mon:stdio"].map(String::from).into(),
    };
    if let Some(socket) = qmp {
        args.push("-qmp".into());
        args.push(format!("unix:{},server=on,wait=off", socket.display()));
    }
    args
}

/// Why a QEMU argument list would need a file that only one of
/// `qemu-system-arm`'s Recommends brings (xtask installs it with
/// `--no-install-recommends`): `ipxe-qemu` (NIC option ROMs: the `virt`
/// machine's default NIC needs `efi-virtio.rom`), `qemu-system-gui` (the
/// default display), `qemu-efi-aarch64`/`qemu-efi-arm` (firmware), or
/// `qemu-block-extra` (network block protocols). `None` when it needs none.
pub fn missing_from_base_install(args: &[String]) -> Option<String> {
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let pair = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
    if !has("-nodefaults") && !pair("-nic", "none") {
        return Some(
            "no `-nic none` (or `-nodefaults`): the default NIC needs ipxe-qemu's efi-virtio.rom"
                .into(),
        );
    }
    if !pair("-display", "none") && !has("-nographic") {
        return Some("no `-display none`: the default display needs qemu-system-gui".into());
    }
    for flag in ["-bios", "-pflash"] {
        if has(flag) {
            return Some(format!("`{flag}`: firmware comes from qemu-efi-aarch64"));
        }
    }
    for pair in args.windows(2) {
        let (flag, value) = (pair[0].as_str(), pair[1].as_str());
        match flag {
            "-net" | "-netdev" => {
                return Some(format!("`{flag} {value}`: a NIC needs an ipxe-qemu ROM"));
            }
            "-nic" if value != "none" => {
                return Some(format!("`-nic {value}`: a NIC needs an ipxe-qemu ROM"));
            }
            "-device" => {
                let driver = value.split(',').next().unwrap_or_default();
                let nic = [
                    "virtio-net-pci",
                    "e1000",
                    "e1000e",
                    "rtl8139",
                    "ne2k_pci",
                    "pcnet",
                    "vmxnet3",
                ];
                if nic.contains(&driver) && !value.contains("romfile=") {
                    return Some(format!(
                        "`-device {value}`: its option ROM comes from ipxe-qemu"
                    ));
                }
            }
            "-drive" => {
                let extra = [
                    "curl", "http", "https", "ftp", "ftps", "iscsi", "nfs", "rbd", "ssh", "gluster",
                ];
                if value
                    .split(',')
                    .filter_map(|kv| kv.strip_prefix("file="))
                    .any(|file| extra.iter().any(|p| file.starts_with(&format!("{p}:"))))
                {
                    return Some(format!(
                        "`-drive {value}`: that protocol comes from qemu-block-extra"
                    ));
                }
            }
            _ => {}
        }
    }
    None
}

impl QemuCommand {
    fn new(args: Vec<String>) -> Self {
        Self {
            args,
            xen_endings_only: false,
        }
    }

    /// Lets only Xen's lines (`(XEN) ...`: dom0 halted, a panic) end the
    /// run, not a guest's `shutdown:` line: with a Linux dom0 running the
    /// toolstack, the machine ends when dom0 does.
    pub fn end_with_xen_only(&mut self) {
        self.xen_endings_only = true;
    }

    /// Appends arguments (for a boot mode's own devices).
    pub fn push(&mut self, arg: impl Into<String>) {
        self.args.push(arg.into());
    }

    /// The arguments built so far (without the console).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The full argument list QEMU is spawned with for `console`.
    fn spawn_args(&self, console: Option<Console>, qmp: Option<&Path>) -> Vec<String> {
        let mut args = self.args.clone();
        if let Some(console) = console {
            args.extend(console_args(console, qmp));
        }
        args
    }

    /// The one place a QEMU process is made: refused if the arguments need
    /// a file from a Recommends package.
    fn command(&self, console: Option<Console>, qmp: Option<&Path>) -> Result<Command> {
        let args = self.spawn_args(console, qmp);
        if let Some(why) = missing_from_base_install(&args) {
            return Err(Error::msg(format!("QEMU command line refused: {why}")));
        }
        let mut cmd = crate::tools::qemu();
        cmd.args(args);
        Ok(cmd)
    }

    /// Runs QEMU to completion without a console (`dumpdtb`).
    pub fn output(&self) -> Result<std::process::Output> {
        self.command(None, None)?
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::msg(format!("{QEMU}: {e}")))
    }

    /// Runs QEMU with `console` until it exits, the deadline passes, or
    /// [`GRACE`] after the console announced an [`Ending`]. `qmp` is a
    /// socket path for a graceful quit (the terminal's state is restored
    /// by QEMU itself); without it QEMU is killed.
    pub fn run(&self, console: Console, qmp: Option<&Path>) -> Result<Captured> {
        self.run_typing(console, qmp, None)
    }

    /// [`QemuCommand::run`], typing `typing` into the guest's console
    /// (QEMU's standard input) as its output arrives.
    pub fn run_typing(
        &self,
        console: Console,
        qmp: Option<&Path>,
        typing: Option<&Typing>,
    ) -> Result<Captured> {
        let relay = matches!(console, Console::Terminal | Console::Piped);
        let mut cmd = self.command(Some(console), qmp)?;
        cmd.stdout(Stdio::piped());
        match console {
            Console::Terminal => cmd.stdin(Stdio::inherit()).stderr(Stdio::inherit()),
            Console::Piped => cmd.stdin(Stdio::piped()).stderr(Stdio::inherit()),
            Console::Captured(_) => cmd.stdin(if typing.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            }),
        };
        if let Console::Captured(_) = console {
            cmd.stderr(Stdio::piped());
        }
        let start = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| Error::msg(format!("{QEMU}: {e}")))?;
        let mut child = KillOnDrop(child);
        let mut stdin = child.0.stdin.take();
        let mut typist = typing.map(Typist::new);
        let stdout = child.0.stdout.take().expect("piped");
        let stderr = child.0.stderr.take();
        let (tx, rx) = mpsc::channel::<(Duration, String)>();
        let reader = std::thread::spawn(move || relay_lines(stdout, relay, start, &tx));
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_string(&mut s);
            }
            s
        });
        let mut received = Vec::new();
        let mut deadline = match console {
            Console::Captured(timeout) => Some(start + timeout),
            Console::Terminal | Console::Piped => None,
        };
        let mut ending: Option<(Ending, String)> = None;
        let mut timed_out = false;
        let mut closed = false;
        loop {
            let next = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        timed_out = ending.is_none();
                        break;
                    }
                    rx.recv_timeout(deadline - now)
                }
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match next {
                Ok((at, line)) => {
                    if ending.is_none()
                        && let Some(how) = Ending::of_line(&line)
                            .filter(|_| !self.xen_endings_only || line.starts_with("(XEN) "))
                    {
                        ending = Some((how, line.clone()));
                        deadline = Some(Instant::now() + GRACE);
                    }
                    if let (Some(typist), Some(input)) = (typist.as_mut(), stdin.as_mut())
                        && let Some(bytes) = typist.on_line(&line)
                    {
                        // A guest that stopped reading shows in the console.
                        let _ = input.write_all(&bytes).and_then(|()| input.flush());
                    }
                    received.push((at, line));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        drop(stdin);
        let elapsed = start.elapsed();
        // QEMU closed its output: it is exiting by itself. Otherwise xtask
        // stops it, and its status says nothing about the guest.
        let exit = if closed {
            child.0.wait().ok()
        } else {
            if let Some(socket) = qmp {
                quit_by_qmp(&mut child.0, socket);
            }
            None
        };
        drop(child);
        let _ = reader.join();
        received.extend(rx.try_iter());
        let stderr = err_reader.join().unwrap_or_default();
        let (arrivals, lines) = received.into_iter().unzip();
        Ok(Captured {
            lines,
            arrivals,
            stderr,
            ending,
            exit,
            timed_out,
            elapsed,
        })
    }
}

/// Lines to type into the guest's console (QEMU's stdin).
///
/// Nothing is typed before a console line contains `after` (under Xen,
/// bytes that reach the serial port before dom0 runs go to Xen's own
/// debug-key handler), and each line only once the console shows the echo
/// of the one before (the monitor's prompt `> ` and that text), so no more
/// than one line waits in the guest's buffers at a time.
#[derive(Clone, Debug, Default)]
pub struct Typing {
    /// The console line that starts the typing.
    pub after: String,
    /// Bytes typed first, on their own: [`Typing::XEN_SWITCH_TO_DOMU`].
    pub prefix: Vec<u8>,
    /// The lines, without their newlines.
    pub lines: Vec<String>,
    /// A line (its index in `lines`) typed only once a console line has
    /// also contained this text, before or after the echo of the line
    /// before it: for a command that must wait for something outside the
    /// guest (dom0's `xl block-detach` returning, before `poweroff`).
    pub hold: Option<(usize, String)>,
}

impl Typing {
    /// Xen's console switch (Ctrl-A three times): from the hardware domain
    /// (where Xen sends serial input after boot, even in a dom0less system
    /// without one) to the next domain, the dom0less domU.
    pub const XEN_SWITCH_TO_DOMU: &[u8] = b"\x01\x01\x01";

    /// `lines`, typed after `boot: ready` in a guest started in `mode`.
    pub fn after_boot(mode: &Mode, lines: Vec<String>) -> Self {
        let prefix = match mode {
            Mode::XenDomU { .. } => Self::XEN_SWITCH_TO_DOMU.to_vec(),
            _ => Vec::new(),
        };
        Self {
            after: "boot: ready".into(),
            prefix,
            lines,
            hold: None,
        }
    }
}

/// Decides, console line by console line, what to type next (see
/// [`Typing`]).
pub struct Typist<'t> {
    typing: &'t Typing,
    /// The next line to type; `None` until `typing.after` appears.
    next: Option<usize>,
    /// The held line's text appeared (see [`Typing::hold`]).
    released: bool,
    /// The next line's predecessor echoed, and the next line is held.
    echoed: bool,
}

impl<'t> Typist<'t> {
    /// Nothing typed yet.
    pub fn new(typing: &'t Typing) -> Self {
        Self {
            typing,
            next: None,
            released: false,
            echoed: false,
        }
    }

    /// The bytes to type now that the console printed `line`, if any.
    pub fn on_line(&mut self, line: &str) -> Option<Vec<u8>> {
        let lines = &self.typing.lines;
        if let Some((_, text)) = &self.typing.hold
            && line.contains(text.as_str())
        {
            self.released = true;
        }
        let send = match self.next {
            None if line.contains(self.typing.after.as_str()) => 0,
            Some(i) if self.echoed => i,
            Some(i) if i > 0 && i < lines.len() => {
                let previous = lines[i - 1].as_str();
                // A line with editing keys (arrows, backspace, Ctrl-U) echoes
                // as something else: any prompt line is its echo.
                let edited = previous.bytes().any(|b| b.is_ascii_control());
                // The held line is typed on text from outside the guest
                // (dom0's), which may take the prompt's line: its echo
                // then comes without a prompt.
                let unprompted =
                    line == previous && matches!(&self.typing.hold, Some((at, _)) if *at + 1 == i);
                match after_prompt(line) {
                    Some(echo) if edited || echo == previous => i,
                    _ if unprompted => i,
                    _ => return None,
                }
            }
            _ => return None,
        };
        let held = matches!(&self.typing.hold, Some((at, _)) if *at == send);
        if held && !self.released {
            self.echoed = true;
            return None;
        }
        self.echoed = false;
        self.next = Some(send + 1);
        let mut bytes = if send == 0 {
            self.typing.prefix.clone()
        } else {
            Vec::new()
        };
        bytes.extend_from_slice(lines.get(send)?.as_bytes());
        bytes.push(b'\n');
        Some(bytes)
    }
}

/// What follows the monitor's prompt (`> `) on a console line, Xen's
/// `(dN) ` prefix for a domU's output allowed.
fn after_prompt(line: &str) -> Option<&str> {
    let line = match line
        .strip_prefix("(d")
        .and_then(|rest| rest.split_once(") "))
    {
        Some((domain, rest)) if domain.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => line,
    };
    line.strip_prefix("> ")
}

/// Reads QEMU's output, sends each line with its arrival time, and on the
/// terminal also writes every byte through as it arrives (prompts and
/// echoed input have no newline yet).
fn relay_lines(
    mut stdout: impl Read,
    echo: bool,
    start: Instant,
    tx: &mpsc::Sender<(Duration, String)>,
) {
    let mut out = std::io::stdout();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stdout.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = start.elapsed();
        if echo {
            let _ = out.write_all(&chunk[..n]);
            let _ = out.flush();
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end])
                .trim_end_matches('\r')
                .to_string();
            if tx.send((at, text)).is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let text = String::from_utf8_lossy(&pending)
            .trim_end_matches('\r')
            .to_string();
        let _ = tx.send((start.elapsed(), text));
    }
}

/// Asks QEMU to quit through its QMP socket and waits for it a moment, so
/// that it restores the terminal it put in raw mode; the caller kills it if
/// it is still there.
fn quit_by_qmp(child: &mut Child, socket: &Path) {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut greeting = [0u8; 1024];
    let _ = stream.read(&mut greeting);
    let _ = stream.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills QEMU when dropped, so no run outlives its test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index of each [`Mode`]: a new mode fails to compile here until it is
    /// numbered, and then [`every_mode`] must give an example of it.
    fn mode_index(mode: &Mode) -> usize {
        match mode {
            Mode::XenDom0 { .. } => 0,
            Mode::XenDomU { .. } => 1,
            Mode::Bare => 2,
            Mode::LoaderOnly => 3,
        }
    }
    const MODES: usize = 4;

    /// An example of every mode, each with every option that adds arguments.
    fn every_mode() -> Vec<Machine> {
        let modes = [
            Mode::XenDom0 {
                dom0_mem: "256M".into(),
            },
            Mode::XenDomU { memory_kib: 8192 },
            Mode::Bare,
            Mode::LoaderOnly,
        ];
        let mut covered: Vec<usize> = modes.iter().map(mode_index).collect();
        covered.sort_unstable();
        covered.dedup();
        assert_eq!(
            covered,
            (0..MODES).collect::<Vec<_>>(),
            "an example of every mode"
        );
        modes
            .into_iter()
            .flat_map(|mode| {
                let plain = Machine::new(mode);
                let mut full = plain.clone();
                full.gic = 2;
                full.virtualization = true;
                full.cpus = 2;
                full.bootargs = "log=debug".into();
                full.modern_virtio = true;
                full.disks = vec![
                    Disk {
                        file: "disk.img".into(),
                        read_only: false,
                    },
                    Disk {
                        file: "blkdebug:cfg:disk.img".into(),
                        read_only: true,
                    },
                ];
                [plain, full]
            })
            .collect()
    }

    fn files() -> BootFiles<'static> {
        BootFiles {
            image: Path::new("tidepool.img"),
            dtb: Some(Path::new("host.dtb")),
            xen: Some(Path::new("xen")),
            board_tree: None,
        }
    }

    /// Every full argument list xtask spawns QEMU with: each mode on each
    /// console, and each machine's `dumpdtb` run.
    #[test]
    fn no_command_line_needs_a_recommends_package() {
        let qmp = Path::new("/tmp/qmp.sock");
        let mut checked = 0;
        for machine in every_mode() {
            let boot = machine.command(&files()).unwrap();
            let dump = QemuCommand::new(machine.hardware_args(Some(Path::new("qemu.dtb"))));
            let runs = [
                boot.spawn_args(Some(Console::Captured(Duration::from_secs(1))), None),
                boot.spawn_args(Some(Console::Terminal), Some(qmp)),
                boot.spawn_args(Some(Console::Piped), Some(qmp)),
                dump.spawn_args(None, None),
            ];
            for args in runs {
                assert_eq!(missing_from_base_install(&args), None, "{args:?}");
                assert!(args.windows(2).any(|w| w == ["-nic", "none"]), "{args:?}");
                assert!(boot.command(None, None).is_ok());
                checked += 1;
            }
        }
        assert_eq!(checked, 4 * 2 * MODES);
    }

    #[test]
    fn the_check_refuses_what_needs_a_recommends_package() {
        let base: Vec<String> = Machine::new(Mode::Bare).hardware_args(None);
        assert_eq!(missing_from_base_install(&base), None);
        let without = |flag: &str, value: &str| -> Vec<String> {
            let at = base
                .windows(2)
                .position(|w| w[0] == flag && w[1] == value)
                .unwrap();
            [&base[..at], &base[at + 2..]].concat()
        };
        let with = |extra: &[&str]| -> Vec<String> {
            base.iter()
                .cloned()
                .chain(extra.iter().map(|s| s.to_string()))
                .collect()
        };
        let refused = [
            without("-nic", "none"),
            without("-display", "none"),
            with(&["-nic", "user"]),
            with(&["-netdev", "user,id=n0"]),
            with(&["-device", "virtio-net-pci,netdev=n0"]),
            with(&["-bios", "QEMU_EFI.fd"]),
            with(&["-drive", "if=none,id=d,file=https://example.invalid/disk"]),
        ];
        for args in refused {
            assert!(missing_from_base_install(&args).is_some(), "{args:?}");
            let refused = QemuCommand::new(args).command(None, None).unwrap_err();
            assert!(
                refused
                    .to_string()
                    .starts_with("QEMU command line refused: ")
            );
        }
        let mut nodefaults = without("-nic", "none");
        nodefaults.push("-nodefaults".into());
        assert_eq!(missing_from_base_install(&nodefaults), None);
        assert_eq!(
            missing_from_base_install(&with(&["-device", "virtio-net-pci,romfile="])),
            None
        );
    }

    /// No file of xtask starts QEMU but through [`QemuCommand::command`].
    #[test]
    fn qemu_is_spawned_in_one_place() {
        fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 10);
        // The binary is xtask's own QEMU (build/qemu): tools::Qemu makes the
        // one `Command` for it (with its module and data folders), which
        // only QemuCommand asks for (tools' own `--version` aside).
        let spawn = ["tools::", "qemu()"].concat();
        let by_name = ["Command::new(\"", "qemu-system"].concat();
        let binary = ["Command::new(&self", ".binary)"].concat();
        let mut spawns = Vec::new();
        let mut builders = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            spawns.extend(std::iter::repeat_n(
                name.clone(),
                text.matches(&spawn).count(),
            ));
            spawns.extend(std::iter::repeat_n(
                name.clone(),
                text.matches(&by_name).count(),
            ));
            builders.extend(std::iter::repeat_n(name, text.matches(&binary).count()));
        }
        assert_eq!(spawns, ["qemu.rs"]);
        assert_eq!(builders, ["tools.rs"]);
    }

    #[test]
    fn endings_from_the_guest_and_from_xen() {
        let cases = [
            ("shutdown: poweroff uptime_us=30894", Some(Ending::PowerOff)),
            (
                "(d1) shutdown: poweroff uptime_us=117181",
                Some(Ending::PowerOff),
            ),
            (
                "(XEN) DOM1: shutdown: crash uptime_us=5",
                Some(Ending::Crash),
            ),
            ("shutdown: reboot uptime_us=1", Some(Ending::Reboot)),
            ("shutdown: crash", Some(Ending::Crash)),
            (
                "(XEN) Hardware Dom0 halted: halting machine",
                Some(Ending::PowerOff),
            ),
            (
                "(XEN) Hardware Dom0 shutdown: rebooting machine",
                Some(Ending::Reboot),
            ),
            (
                "(XEN) Hardware Dom0 crashed: rebooting machine in 5 seconds.",
                Some(Ending::Crash),
            ),
            (
                "(XEN) Domain 1 (vcpu#0) crashed on cpu#0:",
                Some(Ending::Crash),
            ),
            (
                "(XEN) Domain 1 reported crashed by domain 0 on cpu#0:",
                Some(Ending::Crash),
            ),
            ("(XEN) Panic on CPU 0:", Some(Ending::XenPanic)),
            // Not endings: other words, other places, a Linux guest's lines.
            ("shutdown: poweroffx", None),
            ("selftest: shutdown: crash", None),
            ("Hardware Dom0 halted: halting machine", None),
            ("(dx) shutdown: poweroff", None),
            ("reboot: Power down", None),
            ("(XEN) Domain 1 created", None),
        ];
        for (line, ending) in cases {
            assert_eq!(Ending::of_line(line), ending, "{line:?}");
        }
        assert!(Ending::PowerOff.is_clean() && Ending::Reboot.is_clean());
        assert!(!Ending::Crash.is_clean() && !Ending::XenPanic.is_clean());
        assert_eq!(Ending::Crash.to_string(), "guest crashed");
    }

    fn typing(mode: &Mode, lines: &[&str]) -> Typing {
        Typing::after_boot(mode, lines.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn typing_starts_at_boot_ready_and_waits_for_each_echo() {
        let typing = typing(&Mode::Bare, &["pools", "poweroff"]);
        let mut typist = Typist::new(&typing);
        assert_eq!(typist.on_line("boot: tidepool 0.1.0"), None);
        assert_eq!(
            typist.on_line("boot: ready uptime_us=1").as_deref(),
            Some(&b"pools\n"[..])
        );
        // Output before the echo, or another line's echo, types nothing.
        assert_eq!(typist.on_line("boot: ready uptime_us=1"), None);
        assert_eq!(typist.on_line("dma: pool x"), None);
        assert_eq!(typist.on_line("dma: pool x -> pools"), None);
        assert_eq!(typist.on_line("> poweroff"), None);
        assert_eq!(
            typist.on_line("> pools").as_deref(),
            Some(&b"poweroff\n"[..])
        );
        assert_eq!(typist.on_line("> poweroff"), None, "nothing left to type");
    }

    #[test]
    fn a_held_line_waits_for_its_text_as_well_as_the_echo() {
        let mut typing = typing(&Mode::Bare, &["blk", "poweroff", "irq"]);
        typing.hold = Some((1, "pv-dom0: detached".into()));
        let mut typist = Typist::new(&typing);
        typist.on_line("boot: ready").unwrap();
        assert_eq!(typist.on_line("> blk"), None, "held");
        assert_eq!(typist.on_line("blk: devices=1"), None);
        assert_eq!(
            typist.on_line("pv-dom0: detached disk=xvdb").as_deref(),
            Some(&b"poweroff\n"[..])
        );
        assert_eq!(typist.on_line("> poweroff").as_deref(), Some(&b"irq\n"[..]));
        // The text on the prompt's line: the held line echoes without one.
        let mut typist = Typist::new(&typing);
        typist.on_line("boot: ready").unwrap();
        assert_eq!(typist.on_line("> blk"), None);
        assert!(typist.on_line("> pv-dom0: detached disk=xvdb").is_some());
        assert_eq!(typist.on_line("poweroff").as_deref(), Some(&b"irq\n"[..]));
        // The text before the echo: typed at the echo.
        let mut typist = Typist::new(&typing);
        typist.on_line("boot: ready").unwrap();
        assert_eq!(typist.on_line("pv-dom0: detached disk=xvdb"), None);
        assert_eq!(typist.on_line("> blk").as_deref(), Some(&b"poweroff\n"[..]));
    }

    #[test]
    fn a_domu_gets_xen_s_console_switch_first() {
        let domu = Mode::XenDomU { memory_kib: 8192 };
        let typing_domu = typing(&domu, &["irq", "xen"]);
        let mut typist = Typist::new(&typing_domu);
        assert_eq!(
            typist.on_line("(d1) boot: ready uptime_us=5").as_deref(),
            Some(&b"\x01\x01\x01irq\n"[..])
        );
        assert_eq!(typist.on_line("(d1) > irq").as_deref(), Some(&b"xen\n"[..]));
        let dom0 = Mode::XenDom0 {
            dom0_mem: "256M".into(),
        };
        assert!(typing(&dom0, &["pools"]).prefix.is_empty());
    }

    #[test]
    fn an_edited_line_is_echoed_by_any_prompt_line() {
        let typing = typing(&Mode::Bare, &["irq", "\x1b[A", "blk\x15pools", "poweroff"]);
        let mut typist = Typist::new(&typing);
        typist.on_line("boot: ready").unwrap();
        assert_eq!(typist.on_line("> irq").as_deref(), Some(&b"\x1b[A\n"[..]));
        assert_eq!(typist.on_line("irq: intid=27 count=0 device=/timer"), None);
        assert_eq!(
            typist.on_line("> irq").as_deref(),
            Some(&b"blk\x15pools\n"[..])
        );
        assert_eq!(
            typist
                .on_line("> blk\x08 \x08\x08 \x08\x08 \x08pools")
                .as_deref(),
            Some(&b"poweroff\n"[..])
        );
    }
}
