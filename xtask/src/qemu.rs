//! QEMU command lines for every way tidepool boots, and running them: on the
//! terminal (`cargo xtask run`) or captured with a deadline (tests, benchmarks).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::board::Board;
use crate::devicetree::{self, Module, Tree};
use crate::scenario::Scenario;
use crate::{Error, Result, Workspace};

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
            board: None,
        }
    }

    fn is_xen(&self) -> bool {
        matches!(self.mode, Mode::XenDom0 { .. } | Mode::XenDomU { .. })
    }

    /// The `-machine`/`-cpu`/`-m`/`-smp`/device arguments shared by the real
    /// boot and the `dumpdtb` run, so the dumped tree matches the machine.
    pub(crate) fn hardware_args(&self, dumpdtb: Option<&Path>) -> Vec<String> {
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

    /// Prepares the run directory (device tree) and returns QEMU's full argument list.
    pub fn prepare(&self, ws: &Workspace, image: &Path, run_dir: &Path) -> Result<Vec<String>> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir.to_path_buf(), e))?;
        if self.board.is_some() && matches!(self.mode, Mode::XenDomU { .. } | Mode::LoaderOnly) {
            return Err(Error::msg(
                "on a board tidepool boots bare or as Xen dom0 (no domU, no loader-only boot)",
            ));
        }
        let mut args = match self.board {
            Some(board) => board.hardware_args(&board.tree(ws)?, &self.memory, &self.disks)?,
            None => self.hardware_args(None),
        };
        match &self.mode {
            Mode::LoaderOnly => {
                args.push("-device".into());
                args.push(format!(
                    "loader,file={},addr={LOADER_ONLY_ADDR:#x},cpu-num=0,force-raw=on",
                    image.display()
                ));
                return Ok(args);
            }
            Mode::Bare => {
                let dtb = self.host_dtb(ws, run_dir, |tree| {
                    devicetree::set_bootargs(tree, &self.bootargs)
                })?;
                args.extend([
                    "-kernel".into(),
                    image.display().to_string(),
                    "-dtb".into(),
                    dtb.display().to_string(),
                ]);
                // With -kernel, QEMU rewrites /chosen/bootargs from -append.
                args.extend(["-append".into(), self.bootargs.clone()]);
            }
            Mode::XenDom0 { dom0_mem } => {
                let mut module = self.kernel_module(image)?;
                if let Some(board) = self.board {
                    module.bootargs = board.dom0_bootargs(&board.tree(ws)?, &module.bootargs)?;
                }
                // On a board Xen's console is the tree's stdout-path UART,
                // if Xen has a driver for it (Xen 4.17 has none for the
                // i.MX UART: dom0 drives it, and prints Xen's ring).
                let console = match self.board {
                    Some(_) => "console=dtuart",
                    None => "console=dtuart dtuart=/pl011@9000000",
                };
                let xen_bootargs = format!("{console} dom0_mem={dom0_mem} {}", self.xen_args);
                let dtb = self.host_dtb(ws, run_dir, |tree| {
                    devicetree::add_xen_dom0(tree, xen_bootargs.trim(), &module)
                })?;
                self.push_xen(ws, &mut args, &dtb, image)?;
            }
            Mode::XenDomU { memory_kib } => {
                let module = self.kernel_module(image)?;
                // A domU's console_io output reaches Xen's console only at
                // guest_loglvl=all (platform.md).
                let xen_bootargs = format!(
                    "console=dtuart dtuart=/pl011@9000000 guest_loglvl=all {}",
                    self.xen_args
                );
                let dtb = self.host_dtb(ws, run_dir, |tree| {
                    devicetree::set_xen_bootargs(tree, xen_bootargs.trim())?;
                    devicetree::add_xen_dom0less_domu(tree, "domU1", *memory_kib, 1, true, &module)
                })?;
                self.push_xen(ws, &mut args, &dtb, image)?;
            }
        }
        Ok(args)
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

    fn push_xen(
        &self,
        ws: &Workspace,
        args: &mut Vec<String>,
        dtb: &Path,
        image: &Path,
    ) -> Result<()> {
        let xen = crate::tools::xen_image(ws)?;
        args.extend([
            "-kernel".into(),
            xen.display().to_string(),
            "-dtb".into(),
            dtb.display().to_string(),
        ]);
        args.push("-device".into());
        args.push(format!(
            "loader,file={},addr={XEN_MODULE_ADDR:#x},force-raw=on",
            image.display()
        ));
        Ok(())
    }

    /// QEMU's own device tree for this `virt` machine (`dumpdtb`).
    fn dump_qemu_dtb(&self, run_dir: &Path) -> Result<Tree> {
        let qemu_dtb = run_dir.join("qemu.dtb");
        let status = crate::tools::qemu()?
            .args(self.hardware_args(Some(&qemu_dtb)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| Error::msg(format!("qemu-system-aarch64 (dumpdtb): {e}")))?;
        if !status.status.success() {
            return Err(Error::msg(format!(
                "QEMU dumpdtb failed: {}",
                String::from_utf8_lossy(&status.stderr)
            )));
        }
        let bytes = std::fs::read(&qemu_dtb).map_err(|e| Error::io(qemu_dtb.clone(), e))?;
        Tree::from_dtb(&bytes).map_err(|e| Error::msg(format!("QEMU's DT: {e}")))
    }

    /// The machine's device tree (QEMU's own for `virt`, the board's),
    /// plus the scenario and `edit`.
    fn host_dtb(
        &self,
        ws: &Workspace,
        run_dir: &Path,
        edit: impl FnOnce(&mut Tree) -> std::result::Result<(), devicetree::DtEditError>,
    ) -> Result<PathBuf> {
        let mut tree = match self.board {
            // The board's own tree (QEMU rewrites its memory node to -m).
            Some(board) => board.tree(ws)?,
            None => self.dump_qemu_dtb(run_dir)?,
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

/// A finished captured run.
pub struct Captured {
    /// Every console line, in order.
    pub lines: Vec<String>,
    /// When the host read each line, from QEMU's spawn (same order).
    pub arrivals: Vec<Duration>,
    /// QEMU's stderr.
    pub stderr: String,
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

/// Kills QEMU when dropped, so no run outlives its test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs QEMU with `args`, capturing the console, until it exits, `timeout`
/// passes, or (if given) a line containing `stop_after` was printed and a
/// short grace period passed (used for crash shutdowns, where Xen waits 5 s).
pub fn run_captured(
    args: &[String],
    timeout: Duration,
    stop_after: Option<&str>,
) -> Result<Captured> {
    let start = Instant::now();
    let child = crate::tools::qemu()?
        .args(args)
        .args(["-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::msg(format!("qemu-system-aarch64: {e}")))?;
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("piped");
    let mut stderr = child.0.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<(Duration, String)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let at = start.elapsed();
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send((at, text)).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut received = Vec::new();
    let mut deadline = start + timeout;
    let mut timed_out = false;
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = !stopping;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok((at, line)) => {
                if !stopping && stop_after.is_some_and(|p| line.contains(p)) {
                    stopping = true;
                    deadline = Instant::now() + Duration::from_millis(700);
                }
                received.push((at, line));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = start.elapsed();
    drop(child);
    let _ = reader.join();
    received.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    let (arrivals, lines) = received.into_iter().unzip();
    Ok(Captured {
        lines,
        arrivals,
        stderr,
        timed_out,
        elapsed,
    })
}

/// Runs QEMU on the terminal (console on stdin/stdout; Ctrl-A X quits).
pub fn run_interactive(args: &[String]) -> Result<()> {
    eprintln!("xtask: qemu-system-aarch64 {}", args.join(" "));
    let status = crate::tools::qemu()?
        .args(args)
        .args(["-serial", "mon:stdio"])
        .status()
        .map_err(|e| Error::msg(format!("qemu-system-aarch64: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::msg(format!("QEMU exited with {status}")))
    }
}
