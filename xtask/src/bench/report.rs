//! The benchmark's report: every figure side by side, the ratios, and each
//! target met, `MISSED` or `n/a` (no numbers), as a table and as JSON
//! (`--json FILE`), both built from the same [`Figure`]s.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tidepool_block::wait::WaitMode;

use super::linux::LinuxBench;
use super::pv::{self, PvResults};
use super::tidepool::KernelBench;
use super::{NONCOHERENT_SCENARIO as POOL_LABEL, RunError, VA_POOL_SCENARIO as VA_POOL_LABEL};
use crate::image::IMAGE_SIZE_LIMIT;

/// Sequential reads: at least this many times Linux's MiB/s.
const SEQ_RATIO_TARGET: f64 = 2.0;
/// 4 KiB reads at queue depth 1: at least this many times Linux's IOPS.
const QD1_RATIO_TARGET: f64 = 3.0;
/// 4 KiB reads at queue depth 16 and 32: at least this many times Linux's.
const DEEP_RATIO_TARGET: f64 = 2.0;
/// The pool path against the coherent one, sequential and QD16.
const POOL_RATIO_TARGET: f64 = 0.8;
/// At most this many cache-flush hypercalls per request.
const HYPERCALLS_PER_REQUEST_TARGET: f64 = 1.0;
/// `boot: ready` at most this long after QEMU's spawn.
const READY_TARGET: Duration = Duration::from_secs(1);
/// tidepool's sequential requests, and the pages one of them flushes
/// (header, 256 KiB and status from a page boundary).
const SEQ_REQUEST_BYTES: u64 = 256 * 1024;
const SEQ_REQUEST_PAGES: u64 = 65;
/// Kernel entry to `boot: ready` in guest time under `-icount shift=0`.
const GUEST_BOOT_TARGET: Duration = Duration::from_millis(2);

/// A run's numbers, or why there are none.
pub type Outcome<T> = Result<T, RunError>;

/// When a boot was ready.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ready {
    /// Host wall time from QEMU's spawn to the line's arrival.
    pub host: Duration,
    /// The kernel's own uptime in the line.
    pub uptime: Duration,
    /// The kernel's time from its entry to the line.
    pub since_entry: Duration,
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
                ..self.bench.faster(other.bench)
            },
            init_host,
        }
    }
}

/// What ran: the versions and the machine, for the header and the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    /// UTC, ISO 8601.
    pub date: String,
    /// The command as typed.
    pub command: String,
    /// `qemu-system-aarch64 --version`'s first line.
    pub qemu: String,
    /// Xen's version as the boot printed it.
    pub xen: String,
    /// Host CPUs.
    pub host_cores: usize,
    /// Host memory in MiB.
    pub host_memory_mib: u64,
    /// The host's load average when the run started.
    pub host_load: String,
    /// Boots per measurement (the best timing kept).
    pub runs: u32,
    /// The disk's size in MiB.
    pub disk_mib: u64,
    /// Random reads per queue depth.
    pub random_reads: u64,
    /// Xen's `dom0_mem` for the dom0 runs.
    pub dom0_mem: &'static str,
}

/// Every run of one `cargo xtask bench`.
pub struct Results {
    /// Versions and machine.
    pub setup: Setup,
    /// tidepool dom0 without a benchmark, by the host's clock.
    pub boot: Outcome<Ready>,
    /// The same under `-icount shift=0`: guest time.
    pub boot_icount: Outcome<Ready>,
    /// tidepool's benchmark on QEMU's device tree (coherent disk), default wait.
    pub stock: Outcome<KernelBench>,
    /// The same with the disk non-coherent behind a no-map pool Xen flushes.
    pub pool: Outcome<KernelBench>,
    /// The same behind a static pool Xen refuses to flush (VA maintenance).
    pub pool_va: Outcome<KernelBench>,
    /// The coherent disk with each other wait mode.
    pub waits: Vec<(WaitMode, Outcome<KernelBench>)>,
    /// tidepool as an 8 MiB dom0less domU.
    pub domu: Outcome<Ready>,
    /// Linux dom0's benchmark, unless skipped.
    pub linux: Option<Outcome<LinuxRun>>,
    /// The PV lines (`pv.rs`), unless skipped.
    pub pv: Option<PvResults>,
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
        let mut all = vec![
            ("tidepool boot".to_string(), self.boot.as_ref().err()),
            (
                "tidepool boot icount".into(),
                self.boot_icount.as_ref().err(),
            ),
            ("tidepool stock".into(), self.stock.as_ref().err()),
            (format!("tidepool {POOL_LABEL}"), self.pool.as_ref().err()),
            (
                format!("tidepool {VA_POOL_LABEL}"),
                self.pool_va.as_ref().err(),
            ),
            ("tidepool domU".into(), self.domu.as_ref().err()),
            (
                "linux".into(),
                self.linux.as_ref().and_then(|o| o.as_ref().err()),
            ),
        ];
        for (mode, outcome) in &self.waits {
            all.push((format!("tidepool wait={mode}"), outcome.as_ref().err()));
        }
        if let Some(pv) = &self.pv {
            all.push(("pv tidepool".into(), pv.tidepool.as_ref().err()));
            all.push(("pv linux".into(), pv.linux.as_ref().err()));
        }
        all.into_iter()
            .filter_map(|(name, err)| Some((name, err?)))
            .filter(|(_, err)| !matches!(err, RunError::NotRun))
            .collect()
    }

    fn linux_ok(&self) -> Option<&LinuxBench> {
        self.linux
            .as_ref()
            .and_then(|o| o.as_ref().ok())
            .map(|l| &l.bench)
    }

    /// The coherent disk's run with `mode`.
    fn with_wait(&self, mode: WaitMode) -> Option<&KernelBench> {
        let stock = self.stock.as_ref().ok();
        if stock.is_some_and(|s| s.wait == mode.name()) {
            return stock;
        }
        self.waits
            .iter()
            .find(|(m, _)| *m == mode)
            .and_then(|(_, o)| o.as_ref().ok())
    }
}

/// Whether a target was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Met.
    Ok,
    /// Not met.
    Missed,
    /// A run it depends on has no numbers.
    #[serde(rename = "n/a")]
    NoData,
}

impl Verdict {
    pub(super) fn at_least(value: Option<f64>, target: f64) -> Self {
        match value {
            Some(v) if v >= target => Self::Ok,
            Some(_) => Self::Missed,
            None => Self::NoData,
        }
    }

    fn at_most(value: Option<f64>, target: f64) -> Self {
        match value {
            Some(v) if v <= target => Self::Ok,
            Some(_) => Self::Missed,
            None => Self::NoData,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Missed => "MISSED",
            Self::NoData => "n/a",
        })
    }
}

/// One figure: tidepool's (coherent disk), tidepool's through the pool,
/// Linux's, the ratio its target is about, the target and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    /// What is measured.
    pub metric: String,
    /// Its unit.
    pub unit: &'static str,
    /// tidepool, coherent disk (QEMU's device tree).
    pub tidepool: Option<f64>,
    /// tidepool, the disk non-coherent behind a no-map pool Xen flushes.
    pub tidepool_pool: Option<f64>,
    /// Linux dom0, coherent disk.
    pub linux: Option<f64>,
    /// The ratio the target is about (`ratio_of` says which).
    pub ratio: Option<f64>,
    /// `tidepool/linux` or `pool/tidepool`.
    pub ratio_of: Option<&'static str>,
    /// The target, in words.
    pub target: Option<String>,
    /// Whether it was met.
    pub result: Option<Verdict>,
}

impl Figure {
    fn new(metric: impl Into<String>, unit: &'static str) -> Self {
        Self {
            metric: metric.into(),
            unit,
            tidepool: None,
            tidepool_pool: None,
            linux: None,
            ratio: None,
            ratio_of: None,
            target: None,
            result: None,
        }
    }

    fn values(mut self, tidepool: Option<f64>, pool: Option<f64>, linux: Option<f64>) -> Self {
        (self.tidepool, self.tidepool_pool, self.linux) = (tidepool, pool, linux);
        self
    }

    /// At least `target` times Linux.
    fn vs_linux(mut self, target: f64) -> Self {
        self.ratio = ratio(self.tidepool, self.linux);
        self.ratio_of = Some("tidepool/linux");
        self.target = Some(format!(">= {target}x Linux"));
        self.result = Some(Verdict::at_least(self.ratio, target));
        self
    }

    /// The pool path at least `target` times the coherent one.
    fn pool_vs_coherent(mut self, target: f64) -> Self {
        self.ratio = ratio(self.tidepool_pool, self.tidepool);
        self.ratio_of = Some("pool/tidepool");
        self.target = Some(format!("pool >= {target}x"));
        self.result = Some(Verdict::at_least(self.ratio, target));
        self
    }

    fn at_most(mut self, value: Option<f64>, target: f64, words: String) -> Self {
        self.target = Some(words);
        self.result = Some(Verdict::at_most(value, target));
        self
    }
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

/// One row of the waiting table: a wait mode's rates and CPU cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitRow {
    /// `wfi`, `poll`, `hybrid`, or `linux` (fio's CPU time).
    pub mode: String,
    /// Whether it is tidepool's default.
    pub default: bool,
    /// Sequential MiB/s.
    pub seq_mib_s: Option<f64>,
    /// CPU microseconds per sequential request.
    pub seq_cpu_us: Option<f64>,
    /// (depth, IOPS, CPU microseconds per request).
    pub random: Vec<(u64, f64, f64)>,
}

/// Everything the JSON file holds.
#[derive(Serialize)]
struct Json<'r> {
    setup: &'r Setup,
    figures: Vec<Figure>,
    waiting: Vec<WaitRow>,
    pv: Vec<PvFigure>,
    failures: Vec<String>,
}

/// One PV line: tidepool's blkfront against Linux's xen-blkfront, both `xl`
/// guests of one Linux dom0.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PvFigure {
    /// What is measured.
    pub metric: String,
    /// Its unit.
    pub unit: &'static str,
    /// tidepool's blkfront.
    pub tidepool: Option<f64>,
    /// Linux domU's xen-blkfront.
    pub linux: Option<f64>,
    /// `tidepool/linux`.
    pub ratio: Option<f64>,
    /// At least Linux's figure.
    pub result: Verdict,
}

/// The PV lines, if they ran.
fn pv_figures(r: &Results) -> Vec<PvFigure> {
    r.pv.as_ref().map_or_else(Vec::new, |p| {
        pv::lines(p)
            .into_iter()
            .map(|(metric, tidepool, linux, unit)| {
                let ratio = ratio(tidepool, linux);
                PvFigure {
                    metric,
                    unit,
                    tidepool,
                    linux,
                    ratio,
                    result: Verdict::at_least(ratio, 1.0),
                }
            })
            .collect()
    })
}

/// The figures with targets, in table order.
pub fn figures(r: &Results) -> Vec<Figure> {
    let (stock, pool, linux) = (r.stock.as_ref().ok(), r.pool.as_ref().ok(), r.linux_ok());
    let seq = |b: Option<&KernelBench>| b.map(|b| b.seq.mib_per_s());
    let iops = |b: Option<&KernelBench>, depth| Some(b?.at_depth(depth)?.rate.iops());
    let linux_iops = |depth| Some(linux?.at_depth(depth)?.rate().iops());
    let linux_seq = linux.map(|l| l.seq.throughput().mib_per_s());
    let mut out = vec![
        Figure::new("sequential read", "MiB/s")
            .values(seq(stock), seq(pool), linux_seq)
            .vs_linux(SEQ_RATIO_TARGET),
        Figure::new("sequential read, pool path", "MiB/s")
            .values(seq(stock), seq(pool), None)
            .pool_vs_coherent(POOL_RATIO_TARGET),
    ];
    for (depth, target) in [
        (1, QD1_RATIO_TARGET),
        (16, DEEP_RATIO_TARGET),
        (32, DEEP_RATIO_TARGET),
    ] {
        out.push(
            Figure::new(format!("4 KiB random reads, QD{depth}"), "IOPS")
                .values(iops(stock, depth), iops(pool, depth), linux_iops(depth))
                .vs_linux(target),
        );
        if depth == 16 {
            out.push(
                Figure::new("4 KiB random reads, QD16, pool path", "IOPS")
                    .values(iops(stock, 16), iops(pool, 16), None)
                    .pool_vs_coherent(POOL_RATIO_TARGET),
            );
        }
    }
    // The pool path when maintenance is by VA through the pool's window
    // (a static pool Xen refuses to flush): no column of its own, the ratio
    // against the coherent disk.
    let va = r.pool_va.as_ref().ok();
    for (metric, value, coherent) in [
        (
            "sequential read, pool maintained by VA",
            seq(va),
            seq(stock),
        ),
        (
            "4 KiB random reads, QD16, pool maintained by VA",
            iops(va, 16),
            iops(stock, 16),
        ),
    ] {
        out.push(Figure {
            ratio: ratio(value, coherent),
            ratio_of: Some("pool/tidepool"),
            ..Figure::new(
                metric,
                if metric.starts_with("seq") {
                    "MiB/s"
                } else {
                    "IOPS"
                },
            )
            .values(coherent, value, None)
        });
    }
    let per_request = |b: Option<&KernelBench>| b.and_then(KernelBench::hypercalls_per_request);
    let worst = match (per_request(pool), per_request(stock)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    out.push(
        Figure::new("flush hypercalls per request", "hypercalls")
            .values(per_request(stock), per_request(pool), None)
            .at_most(
                worst,
                HYPERCALLS_PER_REQUEST_TARGET,
                format!("<= {HYPERCALLS_PER_REQUEST_TARGET}"),
            ),
    );
    let pages =
        |b: Option<&KernelBench>| b.map(|b| b.flush_pages as f64 / b.requests.max(1) as f64);
    out.push(Figure::new("pages flushed per request", "pages").values(
        pages(stock),
        pages(pool),
        None,
    ));
    // What the pool path's extra time costs per flushed page: its
    // sequential time over the coherent one's, per page its hypercalls
    // flushed in the sequential phase (256 KiB + header and status: 65).
    let per_page = match (stock, pool) {
        (Some(s), Some(p)) if p.flush_pages > 0 => {
            let pages = p.seq.bytes.div_ceil(SEQ_REQUEST_BYTES) * SEQ_REQUEST_PAGES;
            Some((p.seq.time.as_secs_f64() - s.seq.time.as_secs_f64()) * 1e6 / pages as f64)
        }
        _ => None,
    };
    out.push(
        Figure::new("pool path's extra time per flushed page, sequential", "us")
            .values(None, per_page, None),
    );
    // Of which measured inside the flush hypercall (the kernel times each
    // `GNTTABOP_cache_flush`): per request, and per page flushed.
    let flush = |b: Option<&KernelBench>| b.map(|b| b.seq_flush.as_secs_f64() * 1e6);
    out.push(
        Figure::new("time in the flush hypercall per request, sequential", "us").values(
            flush(stock),
            flush(pool),
            None,
        ),
    );
    out.push(
        Figure::new(
            "time in the flush hypercall per flushed page, sequential",
            "us",
        )
        .values(
            None,
            flush(pool).map(|us| us / SEQ_REQUEST_PAGES as f64),
            None,
        ),
    );
    let bounced = |b: Option<&KernelBench>| b.map(|b| b.bounced as f64 / b.requests.max(1) as f64);
    out.push(Figure::new("bytes bounced per request", "bytes").values(
        bounced(stock),
        bounced(pool),
        None,
    ));
    let boot_host = r.boot.as_ref().ok().map(|b| b.host.as_secs_f64());
    out.push(
        Figure::new("boot: ready after QEMU start (wall)", "s")
            .values(
                boot_host,
                None,
                r.linux
                    .as_ref()
                    .and_then(|l| l.as_ref().ok())
                    .map(|l| l.init_host.as_secs_f64()),
            )
            .at_most(
                boot_host,
                READY_TARGET.as_secs_f64(),
                format!("<= {} s", READY_TARGET.as_secs()),
            ),
    );
    out.push(
        Figure::new("kernel entry to boot: ready (wall)", "ms").values(
            r.boot.as_ref().ok().map(|b| ms(b.since_entry)),
            None,
            None,
        ),
    );
    let guest = r.boot_icount.as_ref().ok().map(|b| ms(b.since_entry));
    out.push(
        Figure::new("kernel entry to boot: ready (guest, -icount shift=0)", "ms")
            .values(guest, None, None)
            .at_most(
                guest,
                ms(GUEST_BOOT_TARGET),
                format!("<= {} ms", ms(GUEST_BOOT_TARGET)),
            ),
    );
    let domu = r.domu.as_ref().ok().map(|d| d.host.as_secs_f64());
    out.push(Figure {
        target: Some("boots".into()),
        result: Some(if domu.is_some() {
            Verdict::Ok
        } else {
            Verdict::Missed
        }),
        ..Figure::new("8 MiB dom0less domU ready (wall)", "s").values(domu, None, None)
    });
    let kib = r.image_bytes as f64 / 1024.0;
    let limit = IMAGE_SIZE_LIMIT as f64 / 1024.0;
    out.push(
        Figure::new("image size", "KiB")
            .values(Some(kib), None, None)
            .at_most(Some(kib), limit, format!("<= {limit} KiB")),
    );
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The waiting table: each mode on the coherent disk, and Linux.
pub fn waiting(r: &Results) -> Vec<WaitRow> {
    let mut rows: Vec<WaitRow> = WaitMode::ALL
        .into_iter()
        .map(|mode| {
            let run = r.with_wait(mode);
            WaitRow {
                mode: mode.name().into(),
                default: mode == super::DEFAULT_WAIT,
                seq_mib_s: run.map(|b| b.seq.mib_per_s()),
                seq_cpu_us: run.map(|b| us(b.seq_busy)),
                random: run.map_or_else(Vec::new, |b| {
                    b.random
                        .iter()
                        .map(|(d, p)| (*d, p.rate.iops(), us(p.busy)))
                        .collect()
                }),
            }
        })
        .collect();
    if let Some(l) = r.linux_ok() {
        rows.push(WaitRow {
            mode: "linux".into(),
            default: false,
            seq_mib_s: Some(l.seq.throughput().mib_per_s()),
            seq_cpu_us: Some(us(l.seq.cpu_per_request())),
            random: l
                .random
                .iter()
                .map(|(d, job)| (*d, job.rate().iops(), us(job.cpu_per_request())))
                .collect(),
        });
    }
    rows
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The JSON document of a run.
pub fn json(r: &Results) -> String {
    let doc = Json {
        setup: &r.setup,
        figures: figures(r),
        waiting: waiting(r),
        pv: pv_figures(r),
        failures: r
            .failures()
            .iter()
            .map(|(name, err)| format!("{name}: {err}"))
            .collect(),
    };
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn show(value: Option<f64>, unit: &str) -> String {
    let Some(v) = value else {
        return "-".into();
    };
    let digits = match unit {
        "IOPS" | "bytes" => 0,
        "pages" => 1,
        "s" | "ms" => 3,
        _ => 2,
    };
    format!("{v:.digits$}")
}

/// The whole report: header, figures, waiting table, notes, failed runs,
/// and a summary line.
pub fn render(r: &Results) -> String {
    let s = &r.setup;
    let mut out = format!(
        "bench: tidepool vs Linux as Xen dom0, {}\n\
         QEMU: {} (TCG virt, cortex-a57, -smp 1, -m {}M); Xen {} dom0_mem={}\n\
         host: {} cores, {} MiB, load {}; disk: read-only {} MiB raw on virtio-mmio (legacy); \
         {} random reads per depth; best of {} boot(s) per measurement\n\n",
        s.date,
        s.qemu,
        super::MEMORY_MIB,
        s.xen,
        s.dom0_mem,
        s.host_cores,
        s.host_memory_mib,
        s.host_load,
        s.disk_mib,
        s.random_reads,
        s.runs,
    );
    let figures = figures(r);
    let mut rows = vec![
        [
            "metric", "unit", "tidepool", "tidepool", "Linux", "ratio", "target", "result",
        ]
        .map(String::from)
        .to_vec(),
        ["", "", "coherent", "pool", "", "", "", ""]
            .map(String::from)
            .to_vec(),
    ];
    let absent = |present: bool, v: Option<f64>, unit: &str| {
        if present {
            show(v, unit)
        } else {
            "failed".into()
        }
    };
    let linux_state = match &r.linux {
        None => Some("skipped"),
        Some(Err(_)) => Some("failed"),
        Some(Ok(_)) => None,
    };
    for f in &figures {
        let linux = match (f.linux, linux_state) {
            (None, Some(state)) if f.metric.contains("read") && !f.metric.contains("pool") => {
                state.to_string()
            }
            (v, _) => show(v, f.unit),
        };
        let kernel_metric = !f.metric.starts_with("image");
        rows.push(vec![
            f.metric.clone(),
            f.unit.into(),
            absent(
                f.tidepool.is_some() || !kernel_metric || r.stock.is_ok(),
                f.tidepool,
                f.unit,
            ),
            show(f.tidepool_pool, f.unit),
            linux,
            f.ratio.map_or_else(|| "-".into(), |v| format!("{v:.2}x")),
            f.target.clone().unwrap_or_default(),
            f.result.map_or_else(String::new, |v| v.to_string()),
        ]);
    }
    out.push_str(&table(&rows));

    out.push_str(
        "\nwaiting (coherent disk; CPU = time not in WFI per request, Linux: fio's usr+sys)\n",
    );
    let mut wait_rows = vec![
        [
            "wait",
            "seq MiB/s",
            "seq CPU us",
            "QD1 IOPS",
            "QD1 CPU us",
            "QD16 IOPS",
            "QD16 CPU us",
            "QD32 IOPS",
            "QD32 CPU us",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for w in waiting(r) {
        let mut row = vec![
            if w.default {
                format!("{} (default)", w.mode)
            } else {
                w.mode.clone()
            },
            show(w.seq_mib_s, "MiB/s"),
            show(w.seq_cpu_us, "us"),
        ];
        for depth in [1, 16, 32] {
            let at = w.random.iter().find(|(d, _, _)| *d == depth);
            row.push(show(at.map(|a| a.1), "IOPS"));
            row.push(show(at.map(|a| a.2), "us"));
        }
        wait_rows.push(row);
    }
    out.push_str(&table(&wait_rows));
    out.push_str(&format!(
        "\ncoherent: QEMU's device tree (the disk is DMA-coherent); pool: scenario {POOL_LABEL}, the \
         disk non-coherent behind a no-map pool Xen flushes (one GNTTABOP_cache_flush per request), \
         which Linux's Xen DMA path cannot serve (README), so Linux runs only the coherent disk; \
         \"pool maintained by VA\": scenario {VA_POOL_LABEL}, a static pool Xen refuses to flush, \
         cleaned by VA through its window instead (no hypercall).\n\
         Same workload both sides: 1 MiB sequential reads of the whole disk (Linux: fio, 8 in \
         flight; tidepool: 256 KiB requests, 32 in flight) and the same {} random 4 KiB blocks \
         (one seed, fio replays them from an iolog) at QD1/16/32. Every byte tidepool read is \
         checksummed inside the timing and each run's sums are checked against the disk image; \
         Linux's reads of the same blocks are checked by CRC-32 after fio (untimed).\n",
        s.random_reads
    ));
    if let Some(pv) = &r.pv {
        out.push_str(&pv::render(pv));
    }
    let failures = r.failures();
    for (name, err) in &failures {
        out.push_str(&format!("\nbench: FAILED {name}: {err}\n"));
    }
    let verdicts: Vec<Verdict> = figures
        .iter()
        .filter_map(|f| f.result)
        .chain(pv_figures(r).iter().map(|f| f.result))
        .collect();
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
    out.push_str(&format!(
        "\nbench: targets: {} ok, {} MISSED, {} n/a; runs failed: {}",
        count(Verdict::Ok),
        count(Verdict::Missed),
        count(Verdict::NoData),
        failures.len()
    ));
    out
}

/// Left-aligned columns, two spaces apart.
fn table(lines: &[Vec<String>]) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for line in lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in lines {
        let padded: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::linux::{Crc32, FioJob, LinuxBench};
    use super::super::tidepool::RandomPhase;
    use super::super::{Error, Rate, Throughput};
    use super::*;

    fn kernel(wait: WaitMode, seq_ms: u64, qd_ms: [u64; 3], flushes: u64) -> KernelBench {
        KernelBench {
            device: "/virtio_mmio@a003e00".into(),
            wait: wait.name().into(),
            seq: Throughput {
                bytes: 64 << 20,
                time: Duration::from_millis(seq_ms),
            },
            seq_busy: Duration::from_micros(300),
            seq_flush: Duration::from_micros(flushes.min(1) * 100),
            seq_sum: 1,
            random: [1, 16, 32]
                .into_iter()
                .zip(qd_ms)
                .map(|(depth, ms)| {
                    (
                        depth,
                        RandomPhase {
                            rate: Rate {
                                requests: 4096,
                                time: Duration::from_millis(ms),
                            },
                            busy: Duration::from_micros(50),
                            sum: 2,
                        },
                    )
                })
                .collect(),
            requests: 12544,
            flush_hypercalls: flushes,
            flush_pages: flushes * 4,
            bounced: 0,
        }
    }

    fn job(requests: u64, ms: u64) -> FioJob {
        FioJob {
            bytes: requests * 4096,
            requests,
            time: Duration::from_millis(ms),
            cpu_percent: 10.0,
        }
    }

    fn linux() -> LinuxRun {
        LinuxRun {
            bench: LinuxBench {
                init_uptime: Duration::from_millis(2900),
                seq: FioJob {
                    bytes: 64 << 20,
                    requests: 64,
                    time: Duration::from_millis(200),
                    cpu_percent: 20.0,
                },
                random: vec![
                    (1, job(4096, 2000)),
                    (16, job(4096, 800)),
                    (32, job(4096, 800)),
                ],
                seq_sum: Crc32(1),
                random_sum: Crc32(2),
            },
            init_host: Duration::from_secs(4),
        }
    }

    fn ready(host_ms: u64, entry_us: u64) -> Ready {
        Ready {
            host: Duration::from_millis(host_ms),
            uptime: Duration::from_millis(host_ms - 100),
            since_entry: Duration::from_micros(entry_us),
        }
    }

    fn setup() -> Setup {
        Setup {
            date: "2026-12-05T12:00:00Z".into(),
            command: "cargo xtask bench".into(),
            qemu: "QEMU emulator version 10.0.2".into(),
            xen: "4.17.7".into(),
            host_cores: 2,
            host_memory_mib: 8000,
            host_load: "1.00".into(),
            runs: 1,
            disk_mib: 64,
            random_reads: 4096,
            dom0_mem: "256M",
        }
    }

    fn results() -> Results {
        Results {
            setup: setup(),
            boot: Ok(ready(350, 1500)),
            boot_icount: Ok(ready(900, 1800)),
            stock: Ok(kernel(WaitMode::Poll, 50, [500, 200, 150], 0)),
            pool: Ok(kernel(WaitMode::Poll, 60, [600, 240, 180], 12544)),
            pool_va: Ok(kernel(WaitMode::Poll, 55, [550, 220, 170], 0)),
            waits: vec![
                (
                    WaitMode::Wfi,
                    Ok(kernel(WaitMode::Wfi, 70, [900, 300, 250], 0)),
                ),
                (
                    WaitMode::Hybrid,
                    Ok(kernel(WaitMode::Hybrid, 55, [520, 210, 160], 0)),
                ),
            ],
            domu: Ok(ready(400, 100)),
            linux: Some(Ok(linux())),
            pv: None,
            image_bytes: 336 * 1024,
        }
    }

    #[test]
    fn pv_lines_compare_the_same_fio_figures() {
        let mut r = results();
        assert!(pv_figures(&r).is_empty());
        r.pv = Some(PvResults {
            tidepool: Ok(kernel(WaitMode::Poll, 40, [400, 100, 80], 0)),
            linux: Err(RunError::NotRun),
        });
        let figures = pv_figures(&r);
        let names: Vec<&str> = figures.iter().map(|f| f.metric.as_str()).collect();
        assert_eq!(
            names,
            [
                "PV sequential read",
                "PV 4 KiB random reads, QD1",
                "PV 4 KiB random reads, QD16",
                "PV 4 KiB random reads, QD32"
            ]
        );
        assert!(figures.iter().all(|f| f.result == Verdict::NoData));
        r.pv.as_mut().unwrap().linux = Ok(linux().bench);
        let figures = pv_figures(&r);
        let qd16 = &figures[2];
        let linux_qd16 = linux().bench.random[1].1.rate().iops();
        assert_eq!(qd16.linux, Some(linux_qd16));
        assert_eq!(qd16.ratio, Some(qd16.tidepool.unwrap() / linux_qd16));
        let text = render(&r);
        assert!(text.contains("PV 4 KiB random reads, QD32"), "{text}");
        assert!(json(&r).contains("\"pv\": ["));
        r.pv = None;
        assert!(!render(&r).contains("PV sequential"));
    }

    fn row<'a>(report: &'a str, metric: &str) -> Vec<&'a str> {
        let line = report
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric} row in\n{report}"));
        line[metric.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    fn console_error(what: &str) -> RunError {
        RunError::Console {
            what: what.into(),
            ended: "QEMU exited after 1.0 s".into(),
            tail: "    boot: ready uptime_us=1".into(),
        }
    }

    #[test]
    fn every_target_judged_from_the_same_run() {
        let r = results();
        let report = render(&r);
        assert_eq!(
            row(&report, "sequential read  "),
            [
                "MiB/s",
                "1280.00",
                "1066.67",
                "320.00",
                "4.00x",
                ">= 2x Linux",
                "ok"
            ]
        );
        assert_eq!(
            row(&report, "sequential read, pool path"),
            [
                "MiB/s",
                "1280.00",
                "1066.67",
                "-",
                "0.83x",
                "pool >= 0.8x",
                "ok"
            ]
        );
        assert_eq!(
            row(&report, "4 KiB random reads, QD1  "),
            ["IOPS", "8192", "6827", "2048", "4.00x", ">= 3x Linux", "ok"]
        );
        assert_eq!(row(&report, "4 KiB random reads, QD32")[6], "ok");
        assert_eq!(
            row(&report, "flush hypercalls per request")[..3],
            ["hypercalls", "0.00", "1.00"]
        );
        assert_eq!(
            row(&report, "kernel entry to boot: ready (guest")[1..],
            ["ms", "1.800", "-", "-", "-", "<= 2 ms", "ok"]
        );
        assert!(
            report.contains("QEMU: QEMU emulator version 10.0.2"),
            "{report}"
        );
        assert!(report.contains("Xen 4.17.7 dom0_mem=256M"), "{report}");
        assert_eq!(
            row(&report, "poll (default)"),
            [
                "1280.00", "300.00", "8192", "50.00", "20480", "50.00", "27307", "50.00"
            ]
        );
        assert_eq!(row(&report, "wfi")[2], "4551");
        assert_eq!(
            row(&report, "linux")[..4],
            ["320.00", "625.00", "2048", "48.83"]
        );
        assert!(
            report.ends_with("bench: targets: 11 ok, 0 MISSED, 0 n/a; runs failed: 0"),
            "{report}"
        );
    }

    #[test]
    fn missed_targets_are_shown_and_do_not_fail_runs() {
        let mut r = results();
        r.pool = Ok(kernel(WaitMode::Poll, 200, [600, 900, 180], 2 * 12544));
        r.boot_icount = Ok(ready(900, 2500));
        let report = render(&r);
        assert_eq!(
            row(&report, "sequential read, pool path")[4..],
            ["0.25x", "pool >= 0.8x", "MISSED"]
        );
        assert_eq!(
            row(&report, "4 KiB random reads, QD16, pool path")[6],
            "MISSED"
        );
        assert_eq!(row(&report, "flush hypercalls per request")[6], "MISSED");
        assert_eq!(
            row(&report, "kernel entry to boot: ready (guest")[7],
            "MISSED"
        );
        assert!(
            report.ends_with("4 MISSED, 0 n/a; runs failed: 0"),
            "{report}"
        );
        assert_eq!(r.failed_runs(), 0);
    }

    #[test]
    fn failed_and_skipped_runs() {
        let mut r = results();
        r.linux = None;
        let report = render(&r);
        assert_eq!(
            row(&report, "4 KiB random reads, QD1  ")[3..],
            ["skipped", "-", ">= 3x Linux", "n/a"]
        );
        assert!(!report.contains("\nlinux"));
        r.linux = Some(Err(console_error("no 'bench-linux: fio seq' line")));
        r.waits[0].1 = Err(RunError::Setup(Error::msg("no QEMU")));
        let report = render(&r);
        assert_eq!(row(&report, "sequential read  ")[3], "failed");
        assert!(
            report.contains("bench: FAILED linux: no 'bench-linux: fio seq' line (QEMU exited")
        );
        assert!(report.contains("bench: FAILED tidepool wait=wfi: no QEMU"));
        assert_eq!(
            row(&report, "wfi"),
            ["-", "-", "-", "-", "-", "-", "-", "-"]
        );
        assert_eq!(r.failed_runs(), 2);
    }

    #[test]
    fn json_has_every_figure_and_the_setup() {
        let r = results();
        let doc: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(doc["setup"]["xen"], "4.17.7");
        let figures = doc["figures"].as_array().unwrap();
        assert_eq!(figures.len(), figures_len());
        let qd1 = figures
            .iter()
            .find(|f| f["metric"] == "4 KiB random reads, QD1")
            .unwrap();
        assert_eq!(qd1["ratio"], 4.0);
        assert_eq!(qd1["target"], ">= 3x Linux");
        assert_eq!(qd1["result"], "ok");
        assert_eq!(qd1["ratio_of"], "tidepool/linux");
        assert_eq!(doc["waiting"].as_array().unwrap().len(), 4);
        assert_eq!(doc["failures"].as_array().unwrap().len(), 0);
    }

    fn figures_len() -> usize {
        figures(&results()).len()
    }

    #[test]
    fn best_linux_run_and_earlier_boot() {
        let a = linux();
        let mut b = linux();
        b.bench.seq.time = Duration::from_millis(100);
        b.bench.random[1].1 = job(4096, 2000);
        b.init_host = Duration::from_secs(5);
        let best = a.clone().best(b);
        assert_eq!(best.bench.seq.time, Duration::from_millis(100));
        assert_eq!(best.bench.random[1].1.time, Duration::from_millis(800));
        assert_eq!(best.init_host, a.init_host);
        assert_eq!(
            ready(300, 1).earlier(ready(200, 1)).host,
            Duration::from_millis(200)
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::at_least(Some(2.0), 2.0), Verdict::Ok);
        assert_eq!(Verdict::at_least(Some(1.9), 2.0), Verdict::Missed);
        assert_eq!(Verdict::at_most(None, 1.0), Verdict::NoData);
        assert_eq!(Verdict::Missed.to_string(), "MISSED");
    }
}
