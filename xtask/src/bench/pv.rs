//! The PV lines of the benchmark (issue 14): tidepool's blkfront against a
//! Linux domU's xen-blkfront, both `xl` guests of the same Linux dom0
//! (`crate::pv`), served by its xen-blkback from the same backing disk,
//! with the same workload: sequential 1 MiB-class reads of the whole disk,
//! 4 KiB reads at queue depth 1 and 16. Target: at least Linux's figure on
//! every line.

use std::path::Path;
use std::time::Duration;

use super::linux::{self, LinuxBench};
use super::report::{Outcome, Verdict, cell, ratio, show_ratio};
use super::tidepool::{BENCH_PREFIX, KernelBench};
use super::{best_of, run_timed};
use crate::Workspace;
use crate::pv::{GuestKernel, PvGuest};

/// Deadline for one PV run: dom0's boot and toolstack, then the guest.
const PV_TIMEOUT: Duration = Duration::from_secs(400);

/// Both sides' numbers.
pub struct PvResults {
    /// tidepool as the `xl` guest.
    pub tidepool: Outcome<KernelBench>,
    /// Linux as the `xl` guest.
    pub linux: Outcome<LinuxBench>,
}

/// Runs both guests `runs` times on `disk` (read-only) and keeps the best.
pub fn run(
    ws: &Workspace,
    image: &Path,
    dir: &Path,
    disk: &Path,
    disk_mib: u64,
    runs: u32,
) -> PvResults {
    let guest = |bootargs: String| PvGuest {
        bootargs,
        disk: Some(disk.to_path_buf()),
        read_only: true,
        detach_on: None,
        dom0less: false,
    };
    let tidepool = best_of(runs, "pv-tidepool", KernelBench::best, |label| {
        eprintln!("bench: {label}: booting (xl guest of a Linux dom0, blkfront)");
        let args = crate::pv::qemu_args(
            ws,
            image,
            &guest(format!("bench={disk_mib}")),
            &dir.join("pv-tidepool"),
        )?;
        let console = run_timed(&args, PV_TIMEOUT)?;
        let Some((line, fields)) = console.find(BENCH_PREFIX) else {
            return Err(console.failure(format!("no '{}' line", BENCH_PREFIX.trim_end())));
        };
        eprintln!("bench: {label}: {}", line.text.trim_start());
        KernelBench::parse(fields).map_err(|e| console.failure(format!("{e} in {:?}", line.text)))
    });
    let linux = linux_domu(ws, dir, disk_mib, runs, &guest(String::new()));
    PvResults { tidepool, linux }
}

fn linux_domu(
    ws: &Workspace,
    dir: &Path,
    disk_mib: u64,
    runs: u32,
    guest: &PvGuest,
) -> Outcome<LinuxBench> {
    let run_dir = dir.join("pv-linux");
    let domu = linux::prepare_domu(ws, &run_dir, disk_mib << 20)?;
    let kernel = GuestKernel::Linux {
        image: domu.image.clone(),
        initramfs: domu.initramfs.clone(),
    };
    let args = crate::pv::qemu_args_for(ws, &kernel, guest, &run_dir)?;
    best_of(runs, "pv-linux", faster, |label| {
        eprintln!("bench: {label}: booting (Linux domU, xen-blkfront)");
        let console = run_timed(&args, PV_TIMEOUT)?;
        for line in console
            .lines
            .iter()
            .filter(|l| l.text.contains(linux::PREFIX))
        {
            eprintln!("bench: {label}: {}", line.text.trim_start());
        }
        linux::parse(&console.texts()).map_err(|e| console.failure(e.to_string()))
    })
}

fn faster(a: LinuxBench, b: LinuxBench) -> LinuxBench {
    LinuxBench {
        init_uptime: a.init_uptime.min(b.init_uptime),
        seq: a.seq.faster(b.seq),
        qd1: a.qd1.faster(b.qd1),
        qd16: match (a.qd16, b.qd16) {
            (Some(x), Some(y)) => Some(x.faster(y)),
            (x, y) => x.or(y),
        },
    }
}

/// The PV table, its notes and its failures.
pub fn render(r: &PvResults) -> String {
    let (t, l) = (r.tidepool.as_ref().ok(), r.linux.as_ref().ok());
    let lines: [(&str, Option<f64>, Option<f64>, &str); 3] = [
        (
            "PV sequential read",
            t.map(|b| b.seq.mib_per_s()),
            l.map(|b| b.seq.mib_per_s()),
            "MiB/s",
        ),
        (
            "PV 4 KiB reads, QD1",
            t.map(|b| b.qd1.iops()),
            l.map(|b| b.qd1.iops()),
            "IOPS",
        ),
        (
            "PV 4 KiB reads, QD16",
            t.and_then(|b| b.qd16.map(|q| q.iops())),
            l.and_then(|b| b.qd16.map(|q| q.iops())),
            "IOPS",
        ),
    ];
    let mut out = format!(
        "\n{:<24} {:>16} {:>16} {:>8} {:>8}  verdict\n",
        "PV (xl guests, blkback)", "tidepool", "Linux domU", "ratio", "target"
    );
    let show =
        |v: Option<f64>, unit: &str, failed: String| v.map_or(failed, |v| format!("{v:.1} {unit}"));
    for (name, ours, theirs, unit) in lines {
        let r_ = ratio(ours, theirs);
        out.push_str(&format!(
            "{name:<24} {:>16} {:>16} {:>8} {:>8}  {}\n",
            show(ours, unit, cell(&r.tidepool, |_| "-".into())),
            show(theirs, unit, cell(&r.linux, |_| "-".into())),
            show_ratio(r_),
            ">= 1x",
            Verdict::at_least(r_, 1.0)
        ));
    }
    out.push_str(
        "Both guests read the same read-only disk through the same dom0's xen-blkback. tidepool: \
         random 4 KiB offsets, sequential in its largest requests; Linux: busybox dd, O_DIRECT, \
         1 MiB sequential, 4 KiB sequential at QD1, 16 dd's over separate sixteenths at QD16.\n",
    );
    for (name, err) in [
        ("pv tidepool", r.tidepool.as_ref().err()),
        ("pv linux", r.linux.as_ref().err()),
    ] {
        if let Some(err) = err {
            out.push_str(&format!("bench: FAILED {name}: {err}\n"));
        }
    }
    out
}

/// Runs that yielded no numbers.
pub fn failed_runs(r: &PvResults) -> usize {
    usize::from(r.tidepool.is_err()) + usize::from(r.linux.is_err())
}
