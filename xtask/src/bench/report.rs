//! The benchmark's table: every measurement side by side, the ratios to
//! Linux, and each target met, `MISSED`, or `n/a` (no numbers).

use std::fmt;
use std::time::Duration;

use super::linux::LinuxBench;
use super::tidepool::KernelBench;
use super::{NONCOHERENT_SCENARIO as NC_LABEL, RunError};
use crate::image::IMAGE_SIZE_LIMIT;

/// Sequential reads: at least this many times Linux's MiB/s.
const SEQ_RATIO_TARGET: f64 = 1.5;
/// 4 KiB reads at queue depth 1: at least this many times Linux's IOPS.
const QD1_RATIO_TARGET: f64 = 3.0;
/// At most this many cache-flush hypercalls per request.
const HYPERCALLS_PER_REQUEST_TARGET: f64 = 1.0;
/// `boot: ready` at most this long after QEMU's spawn.
const READY_TARGET: Duration = Duration::from_secs(1);

/// A run's numbers, or why there are none.
pub type Outcome<T> = Result<T, RunError>;

/// When a boot was ready.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ready {
    /// Host wall time from QEMU's spawn to the line's arrival.
    pub host: Duration,
    /// The kernel's own uptime in the line.
    pub uptime: Duration,
}

impl Ready {
    /// The earlier of two boots.
    pub fn earlier(self, other: Self) -> Self {
        if other.host < self.host { other } else { self }
    }
}

/// What the Linux run gave.
#[derive(Clone, Debug, PartialEq)]
pub struct LinuxRun {
    /// `/init`'s measurements.
    pub bench: LinuxBench,
    /// Host wall time from QEMU's spawn to `/init`'s first line.
    pub init_host: Duration,
}

impl LinuxRun {
    /// The best of two runs: each timing from the faster run, `/init` from
    /// the earlier one.
    pub fn best(self, other: Self) -> Self {
        let earlier = if other.init_host < self.init_host {
            &other
        } else {
            &self
        };
        let (init_host, init_uptime) = (earlier.init_host, earlier.bench.init_uptime);
        Self {
            bench: LinuxBench {
                init_uptime,
                seq: self.bench.seq.faster(other.bench.seq),
                qd1: self.bench.qd1.faster(other.bench.qd1),
                qd16: match (self.bench.qd16, other.bench.qd16) {
                    (Some(a), Some(b)) => Some(a.faster(b)),
                    (a, b) => a.or(b),
                },
            },
            init_host,
        }
    }
}

/// Every run of one `cargo xtask bench`.
pub struct Results {
    /// Which QEMU ran (its `--version` line).
    pub qemu: String,
    /// Boots per measurement (the best timing kept).
    pub runs: u32,
    /// The disk's size in MiB.
    pub disk_mib: u64,
    /// Xen's `dom0_mem` for the dom0 runs.
    pub dom0_mem: &'static str,
    /// tidepool dom0 without a benchmark.
    pub boot: Outcome<Ready>,
    /// tidepool's benchmark on QEMU's device tree (coherent disk).
    pub stock: Outcome<KernelBench>,
    /// tidepool's benchmark with the disk non-coherent behind a no-map pool.
    pub noncoherent: Outcome<KernelBench>,
    /// tidepool as an 8 MiB dom0less domU.
    pub domu: Outcome<Ready>,
    /// Linux dom0's benchmark, unless skipped.
    pub linux: Option<Outcome<LinuxRun>>,
    /// Size of build/tidepool.img.
    pub image_bytes: u64,
}

impl Results {
    /// How many runs yielded no numbers.
    pub fn failed_runs(&self) -> usize {
        self.failures().len()
    }

    /// Each run that yielded no numbers, by name, with why.
    fn failures(&self) -> Vec<(String, &RunError)> {
        [
            ("tidepool boot".to_string(), self.boot.as_ref().err()),
            ("tidepool stock".into(), self.stock.as_ref().err()),
            (
                format!("tidepool {NC_LABEL}"),
                self.noncoherent.as_ref().err(),
            ),
            ("tidepool domU".into(), self.domu.as_ref().err()),
            (
                "linux".into(),
                self.linux.as_ref().and_then(|o| o.as_ref().err()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, err)| Some((name, err?)))
        .collect()
    }

    fn linux_ok(&self) -> Option<&LinuxRun> {
        self.linux.as_ref().and_then(|o| o.as_ref().ok())
    }
}

/// Whether a target was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Met,
    Missed,
    /// A run it depends on has no numbers.
    NoData,
}

impl Verdict {
    pub(super) fn at_least(value: Option<f64>, target: f64) -> Self {
        match value {
            Some(v) if v >= target => Self::Met,
            Some(_) => Self::Missed,
            None => Self::NoData,
        }
    }

    fn at_most(value: Option<f64>, target: f64) -> Self {
        match value {
            Some(v) if v <= target => Self::Met,
            Some(_) => Self::Missed,
            None => Self::NoData,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Met => "ok",
            Self::Missed => "MISSED",
            Self::NoData => "n/a",
        })
    }
}

/// A tidepool cell: `show` of the numbers, or `failed`.
pub(super) fn cell<T>(outcome: &Outcome<T>, show: impl Fn(&T) -> String) -> String {
    outcome.as_ref().map_or_else(|_| "failed".into(), show)
}

/// The Linux cell: `show` of the numbers, `failed` or `skipped`.
fn linux_cell(linux: &Option<Outcome<LinuxRun>>, show: impl Fn(&LinuxRun) -> String) -> String {
    match linux {
        None => "skipped".into(),
        Some(outcome) => cell(outcome, show),
    }
}

pub(super) fn ratio(ours: Option<f64>, linux: Option<f64>) -> Option<f64> {
    Some(ours? / linux?)
}

pub(super) fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The whole report: header, table, notes, failed runs, and a summary line.
pub fn render(r: &Results) -> String {
    let (stock, nc, linux) = (
        r.stock.as_ref().ok(),
        r.noncoherent.as_ref().ok(),
        r.linux_ok(),
    );

    let seq = |b: Option<&KernelBench>| b.map(|b| b.seq.mib_per_s());
    let qd1 = |b: Option<&KernelBench>| b.map(|b| b.qd1.iops());
    let linux_seq = linux.map(|l| l.bench.seq.mib_per_s());
    let linux_qd1 = linux.map(|l| l.bench.qd1.iops());
    let seq_ratios = (ratio(seq(stock), linux_seq), ratio(seq(nc), linux_seq));
    let qd1_ratios = (ratio(qd1(stock), linux_qd1), ratio(qd1(nc), linux_qd1));
    let both_ratios =
        |(a, b): (Option<f64>, Option<f64>)| format!("{} / {}", show_ratio(a), show_ratio(b));
    // The worst of both runs; no verdict unless both have numbers.
    let hypercalls = match (stock, nc) {
        (Some(a), Some(b)) => a
            .hypercalls_per_request()
            .zip(b.hypercalls_per_request())
            .map(|(a, b)| a.max(b)),
        _ => None,
    };
    let per_request = |b: &KernelBench| {
        b.hypercalls_per_request()
            .map_or_else(|| "no requests".into(), |v| format!("{v:.2}"))
    };
    let iops = |rate: Option<super::Rate>| {
        rate.map_or_else(|| "-".into(), |q| format!("{:.0} IOPS", q.iops()))
    };
    let image_kib = r.image_bytes as f64 / 1024.0;
    let limit_kib = IMAGE_SIZE_LIMIT / 1024;

    let mut rows = Vec::new();
    let mut row = |cells: [&str; 6], verdict: Option<Verdict>| {
        rows.push(Row {
            cells: cells.map(str::to_string),
            verdict,
        });
    };
    row(
        [
            "sequential read",
            &cell(&r.stock, |b| format!("{:.1} MiB/s", b.seq.mib_per_s())),
            &cell(&r.noncoherent, |b| {
                format!("{:.1} MiB/s", b.seq.mib_per_s())
            }),
            &linux_cell(&r.linux, |l| {
                format!("{:.1} MiB/s", l.bench.seq.mib_per_s())
            }),
            &both_ratios(seq_ratios),
            &format!(">= {SEQ_RATIO_TARGET}x"),
        ],
        Some(Verdict::at_least(seq_ratios.0, SEQ_RATIO_TARGET)),
    );
    row(
        [
            "4 KiB reads, QD1",
            &cell(&r.stock, |b| iops(Some(b.qd1))),
            &cell(&r.noncoherent, |b| iops(Some(b.qd1))),
            &linux_cell(&r.linux, |l| format!("{}*", iops(Some(l.bench.qd1)))),
            &both_ratios(qd1_ratios),
            &format!(">= {QD1_RATIO_TARGET}x"),
        ],
        Some(Verdict::at_least(qd1_ratios.0, QD1_RATIO_TARGET)),
    );
    row(
        [
            "4 KiB reads, QD16",
            &cell(&r.stock, |b| iops(b.qd16)),
            &cell(&r.noncoherent, |b| iops(b.qd16)),
            "-",
            "-",
            "",
        ],
        None,
    );
    row(
        [
            "flush hypercalls/request",
            &cell(&r.stock, per_request),
            &cell(&r.noncoherent, per_request),
            &linux_cell(&r.linux, |_| "1 per page+".into()),
            "-",
            &format!("<= {HYPERCALLS_PER_REQUEST_TARGET}"),
        ],
        Some(Verdict::at_most(hypercalls, HYPERCALLS_PER_REQUEST_TARGET)),
    );
    let boot_host = r.boot.as_ref().ok().map(|b| b.host.as_secs_f64());
    row(
        [
            "ready after QEMU start",
            &cell(&r.boot, |b| secs(b.host)),
            "-",
            &linux_cell(&r.linux, |l| format!("{} (/init)", secs(l.init_host))),
            "-",
            &format!("<= {} s", READY_TARGET.as_secs()),
        ],
        Some(Verdict::at_most(boot_host, READY_TARGET.as_secs_f64())),
    );
    row(
        [
            "  kernel's uptime then",
            &cell(&r.boot, |b| secs(b.uptime)),
            "-",
            &linux_cell(&r.linux, |l| secs(l.bench.init_uptime)),
            "-",
            "",
        ],
        None,
    );
    row(
        [
            "8 MiB dom0less domU",
            &cell(&r.domu, |d| format!("ready, {}", secs(d.host))),
            "-",
            "-",
            "-",
            "boots",
        ],
        Some(if r.domu.is_ok() {
            Verdict::Met
        } else {
            Verdict::Missed
        }),
    );
    row(
        [
            "image size",
            &format!("{image_kib:.1} KiB"),
            "-",
            "-",
            "-",
            &format!("<= {limit_kib} KiB"),
        ],
        Some(Verdict::at_most(
            Some(r.image_bytes as f64),
            IMAGE_SIZE_LIMIT as f64,
        )),
    );

    let mut out = format!(
        "bench: tidepool vs Linux as Xen dom0: {} TCG virt, -m {}M, Xen 4.17 dom0_mem={}, \
         one read-only {} MiB raw disk on the first virtio-blk device (virtio-mmio legacy); \
         best of {} boot(s) per measurement\n\n",
        r.qemu,
        super::MEMORY_MIB,
        r.dom0_mem,
        r.disk_mib,
        r.runs
    );
    out.push_str(&table(&rows));
    let verdicts: Vec<Verdict> = rows.iter().filter_map(|r| r.verdict).collect();
    out.push_str(&format!(
        "\n\
         stock: QEMU's device tree (the disk is DMA-coherent); {NC_LABEL}: the disk is non-coherent \
         behind a no-map pool Xen flushes, which Linux's Xen DMA path cannot serve (README), so Linux \
         runs only stock.\n\
         Targets are judged on stock, the device Linux uses; hypercalls/request on the worse of \
         the two tidepool runs.\n\
         tidepool's QD1/QD16 reads are at random 4 KiB-aligned offsets.\n\
         * Linux's QD1 figure is {} sequential 4 KiB O_DIRECT reads by one busybox dd (a dd per \
         random offset would time process start-up), which favours Linux: QEMU's raw-file reads \
         are page-cache hot either way.\n\
         + documented, not counted: Linux's Xen DMA path makes one GNTTABOP_cache_flush per 4 KiB \
         page of a non-coherent device's buffers.\n",
        super::linux::SMALL_READS
    ));
    let failures = r.failures();
    for (name, err) in &failures {
        out.push_str(&format!("\nbench: FAILED {name}: {err}\n"));
    }
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
    out.push_str(&format!(
        "\nbench: targets: {} ok, {} MISSED, {} n/a; runs failed: {}",
        count(Verdict::Met),
        count(Verdict::Missed),
        count(Verdict::NoData),
        failures.len()
    ));
    out
}

/// One line of the table: six cells and the verdict, if it has a target.
struct Row {
    cells: [String; 6],
    verdict: Option<Verdict>,
}

/// The table's two header lines.
const HEADER: [[&str; 7]; 2] = [
    [
        "metric", "tidepool", "tidepool", "Linux", "vs Linux", "target", "result",
    ],
    ["", "stock", NC_LABEL, "stock", "stock / pool", "", ""],
];

/// Left-aligned columns, two spaces apart, the verdict last.
fn table(rows: &[Row]) -> String {
    let header = HEADER.iter().map(|h| h.map(str::to_string).to_vec());
    let lines: Vec<Vec<String>> = header
        .chain(rows.iter().map(|r| {
            let verdict = r.verdict.map_or_else(String::new, |v| v.to_string());
            r.cells.iter().cloned().chain([verdict]).collect()
        }))
        .collect();
    let mut widths = [0; 7];
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let padded: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::linux::LinuxBench;
    use super::super::{Error, Rate, Throughput};
    use super::*;

    fn kernel(seq_ms: u64, qd1_ms: u64, flushes: u64) -> KernelBench {
        KernelBench {
            device: Some("/virtio_mmio@a003e00".into()),
            seq: Throughput {
                bytes: 64 << 20,
                time: Duration::from_millis(seq_ms),
            },
            qd1: Rate {
                requests: 4096,
                time: Duration::from_millis(qd1_ms),
            },
            qd16: None,
            requests: 8192,
            flush_hypercalls: flushes,
        }
    }

    fn linux() -> LinuxRun {
        LinuxRun {
            bench: LinuxBench {
                init_uptime: Duration::from_millis(2900),
                // 160 MiB/s and 2048 IOPS.
                seq: Throughput {
                    bytes: 64 << 20,
                    time: Duration::from_millis(400),
                },
                qd1: Rate {
                    requests: 4096,
                    time: Duration::from_secs(2),
                },
                qd16: None,
            },
            init_host: Duration::from_millis(3100),
        }
    }

    fn ready(host_ms: u64) -> Ready {
        Ready {
            host: Duration::from_millis(host_ms),
            uptime: Duration::from_millis(host_ms / 2),
        }
    }

    fn results() -> Results {
        Results {
            qemu: "QEMU emulator version 10.0.2".into(),
            runs: 3,
            disk_mib: 64,
            dom0_mem: "256M",
            boot: Ok(ready(800)),
            // 320 MiB/s (2x) and 8192 IOPS (4x).
            stock: Ok(kernel(200, 500, 0)),
            noncoherent: Ok(kernel(400, 1000, 8192)),
            domu: Ok(ready(200)),
            linux: Some(Ok(linux())),
            image_bytes: 300 * 1024,
        }
    }

    /// The cells of the table line starting with `metric`.
    fn line<'a>(report: &'a str, metric: &str) -> Vec<&'a str> {
        let text = report
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric:?} line in\n{report}"));
        text[metric.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    fn console_error(what: &str) -> RunError {
        RunError::Console {
            what: what.into(),
            ended: "QEMU exited after 2.0 s".into(),
            tail: "    boot: ready uptime_us=1".into(),
        }
    }

    #[test]
    fn all_targets_met() {
        let r = results();
        let report = render(&r);
        assert_eq!(
            line(&report, "sequential read"),
            [
                "320.0 MiB/s",
                "160.0 MiB/s",
                "160.0 MiB/s",
                "2.00x / 1.00x",
                ">= 1.5x",
                "ok"
            ]
        );
        assert_eq!(
            line(&report, "4 KiB reads, QD1"),
            [
                "8192 IOPS",
                "4096 IOPS",
                "2048 IOPS*",
                "4.00x / 2.00x",
                ">= 3x",
                "ok"
            ]
        );
        assert_eq!(
            line(&report, "flush hypercalls/request"),
            ["0.00", "1.00", "1 per page+", "-", "<= 1", "ok"]
        );
        assert_eq!(
            line(&report, "ready after QEMU start"),
            ["0.800 s", "-", "3.100 s (/init)", "-", "<= 1 s", "ok"]
        );
        assert_eq!(
            line(&report, "image size"),
            ["300.0 KiB", "-", "-", "-", "<= 512 KiB", "ok"]
        );
        assert!(
            report.ends_with("bench: targets: 6 ok, 0 MISSED, 0 n/a; runs failed: 0"),
            "{report}"
        );
        assert_eq!(r.failed_runs(), 0);
    }

    #[test]
    fn missed_targets_are_named_and_do_not_fail_runs() {
        let mut r = results();
        r.stock = Ok(kernel(300, 1000, 0));
        r.noncoherent = Ok(kernel(400, 1000, 16384));
        r.boot = Ok(ready(1300));
        r.image_bytes = 600 * 1024;
        let report = render(&r);
        assert_eq!(line(&report, "sequential read")[5], "MISSED");
        assert_eq!(line(&report, "4 KiB reads, QD1")[5], "MISSED");
        assert_eq!(line(&report, "flush hypercalls/request")[5], "MISSED");
        assert_eq!(line(&report, "ready after QEMU start")[5], "MISSED");
        assert_eq!(line(&report, "image size")[5], "MISSED");
        assert!(
            report.ends_with("1 ok, 5 MISSED, 0 n/a; runs failed: 0"),
            "{report}"
        );
        assert_eq!(r.failed_runs(), 0);
    }

    #[test]
    fn failed_and_skipped_runs() {
        let mut r = results();
        r.noncoherent = Err(console_error("no 'blk: bench' line"));
        r.domu = Err(RunError::Setup(Error::msg("QEMU dumpdtb failed")));
        r.linux = None;
        let report = render(&r);
        assert_eq!(
            line(&report, "sequential read"),
            [
                "320.0 MiB/s",
                "failed",
                "skipped",
                "- / -",
                ">= 1.5x",
                "n/a"
            ]
        );
        assert_eq!(line(&report, "flush hypercalls/request")[5], "n/a");
        assert_eq!(
            line(&report, "8 MiB dom0less domU"),
            ["failed", "-", "-", "-", "boots", "MISSED"]
        );
        assert!(report.contains(
            "\nbench: FAILED tidepool dynamic-pool-first: no 'blk: bench' line (QEMU exited after 2.0 s); \
             console tail:\n    boot: ready uptime_us=1\n"
        ));
        assert!(report.contains("\nbench: FAILED tidepool domU: QEMU dumpdtb failed\n"));
        assert!(report.ends_with("runs failed: 2"), "{report}");
        assert_eq!(r.failed_runs(), 2);
        r.linux = Some(Err(console_error("/init failed: dd seq")));
        assert_eq!(r.failed_runs(), 3);
    }

    #[test]
    fn best_linux_run_and_earlier_boot() {
        let a = linux();
        let mut b = linux();
        b.init_host = Duration::from_millis(2000);
        b.bench.init_uptime = Duration::from_millis(1800);
        b.bench.seq.time = Duration::from_millis(800);
        b.bench.qd1.time = Duration::from_secs(1);
        let best = a.clone().best(b.clone());
        assert_eq!(best.init_host, b.init_host);
        assert_eq!(best.bench.init_uptime, b.bench.init_uptime);
        assert_eq!(best.bench.seq, a.bench.seq);
        assert_eq!(best.bench.qd1, b.bench.qd1);
        assert_eq!(ready(900).earlier(ready(700)), ready(700));
        assert_eq!(ready(700).earlier(ready(900)), ready(700));
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::at_least(Some(1.5), 1.5), Verdict::Met);
        assert_eq!(Verdict::at_least(Some(1.49), 1.5), Verdict::Missed);
        assert_eq!(Verdict::at_most(Some(1.0), 1.0), Verdict::Met);
        assert_eq!(Verdict::at_most(None, 1.0), Verdict::NoData);
        assert_eq!(Verdict::Missed.to_string(), "MISSED");
    }
}
