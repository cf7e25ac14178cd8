//! tidepool as a PV guest of a real Linux dom0: Debian's arm64 Linux boots
//! as Xen's dom0 with the Xen toolstack (`xen-utils-4.17`) in its initramfs,
//! starts xenstored and xenconsoled, and `xl create`s tidepool with the disk
//! as `xvda`, served by Linux's own `xen-blkback` (`linux-dom0.md`).
//!
//! The dom0 side reuses the benchmark's Linux dom0 (`bench/linux.rs`): the
//! same Image, module resolution, initramfs writer and QEMU loading. Its
//! `/init` prints `pv-dom0: KIND key=value` lines; tidepool's own console
//! reaches QEMU's serial line through `xl console` running in dom0.

use std::path::{Path, PathBuf};

use crate::bench::linux::{self, Dom0Contents, PackagePart};
use crate::qemu::{Disk, Machine, Mode, QemuCommand};
use crate::{Error, Result, Workspace};

/// The prefix of dom0 `/init`'s console lines.
pub const PREFIX: &str = "pv-dom0: ";
/// The guest's `xl` name.
pub const GUEST_NAME: &str = "tidepool";
/// dom0's memory: Linux, the toolstack and the unpacked initramfs, which
/// for the PV benchmark's Linux guest holds that guest's Image and its
/// 85 MB initramfs (fio's libraries): 136 MB, unpacked beside its copy, and
/// read once more by `xl create` (384M was too little).
pub const DOM0_MEM: &str = "768M";
/// tidepool's memory as the guest, in MiB.
pub const GUEST_MEM_MIB: u64 = 128;
/// A Linux guest's memory in MiB: its Image and its fio initramfs, loaded
/// and unpacked.
const LINUX_GUEST_MEM_MIB: u64 = 512;

/// Kernel modules for the toolstack and the disk backend.
const MODULES: &[&str] = &[
    "xen_privcmd",
    "xenfs",
    "xen_evtchn",
    "xen_gntdev",
    "xen_gntalloc",
    "xen_blkback",
    "loop",
    "virtio_mmio",
    "virtio_blk",
];
/// busybox applets `/init` and the hotplug scripts use.
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "ln", "insmod", "cut", "usleep", "sleep", "poweroff", "cat", "grep",
    "sed", "awk", "tail", "head", "ls", "rm", "kill", "stat", "readlink", "basename", "dirname",
    "expr", "id", "tr", "sort", "uniq", "wc", "touch", "mkfifo", "printf", "echo", "test", "true",
    "false", "seq", "blockdev", "realpath", "logger", "env",
];

/// Keeps what a program needs at run time: no documentation, locales,
/// charset converters or Python.
fn runtime_files(path: &str) -> bool {
    !(path.starts_with("usr/share/")
        || path.contains("/gconv/")
        || path.contains("/python")
        || path.contains("xenfsimage")
        || path.starts_with("etc/init.d/")
        || path.starts_with("etc/default/"))
}

/// The Debian packages of the toolstack and what it links, in the parts
/// dom0 needs (`linux-dom0.md` lists why each is there).
const PACKAGES: &[PackagePart] = &[
    PackagePart {
        name: "xen-utils-4.17",
        keep: runtime_files,
    },
    PackagePart {
        name: "xen-utils-common",
        keep: runtime_files,
    },
    PackagePart {
        name: "xenstore-utils",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxenmisc4.17",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxencall1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxenevtchn1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxenforeignmemory1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxengnttab1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxenstore4",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxentoollog1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxenhypfs1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxendevicemodel1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libxentoolcore1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libc6",
        keep: runtime_files,
    },
    // Without it `xl` aborts at the end of `xl create` (pthread_cancel).
    PackagePart {
        name: "libgcc-s1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libyajl2",
        keep: runtime_files,
    },
    PackagePart {
        name: "libncurses6",
        keep: runtime_files,
    },
    PackagePart {
        name: "libtinfo6",
        keep: runtime_files,
    },
    PackagePart {
        name: "libfdt1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libuuid1",
        keep: runtime_files,
    },
    PackagePart {
        name: "libsmartcols1",
        keep: runtime_files,
    },
    PackagePart {
        name: "zlib1g",
        keep: runtime_files,
    },
    // The hotplug scripts are bash.
    PackagePart {
        name: "bash",
        keep: |p| p == "bin/bash",
    },
    // busybox-static has neither; the block hotplug script needs both.
    PackagePart {
        name: "util-linux",
        keep: |p| p == "usr/bin/flock",
    },
    PackagePart {
        name: "mount",
        keep: |p| p == "sbin/losetup",
    },
];

/// The guest's kernel.
#[derive(Clone, Debug)]
pub enum GuestKernel {
    /// tidepool's Image.
    Tidepool(PathBuf),
    /// A Linux Image with its initramfs (the benchmark's Linux domU).
    Linux {
        /// The Image.
        image: PathBuf,
        /// The initramfs.
        initramfs: PathBuf,
    },
}

/// `xl block-detach` of one of the guest's disks during the run.
#[derive(Clone, Copy, Debug)]
pub struct Detach {
    /// The disk's `vdev` in the guest (`xvdb`).
    pub vdev: &'static str,
    /// Detach it once the guest's console shows this.
    pub on: &'static str,
}

/// What the dom0 does with the guest.
#[derive(Clone, Debug)]
pub struct PvGuest {
    /// tidepool's bootargs (`xl`'s `extra=`).
    pub bootargs: String,
    /// The disk images on the host, in order the guest's `xvda`, `xvdb`,
    /// ... (through dom0's virtio `/dev/vda`, `/dev/vdb`, ...), each
    /// attached read-only (`access=ro`) if it says so.
    pub disks: Vec<Disk>,
    /// Detach a disk during the run.
    pub detach: Option<Detach>,
    /// Boot tidepool as a dom0less domU next to the Linux dom0 (Xen builds
    /// it with `xen,enhanced = "enabled"`), instead of `xl create`: dom0
    /// runs `init-dom0less`, then `xl block-attach`es the disk.
    pub dom0less: bool,
    /// Module parameters for Linux's blkback (`max_ring_page_order=0`,
    /// `max_persistent_grants=2048`; empty: its defaults, 4 and 1056 on
    /// Debian's kernel), given to `insmod`: `max_ring_page_order` is
    /// read-only in sysfs.
    pub blkback_params: String,
    /// `xl`'s `max_grant_frames`: Xen's limit on the guest's grant table
    /// (`None`: Xen's default, 64). Not for a dom0less guest, which has no
    /// `xl` configuration.
    pub max_grant_frames: Option<u32>,
}

/// QEMU's arguments for the whole stack: Xen, the Linux dom0 with the
/// toolstack and `image` (tidepool) as the guest to create, the disk as
/// virtio-blk.
pub fn qemu_args(
    ws: &Workspace,
    image: &Path,
    guest: &PvGuest,
    run_dir: &Path,
) -> Result<QemuCommand> {
    qemu_args_for(
        ws,
        &GuestKernel::Tidepool(image.to_path_buf()),
        guest,
        run_dir,
    )
}

/// [`qemu_args`] for any guest kernel.
pub fn qemu_args_for(
    ws: &Workspace,
    kernel: &GuestKernel,
    guest: &PvGuest,
    run_dir: &Path,
) -> Result<QemuCommand> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| Error::io(path.to_path_buf(), e));
    let mut files = Vec::new();
    match kernel {
        GuestKernel::Tidepool(_) if guest.dom0less => {}
        GuestKernel::Tidepool(image) => files.push(("guest.img".to_string(), 0o644, read(image)?)),
        GuestKernel::Linux { image, initramfs } => {
            files.push(("guest.img".to_string(), 0o644, read(image)?));
            files.push(("guest-initramfs.cpio".to_string(), 0o644, read(initramfs)?));
        }
    }
    let config = xl_config(guest, matches!(kernel, GuestKernel::Linux { .. }));
    let dom0 = linux::build(
        ws,
        run_dir,
        &Dom0Contents {
            modules: MODULES,
            applets: APPLETS,
            packages: PACKAGES,
            userland: &[],
            files: files
                .into_iter()
                .chain([("etc/xen/guest.cfg".to_string(), 0o644, config.into_bytes())])
                .collect(),
            init: &|modules| init_script(modules, guest),
            name: "pv-dom0.cpio",
        },
    )?;
    let mut machine = Machine::new(Mode::XenDom0 {
        dom0_mem: DOM0_MEM.into(),
    });
    // The benchmark's machine, whose layout the loader addresses of
    // `bench/linux.rs` are checked against (Xen finds no 1:1 room for
    // DOM0_MEM beside a 136 MB initramfs in 1 GiB).
    machine.memory = format!("{}M", crate::bench::MEMORY_MIB);
    if guest.disks.len() > VDEV_LETTERS.len() {
        return Err(Error::msg(format!(
            "{} disks: a PV guest takes at most {}",
            guest.disks.len(),
            VDEV_LETTERS.len()
        )));
    }
    // QEMU `virt` plugs its first virtio device into the highest
    // virtio-mmio transport, and Linux names the disks from the lowest one
    // (`vda` was the last disk given): given last first, dom0's `vda` is
    // the first disk, the guest's `xvda`.
    machine.disks = guest.disks.iter().rev().cloned().collect();
    let mut xen_bootargs = format!("{} dom0_mem={DOM0_MEM}", crate::qemu::XEN_VIRT_CONSOLE);
    let domu = match kernel {
        GuestKernel::Tidepool(image) if guest.dom0less => {
            // A dom0less guest's console_io reaches Xen's console only at
            // guest_loglvl=all (4.17 gives it no PV console).
            xen_bootargs.push_str(" guest_loglvl=all");
            Some(linux::DomU {
                image,
                memory_kib: GUEST_MEM_MIB * 1024,
                bootargs: &guest.bootargs,
            })
        }
        _ => None,
    };
    let mut qemu = linux::qemu_args(ws, &machine, &dom0, &xen_bootargs, run_dir, domu.as_ref())?;
    // The guest's `shutdown:` line is not the end: dom0 reports the guest's
    // state and powers off after it.
    qemu.end_with_xen_only();
    Ok(qemu)
}

/// The last letter of each disk's name (`xvda`, dom0's `vda`), in order.
const VDEV_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// Each disk of `guest` with its name's last letter and its `xl` access.
fn disk_names(guest: &PvGuest) -> impl Iterator<Item = (char, &'static str)> + '_ {
    guest.disks.iter().zip(VDEV_LETTERS).map(|(disk, &letter)| {
        let access = if disk.read_only { "ro" } else { "rw" };
        (char::from(letter), access)
    })
}

/// The `xl` disk specification of a disk: `xvdX` through dom0's `/dev/vdX`.
fn disk_spec(letter: char, access: &str) -> String {
    format!("format=raw,vdev=xvd{letter},access={access},target=/dev/vd{letter}")
}

/// Linux guest's command line: its console is the PV console, `/init`
/// from its initramfs.
const LINUX_GUEST_BOOTARGS: &str = "console=hvc0 rdinit=/init cma=0";

/// The `xl` configuration of the guest (a Linux guest gets its initramfs
/// as `ramdisk`).
fn xl_config(guest: &PvGuest, linux: bool) -> String {
    let bootargs = if linux {
        LINUX_GUEST_BOOTARGS
    } else {
        guest.bootargs.as_str()
    };
    let memory = if linux {
        LINUX_GUEST_MEM_MIB
    } else {
        GUEST_MEM_MIB
    };
    let mut cfg = format!(
        "name = \"{GUEST_NAME}\"\nkernel = \"/guest.img\"\nmemory = {memory}\nvcpus = 1\n\
         extra = \"{}\"\non_poweroff = \"preserve\"\non_crash = \"preserve\"\non_reboot = \"preserve\"\n",
        bootargs.replace('"', "")
    );
    if linux {
        cfg.push_str("ramdisk = \"/guest-initramfs.cpio\"\n");
    }
    if let Some(frames) = guest.max_grant_frames {
        cfg.push_str(&format!("max_grant_frames = {frames}\n"));
    }
    if !guest.disks.is_empty() {
        let specs: Vec<String> = disk_names(guest)
            .map(|(letter, access)| format!("'{}'", disk_spec(letter, access)))
            .collect();
        cfg.push_str(&format!("disk = [ {} ]\n", specs.join(", ")));
    }
    cfg
}

/// dom0's `/init`: mount, load `modules`, start xenstored and xenconsoled,
/// create the guest paused, attach `xl console`, unpause, optionally detach
/// its disk, and wait until it shuts down or crashes; then power off.
fn init_script(modules: &[String], guest: &PvGuest) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| {
            let args = match guest.blkback_params.as_str() {
                params if m == "xen_blkback" && !params.is_empty() => format!(" {params}"),
                _ => String::new(),
            };
            format!("insmod /lib/modules/{m}.ko{args} || fail \"insmod {m}\"\n")
        })
        .collect();
    let wait_disk: String = disk_names(guest)
        .map(|(letter, _)| {
            format!(
                "n=0\nwhile [ ! -b /dev/vd{letter} ]; do\n    n=$((n + 1))\n    \
                 [ $n -gt 500 ] && fail \"no /dev/vd{letter} after 5 s\"\n    usleep 10000\ndone\n"
            )
        })
        .collect();
    // The dom0less guest is domain 1, named by init-dom0less.
    let name = if guest.dom0less { "1" } else { GUEST_NAME };
    let detach = match guest.detach {
        Some(Detach { vdev, on }) => format!(
            r#"(
    until grep -q "{pattern}" /var/log/xen/guest-{GUEST_NAME}.log 2>/dev/null; do usleep 20000; done
    echo "{PREFIX}detaching disk={vdev}"
    start=$(cut -d' ' -f1 /proc/uptime)
    xl block-detach {name} {vdev}
    status=$?
    end=$(cut -d' ' -f1 /proc/uptime)
    ms=$(( (${{end%.*}} - ${{start%.*}}) * 1000 + (1${{end#*.}} - 1${{start#*.}}) * 10 ))
    if [ $status -eq 0 ]; then echo "{PREFIX}detached disk={vdev} elapsed_ms=$ms"; else echo "{PREFIX}detach-failed disk={vdev} status=$status elapsed_ms=$ms"; fi
) &
"#,
            pattern = on.replace('"', "")
        ),
        None => String::new(),
    };
    let start = if guest.dom0less {
        let attach: String = disk_names(guest)
            .map(|(letter, access)| {
                format!(
                    "xl block-attach 1 '{}' || fail \"xl block-attach\"\n\
                     echo \"{PREFIX}attached disk=xvd{letter}\"\n",
                    disk_spec(letter, access)
                )
            })
            .collect();
        format!(
            "init-dom0less || fail \"init-dom0less\"\n\
             echo \"{PREFIX}init-dom0less done uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
             {attach}console=\n"
        )
    } else {
        format!(
            r#"xl create -p /etc/xen/guest.cfg || fail "xl create"
echo "{PREFIX}created name={GUEST_NAME} domid=$(xl domid {GUEST_NAME}) uptime=$(cut -d' ' -f1 /proc/uptime)"
xl console {GUEST_NAME} </dev/console &
console=$!
xl unpause {GUEST_NAME} || fail "xl unpause"
"#
        )
    };
    format!(
        r#"#!/bin/sh
# tidepool's PV dom0 (xtask/src/pv.rs): the Xen toolstack and Linux's blkback.
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu:/usr/lib/xen-4.17/lib/aarch64-linux-gnu
fail() {{ echo "{PREFIX}error $1"; poweroff -f; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Warnings and worse only: the guest's console shares this one.
echo 4 > /proc/sys/kernel/printk
mkdir -p /dev/pts /run /tmp /var/lib/xen /var/log/xen
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
ln -s /run /var/run
ln -s /run/lock /var/lock
mkdir -p /run/xen /run/xenstored /run/lock
# The hotplug scripts' locking reads /dev/stdin; without it they loop.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
echo "{PREFIX}init uptime=$(cut -d' ' -f1 /proc/uptime)"
{insmods}mkdir -p /proc/xen
mount -t xenfs xenfs /proc/xen || fail "mount xenfs"
# xenstored has died at start with SIGBUS about one run in ten on this
# emulated machine (Linux's dom0, not the guest): start it once more.
XENSTORED_ROOTDIR=/run/xenstored xenstored --pid-file=/run/xenstored.pid \
    || {{ echo "{PREFIX}warning xenstored failed at start, starting it again"; usleep 200000; \
    XENSTORED_ROOTDIR=/run/xenstored xenstored --pid-file=/run/xenstored.pid; }} || fail "xenstored"
n=0
until xenstore-read -s / >/dev/null 2>&1; do
    n=$((n + 1))
    [ $n -gt 500 ] && fail "xenstored does not answer"
    usleep 10000
done
xen-init-dom0 >/dev/null || fail "xen-init-dom0"
xenconsoled --log=guest --log-dir=/var/log/xen || fail "xenconsoled"

{wait_disk}echo "{PREFIX}toolstack uptime=$(cut -d' ' -f1 /proc/uptime)"
{start}{detach}while :; do
    set -- $(xl list {name} 2>/dev/null | tail -n 1)
    case "$5" in
        *s*) echo "{PREFIX}guest-shutdown name={name} state=$5"; break ;;
        *c*) echo "{PREFIX}guest-crashed name={name} state=$5"; break ;;
        "") echo "{PREFIX}guest-vanished name={name}"; break ;;
    esac
    usleep 100000
done
usleep 300000
kill $console 2>/dev/null
xl destroy {name}
echo "{PREFIX}done"
poweroff -f
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(file: &str, read_only: bool) -> Disk {
        Disk {
            file: file.into(),
            read_only,
        }
    }

    fn guest() -> PvGuest {
        PvGuest {
            bootargs: "blk-verify=0@0+8".into(),
            disks: vec![disk("disk.img", false)],
            detach: None,
            dom0less: false,
            blkback_params: String::new(),
            max_grant_frames: None,
        }
    }

    #[test]
    fn config_names_the_disk_and_its_access() {
        let cfg = xl_config(&guest(), false);
        assert!(cfg.contains("extra = \"blk-verify=0@0+8\""));
        assert!(cfg.contains("disk = [ 'format=raw,vdev=xvda,access=rw,target=/dev/vda' ]\n"));
        let two = xl_config(
            &PvGuest {
                disks: vec![disk("a.img", false), disk("b.img", true)],
                ..guest()
            },
            false,
        );
        assert!(two.contains(
            "disk = [ 'format=raw,vdev=xvda,access=rw,target=/dev/vda', \
             'format=raw,vdev=xvdb,access=ro,target=/dev/vdb' ]\n"
        ));
        let none = xl_config(
            &PvGuest {
                disks: Vec::new(),
                ..guest()
            },
            false,
        );
        assert!(!none.contains("disk ="));
        assert!(!none.contains("max_grant_frames"));
        let small_table = xl_config(
            &PvGuest {
                max_grant_frames: Some(2),
                ..guest()
            },
            false,
        );
        assert!(small_table.contains("\nmax_grant_frames = 2\n"));
        let linux = xl_config(&guest(), true);
        assert!(linux.contains("extra = \"console=hvc0 rdinit=/init cma=0\""));
        assert!(linux.contains("ramdisk = \"/guest-initramfs.cpio\""));
    }

    #[test]
    fn init_starts_the_toolstack_before_creating_the_guest() {
        let script = init_script(&["xen_privcmd".into(), "xenfs".into()], &guest());
        let order = [
            "insmod /lib/modules/xen_privcmd.ko",
            "insmod /lib/modules/xenfs.ko",
            "mount -t xenfs",
            "xenstored --pid-file",
            "xen-init-dom0",
            "xenconsoled",
            "[ ! -b /dev/vda ]",
            "xl create -p",
            "xl console",
            "xl unpause",
            "guest-shutdown",
            "poweroff -f",
        ];
        let mut at = 0;
        for step in order {
            let found = script[at..]
                .find(step)
                .unwrap_or_else(|| panic!("{step} after {at}"));
            at += found + step.len();
        }
        assert!(!script.contains("block-detach"));
        assert!(script.contains("insmod /lib/modules/xenfs.ko || fail"));
        let one_page = init_script(
            &["xen_blkback".into(), "loop".into()],
            &PvGuest {
                blkback_params: "max_ring_page_order=0".into(),
                ..guest()
            },
        );
        assert!(one_page.contains(
            "insmod /lib/modules/xen_blkback.ko max_ring_page_order=0 || fail \"insmod xen_blkback\"\n\
             insmod /lib/modules/loop.ko ||"
        ));
        let detaching = init_script(
            &[],
            &PvGuest {
                disks: vec![disk("a.img", false), disk("b.img", false)],
                detach: Some(Detach {
                    vdev: "xvdb",
                    on: "blk: write",
                }),
                ..guest()
            },
        );
        assert!(detaching.contains("grep -q \"blk: write\""));
        assert!(detaching.contains("xl block-detach tidepool xvdb\n"));
        // How long the detach took, in ms, from /proc/uptime's centiseconds.
        assert!(detaching.contains("detached disk=xvdb elapsed_ms=$ms"));
        assert!(detaching.contains(
            "ms=$(( (${end%.*} - ${start%.*}) * 1000 + (1${end#*.} - 1${start#*.}) * 10 ))"
        ));
        let vda = detaching.find("[ ! -b /dev/vda ]").unwrap();
        let vdb = detaching.find("[ ! -b /dev/vdb ]").unwrap();
        assert!(vda < vdb && vdb < detaching.find("xl create -p").unwrap());
        let dom0less = init_script(
            &[],
            &PvGuest {
                disks: vec![disk("a.img", false), disk("b.img", true)],
                dom0less: true,
                ..guest()
            },
        );
        assert!(dom0less.contains(
            "xl block-attach 1 'format=raw,vdev=xvda,access=rw,target=/dev/vda' || fail"
        ));
        assert!(dom0less.contains(
            "xl block-attach 1 'format=raw,vdev=xvdb,access=ro,target=/dev/vdb' || fail"
        ));
        for applet in ["grep", "usleep", "tail", "kill", "ln", "mkdir"] {
            assert!(APPLETS.contains(&applet), "{applet} is linked");
        }
    }
}
