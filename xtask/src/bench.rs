//! `cargo xtask bench`: tidepool against Linux as Xen dom0 on the same QEMU,
//! Xen and disk, the same workload, in one run, with the ratios against the
//! project's targets; `--json FILE` writes every figure.
//!
//! Runs, in order, all on a `-m 1G` QEMU `virt` machine with one read-only
//! virtio-blk disk (a 64 MiB raw image in `build/bench/`):
//! 1. tidepool as dom0 without a benchmark: host time from QEMU's spawn to
//!    `boot: ready`, and the kernel's own time since its entry; then the
//!    same under `-icount shift=0,sleep=off` (guest time, deterministic);
//! 2. tidepool as dom0 with `bench=64` on QEMU's device tree (coherent
//!    disk), default wait mode; then with each other `wait=` mode;
//! 3. the same with the `dynamic-pool-first` scenario (the disk
//!    non-coherent, with a dynamic no-map pool Xen flushes: the path where
//!    every request costs a cache-flush hypercall), and with `static-pool`
//!    (a pool Xen refuses to flush: maintained by VA through its window);
//! 4. tidepool as an 8 MiB dom0less domU, which must reach `boot: ready`;
//! 5. Linux as dom0 (`linux.rs`): fio over the same reads;
//! 6. the PV lines (`pv.rs`): tidepool and a Linux domU as `xl` guests of a
//!    Linux dom0, each reading the disk through dom0's xen-blkback, with
//!    the same workload (tidepool's `bench=`, Linux's fio `/init`).
//!
//! Every tidepool benchmark run's checksums, and Linux's, are compared with
//! what the disk image holds at the offsets read; a mismatch fails the run.
//! Runs 1, 2, 3 and 5 are repeated (`--runs`, default 3) and the best
//! timing of each kind kept: other work on the host only ever slows an
//! emulated run down. A run that yields no numbers fails the command; a
//! missed target is reported as `MISSED` and does not.
//!
//! `cargo xtask test` runs [`smoke`]: one short iteration of each side
//! (8 MiB, 64 random reads), so the harness cannot rot.

pub(crate) mod cpio;
pub(crate) mod linux;
mod pv;
mod report;
mod tidepool;
mod userland;

use std::collections::HashMap;
use std::fmt;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tidepool_block::wait::WaitMode;
use tidepool_block::workload::{self, BLOCK_BYTES, Checksum};

use self::linux::{Crc32, LinuxBench};
use self::report::{LinuxRun, Ready, Results, Setup};
use self::tidepool::KernelBench;
use crate::qemu::{self, Disk, Machine, Mode, QemuCommand};
use crate::{Error, Result, Workspace, tools};

/// QEMU's RAM for every run, in MiB: Xen must find `DOM0_MEM` of 1:1
/// memory beside Linux's Image and initramfs modules.
pub const MEMORY_MIB: u64 = 2048;
/// Xen's `dom0_mem` for every dom0 run, tidepool's and Linux's: room for
/// Linux's 33 MB Image, its 85 MB initramfs (fio's libraries) and that
/// initramfs unpacked (256M was too little to unpack it).
const DOM0_MEM: &str = "512M";
/// The disk's size in MiB; tidepool reads all of it (`bench=`), as does Linux.
const DISK_MIB: u64 = 64;
/// Random 4 KiB reads per queue depth.
const RANDOM_READS: u64 = 4096;
/// The smoke run's disk and reads.
const SMOKE_DISK_MIB: u64 = 8;
const SMOKE_READS: u64 = 64;
/// The dom0less domU's memory in KiB (the 8 MiB target).
const DOMU_KIB: u64 = 8 * 1024;
/// The default wait mode of a virtio disk (`BlockDriver::default_wait`), which the
/// stock run uses; the others get a run each.
const DEFAULT_WAIT: WaitMode = WaitMode::Poll;
/// The scenario with a non-coherent first disk behind a no-map pool that
/// Xen flushes (the static pool of `imx8-like` is refused by Xen 4.17 and
/// maintained by VA, without hypercalls; the boot tests cover it).
const NONCOHERENT_SCENARIO: &str = "dynamic-pool-first";
/// The scenario with the first disk behind a static no-map pool, whose
/// flushes Xen refuses: maintained by VA through the pool's window, no
/// hypercall (for comparison with the flushed pool).
const VA_POOL_SCENARIO: &str = "static-pool";
/// Deadline for one tidepool run.
const TIDEPOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// Deadline for the Linux run (its boot alone takes seconds under TCG, and
/// the checksum pass one `dd` per random block).
const LINUX_TIMEOUT: Duration = Duration::from_secs(600);
/// Console lines shown when a run fails.
const TAIL_LINES: usize = 20;

/// `cargo xtask bench` options.
#[derive(Args)]
pub struct BenchArgs {
    /// Skip the Linux dom0 run (tidepool's numbers only, no ratios).
    #[arg(long)]
    skip_linux: bool,
    /// Skip the PV runs (tidepool and a Linux domU as xl guests of a Linux
    /// dom0, through its blkback).
    #[arg(long)]
    skip_pv: bool,
    /// Boots per measurement; the best timing of each kind is kept.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Also write every figure, ratio and target to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// What one benchmark run does.
struct Plan {
    runs: u32,
    disk_mib: u64,
    reads: u64,
    linux: bool,
    /// The PV lines (`pv.rs`).
    pv: bool,
    /// The boot-time runs, the other wait modes and the domU.
    everything: bool,
}

/// Runs every benchmark, prints the table (and writes the JSON), and fails
/// if a run yielded no numbers.
pub fn run(ws: &Workspace, args: BenchArgs) -> Result<()> {
    let plan = Plan {
        runs: args.runs,
        disk_mib: DISK_MIB,
        reads: RANDOM_READS,
        linux: !args.skip_linux,
        pv: !args.skip_pv,
        everything: true,
    };
    let command = std::iter::once("cargo xtask bench".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    let results = measure(ws, &plan, command)?;
    println!("{}", report::render(&results));
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&results)).map_err(|e| Error::io(path.clone(), e))?;
        eprintln!("bench: wrote {}", path.display());
    }
    match results.failed_runs() {
        0 => Ok(()),
        n => Err(Error::msg(format!(
            "{n} benchmark run(s) failed (see above)"
        ))),
    }
}

/// One short iteration of each side (tidepool's benchmark on the coherent
/// and the pool disk, Linux's fio and checksums) on an 8 MiB disk: fails if
/// any run yields no numbers or a wrong checksum. For `cargo xtask test`.
pub fn smoke(ws: &Workspace) -> Result<()> {
    let plan = Plan {
        runs: 1,
        disk_mib: SMOKE_DISK_MIB,
        reads: SMOKE_READS,
        linux: true,
        pv: false,
        everything: false,
    };
    let results = measure(ws, &plan, "cargo xtask test (bench smoke)".into())?;
    match results.failed_runs() {
        0 => {
            eprintln!(
                "bench: smoke run ok (tidepool coherent and pool, Linux fio; checksums match)"
            );
            Ok(())
        }
        n => {
            println!("{}", report::render(&results));
            Err(Error::msg(format!(
                "bench smoke: {n} run(s) failed (see above)"
            )))
        }
    }
}

fn measure(ws: &Workspace, plan: &Plan, command: String) -> Result<Results> {
    tools::ensure_host_tools(ws)?;
    let qemu = tools::Qemu::fetch(ws)?.version()?;
    let image = crate::build_kernel(ws)?;
    let image_bytes = std::fs::metadata(&image)
        .map_err(|e| Error::io(image.clone(), e))?
        .len();
    let dir = ws.build.join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.clone(), e))?;
    let disk = disk_image(&dir, plan.disk_mib)?;
    let expected = Expected::of(&disk, plan.reads)?;
    let machine = |mode: Mode| {
        let mut m = Machine::new(mode);
        m.memory = format!("{MEMORY_MIB}M");
        m.disks = vec![Disk {
            file: disk.display().to_string(),
            read_only: true,
        }];
        m
    };
    let dom0 = || {
        machine(Mode::XenDom0 {
            dom0_mem: DOM0_MEM.into(),
        })
    };
    let host_load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();

    let runs = plan.runs;
    let mut xen = String::new();
    let boot = best_of(runs, "tidepool-boot", Ready::earlier, |label| {
        let (ready, version) =
            tidepool_ready(ws, &image, &dir.join("tidepool-boot"), label, &dom0())?;
        xen = version;
        Ok(ready)
    });
    let boot_icount = if plan.everything {
        let mut m = dom0();
        m.icount = true;
        tidepool_ready(
            ws,
            &image,
            &dir.join("tidepool-icount"),
            "tidepool-boot-icount",
            &m,
        )
        .map(|(ready, _)| ready)
    } else {
        Err(RunError::NotRun)
    };
    let bench_machine = |wait: WaitMode, scenario: Option<&str>| {
        let mut m = dom0();
        m.bootargs = format!(
            "bench={} bench-reads={} wait={wait}",
            plan.disk_mib, plan.reads
        );
        m.scenario = scenario.map(str::to_string);
        m
    };
    let bench = |name: &str, machine: &Machine| {
        best_of(runs, name, KernelBench::best, |label| {
            tidepool_bench(ws, &image, &dir.join(name), label, machine, &expected)
        })
    };
    let stock = bench("tidepool-stock", &bench_machine(DEFAULT_WAIT, None));
    let pool_name = format!("tidepool-{NONCOHERENT_SCENARIO}");
    let pool = bench(
        &pool_name,
        &bench_machine(DEFAULT_WAIT, Some(NONCOHERENT_SCENARIO)),
    );
    let mut waits = Vec::new();
    let mut pool_va = Err(RunError::NotRun);
    if plan.everything {
        let name = format!("tidepool-{VA_POOL_SCENARIO}");
        pool_va = bench(&name, &bench_machine(DEFAULT_WAIT, Some(VA_POOL_SCENARIO)));
        for mode in WaitMode::ALL.into_iter().filter(|&m| m != DEFAULT_WAIT) {
            let name = format!("tidepool-wait-{mode}");
            waits.push((mode, bench(&name, &bench_machine(mode, None))));
        }
    }
    let domu = if plan.everything {
        let mut domu = machine(Mode::XenDomU {
            memory_kib: DOMU_KIB,
        });
        domu.disks.clear();
        tidepool_ready(
            ws,
            &image,
            &dir.join("tidepool-domu"),
            "tidepool-domu",
            &domu,
        )
        .map(|(ready, _)| ready)
    } else {
        Err(RunError::NotRun)
    };
    let linux = plan
        .linux
        .then(|| linux_bench(ws, &dir, plan, dom0(), &expected));
    let pv = plan
        .pv
        .then(|| pv::run(ws, &image, &dir, &disk, plan, &expected));

    let setup = Setup {
        date: utc_now(),
        command,
        qemu,
        xen: if xen.is_empty() {
            "unknown".into()
        } else {
            xen
        },
        host_cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        host_memory_mib: host_memory_mib(),
        host_load,
        runs,
        disk_mib: plan.disk_mib,
        random_reads: plan.reads,
        dom0_mem: DOM0_MEM,
    };
    Ok(Results {
        setup,
        boot,
        boot_icount,
        stock,
        pool,
        pool_va,
        waits,
        domu,
        linux,
        pv,
        image_bytes,
    })
}

/// The benchmark disk: `mib` MiB of a deterministic pattern (each 8-byte
/// word is its 4 KiB block number and its index in the block), made once.
fn disk_image(dir: &Path, mib: u64) -> Result<PathBuf> {
    let path = dir.join(format!("disk-{mib}M.img"));
    let size = mib << 20;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return Ok(path);
    }
    eprintln!("bench: writing {} ({mib} MiB)", path.display());
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(|e| Error::io(partial.clone(), e))?;
    let mut out = BufWriter::new(file);
    for block in 0..size / 4096 {
        let bytes: Vec<u8> = (0..512u64)
            .flat_map(|word| ((block << 32) | word).to_le_bytes())
            .collect();
        out.write_all(&bytes)
            .map_err(|e| Error::io(partial.clone(), e))?;
    }
    out.flush().map_err(|e| Error::io(partial.clone(), e))?;
    std::fs::rename(&partial, &path).map_err(|e| Error::io(path.clone(), e))?;
    Ok(path)
}

/// What each side must report for the bytes it read, from the disk image.
struct Expected {
    /// tidepool's checksum of the whole disk, in order.
    seq: u64,
    /// tidepool's checksum of the random blocks, in list order.
    random: u64,
    /// Linux's CRC-32 of the whole disk.
    linux_seq: Crc32,
    /// Linux's CRC-32 of the random blocks.
    linux_random: Crc32,
}

impl Expected {
    fn of(disk: &Path, reads: u64) -> Result<Self> {
        let bytes = std::fs::read(disk).map_err(|e| Error::io(disk.to_path_buf(), e))?;
        let blocks: Vec<&[u8]> =
            workload::random_blocks(workload::SEED, reads, bytes.len() as u64 / BLOCK_BYTES)
                .map(|b| &bytes[(b * BLOCK_BYTES) as usize..((b + 1) * BLOCK_BYTES) as usize])
                .collect();
        let sum = |chunks: &[&[u8]]| {
            let mut c = Checksum::new();
            for chunk in chunks {
                // Whole blocks: multiples of 8 bytes.
                let _ = c.update(chunk);
            }
            c.value()
        };
        Ok(Self {
            seq: sum(&[&bytes]),
            random: sum(&blocks),
            linux_seq: linux::crc32([&bytes[..]]),
            linux_random: linux::crc32(blocks.iter().copied()),
        })
    }

    /// Why a tidepool run's checksums are wrong, if they are.
    fn check_tidepool(&self, bench: &KernelBench) -> std::result::Result<(), String> {
        if bench.seq_sum != self.seq {
            return Err(format!(
                "sequential checksum {:016x}, the disk holds {:016x}",
                bench.seq_sum, self.seq
            ));
        }
        for (depth, phase) in &bench.random {
            if phase.sum != self.random {
                return Err(format!(
                    "QD{depth} checksum {:016x}, the disk holds {:016x} at those blocks",
                    phase.sum, self.random
                ));
            }
        }
        Ok(())
    }

    /// Why Linux's checksums are wrong, if they are.
    fn check_linux(&self, seq: Crc32, random: Crc32) -> std::result::Result<(), String> {
        if seq != self.linux_seq {
            return Err(format!(
                "Linux's CRC-32 of the disk is {seq:?}, expected {:?}",
                self.linux_seq
            ));
        }
        if random != self.linux_random {
            return Err(format!(
                "Linux's CRC-32 of the random blocks is {random:?}, expected {:?}",
                self.linux_random
            ));
        }
        Ok(())
    }
}

fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian, days to civil date after Howard Hinnant's algorithm).
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Runs `one` `runs` times (labelled `name i/runs`) and merges the results
/// with `merge`; the first failure ends the series.
fn best_of<T>(
    runs: u32,
    name: &str,
    merge: impl Fn(T, T) -> T,
    mut one: impl FnMut(&str) -> std::result::Result<T, RunError>,
) -> std::result::Result<T, RunError> {
    let mut best = one(&format!("{name} 1/{runs}"))?;
    for i in 2..=runs {
        best = merge(best, one(&format!("{name} {i}/{runs}"))?);
    }
    Ok(best)
}

/// Boots tidepool on `machine` and reads when it was ready, and the Xen
/// version it printed (empty without Xen).
fn tidepool_ready(
    ws: &Workspace,
    image: &Path,
    run_dir: &Path,
    label: &str,
    machine: &Machine,
) -> std::result::Result<(Ready, String), RunError> {
    eprintln!("bench: {label}: booting ({})", describe(machine));
    let console = tidepool_console(ws, image, run_dir, machine)?;
    let ready = console_ready(&console)?;
    eprintln!(
        "bench: {label}: boot: ready after {:.3} s (kernel uptime {:.3} s, {:.3} ms since its entry)",
        ready.host.as_secs_f64(),
        ready.uptime.as_secs_f64(),
        ready.since_entry.as_secs_f64() * 1000.0
    );
    let xen = console
        .find("xen: version ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    Ok((ready, xen))
}

/// Boots tidepool with `bench=` on `machine`, reads its `blk: bench` lines
/// and checks its checksums.
fn tidepool_bench(
    ws: &Workspace,
    image: &Path,
    run_dir: &Path,
    label: &str,
    machine: &Machine,
    expected: &Expected,
) -> std::result::Result<KernelBench, RunError> {
    eprintln!("bench: {label}: booting ({})", describe(machine));
    let console = tidepool_console(ws, image, run_dir, machine)?;
    tidepool_results(&console, label, expected)
}

/// A tidepool benchmark run's figures, from any machine: echoes its `blk:
/// bench` lines, reads them and checks their checksums against the disk.
fn tidepool_results(
    console: &Console,
    label: &str,
    expected: &Expected,
) -> std::result::Result<KernelBench, RunError> {
    console.echo(label, tidepool::BENCH_PREFIX);
    let bench = KernelBench::parse(console.texts()).map_err(|e| console.failure(e.to_string()))?;
    expected
        .check_tidepool(&bench)
        .map_err(|e| console.failure(format!("wrong data: {e}")))?;
    Ok(bench)
}

/// A Linux benchmark run's figures, dom0 or domU: echoes `/init`'s lines,
/// reads them and checks Linux's checksums against the disk.
fn linux_results(
    console: &Console,
    label: &str,
    expected: &Expected,
) -> std::result::Result<LinuxBench, RunError> {
    console.echo(label, linux::PREFIX);
    let bench = linux::parse(console.texts()).map_err(|e| console.failure(e.to_string()))?;
    expected
        .check_linux(bench.seq_sum, bench.random_sum)
        .map_err(|e| console.failure(format!("wrong data: {e}")))?;
    Ok(bench)
}

fn tidepool_console(
    ws: &Workspace,
    image: &Path,
    run_dir: &Path,
    machine: &Machine,
) -> std::result::Result<Console, RunError> {
    let args = machine.prepare(ws, image, run_dir)?;
    // The run stops shortly after the guest's `shutdown:` line (Xen keeps
    // running after a dom0less domU powers off, and waits 5 s after a crash).
    Ok(run_timed(&args, TIDEPOOL_TIMEOUT)?)
}

/// When `boot: ready` arrived, by the host and by the kernel.
fn console_ready(console: &Console) -> std::result::Result<Ready, RunError> {
    let Some((line, fields)) = console.find(tidepool::READY_PREFIX) else {
        return Err(console.failure(format!("no '{}' line", tidepool::READY_PREFIX)));
    };
    let (uptime, since_entry) = tidepool::ready_times(fields)
        .map_err(|e| console.failure(format!("{e} in {:?}", line.text)))?;
    Ok(Ready {
        host: line.at,
        uptime,
        since_entry,
    })
}

/// Builds the Linux dom0 and runs its benchmark `plan.runs` times on
/// `machine`'s hardware.
fn linux_bench(
    ws: &Workspace,
    dir: &Path,
    plan: &Plan,
    machine: Machine,
    expected: &Expected,
) -> std::result::Result<LinuxRun, RunError> {
    let dom0 = linux::prepare(ws, dir, plan.disk_mib << 20, plan.reads)?;
    eprintln!(
        "bench: linux: {} as dom0 ({}; initramfs {} KiB, modules: {})",
        dom0.image.display(),
        describe(&machine),
        std::fs::metadata(&dom0.initramfs).map_or(0, |m| m.len() / 1024),
        if dom0.modules.is_empty() {
            "none needed".to_string()
        } else {
            dom0.modules.join(", ")
        }
    );
    let xen_bootargs = format!("{} dom0_mem={DOM0_MEM}", crate::qemu::XEN_VIRT_CONSOLE);
    let args = linux::qemu_args(ws, &machine, &dom0, &xen_bootargs, &dir.join("linux"), None)?;
    best_of(plan.runs, "linux", LinuxRun::best, |label| {
        eprintln!("bench: {label}: booting");
        let console = run_timed(&args, LINUX_TIMEOUT)?;
        let bench = linux_results(&console, label, expected)?;
        let init_host = console
            .find(linux::INIT_MARKER)
            .map_or(console.elapsed, |(line, _)| line.at);
        Ok(LinuxRun { bench, init_host })
    })
}

/// A short description of a machine for progress lines.
fn describe(machine: &Machine) -> String {
    let mode = match &machine.mode {
        Mode::XenDom0 { dom0_mem } => format!("Xen dom0, dom0_mem={dom0_mem}"),
        Mode::XenDomU { memory_kib } => format!("Xen dom0less domU, {} KiB", memory_kib),
        Mode::Bare | Mode::LoaderOnly => "bare QEMU".into(),
    };
    let scenario = machine
        .scenario
        .as_deref()
        .map_or(String::new(), |s| format!(", scenario {s}"));
    let bootargs = if machine.bootargs.is_empty() {
        String::new()
    } else {
        format!(", bootargs \"{}\"", machine.bootargs)
    };
    format!("{mode}{scenario}{bootargs}")
}

/// Why a run yielded no numbers.
#[derive(Debug)]
pub enum RunError {
    /// Left out of this kind of run (the smoke run's).
    NotRun,
    /// QEMU could not be prepared or started.
    Setup(Error),
    /// The console did not have what was needed.
    Console {
        /// What was missing or wrong.
        what: String,
        /// How the run ended.
        ended: String,
        /// The console's last lines (and QEMU's stderr, if any).
        tail: String,
    },
}

impl From<Error> for RunError {
    fn from(err: Error) -> Self {
        Self::Setup(err)
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRun => f.write_str("not run"),
            Self::Setup(err) => write!(f, "{err}"),
            Self::Console { what, ended, tail } => {
                write!(f, "{what} ({ended}); console tail:\n{tail}")
            }
        }
    }
}

/// A reading of a count over a time: MiB/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// Bytes read.
    pub bytes: u64,
    /// How long it took.
    pub time: Duration,
}

impl Throughput {
    /// MiB per second.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.time.as_secs_f64()
    }
}

/// Requests over a time: IOPS.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests completed.
    pub requests: u64,
    /// How long they took.
    pub time: Duration,
}

impl Rate {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.requests as f64 / self.time.as_secs_f64()
    }
}

/// Why a `key=value` field did not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The key is not there.
    Missing(&'static str),
    /// The value is not what the key needs.
    Invalid {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(key) => write!(f, "no {key}="),
            Self::Invalid { key, value } => write!(f, "bad {key}={value}"),
        }
    }
}

/// The `key=value` words of a console line (other words are ignored; the
/// first of a repeated key wins).
pub struct KeyValues<'a> {
    pairs: HashMap<&'a str, &'a str>,
}

impl<'a> KeyValues<'a> {
    /// Splits `text` at whitespace.
    pub fn new(text: &'a str) -> Self {
        let mut pairs = HashMap::new();
        for (key, value) in text.split_whitespace().filter_map(|w| w.split_once('=')) {
            pairs.entry(key).or_insert(value);
        }
        Self { pairs }
    }

    /// The value of `key`.
    pub fn get(&self, key: &'static str) -> std::result::Result<&'a str, ParseError> {
        self.pairs.get(key).copied().ok_or(ParseError::Missing(key))
    }

    /// The value of `key` as an unsigned integer.
    pub fn u64(&self, key: &'static str) -> std::result::Result<u64, ParseError> {
        let value = self.get(key)?;
        value.parse().map_err(|_| ParseError::Invalid {
            key,
            value: value.into(),
        })
    }

    /// The value of `key` as a finite, non-negative number.
    pub fn f64(&self, key: &'static str) -> std::result::Result<f64, ParseError> {
        let value = self.get(key)?;
        value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| ParseError::Invalid {
                key,
                value: value.into(),
            })
    }
}

/// One console line and when the host read it, from QEMU's spawn.
struct Line {
    at: Duration,
    text: String,
}

/// A finished run's console, each line timestamped on arrival.
struct Console {
    lines: Vec<Line>,
    stderr: String,
    timed_out: bool,
    elapsed: Duration,
}

/// What follows `prefix` in `line`, if it has it (console noise, such as
/// Xen's `(d1) `, may come before it).
fn after<'l>(line: &'l str, prefix: &str) -> Option<&'l str> {
    let at = line.find(prefix)?;
    Some(&line[at + prefix.len()..])
}

/// A `PREFIX KIND key=value ...` line, the shape of both sides' benchmark
/// lines (`blk: bench seq ...`, `bench-linux: fio qd1 ...`): its kind (the
/// word after `prefix`) and the rest.
pub fn tagged<'l>(line: &'l str, prefix: &str) -> Option<(&'l str, &'l str)> {
    let rest = after(line, prefix)?;
    Some(rest.split_once(' ').unwrap_or((rest, "")))
}

impl Console {
    /// The first line containing `prefix`, and what follows the prefix.
    fn find(&self, prefix: &str) -> Option<(&Line, &str)> {
        self.lines
            .iter()
            .find_map(|l| Some((l, after(&l.text, prefix)?)))
    }

    fn texts(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|l| l.text.as_str())
    }

    /// Shows the lines containing `prefix` as progress, `label` first.
    fn echo(&self, label: &str, prefix: &str) {
        for line in self.texts().filter(|t| t.contains(prefix)) {
            eprintln!("bench: {label}: {}", line.trim_start());
        }
    }

    /// A [`RunError`] saying `what`, with how the run ended and its tail.
    fn failure(&self, what: String) -> RunError {
        let ended = if self.timed_out {
            format!("timed out after {:.1} s", self.elapsed.as_secs_f64())
        } else {
            format!("QEMU exited after {:.1} s", self.elapsed.as_secs_f64())
        };
        let start = self.lines.len().saturating_sub(TAIL_LINES);
        let mut tail: Vec<String> = self.lines[start..]
            .iter()
            .map(|l| format!("    {}", l.text))
            .collect();
        if !self.stderr.trim().is_empty() {
            tail.push(format!("    QEMU stderr: {}", self.stderr.trim()));
        }
        RunError::Console {
            what,
            ended,
            tail: tail.join("\n"),
        }
    }
}

/// Runs QEMU captured (see [`QemuCommand::run`]), keeping each line's
/// arrival time.
fn run_timed(args: &QemuCommand, timeout: Duration) -> Result<Console> {
    let run = args.run(qemu::Console::Captured(timeout), None)?;
    Ok(Console {
        lines: run
            .arrivals
            .into_iter()
            .zip(run.lines)
            .map(|(at, text)| Line { at, text })
            .collect(),
        stderr: run.stderr,
        timed_out: run.timed_out,
        elapsed: run.elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        let kv = KeyValues::new("  a=1 flag b=2.5 a=9 c= d=x=y e=-1 f=inf");
        assert_eq!(kv.u64("a"), Ok(1));
        assert_eq!(kv.f64("b"), Ok(2.5));
        assert_eq!(kv.get("c"), Ok(""));
        assert_eq!(kv.get("d"), Ok("x=y"));
        assert_eq!(kv.get("flag"), Err(ParseError::Missing("flag")));
        assert_eq!(
            kv.u64("b"),
            Err(ParseError::Invalid {
                key: "b",
                value: "2.5".into()
            })
        );
        assert!(kv.f64("e").is_err());
        assert!(kv.f64("f").is_err());
        assert_eq!(ParseError::Missing("x").to_string(), "no x=");
    }

    #[test]
    fn tagged_lines() {
        assert_eq!(
            tagged("(d1) blk: bench qd16 reqs=4 us=9", "blk: bench "),
            Some(("qd16", "reqs=4 us=9"))
        );
        assert_eq!(
            tagged("bench-linux: done", "bench-linux: "),
            Some(("done", ""))
        );
        assert_eq!(tagged("blk: stats reads=1", "blk: bench "), None);
    }

    #[test]
    fn rates() {
        let t = Throughput {
            bytes: 64 << 20,
            time: Duration::from_millis(500),
        };
        assert!((t.mib_per_s() - 128.0).abs() < 1e-9);
        let r = Rate {
            requests: 4096,
            time: Duration::from_secs(2),
        };
        assert!((r.iops() - 2048.0).abs() < 1e-9);
    }

    #[test]
    fn best_of_merges_every_run_and_stops_at_a_failure() {
        let mut labels = Vec::new();
        let best = best_of(3, "x", u32::max, |label| {
            labels.push(label.to_string());
            Ok(labels.len() as u32 * 10 % 25)
        });
        assert_eq!(best.unwrap(), 20);
        assert_eq!(labels, ["x 1/3", "x 2/3", "x 3/3"]);
        let mut calls = 0;
        let failed = best_of(3, "x", u32::max, |_| {
            calls += 1;
            if calls == 2 {
                Err(RunError::Setup(Error::msg("no QEMU")))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(failed.unwrap_err().to_string(), "no QEMU");
        assert_eq!(calls, 2);
    }

    fn console(lines: &[(u64, &str)], timed_out: bool) -> Console {
        Console {
            lines: lines
                .iter()
                .map(|&(ms, text)| Line {
                    at: Duration::from_millis(ms),
                    text: text.into(),
                })
                .collect(),
            stderr: String::new(),
            timed_out,
            elapsed: Duration::from_secs(3),
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(utc(1_796_472_000), "2026-12-05T12:00:00Z");
    }

    #[test]
    fn ready_is_stamped_by_the_host() {
        let c = console(
            &[
                (300, "(XEN) Freed 356kB init memory."),
                (612, "boot: ready uptime_us=301234 since_entry_us=1500"),
                (640, "shutdown: poweroff uptime_us=330000"),
            ],
            false,
        );
        let ready = console_ready(&c).unwrap();
        assert_eq!(ready.host, Duration::from_millis(612));
        assert_eq!(ready.uptime, Duration::from_micros(301_234));
        assert_eq!(ready.since_entry, Duration::from_micros(1500));
        let domu = console(
            &[(550, "(d1) boot: ready uptime_us=1000 since_entry_us=900")],
            false,
        );
        assert_eq!(
            console_ready(&domu).unwrap().host,
            Duration::from_millis(550)
        );
    }

    #[test]
    fn failures_name_what_and_show_the_tail() {
        let c = console(&[(1, "boot: tidepool 0.1.0"), (2, "blk: probe")], true);
        let err = console_ready(&c).unwrap_err().to_string();
        assert!(
            err.starts_with("no 'boot: ready' line (timed out after 3.0 s); console tail:\n"),
            "{err}"
        );
        assert!(
            err.ends_with("    boot: tidepool 0.1.0\n    blk: probe"),
            "{err}"
        );
        let bad = console(&[(5, "boot: ready uptime_us=soon")], false);
        let err = console_ready(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("bad uptime_us=soon in \"boot: ready uptime_us=soon\" (QEMU exited"),
            "{err}"
        );
    }
}
