//! The outside programs tidepool needs, obtained on demand and cached.

use std::path::PathBuf;

use crate::debian::{Arm64Apt, ensure_host_tool};
use crate::{Error, Result, Workspace};

/// The Xen package and the hypervisor image inside it.
const XEN_PACKAGE: &str = "xen-hypervisor-4.17-arm64";
const XEN_IMAGE_IN_PACKAGE: &str = "boot/xen-4.17-arm64";

/// Makes sure QEMU and the device-tree tools are installed.
pub fn ensure_host_tools() -> Result<()> {
    ensure_host_tool("qemu-system-aarch64", "qemu-system-arm")?;
    ensure_host_tool("fdtget", "device-tree-compiler")?;
    ensure_host_tool("dpkg-deb", "dpkg")
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
