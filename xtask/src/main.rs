//! `cargo xtask`: the one entry point for building, running and testing
//! tidepool. CI runs exactly `cargo xtask test`.

mod bench;
mod boot_tests;
mod debian;
mod devicetree;
mod disk;
mod image;
mod pv;
mod qemu;
mod scenario;
mod tools;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::qemu::{Disk, Machine, Mode};

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
    fn locate() -> Self {
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
    /// Run every test: host unit tests, the board device-tree test and the QEMU boot tests.
    Test(TestArgs),
    /// Measure tidepool against Linux as Xen dom0 and print the ratios to the targets.
    Bench(bench::BenchArgs),
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
    /// QEMU memory (-m).
    #[arg(long, default_value = "1G")]
    memory: String,
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
    /// one disk, the guest's xvda).
    #[arg(long)]
    disk: Vec<String>,
    /// Use the modern (v2) virtio-mmio transport.
    #[arg(long)]
    modern_virtio: bool,
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
        Cmd::Run(args) => run(&ws, args),
        Cmd::Test(args) => test(&ws, args),
        Cmd::Bench(args) => bench::run(&ws, args),
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
    tools::ensure_kernel_target(ws)?;
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
    let out = ws.image_path();
    std::fs::write(&out, &image.bytes).map_err(|e| Error::io(out.clone(), e))?;
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

fn run(ws: &Workspace, args: RunArgs) -> Result<()> {
    tools::ensure_host_tools()?;
    let image = build_kernel(ws)?;
    if args.pv {
        if args.disk.len() > 1 {
            return Err(Error::msg("--pv takes one --disk (the guest's xvda)"));
        }
        let guest = pv::PvGuest {
            bootargs: args.bootargs,
            disk: args.disk.first().map(PathBuf::from),
            read_only: false,
            detach_on: None,
            dom0less: args.domu,
        };
        let qemu_args = pv::qemu_args(ws, &image, &guest, &ws.build.join("run-pv"))?;
        return qemu::run_interactive(&qemu_args);
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
    machine.memory = args.memory;
    machine.bootargs = args.bootargs;
    machine.xen_args = args.xen_args;
    machine.scenario = args.scenario;
    machine.modern_virtio = args.modern_virtio;
    machine.disks = args
        .disk
        .into_iter()
        .map(|file| Disk {
            file,
            read_only: false,
        })
        .collect();
    let qemu_args = machine.prepare(ws, &image, &ws.build.join("run"))?;
    qemu::run_interactive(&qemu_args)
}

fn test(ws: &Workspace, args: TestArgs) -> Result<()> {
    tools::ensure_host_tools()?;
    if !args.boot_only {
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
    boot_tests::run_all(ws, &image, args.filter.as_deref())
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
