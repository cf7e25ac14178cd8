//! The Linux side of the benchmark: Debian's arm64 kernel booted as Xen's
//! dom0 with a small initramfs (busybox-static, the virtio modules, an
//! `/init` that times `dd` reads of the disk and powers off).
//!
//! `/init` prints `bench-linux: KIND key=value ...` lines: `init` (uptime at
//! /init), `seq` and `qd1` (bytes, requests, and Linux's monotonic clock in
//! nanoseconds before and after, read from `/proc/timer_list` because
//! busybox `date` has no `%N`), `error`, `done`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use object::{Object, ObjectSection};

use super::cpio::Newc;
use super::{KeyValues, ParseError, Rate, Throughput};
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
const APPLETS: &[&str] = &["sh", "mount", "insmod", "dd", "cut", "usleep", "poweroff"];
/// The prefix of `/init`'s console lines.
pub const PREFIX: &str = "bench-linux: ";
/// The line `/init` prints first.
pub const INIT_MARKER: &str = "bench-linux: init ";
/// Sequential reads: 1 MiB each, O_DIRECT, the whole disk.
const SEQ_BLOCK: u64 = 1 << 20;
/// Small reads: 4 KiB each, O_DIRECT, this many, one at a time.
const SMALL_BLOCK: u64 = 4096;
/// How many small reads.
pub const SMALL_READS: u64 = 4096;

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
    /// Further files: path, permission bits, contents.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// `/init`, given the modules to load in order.
    pub init: &'a dyn Fn(&[String]) -> String,
    /// The initramfs file name in the run directory.
    pub name: &'a str,
}

/// Fetches (once) Debian's Linux image package and busybox-static and
/// writes the initramfs for reading a `disk_bytes` disk into `dir`.
pub fn prepare(ws: &Workspace, dir: &Path, disk_bytes: u64) -> Result<LinuxDom0> {
    build(
        ws,
        dir,
        &Dom0Contents {
            modules: WANTED_MODULES,
            applets: APPLETS,
            packages: &[],
            files: Vec::new(),
            init: &|modules| init_script(modules, disk_bytes, "vda", false),
            name: "linux-initramfs.cpio",
        },
    )
}

/// Fetches (once) Debian's Linux image package, busybox-static and
/// `contents.packages`, and writes the initramfs `contents` describes into
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
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
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
/// `dir`: the same `/init` as the dom0 benchmark, plus 16 readers at once.
pub fn prepare_domu(ws: &Workspace, dir: &Path, disk_bytes: u64) -> Result<LinuxDom0> {
    build(
        ws,
        dir,
        &Dom0Contents {
            modules: &["xen_blkfront"],
            applets: APPLETS,
            packages: &[],
            files: Vec::new(),
            init: &|modules| init_script(modules, disk_bytes, "xvda", true),
            name: "linux-domu-initramfs.cpio",
        },
    )
}

/// `/init`: mount, load `modules`, wait for /dev/`device`, time the reads
/// of a `disk_bytes` disk (and with `qd16`, 16 readers of 4 KiB blocks at
/// once, each over its own sixteenth of the small reads' span), power off.
fn init_script(modules: &[String], disk_bytes: u64, device: &str, qd16: bool) -> String {
    let seq_reads = disk_bytes / SEQ_BLOCK;
    let seq_bytes = seq_reads * SEQ_BLOCK;
    let small_bytes = SMALL_READS * SMALL_BLOCK;
    let insmods: String = modules
        .iter()
        .map(|m| format!("insmod /lib/modules/{m}.ko || fail \"insmod {m}\"\n"))
        .collect();
    let per_reader = SMALL_READS / 16;
    let qd16_step = if qd16 {
        format!(
            r#"t0=$(now)
i=0
while [ $i -lt 16 ]; do
    dd if=/dev/{device} of=/dev/null bs={SMALL_BLOCK} count={per_reader} skip=$((i * {per_reader})) iflag=direct 2>/dev/null &
    i=$((i + 1))
done
wait
t1=$(now)
echo "{PREFIX}qd16 bytes={small_bytes} reqs={SMALL_READS} start_ns=$t0 end_ns=$t1"
"#
        )
    } else {
        String::new()
    };
    format!(
        r#"#!/bin/sh
# tidepool's `cargo xtask bench`, Linux dom0 side (xtask/src/bench/linux.rs).
export PATH=/bin
fail() {{ echo "{PREFIX}error $1"; poweroff -f; }}
# Monotonic nanoseconds: /proc/timer_list's "now at N nsecs" (busybox date
# has no %N).
now() {{
    while read -r a b c d; do
        [ "$a $b $d" = "now at nsecs" ] && {{ echo "$c"; return; }}
    done < /proc/timer_list
    echo "no-clock"
}}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{PREFIX}init uptime=$(cut -d' ' -f1 /proc/uptime)"
{insmods}n=0
while [ ! -b /dev/{device} ]; do
    n=$((n + 1))
    [ $n -gt 500 ] && fail "no /dev/{device} after 5 s"
    usleep 10000
done
t0=$(now)
dd if=/dev/{device} of=/dev/null bs={SEQ_BLOCK} count={seq_reads} iflag=direct 2>/dev/null || fail "dd seq"
t1=$(now)
echo "{PREFIX}seq bytes={seq_bytes} reqs={seq_reads} start_ns=$t0 end_ns=$t1"
t0=$(now)
dd if=/dev/{device} of=/dev/null bs={SMALL_BLOCK} count={SMALL_READS} iflag=direct 2>/dev/null || fail "dd qd1"
t1=$(now)
echo "{PREFIX}qd1 bytes={small_bytes} reqs={SMALL_READS} start_ns=$t0 end_ns=$t1"
{qd16_step}echo "{PREFIX}done"
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

/// What Linux measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LinuxBench {
    /// Uptime when `/init` started, by Linux's clock.
    pub init_uptime: Duration,
    /// The whole-disk 1 MiB O_DIRECT reads.
    pub seq: Throughput,
    /// The 4 KiB O_DIRECT reads, one at a time (sequential offsets).
    pub qd1: Rate,
    /// The same reads by 16 readers at once, if `/init` ran them.
    pub qd16: Option<Rate>,
}

/// Why Linux's console did not yield the numbers.
#[derive(Debug, PartialEq)]
pub enum LinuxParseError {
    /// `/init` reported an error.
    Reported(String),
    /// A line of this kind never appeared.
    Missing(&'static str),
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
pub fn parse(lines: &[String]) -> std::result::Result<LinuxBench, LinuxParseError> {
    let mut found: HashMap<&str, &str> = HashMap::new();
    for line in lines {
        let Some(at) = line.find(PREFIX) else {
            continue;
        };
        let rest = &line[at + PREFIX.len()..];
        let (kind, fields) = rest.split_once(' ').unwrap_or((rest, ""));
        if kind == "error" {
            return Err(LinuxParseError::Reported(fields.to_string()));
        }
        found.entry(kind).or_insert(fields);
    }
    let get = |kind: &'static str| {
        found
            .get(kind)
            .map(|fields| KeyValues::new(fields))
            .ok_or(LinuxParseError::Missing(kind))
    };
    let bad = |kind: &str, err| LinuxParseError::Bad {
        line: format!("{PREFIX}{kind} {}", found.get(kind).unwrap_or(&"")),
        err,
    };
    let init = get("init")?;
    let init_uptime = init
        .f64("uptime")
        .map(Duration::from_secs_f64)
        .map_err(|e| bad("init", e))?;
    let seq = get("seq")?;
    let (bytes, time) = read_timed(&seq, "bytes").map_err(|e| bad("seq", e))?;
    let qd1 = get("qd1")?;
    let (requests, qd1_time) = read_timed(&qd1, "reqs").map_err(|e| bad("qd1", e))?;
    let qd16 = match get("qd16") {
        Ok(kv) => {
            let (requests, time) = read_timed(&kv, "reqs").map_err(|e| bad("qd16", e))?;
            Some(Rate { requests, time })
        }
        Err(_) => None,
    };
    Ok(LinuxBench {
        init_uptime,
        seq: Throughput { bytes, time },
        qd1: Rate {
            requests,
            time: qd1_time,
        },
        qd16,
    })
}

/// `count_key` and the time between `start_ns` and `end_ns`.
fn read_timed(
    kv: &KeyValues<'_>,
    count_key: &'static str,
) -> std::result::Result<(u64, Duration), ParseError> {
    let (start, end) = (kv.u64("start_ns")?, kv.u64("end_ns")?);
    if end <= start {
        return Err(ParseError::Invalid {
            key: "end_ns",
            value: format!("{end} (start_ns={start})"),
        });
    }
    Ok((kv.u64(count_key)?, Duration::from_nanos(end - start)))
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

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    const GOOD: &str = "\
(XEN) *** LOADING DOMAIN 0 ***
[    2.9] Run /init as init process
bench-linux: init uptime=2.91
bench-linux: seq bytes=67108864 reqs=64 start_ns=1000000000 end_ns=1420000000
bench-linux: qd1 bytes=16777216 reqs=4096 start_ns=2000000000123 end_ns=2002048000123
bench-linux: done";

    #[test]
    fn parses_init_output() {
        let got = parse(&lines(GOOD)).unwrap();
        assert_eq!(got.init_uptime, Duration::from_millis(2910));
        assert_eq!(got.seq.bytes, 64 << 20);
        assert_eq!(got.seq.time, Duration::from_millis(420));
        assert!((got.seq.mib_per_s() - 64.0 / 0.42).abs() < 1e-9);
        assert_eq!(got.qd1.requests, 4096);
        assert_eq!(got.qd1.time, Duration::from_millis(2048));
        assert!((got.qd1.iops() - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn lines_may_carry_console_noise_before_the_prefix() {
        let text = GOOD.replace(
            "bench-linux: seq",
            "[  3.1] random: crng initbench-linux: seq",
        );
        assert_eq!(parse(&lines(&text)).unwrap().seq.bytes, 64 << 20);
    }

    #[test]
    fn reports_what_is_wrong() {
        let err = parse(&lines(
            "bench-linux: init uptime=1.0\nbench-linux: error no /dev/vda after 5 s",
        ));
        assert_eq!(
            err.unwrap_err(),
            LinuxParseError::Reported("no /dev/vda after 5 s".into())
        );
        let err = parse(&lines("bench-linux: init uptime=1.0")).unwrap_err();
        assert_eq!(err, LinuxParseError::Missing("seq"));
        assert_eq!(err.to_string(), "no 'bench-linux: seq' line");
        // /init found no clock in /proc/timer_list.
        let text = GOOD.replace("end_ns=1420000000", "end_ns=no-clock");
        let err = parse(&lines(&text)).unwrap_err();
        assert!(
            matches!(
                &err,
                LinuxParseError::Bad {
                    err: ParseError::Invalid { key: "end_ns", .. },
                    ..
                }
            ),
            "{err}"
        );
        let text = GOOD.replace("end_ns=1420000000", "end_ns=900000000");
        assert!(matches!(
            parse(&lines(&text)),
            Err(LinuxParseError::Bad { .. })
        ));
    }

    #[test]
    fn init_script_reads_the_whole_disk_and_loads_modules_in_order() {
        let script = init_script(
            &["virtio_mmio".into(), "virtio_blk".into()],
            64 << 20,
            "vda",
            false,
        );
        assert!(!script.contains("qd16"));
        let domu = init_script(&["xen_blkfront".into()], 64 << 20, "xvda", true);
        assert!(domu.contains("if=/dev/xvda"));
        assert!(domu.contains("skip=$((i * 256))"));
        assert!(domu.contains("bench-linux: qd16 bytes=16777216 reqs=4096 "));
        assert!(script.starts_with("#!/bin/sh\n"));
        let mmio = script.find("insmod /lib/modules/virtio_mmio.ko").unwrap();
        let blk = script.find("insmod /lib/modules/virtio_blk.ko").unwrap();
        assert!(mmio < blk);
        assert!(script.contains("bs=1048576 count=64 iflag=direct"));
        assert!(script.contains("bs=4096 count=4096 iflag=direct"));
        assert!(script.contains("bench-linux: seq bytes=67108864 reqs=64 "));
        assert!(script.trim_end().ends_with("poweroff -f"));
        for applet in ["mount", "insmod", "dd", "cut", "usleep", "poweroff"] {
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
