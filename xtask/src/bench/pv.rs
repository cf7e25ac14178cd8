//! The PV lines of the benchmark (issue 14): tidepool's blkfront against a
//! Linux domU's xen-blkfront, both `xl` guests of the same Linux dom0
//! (`crate::pv`), served by its xen-blkback from the same read-only backing
//! disk, with the dom0 benchmark's workload: tidepool's `bench=` (the one
//! transfer loop) against the same fio `/init` on `xvda` (`linux.rs`): 1 MiB
//! sequential reads of the whole disk, then the same random 4 KiB blocks at
//! queue depth 1, 16 and 32, every run's checksums checked against the disk
//! image. Target: at least Linux's figure on every line.

use std::path::Path;
use std::time::Duration;

use super::linux::{self, LinuxBench};
use super::report::{Outcome, Verdict, ratio};
use super::tidepool::KernelBench;
use super::{Expected, Plan, best_of, linux_results, run_timed, tidepool_results};
use crate::Workspace;
use crate::pv::{GuestKernel, PvGuest};
use crate::qemu::Disk;

/// Deadline for one PV run: dom0's boot and toolstack, then the guest (for
/// Linux, fio and the checksum pass).
const PV_TIMEOUT: Duration = Duration::from_secs(600);
/// The queue depths of the PV lines.
const DEPTHS: [u64; 3] = [1, 16, 32];

/// Both sides' numbers.
pub struct PvResults {
    /// tidepool as the `xl` guest.
    pub tidepool: Outcome<KernelBench>,
    /// Linux as the `xl` guest.
    pub linux: Outcome<LinuxBench>,
}

/// Runs both guests `plan.runs` times on `disk` (read-only), checks each
/// run's checksums against `expected` and keeps the best.
pub(super) fn run(
    ws: &Workspace,
    image: &Path,
    dir: &Path,
    disk: &Path,
    plan: &Plan,
    expected: &Expected,
) -> PvResults {
    let guest = |bootargs: String| PvGuest {
        bootargs,
        disks: vec![Disk {
            file: disk.display().to_string(),
            read_only: true,
        }],
        detach: None,
        dom0less: false,
        blkback_params: String::new(),
        max_grant_frames: None,
    };
    let tidepool = best_of(plan.runs, "pv-tidepool", KernelBench::best, |label| {
        eprintln!("bench: {label}: booting (xl guest of a Linux dom0, blkfront)");
        let args = crate::pv::qemu_args(
            ws,
            image,
            &guest(format!(
                "bench={} bench-reads={}",
                plan.disk_mib, plan.reads
            )),
            &dir.join("pv-tidepool"),
        )?;
        let console = run_timed(&args, PV_TIMEOUT)?;
        tidepool_results(&console, label, expected)
    });
    let linux = linux_domu(ws, dir, plan, expected, &guest(String::new()));
    PvResults { tidepool, linux }
}

fn linux_domu(
    ws: &Workspace,
    dir: &Path,
    plan: &Plan,
    expected: &Expected,
    guest: &PvGuest,
) -> Outcome<LinuxBench> {
    let run_dir = dir.join("pv-linux");
    let domu = linux::prepare_domu(ws, &run_dir, plan.disk_mib << 20, plan.reads)?;
    let kernel = GuestKernel::Linux {
        image: domu.image.clone(),
        initramfs: domu.initramfs.clone(),
    };
    let args = crate::pv::qemu_args_for(ws, &kernel, guest, &run_dir)?;
    best_of(plan.runs, "pv-linux", LinuxBench::faster, |label| {
        eprintln!("bench: {label}: booting (Linux domU, xen-blkfront)");
        let console = run_timed(&args, PV_TIMEOUT)?;
        linux_results(&console, label, expected)
    })
}

/// The PV lines: name, tidepool's figure, Linux's, unit.
pub fn lines(r: &PvResults) -> Vec<(String, Option<f64>, Option<f64>, &'static str)> {
    let (t, l) = (r.tidepool.as_ref().ok(), r.linux.as_ref().ok());
    let mut out = vec![(
        "PV sequential read".to_string(),
        t.map(|b| b.seq.mib_per_s()),
        l.map(|b| b.seq.throughput().mib_per_s()),
        "MiB/s",
    )];
    for depth in DEPTHS {
        out.push((
            format!("PV 4 KiB random reads, QD{depth}"),
            t.and_then(|b| Some(b.at_depth(depth)?.rate.iops())),
            l.and_then(|b| Some(b.at_depth(depth)?.rate().iops())),
            "IOPS",
        ));
    }
    out
}

/// The PV table and its note.
pub fn render(r: &PvResults) -> String {
    let mut out = format!(
        "\n{:<30} {:>16} {:>16} {:>8} {:>8}  verdict\n",
        "PV (xl guests, blkback)", "tidepool", "Linux domU", "ratio", "target"
    );
    let show = |v: Option<f64>, unit: &str, failed: bool| match v {
        Some(v) => format!("{v:.1} {unit}"),
        None if failed => "failed".into(),
        None => "-".into(),
    };
    for (name, ours, theirs, unit) in lines(r) {
        let r_ = ratio(ours, theirs);
        out.push_str(&format!(
            "{name:<30} {:>16} {:>16} {:>8} {:>8}  {}\n",
            show(ours, unit, r.tidepool.is_err()),
            show(theirs, unit, r.linux.is_err()),
            r_.map_or_else(|| "-".into(), |r| format!("{r:.2}x")),
            ">= 1x",
            Verdict::at_least(r_, 1.0)
        ));
    }
    out.push_str(
        "Both guests read the same read-only disk through the same dom0's xen-blkback, with the \
         dom0 benchmark's workload: tidepool's bench= (the one transfer loop) and Linux's fio \
         (O_DIRECT, libaio; 1 MiB sequential, 8 in flight; the same random 4 KiB blocks from an \
         iolog at QD1/16/32), each run's checksums checked against the disk image.\n",
    );
    out
}
