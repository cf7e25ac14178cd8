//! The outside programs tidepool needs, obtained on demand and cached.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::debian::{PrivateApt, require_program};
use crate::{Error, Result, Workspace, run_checked};

/// The Xen package and the hypervisor image inside it.
const XEN_PACKAGE: &str = "xen-hypervisor-4.17-arm64";
const XEN_IMAGE_IN_PACKAGE: &str = "boot/xen-4.17-arm64";

/// Makes sure dpkg-deb is there (it unpacks every fetched package) and
/// QEMU is fetched.
pub fn ensure_host_tools(ws: &Workspace) -> Result<()> {
    require_program("dpkg-deb", "dpkg")?;
    Qemu::fetch(ws).map(|_| ())
}

/// Debian's `device-tree-compiler` and the libraries it links, for the
/// host architecture.
const DTC_PACKAGES: [&str; 3] = ["device-tree-compiler", "libfdt1", "libyaml-0-2"];

/// libfdt's tools (`dtc`, `fdtput`), which xtask's tests use as an
/// independent writer and editor of device trees: Debian's
/// `device-tree-compiler` unpacked into build/dtc, run with its own
/// libraries (no system install).
pub struct DtcTools {
    bin: PathBuf,
    libs: PathBuf,
}

impl DtcTools {
    /// The tools unpacked in `ws`'s build/dtc, fetching them first if needed.
    pub fn fetch(ws: &Workspace) -> Result<DtcTools> {
        let dest = ws.build.join("dtc");
        if !dest.join(".unpacked").exists() {
            eprintln!(
                "xtask: fetching {} into {}",
                DTC_PACKAGES.join(" "),
                dest.display()
            );
            PrivateApt::host(&ws.build.join("apt-host"))?.fetch_and_unpack(&DTC_PACKAGES, &dest)?;
        }
        Self::unpacked(&dest)
    }

    /// The tools unpacked under `dest`, if they are there.
    pub fn unpacked(dest: &Path) -> Result<DtcTools> {
        let bin = dest.join("usr/bin");
        if !bin.join("dtc").is_file() {
            return Err(Error::msg(format!(
                "no dtc in {} (`cargo xtask test` fetches device-tree-compiler there)",
                bin.display()
            )));
        }
        // The libraries live under the host's multiarch triplet
        // (usr/lib/x86_64-linux-gnu on amd64).
        let lib = dest.join("usr/lib");
        let libs = std::fs::read_dir(&lib)
            .map_err(|e| Error::io(lib.clone(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.join("libfdt.so.1").exists())
            .ok_or_else(|| Error::msg(format!("no libfdt.so.1 under {}", lib.display())))?;
        Ok(DtcTools { bin, libs })
    }

    /// The path of `program` (`dtc`, `fdtdump`, `fdtput`, ...) in the
    /// unpacked package; it runs with [`Self::libs`] as `LD_LIBRARY_PATH`.
    pub fn program(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }

    /// The folder of the unpacked libraries the programs link.
    pub fn libs(&self) -> &Path {
        &self.libs
    }

    /// A command running `program` with its unpacked libraries.
    #[cfg(test)]
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.program(program));
        cmd.env("LD_LIBRARY_PATH", self.libs());
        cmd
    }
}

/// QEMU's Debian packages (bookworm-backports, QEMU 10): the emulator,
/// its loadable modules, and its firmware and option ROMs.
const QEMU_PACKAGES: [&str; 3] = ["qemu-system-arm", "qemu-system-common", "qemu-system-data"];

/// The one QEMU every run uses: Debian's QEMU 10 from bookworm-backports,
/// unpacked into build/qemu. QEMU 10 is needed for `-machine imx8mp-evk`
/// (Debian 12's QEMU 7.2 has no such machine), and the `virt` boot tests
/// pass under it too, so a fresh machine needs no system QEMU at all.
pub struct Qemu {
    binary: PathBuf,
    modules: PathBuf,
    data: PathBuf,
}

impl Qemu {
    /// The QEMU unpacked in `ws`'s build/qemu, fetching it first if needed.
    pub fn fetch(ws: &Workspace) -> Result<&'static Qemu> {
        static QEMU: OnceLock<Qemu> = OnceLock::new();
        static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _fetching = FETCH
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(qemu) = QEMU.get() {
            return Ok(qemu);
        }
        let dest = ws.build.join("qemu");
        if !dest.join(".unpacked").exists() {
            eprintln!(
                "xtask: fetching QEMU 10 ({}, bookworm-backports) into {}",
                QEMU_PACKAGES.join(" "),
                dest.display()
            );
            PrivateApt::host_backports(&ws.build.join("apt-host-backports"))?
                .fetch_and_unpack(&QEMU_PACKAGES, &dest)?;
        }
        let qemu = Self::unpacked(&dest)?;
        Ok(QEMU.get_or_init(|| qemu))
    }

    /// The QEMU unpacked under `dest`, if it is complete.
    pub fn unpacked(dest: &Path) -> Result<Qemu> {
        let binary = dest.join("usr/bin/qemu-system-aarch64");
        let data = dest.join("usr/share/qemu");
        // The modules live under the host's multiarch triplet
        // (usr/lib/x86_64-linux-gnu/qemu on amd64).
        let lib = dest.join("usr/lib");
        let modules = std::fs::read_dir(&lib)
            .map_err(|e| Error::io(lib.clone(), e))?
            .filter_map(|e| e.ok().map(|e| e.path().join("qemu")))
            .find(|p| p.is_dir())
            .ok_or_else(|| {
                Error::msg(format!(
                    "no usr/lib/*/qemu module folder in {}",
                    dest.display()
                ))
            })?;
        for path in [&binary, &data] {
            if !path.exists() {
                return Err(Error::msg(format!(
                    "the unpacked QEMU lacks {}",
                    path.display()
                )));
            }
        }
        Ok(Qemu {
            binary,
            modules,
            data,
        })
    }

    /// A command running this QEMU with its own modules and data folder
    /// (otherwise it would load the system's modules and firmware, if any).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env("QEMU_MODULE_DIR", &self.modules)
            .arg("-L")
            .arg(&self.data);
        cmd
    }

    /// `qemu-system-aarch64 --version`'s first line, e.g. "QEMU emulator
    /// version 10.0.2 (Debian ...)".
    pub fn version(&self) -> Result<String> {
        let output = self
            .command()
            .arg("--version")
            .output()
            .map_err(|e| Error::msg(format!("{} --version: {e}", self.binary.display())))?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }
}

/// U-Boot's `mkimage`: the system's if installed, otherwise Debian's
/// `u-boot-tools` fetched once into build/u-boot-tools (no system install).
pub fn mkimage(ws: &Workspace) -> Result<PathBuf> {
    if crate::debian::has_program("mkimage") {
        return Ok(PathBuf::from("mkimage"));
    }
    let dest = ws.build.join("u-boot-tools");
    let binary = dest.join("usr/bin/mkimage");
    if !binary.is_file() {
        eprintln!(
            "xtask: fetching u-boot-tools (for mkimage) into {}",
            dest.display()
        );
        PrivateApt::host(&ws.build.join("apt-host"))?.fetch_and_unpack(&["u-boot-tools"], &dest)?;
    }
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(Error::msg(format!(
            "u-boot-tools has no {}",
            binary.display()
        )))
    }
}

/// A command running the QEMU of this workspace (build/qemu, which
/// [`ensure_host_tools`] fetches first in every command that runs QEMU;
/// spawning fails with the binary's path if it is not there).
pub fn qemu() -> Command {
    let dest = Workspace::locate().build.join("qemu");
    Qemu::unpacked(&dest)
        .unwrap_or_else(|_| Qemu {
            binary: dest.join("usr/bin/qemu-system-aarch64"),
            modules: dest.join("usr/lib/qemu"),
            data: dest.join("usr/share/qemu"),
        })
        .command()
}

/// The kernel's target triple (also named in rust-toolchain.toml).
pub const KERNEL_TARGET: &str = "aarch64-unknown-none";

/// Components `cargo xtask test` runs (rust-toolchain.toml names them too),
/// each with a program of the toolchain that shows it is installed.
const COMPONENTS: [(&str, &str); 2] = [("clippy", "cargo-clippy"), ("rustfmt", "rustfmt")];

/// Makes sure the toolchain that builds the kernel has its target's standard
/// library and the lint components. rustup installs the targets and
/// components of rust-toolchain.toml only when it installs the toolchain
/// itself: a toolchain that was already there (or is a link to another) may
/// lack them, and the build then fails with "can't find crate for `core`".
/// They are added to the toolchain directory the sysroot really is, so a
/// linked toolchain gets them too.
pub fn ensure_toolchain(ws: &Workspace) -> Result<()> {
    let output = Command::new("rustc")
        .current_dir(&ws.root)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| Error::msg(format!("rustc --print sysroot: {e}")))?;
    if !output.status.success() {
        return Err(Error::msg(format!(
            "rustc --print sysroot failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let missing = missing_parts(&sysroot);
    if missing.is_empty() {
        return Ok(());
    }
    let real = std::fs::canonicalize(&sysroot).map_err(|e| Error::io(sysroot.clone(), e))?;
    let toolchain = real
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::msg(format!("no toolchain name in {}", real.display())))?
        .to_string();
    for part in &missing {
        let (kind, name) = match part {
            Part::Target => ("target", KERNEL_TARGET),
            Part::Component(name) => ("component", *name),
        };
        eprintln!("xtask: adding {kind} {name} to toolchain {toolchain} with rustup");
        run_checked(Command::new("rustup").current_dir(&ws.root).args([
            kind,
            "add",
            "--toolchain",
            &toolchain,
            name,
        ]))
        .map_err(|e| {
            Error::msg(format!(
                "the toolchain at {} has no {kind} {name} and rustup could not add it ({e}); \
                 run `rustup {kind} add {name}` in {}",
                sysroot.display(),
                ws.root.display()
            ))
        })?;
    }
    let still = missing_parts(&sysroot);
    if still.is_empty() {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "rustup ran but {} still lacks {still:?}",
            sysroot.display()
        )))
    }
}

/// A part of the toolchain xtask needs.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    /// The kernel target's standard library.
    Target,
    /// A rustup component.
    Component(&'static str),
}

/// What the toolchain at `sysroot` lacks.
fn missing_parts(sysroot: &Path) -> Vec<Part> {
    let mut missing = Vec::new();
    if !sysroot
        .join("lib/rustlib")
        .join(KERNEL_TARGET)
        .join("lib")
        .is_dir()
    {
        missing.push(Part::Target);
    }
    for (component, program) in COMPONENTS {
        if !sysroot.join("bin").join(program).is_file() {
            missing.push(Part::Component(component));
        }
    }
    missing
}

/// The Xen hypervisor image: `$TIDEPOOL_XEN` if set (a Xen of the user's
/// own), otherwise Debian's Xen 4.17 for arm64, fetched once into build/.
pub fn xen_image(ws: &Workspace) -> Result<PathBuf> {
    if let Some(own) = std::env::var_os("TIDEPOOL_XEN") {
        let path = PathBuf::from(own);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::msg(format!(
                "TIDEPOOL_XEN={} is not a file",
                path.display()
            )))
        };
    }
    let dest = ws.build.join("xen");
    let image = dest.join(XEN_IMAGE_IN_PACKAGE);
    // Boot tests run in parallel: one of them fetches, the others wait.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _fetching = FETCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !image.is_file() {
        eprintln!(
            "xtask: fetching {XEN_PACKAGE} (arm64) into {}",
            dest.display()
        );
        PrivateApt::arm64(&ws.build.join("apt-arm64"))?.fetch_and_unpack(&[XEN_PACKAGE], &dest)?;
    }
    if image.is_file() {
        Ok(image)
    } else {
        Err(Error::msg(format!(
            "{XEN_PACKAGE} has no {XEN_IMAGE_IN_PACKAGE}"
        )))
    }
}

/// The board device trees shipped in Debian's newest arm64 Linux image
/// package (for the device-tree plan test), fetched once into build/.
pub fn board_dtbs(ws: &Workspace) -> Result<PathBuf> {
    let apt = PrivateApt::arm64(&ws.build.join("apt-arm64"))?;
    let dest = ws.build.join("linux-image");
    if !dest.join(".unpacked").exists() {
        let package = apt.newest_named("linux-image-6.1.0-", "-arm64-unsigned")?;
        eprintln!(
            "xtask: fetching {package} (arm64, for its board DTBs) into {}",
            dest.display()
        );
        apt.fetch_and_unpack(&[&package], &dest)?;
    }
    let lib = dest.join("usr/lib");
    let dir = std::fs::read_dir(&lib)
        .map_err(|e| Error::io(lib.clone(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-image-"))
        })
        .ok_or_else(|| {
            Error::msg(format!(
                "no linux-image-* directory under {}",
                lib.display()
            ))
        })?;
    Ok(dir)
}

/// What `cargo xtask test` writes into target/ and build/ on a fresh clone
/// (2.8 GiB measured: 1.5 target/, 1.3 build/), with room to spare.
pub const TEST_FOOTPRINT: u64 = 4 << 30;

/// Fails at once, with the numbers, when the file system holding the
/// workspace has less free space than `footprint` still needs beyond what
/// target/ and build/ already hold. A full disk otherwise shows up minutes
/// later as a linker's "Bus error" or rustc's "No space left on device".
/// The check is a courtesy: where `df` cannot say, it warns and lets the
/// run go on.
pub fn ensure_free_space(ws: &Workspace, footprint: u64) -> Result<()> {
    let Some(free) = free_space(&ws.root) else {
        eprintln!(
            "xtask: warning: df cannot say how much space is free on {}; going on unchecked",
            ws.root.display()
        );
        return Ok(());
    };
    // Room for a whole fresh run: no need to size what is built already.
    if free >= footprint {
        return Ok(());
    }
    space_verdict(free, held(ws), footprint, &ws.root)
}

/// Bytes already in `ws`'s target/ and build/.
fn held(ws: &Workspace) -> u64 {
    tree_size(&ws.root.join("target")) + tree_size(&ws.build)
}

/// Free bytes on the file system holding `path`, by GNU `df` (in the C
/// locale, whose column header the parser skips), or `None` if it cannot say.
fn free_space(path: &Path) -> Option<u64> {
    let output = Command::new("df")
        .env("LC_ALL", "C")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    parse_df_avail(&String::from_utf8_lossy(&output.stdout))
}

/// Whether `free` bytes are enough for a run whose fresh footprint is
/// `footprint` when `held` bytes of it are already written under `root`.
fn space_verdict(free: u64, held: u64, footprint: u64, root: &Path) -> Result<()> {
    let needed = still_needed(footprint, held);
    if free >= needed {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "only {} free on the file system of {}; this needs about {} more \
             (target/ and build/ hold {} of the {} a fresh clone uses): free some space and run it again",
            gib(free),
            root.display(),
            gib(needed),
            gib(held),
            gib(footprint)
        )))
    }
}

/// Space still to be written: the footprint less what is held, but never
/// less than an eighth of it (rebuilds and run directories are rewritten).
fn still_needed(footprint: u64, held: u64) -> u64 {
    footprint.saturating_sub(held).max(footprint / 8)
}

/// The free bytes in `df -B1 --output=avail`'s output: a header line, then
/// the number.
fn parse_df_avail(text: &str) -> Option<u64> {
    text.lines().nth(1)?.trim().parse().ok()
}

/// Bytes in the files under `path` (0 if it is not there); links are not followed.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| tree_size(&entry.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// `bytes` in GiB, one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_target_and_components_are_found() {
        let sysroot = std::env::temp_dir().join(format!("xtask-sysroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&sysroot);
        std::fs::create_dir_all(sysroot.join("bin")).unwrap();
        assert_eq!(
            missing_parts(&sysroot),
            [
                Part::Target,
                Part::Component("clippy"),
                Part::Component("rustfmt")
            ]
        );
        std::fs::create_dir_all(sysroot.join("lib/rustlib/aarch64-unknown-none/lib")).unwrap();
        std::fs::write(sysroot.join("bin/cargo-clippy"), b"").unwrap();
        assert_eq!(missing_parts(&sysroot), [Part::Component("rustfmt")]);
        std::fs::write(sysroot.join("bin/rustfmt"), b"").unwrap();
        assert_eq!(missing_parts(&sysroot), []);
        std::fs::remove_dir_all(&sysroot).unwrap();
    }

    /// The toolchain this test runs with has everything `cargo xtask` needs
    /// (what `ensure_toolchain` would otherwise add).
    #[test]
    fn this_toolchain_is_complete_after_xtask() {
        let output = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .unwrap();
        let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        assert_eq!(missing_parts(&sysroot), []);
    }

    #[test]
    fn df_output_gives_the_free_bytes() {
        assert_eq!(parse_df_avail("   Avail\n123456789\n"), Some(123_456_789));
        assert_eq!(
            parse_df_avail("Verf\n42\n"),
            Some(42),
            "a translated header"
        );
        assert_eq!(parse_df_avail("123456789\n"), None, "no header");
        assert_eq!(parse_df_avail("Avail\n"), None);
        assert_eq!(parse_df_avail("Avail\nmany\n"), None);
    }

    #[test]
    fn what_is_built_already_counts_against_the_footprint() {
        assert_eq!(still_needed(8 << 30, 0), 8 << 30);
        assert_eq!(still_needed(8 << 30, 3 << 30), 5 << 30);
        assert_eq!(still_needed(8 << 30, 9 << 30), 1 << 30);
    }

    /// The `df` command line is one GNU df accepts (`-P` with `--output`
    /// is not, and the check would then never run).
    #[test]
    fn df_reads_this_machines_free_space() {
        // More than a MiB: a disk this full would have failed the build.
        assert!(
            free_space(Path::new(env!("CARGO_MANIFEST_DIR"))).is_some_and(|free| free > 1 << 20)
        );
    }

    #[test]
    fn more_than_the_disk_holds_is_refused_with_the_numbers() {
        let root = Path::new("/ws");
        let gib = 1u64 << 30;
        assert!(space_verdict(4 * gib, 0, 4 * gib, root).is_ok());
        assert!(space_verdict(gib, 3 * gib, 4 * gib, root).is_ok());
        let err = space_verdict(gib, 2 * gib, 4 * gib, root)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "only 1.0 GiB free on the file system of /ws; this needs about 2.0 GiB more \
             (target/ and build/ hold 2.0 GiB of the 4.0 GiB a fresh clone uses): \
             free some space and run it again"
        );
    }

    #[test]
    fn a_workspace_holds_its_target_and_build_folders_and_is_checked() {
        let root = std::env::temp_dir().join(format!("xtask-ws-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let ws = Workspace {
            build: root.join("build"),
            root: root.clone(),
        };
        std::fs::create_dir_all(root.join("target")).unwrap();
        std::fs::create_dir_all(&ws.build).unwrap();
        std::fs::write(root.join("target/a"), [0u8; 7]).unwrap();
        std::fs::write(ws.build.join("b"), [0u8; 5]).unwrap();
        std::fs::write(root.join("elsewhere"), [0u8; 100]).unwrap();
        assert_eq!(held(&ws), 12);
        assert!(ensure_free_space(&ws, 1 << 20).is_ok());
        assert!(ensure_free_space(&ws, 1 << 62).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tree_is_sized_by_its_files_and_a_missing_one_is_empty() {
        let dir = std::env::temp_dir().join(format!("xtask-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/one"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("a/b/two"), [0u8; 23]).unwrap();
        assert_eq!(tree_size(&dir), 123);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(tree_size(&dir), 0);
    }
}
