//! Getting Debian packages: everything xtask needs is fetched
//! into the build directory through a private apt state, without touching
//! the system's apt or dpkg configuration (platform.md): arm64 packages (Xen,
//! a Linux kernel with board DTBs) from the system's suites, and the host's
//! QEMU 10 from `bookworm-backports` with a sources list of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result, run_checked};

/// Fails with the command to install `package` if `program` is not on
/// `PATH` (for what every Debian has, like dpkg; xtask installs nothing on
/// the system).
pub fn require_program(program: &str, package: &str) -> Result<()> {
    if has_program(program) {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "`{program}` is missing; install it with: sudo apt-get install {package}"
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

/// A private apt state under `dir`, for one architecture, reading the
/// system's sources or a sources list of its own.
pub struct PrivateApt {
    dir: PathBuf,
    arch: String,
    /// Its own sources list (and an empty parts directory), if any.
    own_sources: bool,
}

/// Debian's backports suite for the host's release, where QEMU 10 is.
const BACKPORTS_SOURCE: &str = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
    http://deb.debian.org/debian bookworm-backports main\n";

impl PrivateApt {
    /// The arm64 apt state in `dir` (created if needed), reading the
    /// system's sources.
    pub fn arm64(dir: &Path) -> Result<Self> {
        Self::create(dir, "arm64".into(), None)
    }

    /// The host-architecture apt state in `dir` (created if needed) whose
    /// only source is `bookworm-backports`.
    pub fn host_backports(dir: &Path) -> Result<Self> {
        Self::create(dir, host_architecture()?, Some(BACKPORTS_SOURCE))
    }

    /// The host-architecture apt state in `dir` (created if needed),
    /// reading the system's sources.
    pub fn host(dir: &Path) -> Result<Self> {
        Self::create(dir, host_architecture()?, None)
    }

    fn create(dir: &Path, arch: String, sources: Option<&str>) -> Result<Self> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "debs",
            "sources.list.d",
        ] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
        }
        if let Some(text) = sources {
            let list = dir.join("sources.list");
            std::fs::write(&list, text).map_err(|e| Error::io(list, e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            arch,
            own_sources: sources.is_some(),
        })
    }

    /// The options every apt-get/apt-cache call of this state takes.
    fn options(&self) -> Vec<String> {
        let mut opts = vec![
            format!("-oAPT::Architecture={}", self.arch),
            format!("-oAPT::Architectures={}", self.arch),
            format!("-oDir::State::Lists={}", self.dir.join("lists").display()),
            format!("-oDir::Cache={}", self.dir.join("cache").display()),
        ];
        if self.own_sources {
            opts.push(format!(
                "-oDir::Etc::SourceList={}",
                self.dir.join("sources.list").display()
            ));
            opts.push(format!(
                "-oDir::Etc::SourceParts={}",
                self.dir.join("sources.list.d").display()
            ));
        }
        opts
    }

    fn apt(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-q").args(self.options()).args([
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

    /// Downloads packages `names` (the newest version the archive has of
    /// each) and unpacks them together under `dest`, unless `dest` already
    /// holds an unpacked copy.
    pub fn fetch_and_unpack(&self, names: &[&str], dest: &Path) -> Result<()> {
        // Boot tests run in parallel and share the debs folder: one fetch at
        // a time, or one test's download is taken from under another's.
        static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _fetching = FETCH
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if dest.join(".unpacked").exists() {
            return Ok(());
        }
        self.update_once()?;
        let debs = self.dir.join("debs");
        run_checked(
            self.apt(&[&["download"], names].concat())
                .current_dir(&debs),
        )?;
        std::fs::create_dir_all(dest).map_err(|e| Error::io(dest.to_path_buf(), e))?;
        let mut unpacked = Vec::new();
        for name in names {
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
            run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
            unpacked.push(deb.display().to_string());
        }
        std::fs::write(dest.join(".unpacked"), unpacked.join("\n"))
            .map_err(|e| Error::io(dest.to_path_buf(), e))
    }

    /// The newest package named `prefix<number>suffix` (for packages with the
    /// version in their name, e.g. Linux images), by numeric version order.
    pub fn newest_named(&self, prefix: &str, suffix: &str) -> Result<String> {
        self.update_once()?;
        let mut cmd = Command::new("apt-cache");
        cmd.args(self.options()).arg("pkgnames");
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
            .ok_or_else(|| Error::msg(format!("no {} package named {prefix}*{suffix}", self.arch)))
    }
}

/// The host's Debian architecture (`amd64`).
fn host_architecture() -> Result<String> {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .map_err(|e| Error::msg(format!("dpkg --print-architecture: {e}")))?;
    let arch = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || arch.is_empty() {
        return Err(Error::msg("dpkg --print-architecture gave no architecture"));
    }
    Ok(arch)
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
