//! `cargo xtask`: the one entry point for building, running and testing
//! tidepool. CI runs exactly `cargo xtask test`.

mod bench;
mod board;
mod board_image;
mod boot_tests;
mod command_tests;
mod debian;
mod devicetree;
mod disk;
mod image;
mod pv;
mod qemu;
mod scenario;
mod tools;

use std::fmt;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::qemu::{Console, Disk, Machine, Mode};

/// xtask's error: what failed, in words.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(text: impl Into<String>) -> Self {
        Self(text.into())
    }
    /// An I/O error on `path`.
    pub fn io(path: PathBuf, err: std::io::Error) -> Self {
        Self(format!("{}: {err}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// xtask's result.
pub type Result<T> = std::result::Result<T, Error>;

/// Runs `cmd`, failing with its command line if it does not succeed.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| Error::msg(format!("{cmd:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::msg(format!("{cmd:?} failed: {status}")))
    }
}

/// The repository and its build directory.
pub struct Workspace {
    /// Repository root.
    pub root: PathBuf,
    /// `build/`: images, downloads, run directories.
    pub build: PathBuf,
}

impl Workspace {
    /// The workspace this xtask was built in.
    pub fn locate() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf();
        let build = root.join("build");
        Self { root, build }
    }

    /// Where `cargo xtask build` leaves the kernel Image.
    pub fn image_path(&self) -> PathBuf {
        self.build.join("tidepool.img")
    }
}

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test tidepool")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel Image (build/tidepool.img).
    Build,
    /// Boot tidepool under Xen on QEMU (default: as dom0), console on the terminal.
    Run(RunArgs),
    /// Run every test: host unit tests, the board device-tree test, the QEMU boot tests and a
    /// smoke run of the benchmark harness.
    Test(TestArgs),
    /// Measure tidepool against Linux as Xen dom0 and print the ratios to the targets.
    Bench(bench::BenchArgs),
    /// Write the boot files for a physical board's SD card (Xen, tidepool,
    /// the board DTB, a U-Boot script).
    Image(board_image::ImageArgs),
    /// Print the memory plan of a device tree blob.
    Dt {
        /// The .dtb file.
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Boot as a dom0less domU (with vpl011) instead of dom0.
    #[arg(long, conflicts_with = "no_xen")]
    domu: bool,
    /// Boot as an `xl` guest of a Linux dom0 (Xen toolstack, Linux's
    /// blkback serving --disk as xvda); the console is `xl console`. With
    /// --domu: a dom0less domU next to that dom0 (`xen,enhanced`; dom0 runs
    /// init-dom0less, then `xl block-attach`es the disk).
    #[arg(long, conflicts_with = "no_xen")]
    pv: bool,
    /// Boot on bare QEMU, without Xen.
    #[arg(long)]
    no_xen: bool,
    /// Bare QEMU only: enter at EL2 (virtualization=on); tidepool drops to EL1.
    #[arg(long, requires = "no_xen")]
    el2: bool,
    /// GIC version (2 or 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    gic: u8,
    /// QEMU memory (-m; default 1G, a board's own default with --board).
    #[arg(long)]
    memory: Option<String>,
    /// Xen's dom0_mem.
    #[arg(long, default_value = "256M")]
    dom0_mem: String,
    /// domU memory in MiB (with --domu).
    #[arg(long, default_value_t = 8)]
    domu_mem: u64,
    /// Extra tidepool bootargs (e.g. "log=debug selftest=undef").
    #[arg(long, default_value = "")]
    bootargs: String,
    /// Extra Xen command-line words.
    #[arg(long, default_value = "")]
    xen_args: String,
    /// Device-tree scenario from qemu/scenarios/ (e.g. static-pool).
    #[arg(long)]
    scenario: Option<String>,
    /// A raw disk image for a virtio-blk device (repeatable; with --pv,
    /// the guest's xvda, xvdb, ... in order).
    #[arg(long)]
    disk: Vec<String>,
    /// Use the modern (v2) virtio-mmio transport.
    #[arg(long)]
    modern_virtio: bool,
    /// Guest time from instructions (-icount shift=0,sleep=off): deterministic timings.
    #[arg(long)]
    icount: bool,
    /// Boot on this board's QEMU model with its own device tree instead of
    /// `virt` (imx8mp-evk); `--disk` is then its SD card.
    #[arg(long, conflicts_with_all = ["domu", "el2", "modern_virtio"])]
    board: Option<String>,
}

#[derive(Args)]
struct TestArgs {
    /// Run only boot tests whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Skip the host unit tests.
    #[arg(long)]
    boot_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ws = Workspace::locate();
    let result = match cli.command {
        Cmd::Build => build_kernel(&ws).map(|_| ()),
        Cmd::Run(args) => run(&ws, args).and_then(|run| run_verdict(&run)),
        Cmd::Test(args) => test(&ws, args),
        Cmd::Bench(args) => bench::run(&ws, args),
        Cmd::Image(args) => board_image::run(&ws, args),
        Cmd::Dt { file, json } => dt(&file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the kernel and writes build/tidepool.img.
pub fn build_kernel(ws: &Workspace) -> Result<PathBuf> {
    tools::ensure_toolchain(ws)?;
    run_checked(Command::new(env!("CARGO")).current_dir(&ws.root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "tidepool-boot",
        "--target",
        tools::KERNEL_TARGET,
    ]))?;
    let elf_path = ws
        .root
        .join("target")
        .join(tools::KERNEL_TARGET)
        .join("release/tidepool");
    let elf = std::fs::read(&elf_path).map_err(|e| Error::io(elf_path.clone(), e))?;
    let image = image::elf_to_image(&elf)?;
    if image.bytes.len() > image::IMAGE_SIZE_LIMIT {
        return Err(Error::msg(format!(
            "the Image is {} bytes, over the {} byte limit",
            image.bytes.len(),
            image::IMAGE_SIZE_LIMIT
        )));
    }
    std::fs::create_dir_all(&ws.build).map_err(|e| Error::io(ws.build.clone(), e))?;
    // Written aside and renamed into place: a QEMU started by another run
    // never reads a half-written Image.
    let out = ws.image_path();
    let fresh = out.with_extension(format!("img.{}", std::process::id()));
    std::fs::write(&fresh, &image.bytes).map_err(|e| Error::io(fresh.clone(), e))?;
    std::fs::rename(&fresh, &out).map_err(|e| Error::io(out.clone(), e))?;
    eprintln!(
        "xtask: {}: {} bytes (limit {}), {:#x} bytes in memory, {} relocations",
        out.display(),
        image.bytes.len(),
        image::IMAGE_SIZE_LIMIT,
        image.memory_size,
        image.relocations
    );
    Ok(out)
}

/// Boots as `args` says, the console on the terminal, until QEMU is gone
/// (see [`qemu::QemuCommand::run`]).
fn run(ws: &Workspace, args: RunArgs) -> Result<qemu::Captured> {
    tools::ensure_host_tools(ws)?;
    let image = build_kernel(ws)?;
    if args.pv {
        let guest = pv::PvGuest {
            bootargs: args.bootargs,
            disks: args
                .disk
                .iter()
                .map(|file| qemu::Disk {
                    file: file.clone(),
                    read_only: false,
                })
                .collect(),
            detach: None,
            dom0less: args.domu,
            blkback_params: String::new(),
            max_grant_frames: None,
        };
        let run_dir = ws.build.join("run-pv").join(std::process::id().to_string());
        let qemu = pv::qemu_args(ws, &image, &guest, &run_dir)?;
        eprintln!("xtask: qemu-system-aarch64 {}", qemu.args().join(" "));
        let qmp = std::env::temp_dir().join(format!("tidepool-qmp-{}.sock", std::process::id()));
        let run = qemu.run(Console::Terminal, Some(&qmp));
        let _ = std::fs::remove_file(&qmp);
        let _ = std::fs::remove_dir_all(&run_dir);
        return run;
    }
    let mode = if args.no_xen {
        Mode::Bare
    } else if args.domu {
        Mode::XenDomU {
            memory_kib: args.domu_mem * 1024,
        }
    } else {
        Mode::XenDom0 {
            dom0_mem: args.dom0_mem,
        }
    };
    let mut machine = Machine::new(mode);
    machine.gic = args.gic;
    machine.virtualization |= args.el2;
    machine.board = args
        .board
        .as_deref()
        .map(board::Board::from_name)
        .transpose()?;
    machine.memory = match (args.memory, machine.board) {
        (None, Some(board)) => board.default_memory().to_string(),
        (memory, _) => memory.unwrap_or_else(|| "1G".into()),
    };
    // On a terminal the user can type, so the kernel stays up as a monitor;
    // on a pipe the monitor runs when asked, and xtask types the lines.
    let interactive = std::io::stdin().is_terminal();
    let monitor = monitor_requested(&args.bootargs);
    machine.bootargs = if interactive && !monitor {
        format!("{} monitor", args.bootargs).trim().to_string()
    } else {
        args.bootargs
    };
    machine.xen_args = args.xen_args;
    machine.scenario = args.scenario;
    machine.modern_virtio = args.modern_virtio;
    machine.icount = args.icount;
    machine.disks = args
        .disk
        .into_iter()
        .map(|file| Disk {
            file,
            read_only: false,
        })
        .collect();
    // One directory per run, so that runs side by side (the tests of this
    // command run several) do not share a device tree.
    let run_dir = ws.build.join("run").join(std::process::id().to_string());
    let qemu = machine.prepare(ws, &image, &run_dir)?;
    eprintln!("xtask: qemu-system-aarch64 {}", qemu.args().join(" "));
    // Short and outside the tree: a Unix socket path has at most 107 bytes.
    let qmp = std::env::temp_dir().join(format!("tidepool-qmp-{}.sock", std::process::id()));
    let run = if monitor && !interactive {
        piped_typing(&machine.mode)
            .and_then(|typing| qemu.run_typing(Console::Piped, Some(&qmp), Some(&typing)))
    } else {
        qemu.run(Console::Terminal, Some(&qmp))
    };
    let _ = std::fs::remove_file(&qmp);
    let _ = std::fs::remove_dir_all(&run_dir);
    run
}

/// Whether the bootargs ask for the monitor.
fn monitor_requested(bootargs: &str) -> bool {
    bootargs.split_whitespace().any(|w| w == "monitor")
}

/// The monitor's commands from a pipe (`printf 'pools\npoweroff\n' |
/// cargo xtask run --bootargs monitor`), to be typed once it is ready (see
/// [`qemu::Typing`]).
fn piped_typing(mode: &Mode) -> Result<qemu::Typing> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| Error::msg(format!("standard input: {e}")))?;
    Ok(qemu::Typing::after_boot(
        mode,
        input.lines().map(str::to_string).collect(),
    ))
}

/// What `cargo xtask run` says when QEMU is gone, and whether it succeeded:
/// a power-off or reboot is success; a crash, a Xen panic or QEMU ending
/// before the guest shut down (Ctrl-A X, or a QEMU error) is not.
fn run_verdict(run: &qemu::Captured) -> Result<()> {
    match (&run.ending, run.exit) {
        (Some((ending, _)), _) if ending.is_clean() => {
            eprintln!("xtask: {ending}");
            Ok(())
        }
        (Some((ending, line)), _) => {
            eprintln!("xtask: {ending}");
            Err(Error::msg(format!("{ending}: {}", line.trim())))
        }
        (None, Some(status)) if status.success() => Err(Error::msg(
            "QEMU quit before the guest shut down (Ctrl-A X, or a reset without a shutdown line)",
        )),
        (None, Some(status)) => Err(Error::msg(format!(
            "QEMU failed ({status}) before the guest shut down"
        ))),
        (None, None) => Err(Error::msg("QEMU was stopped before the guest shut down")),
    }
}

/// `cargo fmt --check` and `cargo clippy -D warnings`, on the host crates
/// (every target, tests included) and on the crates the kernel is built
/// from for its own target, so `undocumented_unsafe_blocks` and the other
/// workspace lints hold for the kernel too; then `cargo doc` with
/// warnings denied.
fn lint(ws: &Workspace) -> Result<()> {
    tools::ensure_toolchain(ws)?;
    // `env`: variables set for this cargo run only (and shown before it).
    let cargo = |env: &[(&str, &str)], args: &[&str]| {
        let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}=\"{v}\" ")).collect();
        eprintln!("xtask: {}cargo {}", shown.concat(), args.join(" "));
        run_checked(
            Command::new(env!("CARGO"))
                .current_dir(&ws.root)
                .envs(env.iter().copied())
                .args(args),
        )
    };
    cargo(&[], &["fmt", "--all", "--check"])?;
    cargo(
        &[],
        &[
            "clippy",
            "--quiet",
            "--workspace",
            "--exclude",
            "tidepool-boot",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let kernel_crates = || KERNEL_CRATES.iter().flat_map(|package| ["-p", package]);
    let mut kernel = vec!["clippy", "--quiet", "--target", tools::KERNEL_TARGET];
    kernel.extend(kernel_crates());
    kernel.extend(["--", "-D", "warnings"]);
    cargo(&[], &kernel)?;
    // Doc comments are the contracts (`# Safety`) and link each other: a
    // broken or ambiguous link is an error, like a clippy warning. Private
    // items too, and the kernel for its own target, where the modules that
    // touch hardware are compiled in.
    let deny = [("RUSTDOCFLAGS", "-D warnings")];
    let private = ["doc", "--quiet", "--no-deps", "--document-private-items"];
    let mut host = private.to_vec();
    host.extend(["--workspace", "--exclude", "tidepool-boot"]);
    cargo(&deny, &host)?;
    let mut kernel = private.to_vec();
    kernel.extend(["--target", tools::KERNEL_TARGET]);
    kernel.extend(kernel_crates());
    cargo(&deny, &kernel)
}

/// Every crate that goes into the kernel Image (linted for its target).
const KERNEL_CRATES: [&str; 15] = [
    "tidepool-boot",
    "tidepool-kernel",
    "tidepool-monitor",
    "tidepool-gic",
    "tidepool-pl011",
    "tidepool-imx-uart",
    "tidepool-serial",
    "tidepool-poll",
    "tidepool-virtio-blk",
    "tidepool-block",
    "tidepool-usdhc",
    "tidepool-dma",
    "tidepool-dt",
    "tidepool-mm",
    "tidepool-xen-abi",
];

fn test(ws: &Workspace, args: TestArgs) -> Result<()> {
    tools::ensure_free_space(ws, tools::TEST_FOOTPRINT)?;
    if !args.boot_only {
        // Lints first: they fail in seconds, before anything is fetched.
        lint(ws)?;
    }
    tools::ensure_host_tools(ws)?;
    if !args.boot_only {
        // Only the host tests use libfdt's tools (xtask's unit tests and
        // the board test's second reading of each DTB).
        let dtc = tools::DtcTools::fetch(ws)?;
        run_checked(Command::new(env!("CARGO")).current_dir(&ws.root).args([
            "test",
            "--workspace",
            "--exclude",
            "tidepool-boot",
        ]))?;
        let dtbs = tools::board_dtbs(ws)?;
        run_checked(
            Command::new(env!("CARGO"))
                .current_dir(&ws.root)
                .env("TIDEPOOL_BOARD_DTBS", &dtbs)
                .env("TIDEPOOL_FDTDUMP", dtc.program("fdtdump"))
                .env("LD_LIBRARY_PATH", dtc.libs())
                .args([
                    "test",
                    "-p",
                    "tidepool-dt",
                    "--test",
                    "boards",
                    "--",
                    "--ignored",
                ]),
        )?;
    }
    let image = build_kernel(ws)?;
    let boot = boot_tests::run_all(ws, &image, args.filter.as_deref());
    let commands = command_tests::run_all(ws, args.filter.as_deref());
    let image = image_check(ws, args.filter.as_deref());
    // The benchmark harness, one short iteration each side: named
    // `bench-smoke` for --filter like a boot test.
    let smoke = match args.filter.as_deref() {
        Some(filter) if !"bench-smoke".contains(filter) => Ok(()),
        _ => bench::smoke(ws),
    };
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    for (kind, failed) in [("boot", boot), ("command", Ok(commands))] {
        match failed {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => {
                let names: Vec<&str> = failed.iter().map(|f| f.name.as_str()).collect();
                failures.push(format!("failed {kind} tests: {}", names.join(", ")));
                reports.extend(failed.into_iter().map(|f| f.report));
            }
            Err(error) => failures.push(format!("{kind} tests: {error}")),
        }
    }
    // Printed again here, where the end of a long log (CI's) shows them.
    for report in &reports {
        println!("{report}");
    }
    if let Err(image) = image {
        failures.push(format!("image check imx8mp-evk failed: {image}"));
    }
    if let Err(smoke) = smoke {
        failures.push(smoke.to_string());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::msg(failures.join("; ")))
    }
}

/// A test that failed: its name, and what it printed then (why, and the
/// tail of its console or output).
pub struct Failure {
    /// The test's name.
    pub name: String,
    /// The lines printed when it failed.
    pub report: String,
}

/// The physical board's boot folder, written and checked (no boot), unless
/// `filter` leaves it out (it matches `image-imx8mp-evk`).
fn image_check(ws: &Workspace, filter: Option<&str>) -> Result<()> {
    if filter.is_some_and(|f| !"image-imx8mp-evk".contains(f)) {
        return Ok(());
    }
    board_image::run(
        ws,
        board_image::ImageArgs {
            board: board::Board::Imx8mpEvk.name().into(),
            out: ws.build.join("image-test/imx8mp-evk"),
            xen: None,
            dom0_mem: "512M".into(),
            bootargs: String::new(),
        },
    )?;
    println!("image check imx8mp-evk ... ok");
    Ok(())
}

fn dt(file: &Path, json: bool) -> Result<()> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file.to_path_buf(), e))?;
    let plan = tidepool_dt::Plan::from_dtb(&bytes)
        .map_err(|e| Error::msg(format!("{}: {e}", file.display())))?;
    if json {
        println!("{}", plan.to_json());
    } else {
        print!("{plan}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::KERNEL_CRATES;

    /// Every workspace member but the host-only ones (xtask, the DMA
    /// layer's cache model) goes into the kernel and is linted for its
    /// target.
    #[test]
    fn every_kernel_crate_is_linted_for_the_kernel_target() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = |dir: &std::path::Path| -> toml::Table {
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap()
        };
        let workspace = manifest(&root);
        let members = workspace["workspace"]["members"].as_array().unwrap();
        let mut names: Vec<String> = members
            .iter()
            .map(|m| {
                let package = manifest(&root.join(m.as_str().unwrap()));
                package["package"]["name"].as_str().unwrap().to_string()
            })
            .filter(|name| !["xtask", "tidepool-dma-model"].contains(&name.as_str()))
            .collect();
        names.sort();
        let mut linted = KERNEL_CRATES.map(String::from).to_vec();
        linted.sort();
        assert_eq!(names, linted);
    }
}
