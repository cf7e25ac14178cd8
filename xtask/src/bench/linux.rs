//! The Linux side of the benchmark: Debian's arm64 kernel booted as Xen's
//! dom0 (disk `vda`, virtio modules) or as a PV domU (disk `xvda`,
//! xen-blkfront) with an initramfs of busybox-static, Debian's `fio` with
//! its libraries ([`userland::FIO`]) and one `/init`, parametrised by the
//! disk, that runs the same workload as tidepool's `bench=` and powers off:
//!
//! - `fio`, `O_DIRECT`, libaio: 1 MiB sequential reads of the whole disk,
//!   8 in flight (8 MiB, as tidepool's 32 requests of 256 KiB); then the
//!   random 4 KiB reads of [`workload::random_blocks`] replayed from an
//!   iolog (`read_iolog`) at queue depth 1, 16 and 32;
//! - untimed, the proof of what Linux's block path returns for those reads:
//!   a CRC-32 (busybox `crc32`, zlib's) of the whole disk read with `dd`
//!   (1 MiB, `O_DIRECT`) and of the random blocks in list order (one `dd`
//!   each).
//!
//! `/init` prints `bench-linux: KIND key=value ...` lines: `init` (uptime at
//! /init), `fio NAME` (fio's JSON figures: `io_bytes`, `total_ios`,
//! `runtime` in ms, `usr_cpu`/`sys_cpu` in percent; the first of each is
//! the read direction's), `sum seq|random` (`crc32`, hex), `error`,
//! `done`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use object::{Object, ObjectSection};

use tidepool_block::workload::{self, BLOCK_BYTES};

use super::cpio::Newc;
use super::userland::{self, LIB_DIR, Userland};
use super::{KeyValues, ParseError, Rate, Throughput, tagged};
use crate::debian::PrivateApt;
use crate::devicetree::{self, Module, Tree};
use crate::qemu::{Machine, Mode, QemuCommand};
use crate::{Error, Result, Workspace, tools};

/// Where QEMU's loader puts the Linux Image (33 MB): above QEMU's DTB at
/// 0x48000000.
const KERNEL_ADDR: u64 = 0x5000_0000;
/// Where the initramfs goes: after the Image, below the end of RAM.
const RAMDISK_ADDR: u64 = 0x5800_0000;
/// End of guest RAM: QEMU `virt` RAM starts at 1 GiB.
const RAM_END: u64 = 0x4000_0000 + (super::MEMORY_MIB << 20);
/// Linux's command line: Xen's console, /init from the initramfs, and no
/// CMA reservation (Debian's 64 MiB default is waste in a small dom0).
const LINUX_BOOTARGS: &str = "console=hvc0 earlycon=xen rdinit=/init cma=0";
/// The modules the benchmark needs, in the kernel's own names.
const WANTED_MODULES: &[&str] = &["virtio_mmio", "virtio_blk"];
/// busybox applets `/init` uses, linked to `/bin/busybox`.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "dd", "cut", "usleep", "poweroff", "grep", "sed", "tr", "crc32",
];
/// The prefix of `/init`'s console lines.
pub const PREFIX: &str = "bench-linux: ";
/// The line `/init` prints first.
pub const INIT_MARKER: &str = "bench-linux: init ";
/// Sequential reads: 1 MiB each, O_DIRECT, the whole disk.
const SEQ_BLOCK: u64 = 1 << 20;
/// Sequential reads in flight (8 MiB, the bytes tidepool keeps in flight).
const SEQ_DEPTH: u64 = 8;
/// The queue depths of the random reads, as tidepool's.
pub const DEPTHS: [u64; 3] = [1, 16, 32];
/// The iolog of the random reads in the initramfs.
const IOLOG: &str = "bench/random.iolog";
/// The random reads' block numbers, one a line, for the checksum pass.
const BLOCKS: &str = "bench/random.blocks";

/// The files that make Linux a dom0: the Image and an initramfs.
pub struct LinuxDom0 {
    /// The uncompressed arm64 Image.
    pub image: PathBuf,
    /// The newc initramfs.
    pub initramfs: PathBuf,
    /// Modules `/init` loads, in order (empty when built in).
    pub modules: Vec<String>,
}

/// Part of a Debian package to put into an initramfs.
pub struct PackagePart {
    /// The package name.
    pub name: &'static str,
    /// Which of its paths (relative, no leading `/`) to keep; directories
    /// are kept when something under them is.
    pub keep: fn(&str) -> bool,
}

/// What a dom0 initramfs holds besides busybox-static.
pub struct Dom0Contents<'a> {
    /// Modules wanted, in the kernel's names (dependencies are added).
    pub modules: &'a [&'a str],
    /// busybox applets linked into `/bin`.
    pub applets: &'a [&'a str],
    /// Package contents unpacked into the root.
    pub packages: &'a [PackagePart],
    /// Programs added with the libraries they link ([`userland::add`]).
    pub userland: &'a [&'a Userland],
    /// Further files: path, permission bits, contents.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// `/init`, given the modules to load in order.
    pub init: &'a dyn Fn(&[String]) -> String,
    /// The initramfs file name in the run directory.
    pub name: &'a str,
}

/// Fetches (once) Debian's Linux image package, busybox-static and fio with
/// its libraries, and writes the initramfs for reading a `disk_bytes` disk,
/// `reads` random 4 KiB reads per queue depth, into `dir`.
pub fn prepare(ws: &Workspace, dir: &Path, disk_bytes: u64, reads: u64) -> Result<LinuxDom0> {
    build(
        ws,
        dir,
        &Dom0Contents {
            modules: WANTED_MODULES,
            applets: APPLETS,
            packages: &[],
            userland: &[&userland::FIO],
            files: workload_files(disk_bytes, reads, "vda"),
            init: &|modules| init_script(modules, disk_bytes, "vda"),
            name: "linux-initramfs.cpio",
        },
    )
}

/// Fetches (once) Debian's Linux image package, busybox-static,
/// `contents.packages` and `contents.userland`, and writes the initramfs `contents` describes into
/// `dir`.
pub fn build(ws: &Workspace, dir: &Path, contents: &Dom0Contents<'_>) -> Result<LinuxDom0> {
    // The package board_dtbs unpacks: ROOT/usr/lib/linux-image-VERSION holds
    // the DTBs; the Image and modules are ROOT/boot and ROOT/lib/modules.
    let dtbs = tools::board_dtbs(ws)?;
    let version = dtbs
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("linux-image-"))
        .ok_or_else(|| Error::msg(format!("{}: not linux-image-VERSION", dtbs.display())))?
        .to_string();
    let root = dtbs
        .ancestors()
        .nth(3)
        .ok_or_else(|| Error::msg(format!("{}: no package root", dtbs.display())))?;
    let image = root.join(format!("boot/vmlinuz-{version}"));
    if !image.is_file() {
        return Err(Error::msg(format!("{}: missing", image.display())));
    }
    let modules_dir = root.join(format!("lib/modules/{version}"));

    let apt = PrivateApt::arm64(&ws.build.join("apt-arm64"))?;
    let unpacked = ws.build.join("debian-arm64");
    let busybox_dir = unpacked.join("busybox-static");
    apt.fetch_and_unpack(&["busybox-static"], &busybox_dir)?;
    let busybox_path = busybox_dir.join("bin/busybox");
    let busybox = std::fs::read(&busybox_path).map_err(|e| Error::io(busybox_path, e))?;

    let index = ModuleIndex::scan(&modules_dir)?;
    let modules = load_order(contents.modules, &index.builtin, |name| index.depends(name))?;
    let mut archive = Newc::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "lib",
        "lib/modules",
        "usr",
        "usr/bin",
        "bench",
    ] {
        archive.dir(d, 0o755);
    }
    // The kernel opens /dev/console for /init before devtmpfs is mounted.
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.file("bin/busybox", 0o755, &busybox);
    for applet in contents.applets {
        archive.symlink(&format!("bin/{applet}"), "busybox");
    }
    for name in &modules {
        let path = index.path(name)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.clone(), e))?;
        archive.file(&format!("lib/modules/{name}.ko"), 0o644, &bytes);
    }
    for part in contents.packages {
        let dest = unpacked.join(part.name);
        apt.fetch_and_unpack(&[part.name], &dest)?;
        archive.tree(&dest, part.keep)?;
    }
    for set in contents.userland {
        let added = userland::add(&apt, &unpacked, set, &mut archive)?;
        eprintln!(
            "linux: initramfs gets {} with {} libraries ({} KiB)",
            set.programs.join(" "),
            added.libraries.len(),
            added.bytes / 1024
        );
    }
    for (path, perm, bytes) in &contents.files {
        archive.file(path, *perm, bytes);
    }
    archive.file("init", 0o755, (contents.init)(&modules).as_bytes());
    let initramfs = dir.join(contents.name);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.to_path_buf(), e))?;
    std::fs::write(&initramfs, archive.finish()).map_err(|e| Error::io(initramfs.clone(), e))?;
    Ok(LinuxDom0 {
        image,
        initramfs,
        modules,
    })
}

/// Fetches (once) what a Linux domU needs to time reads of its PV disk
/// `xvda` (`disk_bytes`) through xen-blkfront, and writes its initramfs into
/// `dir`: the dom0 benchmark's fio workload and checksums, `reads` random
/// reads per queue depth, on `xvda`.
pub fn prepare_domu(ws: &Workspace, dir: &Path, disk_bytes: u64, reads: u64) -> Result<LinuxDom0> {
    build(
        ws,
        dir,
        &Dom0Contents {
            modules: &["xen_blkfront"],
            applets: APPLETS,
            packages: &[],
            userland: &[&userland::FIO],
            files: workload_files(disk_bytes, reads, "xvda"),
            init: &|modules| init_script(modules, disk_bytes, "xvda"),
            name: "linux-domu-initramfs.cpio",
        },
    )
}

/// The workload's files: the iolog of [`workload::random_blocks`] on
/// /dev/`device` and the same blocks, one a line, for the checksum pass.
fn workload_files(disk_bytes: u64, reads: u64, device: &str) -> Vec<(String, u32, Vec<u8>)> {
    let blocks: Vec<u64> =
        workload::random_blocks(workload::SEED, reads, disk_bytes / BLOCK_BYTES).collect();
    let list: String = blocks.iter().map(|b| format!("{b}\n")).collect();
    vec![
        (
            IOLOG.to_string(),
            0o644,
            iolog(&blocks, device).into_bytes(),
        ),
        (BLOCKS.to_string(), 0o644, list.into_bytes()),
    ]
}

/// fio's version 2 iolog of 4 KiB reads of `blocks` from /dev/`device`.
fn iolog(blocks: &[u64], device: &str) -> String {
    let mut log = format!("fio version 2 iolog\n/dev/{device} add\n/dev/{device} open\n");
    for block in blocks {
        log.push_str(&format!(
            "/dev/{device} read {} {BLOCK_BYTES}\n",
            block * BLOCK_BYTES
        ));
    }
    log.push_str(&format!("/dev/{device} close\n"));
    log
}

/// `/init`: mount, load `modules`, wait for /dev/`device`, run fio on a
/// `disk_bytes` disk, checksum what Linux reads, power off.
fn init_script(modules: &[String], disk_bytes: u64, device: &str) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| format!("insmod /lib/modules/{m}.ko || fail \"insmod {m}\"\n"))
        .collect();
    let depths = DEPTHS.map(|d| d.to_string()).join(" ");
    format!(
        r#"#!/bin/sh
# tidepool's `cargo xtask bench`, Linux dom0 side (xtask/src/bench/linux.rs).
export PATH=/bin:/usr/bin
export LD_LIBRARY_PATH=/{LIB_DIR}
fail() {{ echo "{PREFIX}error $1"; poweroff -f; }}
# fio's figures: the numeric fields of its JSON, one line (the first of each
# key is the read direction's).
fio_run() {{
    name=$1
    shift
    fio --thread --output-format=json --output=/run/$name.json --name=$name "$@" >/dev/null 2>/run/$name.err \
        || fail "fio $name: $(tr '\n' ' ' < /run/$name.err)"
    echo "{PREFIX}fio $name $(grep -E '"(io_bytes|total_ios|runtime|usr_cpu|sys_cpu)" :' /run/$name.json \
        | sed 's/^ *"\([a-z_]*\)" : \([0-9.]*\),*$/\1=\2/' | tr '\n' ' ')"
}}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo "{PREFIX}init uptime=$(cut -d' ' -f1 /proc/uptime)"
{insmods}n=0
while [ ! -b /dev/{device} ]; do
    n=$((n + 1))
    [ $n -gt 500 ] && fail "no /dev/{device} after 5 s"
    usleep 10000
done
fio_run seq --filename=/dev/{device} --rw=read --bs={SEQ_BLOCK} --size={disk_bytes} --direct=1 --ioengine=libaio --iodepth={SEQ_DEPTH}
for qd in {depths}; do
    fio_run qd$qd --read_iolog=/{IOLOG} --direct=1 --ioengine=libaio --iodepth=$qd
done
echo "{PREFIX}sum seq crc32=$(dd if=/dev/{device} bs={SEQ_BLOCK} iflag=direct 2>/dev/null | crc32)"
echo "{PREFIX}sum random crc32=$(while read -r b; do dd if=/dev/{device} bs={BLOCK_BYTES} skip=$b count=1 iflag=direct 2>/dev/null; done < /{BLOCKS} | crc32)"
echo "{PREFIX}done"
poweroff -f
"#
    )
}

/// A dom0less domU booted by Xen next to the Linux dom0.
pub struct DomU<'a> {
    /// Its kernel Image.
    pub image: &'a Path,
    /// Its memory in KiB.
    pub memory_kib: u64,
    /// Its command line.
    pub bootargs: &'a str,
}

/// Where QEMU's loader puts a dom0less domU's Image: below QEMU's DTB.
const DOMU_ADDR: u64 = 0x4700_0000;

/// QEMU's arguments for Linux as dom0 on `machine`'s hardware (its memory,
/// GIC, disks), with Xen, the Image and the initramfs loaded by QEMU; with
/// `domu`, also a dom0less domU with `xen,enhanced = "enabled"` (xenstore
/// once dom0 runs `init-dom0less`) and a vpl011.
///
/// `Machine::prepare`'s dom0 mode loads one module below QEMU's DTB, too
/// little room for a 33 MB Image; its bare mode with Xen as the `-kernel`
/// gives the same hardware arguments and QEMU's own device tree, to which
/// this adds Xen's `/chosen` and the two modules above the DTB.
pub fn qemu_args(
    ws: &Workspace,
    machine: &Machine,
    dom0: &LinuxDom0,
    xen_bootargs: &str,
    run_dir: &Path,
    domu: Option<&DomU<'_>>,
) -> Result<QemuCommand> {
    let mut bare = machine.clone();
    bare.mode = Mode::Bare;
    bare.virtualization = true;
    bare.bootargs.clear();
    let xen = tools::xen_image(ws)?;
    let mut args = bare.prepare(ws, &xen, run_dir)?;
    let dtb_path = args
        .args()
        .iter()
        .position(|a| a == "-dtb")
        .and_then(|i| args.args().get(i + 1))
        .map(PathBuf::from)
        .ok_or_else(|| Error::msg("bare QEMU arguments have no -dtb"))?;

    let size = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| Error::io(path.to_path_buf(), e))
    };
    let kernel = Module {
        addr: KERNEL_ADDR,
        size: size(&dom0.image)?,
        bootargs: LINUX_BOOTARGS.into(),
    };
    let ramdisk_size = size(&dom0.initramfs)?;
    check_layout(kernel.size, ramdisk_size)?;

    let bytes = std::fs::read(&dtb_path).map_err(|e| Error::io(dtb_path.clone(), e))?;
    let mut tree =
        Tree::from_dtb(&bytes).map_err(|e| Error::msg(format!("{}: {e}", dtb_path.display())))?;
    devicetree::add_xen_dom0(&mut tree, xen_bootargs, &kernel)
        .and_then(|()| devicetree::add_xen_dom0_ramdisk(&mut tree, RAMDISK_ADDR, ramdisk_size))
        .map_err(|e| Error::msg(format!("Linux dom0 device tree: {e}")))?;
    if let Some(domu) = domu {
        let size = size(domu.image)?;
        if DOMU_ADDR + size > 0x4800_0000 {
            return Err(Error::msg(format!(
                "the domU Image ({size} bytes) would overlap QEMU's DTB"
            )));
        }
        let module = Module {
            addr: DOMU_ADDR,
            size,
            bootargs: domu.bootargs.into(),
        };
        devicetree::add_xen_dom0less_domu(&mut tree, "domU1", domu.memory_kib, 1, true, &module)
            .and_then(|()| tree.set_string("/chosen/domU1", "xen,enhanced", "enabled"))
            .map_err(|e| Error::msg(format!("dom0less domU device tree: {e}")))?;
        args.push("-device");
        args.push(format!(
            "loader,file={},addr={DOMU_ADDR:#x},force-raw=on",
            domu.image.display()
        ));
    }
    let out = tree
        .to_dtb()
        .map_err(|e| Error::msg(format!("writing DT: {e}")))?;
    std::fs::write(&dtb_path, out).map_err(|e| Error::io(dtb_path.clone(), e))?;

    for (file, addr) in [(&dom0.image, KERNEL_ADDR), (&dom0.initramfs, RAMDISK_ADDR)] {
        args.push("-device");
        args.push(format!(
            "loader,file={},addr={addr:#x},force-raw=on",
            file.display()
        ));
    }
    Ok(args)
}

/// The Image and initramfs must fit between their addresses and RAM's end.
fn check_layout(kernel_size: u64, ramdisk_size: u64) -> Result<()> {
    if KERNEL_ADDR + kernel_size > RAMDISK_ADDR {
        return Err(Error::msg(format!(
            "the Linux Image ({kernel_size} bytes at {KERNEL_ADDR:#x}) overlaps the initramfs at {RAMDISK_ADDR:#x}"
        )));
    }
    if RAMDISK_ADDR + ramdisk_size > RAM_END {
        return Err(Error::msg(format!(
            "the initramfs ({ramdisk_size} bytes at {RAMDISK_ADDR:#x}) runs past RAM's end {RAM_END:#x}"
        )));
    }
    Ok(())
}

/// One fio job's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FioJob {
    /// Bytes read.
    pub bytes: u64,
    /// Requests (fio's I/Os) completed.
    pub requests: u64,
    /// fio's runtime of the job (millisecond resolution).
    pub time: Duration,
    /// fio's user plus system CPU, in percent of `time`.
    pub cpu_percent: f64,
}

impl FioJob {
    /// The read throughput.
    pub fn throughput(&self) -> Throughput {
        Throughput {
            bytes: self.bytes,
            time: self.time,
        }
    }

    /// The request rate.
    pub fn rate(&self) -> Rate {
        Rate {
            requests: self.requests,
            time: self.time,
        }
    }

    /// CPU time per request (fio's usr+sys share of its runtime).
    pub fn cpu_per_request(&self) -> Duration {
        self.time.mul_f64(self.cpu_percent / 100.0) / self.requests.max(1) as u32
    }

    /// The faster of two runs of the same job.
    pub fn faster(self, other: Self) -> Self {
        if other.time < self.time { other } else { self }
    }
}

/// A CRC-32 (zlib's: reflected 0xEDB88320, busybox `crc32`) of bytes
/// Linux read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crc32(pub u32);

/// What Linux measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LinuxBench {
    /// Uptime when `/init` started, by Linux's clock.
    pub init_uptime: Duration,
    /// fio's whole-disk 1 MiB reads.
    pub seq: FioJob,
    /// fio's random 4 KiB reads at each of [`DEPTHS`], in that order.
    pub random: Vec<(u64, FioJob)>,
    /// The whole disk, read with `dd`.
    pub seq_sum: Crc32,
    /// The random blocks in list order, read with `dd`.
    pub random_sum: Crc32,
}

impl LinuxBench {
    /// fio's random reads at `depth`, if it ran them.
    pub fn at_depth(&self, depth: u64) -> Option<&FioJob> {
        self.random
            .iter()
            .find_map(|(d, job)| (*d == depth).then_some(job))
    }

    /// The best of two runs: each timing from the faster run, the earlier
    /// `/init` (the checksums are checked per run).
    pub fn faster(self, other: Self) -> Self {
        let random = self
            .random
            .iter()
            .zip(&other.random)
            .map(|(&(depth, a), &(_, b))| (depth, a.faster(b)))
            .collect();
        Self {
            init_uptime: self.init_uptime.min(other.init_uptime),
            seq: self.seq.faster(other.seq),
            random,
            ..self
        }
    }
}

/// Why Linux's console did not yield the numbers.
#[derive(Debug, PartialEq)]
pub enum LinuxParseError {
    /// `/init` reported an error.
    Reported(String),
    /// A line of this kind never appeared.
    Missing(String),
    /// A line did not parse.
    Bad {
        /// The line.
        line: String,
        /// What was wrong.
        err: ParseError,
    },
}

impl fmt::Display for LinuxParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reported(what) => write!(f, "/init failed: {what}"),
            Self::Missing(kind) => write!(f, "no '{PREFIX}{kind}' line"),
            Self::Bad { line, err } => write!(f, "{err} in {line:?}"),
        }
    }
}

/// Finds `/init`'s lines in the console and reads the measurements.
pub fn parse<'l>(
    lines: impl IntoIterator<Item = &'l str>,
) -> std::result::Result<LinuxBench, LinuxParseError> {
    let mut found: HashMap<String, &str> = HashMap::new();
    for line in lines {
        let Some((kind, fields)) = tagged(line, PREFIX) else {
            continue;
        };
        if kind == "error" {
            return Err(LinuxParseError::Reported(fields.to_string()));
        }
        // `fio NAME ...` and `sum NAME ...` are keyed by both words.
        let (kind, fields) = match kind {
            "fio" | "sum" => {
                let (name, fields) = fields.split_once(' ').unwrap_or((fields, ""));
                (format!("{kind} {name}"), fields)
            }
            _ => (kind.to_string(), fields),
        };
        found.entry(kind).or_insert(fields);
    }
    let get = |kind: &str| -> std::result::Result<(KeyValues<'_>, String), LinuxParseError> {
        found
            .get(kind)
            .map(|fields| (KeyValues::new(fields), format!("{PREFIX}{kind} {fields}")))
            .ok_or_else(|| LinuxParseError::Missing(kind.to_string()))
    };
    let bad = |line: String| move |err| LinuxParseError::Bad { line, err };
    let (init, line) = get("init")?;
    let init_uptime = init
        .f64("uptime")
        .map(Duration::from_secs_f64)
        .map_err(bad(line))?;
    let job = |name: &str| {
        let (kv, line) = get(&format!("fio {name}"))?;
        fio_job(&kv).map_err(bad(line))
    };
    let sum = |name: &str| {
        let (kv, line) = get(&format!("sum {name}"))?;
        crc32_field(&kv).map_err(bad(line))
    };
    let mut random = Vec::new();
    for depth in DEPTHS {
        random.push((depth, job(&format!("qd{depth}"))?));
    }
    Ok(LinuxBench {
        init_uptime,
        seq: job("seq")?,
        random,
        seq_sum: sum("seq")?,
        random_sum: sum("random")?,
    })
}

/// A fio line's figures; a job that moved nothing or took no time is
/// refused.
fn fio_job(kv: &KeyValues<'_>) -> std::result::Result<FioJob, ParseError> {
    let nonzero = |key: &'static str| match kv.u64(key)? {
        0 => Err(ParseError::Invalid {
            key,
            value: "0".into(),
        }),
        n => Ok(n),
    };
    Ok(FioJob {
        bytes: nonzero("io_bytes")?,
        requests: nonzero("total_ios")?,
        time: Duration::from_millis(nonzero("runtime")?),
        cpu_percent: kv.f64("usr_cpu")? + kv.f64("sys_cpu")?,
    })
}

fn crc32_field(kv: &KeyValues<'_>) -> std::result::Result<Crc32, ParseError> {
    let value = kv.get("crc32")?;
    u32::from_str_radix(value, 16)
        .ok()
        .filter(|_| value.len() == 8)
        .map(Crc32)
        .ok_or_else(|| ParseError::Invalid {
            key: "crc32",
            value: value.into(),
        })
}

/// zlib's CRC-32 of what `chunks` yield, in order (busybox `crc32`).
pub fn crc32<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Crc32 {
    const fn table() -> [u32; 256] {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    }
    const TABLE: [u32; 256] = table();
    let mut crc = u32::MAX;
    for chunk in chunks {
        for &byte in chunk {
            crc = (crc >> 8) ^ TABLE[((crc as u8) ^ byte) as usize];
        }
    }
    Crc32(!crc)
}

/// The modules of one kernel: which are built in, where the others are.
struct ModuleIndex {
    builtin: HashSet<String>,
    files: HashMap<String, PathBuf>,
}

impl ModuleIndex {
    /// Reads `modules.builtin` and finds every `.ko` under `dir/kernel`.
    fn scan(dir: &Path) -> Result<Self> {
        let builtin_path = dir.join("modules.builtin");
        let builtin = std::fs::read_to_string(&builtin_path)
            .map_err(|e| Error::io(builtin_path, e))?
            .lines()
            .filter_map(module_name)
            .collect();
        let mut files = HashMap::new();
        let mut pending = vec![dir.join("kernel")];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d).map_err(|e| Error::io(d.clone(), e))? {
                let path = entry.map_err(|e| Error::io(d.clone(), e))?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Some(name) = path.to_str().and_then(module_name) {
                    files.insert(name, path);
                }
            }
        }
        Ok(Self { builtin, files })
    }

    fn path(&self, name: &str) -> Result<&PathBuf> {
        self.files
            .get(name)
            .ok_or_else(|| Error::msg(format!("no module {name}.ko in the Linux package")))
    }

    /// The modules `name` needs loaded first (its `.modinfo` `depends=`).
    fn depends(&self, name: &str) -> Result<Vec<String>> {
        let path = self.path(name)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.clone(), e))?;
        let elf = object::File::parse(&*bytes)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        let modinfo = elf
            .section_by_name(".modinfo")
            .and_then(|s| s.data().ok())
            .ok_or_else(|| Error::msg(format!("{}: no .modinfo section", path.display())))?;
        Ok(modinfo_depends(modinfo))
    }
}

/// The module name of a path like `kernel/drivers/block/virtio_blk.ko`:
/// the file stem with `-` as `_`, as the kernel names modules.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.strip_suffix(".ko")?;
    Some(stem.replace('-', "_"))
}

/// The `depends=` list of a `.modinfo` section (NUL-separated `key=value`).
fn modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    let Some(list) = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(list)
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect()
}

/// The modules to load for `wanted`, dependencies first, each once, leaving
/// out what is `builtin`.
fn load_order(
    wanted: &[&str],
    builtin: &HashSet<String>,
    depends: impl Fn(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        builtin: &HashSet<String>,
        depends: &dyn Fn(&str) -> Result<Vec<String>>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if builtin.contains(name) || order.iter().any(|m| m == name) {
            return Ok(());
        }
        if path.iter().any(|m| m == name) {
            return Err(Error::msg(format!(
                "module dependency cycle: {} -> {name}",
                path.join(" -> ")
            )));
        }
        path.push(name.to_string());
        for dep in depends(name)? {
            visit(&dep, builtin, depends, path, order)?;
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(name, builtin, &depends, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> std::result::Result<LinuxBench, LinuxParseError> {
        parse(text.lines())
    }

    const FIO: &str =
        "io_bytes=67108864 total_ios=64 runtime=420 usr_cpu=1.5 sys_cpu=10.5 io_bytes=0 runtime=0";

    fn good() -> String {
        let random = |depth: u64, ms: u64| {
            format!(
                "bench-linux: fio qd{depth} io_bytes=16777216 total_ios=4096 runtime={ms} usr_cpu=5.0 sys_cpu=20.0\n"
            )
        };
        format!(
            "(XEN) *** LOADING DOMAIN 0 ***\n[    2.9] Run /init as init process\nbench-linux: init uptime=2.91\n\
             bench-linux: fio seq {FIO}\n{}{}{}\
             bench-linux: sum seq crc32=ffffffff\n\
             bench-linux: sum random crc32=00003039\nbench-linux: done",
            random(1, 2048),
            random(16, 512),
            random(32, 500)
        )
    }

    #[test]
    fn parses_init_output() {
        let got = read(&good()).unwrap();
        assert_eq!(got.init_uptime, Duration::from_millis(2910));
        assert_eq!(got.seq.bytes, 64 << 20);
        assert_eq!(got.seq.time, Duration::from_millis(420));
        assert!((got.seq.throughput().mib_per_s() - 64.0 / 0.42).abs() < 1e-9);
        assert!(
            (got.seq.cpu_percent - 12.0).abs() < 1e-9,
            "the read's figures come first"
        );
        let depths: Vec<u64> = got.random.iter().map(|(d, _)| *d).collect();
        assert_eq!(depths, DEPTHS);
        let qd1 = got.random[0].1;
        assert_eq!(qd1.requests, 4096);
        assert!((qd1.rate().iops() - 2000.0).abs() < 1e-9);
        assert_eq!(qd1.cpu_per_request(), Duration::from_nanos(125_000));
        assert_eq!(
            got.at_depth(16).map(|job| job.time),
            Some(Duration::from_millis(512))
        );
        assert!(got.at_depth(64).is_none());
        assert_eq!(got.seq_sum, Crc32(u32::MAX));
        assert_eq!(got.random_sum, Crc32(12345));
    }

    #[test]
    fn lines_may_carry_console_noise_before_the_prefix() {
        let text = good().replace(
            "bench-linux: fio seq",
            "[  3.1] random: crng initbench-linux: fio seq",
        );
        assert_eq!(read(&text).unwrap().seq.bytes, 64 << 20);
    }

    #[test]
    fn reports_what_is_wrong() {
        let err = read("bench-linux: init uptime=1.0\nbench-linux: error no /dev/vda after 5 s");
        assert_eq!(
            err.unwrap_err(),
            LinuxParseError::Reported("no /dev/vda after 5 s".into())
        );
        let err = read("bench-linux: init uptime=1.0").unwrap_err();
        assert_eq!(err, LinuxParseError::Missing("fio qd1".into()));
        assert_eq!(err.to_string(), "no 'bench-linux: fio qd1' line");
        let text = good().replace("runtime=420", "runtime=0");
        assert!(matches!(
            read(&text),
            Err(LinuxParseError::Bad {
                err: ParseError::Invalid { key: "runtime", .. },
                ..
            })
        ));
        let text = good().replace("crc32=00003039", "crc32=");
        assert!(read(&text).is_err(), "an empty sum (no crc32 applet)");
        let text = good().replace("crc32=00003039", "crc32=123456789");
        assert!(read(&text).is_err());
    }

    #[test]
    fn crc32_matches_zlib() {
        // The standard check value: CRC-32 of "123456789".
        assert_eq!(crc32([&b"123456789"[..]]), Crc32(0xcbf4_3926));
        assert_eq!(crc32([&b"1234"[..], &b"56789"[..]]), Crc32(0xcbf4_3926));
        assert_eq!(crc32([]), Crc32(0));
    }

    #[test]
    fn the_iolog_replays_the_blocks() {
        let log = iolog(&[0, 3], "vda");
        assert_eq!(
            log,
            "fio version 2 iolog\n/dev/vda add\n/dev/vda open\n/dev/vda read 0 4096\n\
             /dev/vda read 12288 4096\n/dev/vda close\n"
        );
    }

    #[test]
    fn init_script_runs_fio_and_the_checksums_and_loads_modules_in_order() {
        let script = init_script(
            &["virtio_mmio".into(), "virtio_blk".into()],
            64 << 20,
            "vda",
        );
        let domu = init_script(&["xen_blkfront".into()], 64 << 20, "xvda");
        assert!(domu.contains("--filename=/dev/xvda --rw=read"));
        assert!(domu.contains("dd if=/dev/xvda bs=4096 skip=$b"));
        assert!(!script.contains("xvda"));
        assert!(script.starts_with("#!/bin/sh\n"));
        let mmio = script.find("insmod /lib/modules/virtio_mmio.ko").unwrap();
        let blk = script.find("insmod /lib/modules/virtio_blk.ko").unwrap();
        assert!(mmio < blk);
        assert!(script.contains(
            "--rw=read --bs=1048576 --size=67108864 --direct=1 --ioengine=libaio --iodepth=8"
        ));
        assert!(script.contains("for qd in 1 16 32; do"));
        assert!(script.contains(
            "--read_iolog=/bench/random.iolog --direct=1 --ioengine=libaio --iodepth=$qd"
        ));
        assert!(script.contains("skip=$b count=1 iflag=direct"));
        assert!(script.trim_end().ends_with("poweroff -f"));
        for applet in [
            "mount", "insmod", "dd", "cut", "usleep", "poweroff", "grep", "sed", "tr", "crc32",
        ] {
            assert!(APPLETS.contains(&applet), "{applet} is linked");
        }
    }

    #[test]
    fn module_names_and_depends() {
        assert_eq!(
            module_name("kernel/drivers/block/xen-blkback/xen-blkback.ko").as_deref(),
            Some("xen_blkback")
        );
        assert_eq!(module_name("kernel/drivers/virtio/virtio.ko.xz"), None);
        let modinfo = b"license=GPL\0depends=xen-privcmd,virtio\0intree=Y\0name=xenfs\0";
        assert_eq!(modinfo_depends(modinfo), ["xen_privcmd", "virtio"]);
        assert!(modinfo_depends(b"depends=\0name=virtio_blk\0").is_empty());
    }

    #[test]
    fn load_order_puts_dependencies_first_and_skips_builtins() {
        let deps: HashMap<&str, Vec<String>> = HashMap::from([
            ("virtio_blk", vec!["virtio".into(), "virtio_ring".into()]),
            ("virtio_mmio", vec!["virtio".into()]),
            ("xenfs", vec!["xen_privcmd".into()]),
            ("xen_privcmd", vec![]),
            ("loopy", vec!["loopy".into()]),
        ]);
        let lookup = |name: &str| {
            deps.get(name)
                .cloned()
                .ok_or_else(|| Error::msg(format!("no module {name}")))
        };
        let builtin: HashSet<String> = ["virtio".into(), "virtio_ring".into()].into();
        let order = load_order(&["virtio_mmio", "virtio_blk", "xenfs"], &builtin, lookup).unwrap();
        assert_eq!(order, ["virtio_mmio", "virtio_blk", "xen_privcmd", "xenfs"]);
        let all_builtin = load_order(&["virtio"], &builtin, lookup).unwrap();
        assert!(all_builtin.is_empty());
        assert!(load_order(&["loopy"], &builtin, lookup).is_err());
        assert!(load_order(&["absent"], &builtin, lookup).is_err());
    }

    #[test]
    fn layout_checks() {
        assert!(check_layout(33 << 20, 3 << 20).is_ok());
        assert!(check_layout(RAMDISK_ADDR - KERNEL_ADDR + 1, 0).is_err());
        assert!(check_layout(0, RAM_END - RAMDISK_ADDR + 1).is_err());
    }
}
