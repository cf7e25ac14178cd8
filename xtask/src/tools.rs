//! The outside programs tidepool needs, obtained on demand and cached.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian::{Arm64Apt, ensure_host_tool};
use crate::{Error, Result, Workspace, run_checked};

/// The Xen package and the hypervisor image inside it.
const XEN_PACKAGE: &str = "xen-hypervisor-4.17-arm64";
const XEN_IMAGE_IN_PACKAGE: &str = "boot/xen-4.17-arm64";

/// Makes sure QEMU, the device-tree tools and dpkg-deb are installed.
pub fn ensure_host_tools() -> Result<()> {
    ensure_host_tool("qemu-system-aarch64", "qemu-system-arm")?;
    // The board test reads every DTB a second way, with libfdt's fdtdump.
    ensure_host_tool("fdtdump", "device-tree-compiler")?;
    ensure_host_tool("dpkg-deb", "dpkg")
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
        Arm64Apt::new(&ws.build.join("apt-arm64"))?.fetch_and_unpack(XEN_PACKAGE, &dest)?;
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
    let apt = Arm64Apt::new(&ws.build.join("apt-arm64"))?;
    let dest = ws.build.join("linux-image");
    if !dest.join(".unpacked").exists() {
        let package = apt.newest_named("linux-image-6.1.0-", "-arm64-unsigned")?;
        eprintln!(
            "xtask: fetching {package} (arm64, for its board DTBs) into {}",
            dest.display()
        );
        apt.fetch_and_unpack(&package, &dest)?;
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
}
