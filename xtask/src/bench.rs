//! `cargo xtask bench`: tidepool against Linux as Xen dom0 on the same QEMU,
//! Xen and disk, in one run, with the ratios against the project's targets.
//!
//! Runs, in order, all on a `-m 1G` QEMU `virt` machine with one read-only
//! virtio-blk disk (a 64 MiB raw image in `build/bench/`):
//! 1. tidepool as dom0 without a benchmark: host time from QEMU's spawn to
//!    `boot: ready`, and the kernel's own `uptime_us`;
//! 2. tidepool as dom0 with `bench=64` on QEMU's device tree (coherent disk);
//! 3. the same with the `dynamic-pool-first` scenario (the disk
//!    non-coherent, with a dynamic no-map pool Xen flushes: the path where
//!    every request costs a cache-flush hypercall);
//! 4. tidepool as an 8 MiB dom0less domU, which must reach `boot: ready`;
//! 5. Linux as dom0 (`linux.rs`), timing busybox `dd` reads of the disk;
//! 6. the PV lines (`pv.rs`): tidepool and a Linux domU as `xl` guests of a
//!    Linux dom0, each reading the disk through dom0's xen-blkback.
//!
//! Runs 1, 2, 3 and 5 are repeated (`--runs`, default 3) and the best
//! timing of each kind kept: other work on the host only ever slows an
//! emulated run down. A run that yields no numbers fails the command; a
//! missed target is reported as `MISSED` and does not.

pub(crate) mod cpio;
pub(crate) mod linux;
mod pv;
mod report;
mod tidepool;

use std::collections::HashMap;
use std::fmt;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use self::report::{LinuxRun, Ready, Results};
use self::tidepool::KernelBench;
use crate::qemu::{self, Disk, Machine, Mode, QemuCommand};
use crate::{Error, Result, Workspace, tools};

/// QEMU's RAM for every run, in MiB.
const MEMORY_MIB: u64 = 1024;
/// Xen's `dom0_mem` for every dom0 run, tidepool's and Linux's.
const DOM0_MEM: &str = "256M";
/// The disk's size in MiB; tidepool reads all of it (`bench=`), as does Linux.
const DISK_MIB: u64 = 64;
/// The dom0less domU's memory in KiB (the 8 MiB target).
const DOMU_KIB: u64 = 8 * 1024;
/// The scenario with a non-coherent first disk behind a no-map pool that
/// Xen flushes (the static pool of `imx8-like` is refused by Xen 4.17 and
/// maintained by VA, without hypercalls; the boot tests cover it).
const NONCOHERENT_SCENARIO: &str = "dynamic-pool-first";
/// Deadline for one tidepool run.
const TIDEPOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// Deadline for the Linux run (its boot alone takes seconds under TCG).
const LINUX_TIMEOUT: Duration = Duration::from_secs(300);
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
}

/// Runs every benchmark, prints the table, and fails if a run yielded no
/// numbers.
pub fn run(ws: &Workspace, args: BenchArgs) -> Result<()> {
    tools::ensure_host_tools(ws)?;
    let qemu = tools::Qemu::fetch(ws)?.version()?;
    let image = crate::build_kernel(ws)?;
    let image_bytes = std::fs::metadata(&image)
        .map_err(|e| Error::io(image.clone(), e))?
        .len();
    let dir = ws.build.join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.clone(), e))?;
    let disk = disk_image(&dir)?;
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

    let runs = args.runs;
    let boot = best_of(runs, "tidepool-boot", Ready::earlier, |label| {
        tidepool_ready(ws, &image, &dir.join("tidepool-boot"), label, &dom0())
    });
    let mut bench = dom0();
    bench.bootargs = format!("bench={DISK_MIB}");
    let stock = best_of(runs, "tidepool-stock", KernelBench::best, |label| {
        tidepool_bench(ws, &image, &dir.join("tidepool-stock"), label, &bench)
    });
    bench.scenario = Some(NONCOHERENT_SCENARIO.into());
    let name = format!("tidepool-{NONCOHERENT_SCENARIO}");
    let noncoherent = best_of(runs, &name, KernelBench::best, |label| {
        tidepool_bench(ws, &image, &dir.join(&name), label, &bench)
    });
    let mut domu = machine(Mode::XenDomU {
        memory_kib: DOMU_KIB,
    });
    domu.disks.clear();
    let domu = tidepool_ready(
        ws,
        &image,
        &dir.join("tidepool-domu"),
        "tidepool-domu",
        &domu,
    );
    let linux = (!args.skip_linux).then(|| linux_bench(ws, &dir, runs, dom0()));
    let pv = (!args.skip_pv).then(|| pv::run(ws, &image, &dir, &disk, DISK_MIB, runs));

    let results = Results {
        qemu,
        runs,
        disk_mib: DISK_MIB,
        dom0_mem: DOM0_MEM,
        boot,
        stock,
        noncoherent,
        domu,
        linux,
        image_bytes,
    };
    println!("{}", report::render(&results));
    if let Some(pv) = &pv {
        println!("{}", pv::render(pv));
    }
    match results.failed_runs() + pv.as_ref().map_or(0, pv::failed_runs) {
        0 => Ok(()),
        n => Err(Error::msg(format!(
            "{n} benchmark run(s) failed (see above)"
        ))),
    }
}

/// The benchmark disk: `DISK_MIB` MiB of a deterministic pattern (each
/// 8-byte word is its 4 KiB block number and its index in the block), made
/// once.
fn disk_image(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(format!("disk-{DISK_MIB}M.img"));
    let size = DISK_MIB << 20;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return Ok(path);
    }
    eprintln!("bench: writing {} ({DISK_MIB} MiB)", path.display());
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

/// Boots tidepool on `machine` and reads when it was ready.
fn tidepool_ready(
    ws: &Workspace,
    image: &Path,
    run_dir: &Path,
    label: &str,
    machine: &Machine,
) -> std::result::Result<Ready, RunError> {
    eprintln!("bench: {label}: booting ({})", describe(machine));
    let console = tidepool_console(ws, image, run_dir, machine)?;
    let ready = console_ready(&console)?;
    eprintln!(
        "bench: {label}: boot: ready after {:.3} s (kernel uptime {:.3} s)",
        ready.host.as_secs_f64(),
        ready.uptime.as_secs_f64()
    );
    Ok(ready)
}

/// Boots tidepool with `bench=` on `machine` and reads its `blk: bench` line.
fn tidepool_bench(
    ws: &Workspace,
    image: &Path,
    run_dir: &Path,
    label: &str,
    machine: &Machine,
) -> std::result::Result<KernelBench, RunError> {
    eprintln!("bench: {label}: booting ({})", describe(machine));
    let console = tidepool_console(ws, image, run_dir, machine)?;
    let Some((line, fields)) = console.find(tidepool::BENCH_PREFIX) else {
        return Err(console.failure(format!("no '{}' line", tidepool::BENCH_PREFIX.trim_end())));
    };
    eprintln!("bench: {label}: {}", line.text.trim_start());
    KernelBench::parse(fields).map_err(|e| console.failure(format!("{e} in {:?}", line.text)))
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
    let uptime = tidepool::ready_uptime(fields)
        .map_err(|e| console.failure(format!("{e} in {:?}", line.text)))?;
    Ok(Ready {
        host: line.at,
        uptime,
    })
}

/// Builds the Linux dom0 and runs its benchmark `runs` times on
/// `machine`'s hardware.
fn linux_bench(
    ws: &Workspace,
    dir: &Path,
    runs: u32,
    machine: Machine,
) -> std::result::Result<LinuxRun, RunError> {
    let dom0 = linux::prepare(ws, dir, DISK_MIB << 20)?;
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
    let xen_bootargs = format!("console=dtuart dtuart=/pl011@9000000 dom0_mem={DOM0_MEM}");
    let args = linux::qemu_args(ws, &machine, &dom0, &xen_bootargs, &dir.join("linux"), None)?;
    best_of(runs, "linux", LinuxRun::best, |label| {
        eprintln!("bench: {label}: booting");
        let console = run_timed(&args, LINUX_TIMEOUT)?;
        for line in console
            .lines
            .iter()
            .filter(|l| l.text.contains(linux::PREFIX))
        {
            eprintln!("bench: {label}: {}", line.text.trim_start());
        }
        let bench = linux::parse(&console.texts()).map_err(|e| console.failure(e.to_string()))?;
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

    /// The faster of two readings.
    pub fn faster(self, other: Self) -> Self {
        if other.mib_per_s() > self.mib_per_s() {
            other
        } else {
            self
        }
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

    /// The faster of two readings.
    pub fn faster(self, other: Self) -> Self {
        if other.iops() > self.iops() {
            other
        } else {
            self
        }
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

impl Console {
    /// The first line containing `prefix`, and what follows the prefix.
    fn find(&self, prefix: &str) -> Option<(&Line, &str)> {
        self.lines.iter().find_map(|l| {
            let at = l.text.find(prefix)?;
            Some((l, &l.text[at + prefix.len()..]))
        })
    }

    fn texts(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.text.clone()).collect()
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

    #[test]
    fn faster_readings() {
        let slow = Throughput {
            bytes: 1 << 20,
            time: Duration::from_secs(2),
        };
        let fast = Throughput {
            time: Duration::from_secs(1),
            ..slow
        };
        assert_eq!(slow.faster(fast), fast);
        assert_eq!(fast.faster(slow), fast);
        let slow = Rate {
            requests: 10,
            time: Duration::from_secs(2),
        };
        let fast = Rate {
            time: Duration::from_secs(1),
            ..slow
        };
        assert_eq!(slow.faster(fast), fast);
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
    fn ready_is_stamped_by_the_host() {
        let c = console(
            &[
                (300, "(XEN) Freed 356kB init memory."),
                (612, "boot: ready uptime_us=301234"),
                (640, "shutdown: poweroff uptime_us=330000"),
            ],
            false,
        );
        let ready = console_ready(&c).unwrap();
        assert_eq!(ready.host, Duration::from_millis(612));
        assert_eq!(ready.uptime, Duration::from_micros(301_234));
        let domu = console(&[(550, "(d1) boot: ready uptime_us=1000")], false);
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
