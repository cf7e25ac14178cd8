//! Getting Debian packages: host tools with apt-get, and arm64 packages
//! (Xen, a Linux kernel with board DTBs) fetched into the build directory
//! through a private apt state, without touching the system's apt or dpkg
//! configuration (platform.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result, run_checked};

/// Makes sure host command `program` exists, installing Debian package
/// `package` with apt-get when running as root; otherwise says exactly what
/// to run.
pub fn ensure_host_tool(program: &str, package: &str) -> Result<()> {
    if has_program(program) {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !is_root {
        return Err(Error::msg(format!(
            "`{program}` is missing; install it with: sudo apt-get update && sudo apt-get install -y {package}"
        )));
    }
    eprintln!("xtask: installing {package} (for `{program}`) with apt-get");
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(Command::new("apt-get").args([
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        package,
    ]))?;
    if has_program(program) {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "installed {package} but `{program}` is still missing"
        )))
    }
}

/// Whether `program` is on `PATH`.
pub fn has_program(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A private arm64 apt state under `dir`.
pub struct Arm64Apt {
    dir: PathBuf,
}

impl Arm64Apt {
    /// Uses (creating if needed) the apt state in `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn apt(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.args([
            "-q",
            "-oAPT::Architecture=arm64",
            "-oAPT::Architectures=arm64",
            &format!("-oDir::State::Lists={}", self.dir.join("lists").display()),
            &format!("-oDir::Cache={}", self.dir.join("cache").display()),
            "-oDebug::NoLocking=1",
            // Downloads land in a directory the unprivileged _apt user cannot
            // write; run them as the caller instead of warning.
            "-oAPT::Sandbox::User=root",
        ]);
        cmd.args(args);
        cmd
    }

    fn update_once(&self) -> Result<()> {
        let stamp = self.dir.join("lists/.updated");
        if !stamp.exists() {
            run_checked(&mut self.apt(&["update"]))?;
            std::fs::write(&stamp, b"").map_err(|e| Error::io(stamp, e))?;
        }
        Ok(())
    }

    /// Downloads package `name` (the newest version the archive has) and
    /// unpacks it under `dest`, unless `dest` already holds an unpacked copy.
    pub fn fetch_and_unpack(&self, name: &str, dest: &Path) -> Result<()> {
        if dest.join(".unpacked").exists() {
            return Ok(());
        }
        self.update_once()?;
        let debs = self.dir.join("debs");
        run_checked(self.apt(&["download", name]).current_dir(&debs))?;
        let deb = std::fs::read_dir(&debs)
            .map_err(|e| Error::io(debs.clone(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")))
            })
            .max()
            .ok_or_else(|| {
                Error::msg(format!(
                    "apt-get download {name} left no .deb in {}",
                    debs.display()
                ))
            })?;
        std::fs::create_dir_all(dest).map_err(|e| Error::io(dest.to_path_buf(), e))?;
        run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
        std::fs::write(dest.join(".unpacked"), deb.display().to_string())
            .map_err(|e| Error::io(dest.to_path_buf(), e))
    }

    /// The newest package named `prefix<number>suffix` (for packages with the
    /// version in their name, e.g. Linux images), by numeric version order.
    pub fn newest_named(&self, prefix: &str, suffix: &str) -> Result<String> {
        self.update_once()?;
        let mut cmd = Command::new("apt-cache");
        cmd.args([
            "-oAPT::Architecture=arm64",
            "-oAPT::Architectures=arm64",
            &format!("-oDir::State::Lists={}", self.dir.join("lists").display()),
            &format!("-oDir::Cache={}", self.dir.join("cache").display()),
            "pkgnames",
        ]);
        let listing = cmd
            .output()
            .map_err(|e| Error::msg(format!("apt-cache: {e}")))?;
        let text = String::from_utf8_lossy(&listing.stdout);
        // Only `prefix` + an ABI number + `suffix`: `linux-image-6.1.0-56-arm64-unsigned`,
        // not the `-cloud-` or `-rt-` flavours, which ship fewer board DTBs.
        let matches = |name: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(|abi| !abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit()))
        };
        let mut names: Vec<&str> = text.lines().filter(|n| matches(n)).collect();
        names.sort_by_key(|n| version_key(n));
        names
            .last()
            .map(|s| s.to_string())
            .ok_or_else(|| Error::msg(format!("no arm64 package named {prefix}*{suffix}")))
    }
}

/// Orders names like `linux-image-6.1.0-56-arm64-unsigned` by their numbers.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn numeric_version_order() {
        let mut v = [
            "linux-image-6.1.0-9-arm64-unsigned",
            "linux-image-6.1.0-56-arm64-unsigned",
            "linux-image-6.1.0-10-arm64-unsigned",
        ];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[2], "linux-image-6.1.0-56-arm64-unsigned");
    }
}
