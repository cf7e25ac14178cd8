//! Dynamically linked Debian arm64 programs in an initramfs: a [`Userland`]
//! names the packages that hold a program and every library it links, and
//! the programs to include; [`add`] fetches the packages (once), follows the
//! programs' `DT_NEEDED` entries through the unpacked libraries, and puts
//! each program at its own path and each library it needs under
//! [`LIB_DIR`] (where `/init` points `LD_LIBRARY_PATH`), with the dynamic
//! loader at the path the programs name.
//!
//! A library named by a program but in none of the packages is an error
//! naming it, not a program that fails to start inside the guest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use object::Endianness;
use object::elf::{DT_NEEDED, FileHeader64, PT_INTERP};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};

use super::cpio::Newc;
use crate::debian::PrivateApt;
use crate::{Error, Result};

/// Where the libraries go in the initramfs.
pub const LIB_DIR: &str = "lib/aarch64-linux-gnu";

/// Directories of an unpacked package where libraries are looked for.
const SEARCH: &[&str] = &[
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu/ceph",
    "lib",
    "usr/lib",
];

/// Programs to put in an initramfs and the packages they come from.
pub struct Userland {
    /// Debian packages: the programs' and every library's they link.
    pub packages: &'static [&'static str],
    /// The programs, by path inside their package (`usr/bin/fio`).
    pub programs: &'static [&'static str],
}

/// Debian 12's `fio` with the libraries it links (its `Depends:` and theirs,
/// narrowed to those whose files the `DT_NEEDED` closure of `fio` uses).
pub const FIO: Userland = Userland {
    packages: &[
        "fio",
        "libacl1",
        "libaio1",
        "libargon2-1",
        "libblkid1",
        "libboost-iostreams1.74.0",
        "libboost-thread1.74.0",
        "libbz2-1.0",
        "libc6",
        "libcom-err2",
        "libcryptsetup12",
        "libdaxctl1",
        "libdevmapper1.02.1",
        "libffi8",
        "libfmt9",
        "libgcc-s1",
        "libgfapi0",
        "libgfrpc0",
        "libgfxdr0",
        "libglusterfs0",
        "libgmp10",
        "libgnutls30",
        "libgssapi-krb5-2",
        "libhogweed6",
        "libibverbs1",
        "libicu72",
        "libidn2-0",
        "libjson-c5",
        "libk5crypto3",
        "libkeyutils1",
        "libkmod2",
        "libkrb5-3",
        "libkrb5support0",
        "liblzma5",
        "libnbd0",
        "libndctl6",
        "libnettle8",
        "libnl-3-200",
        "libnl-route-3-200",
        "libnuma1",
        "libp11-kit0",
        "libpcre2-8-0",
        "libpmem1",
        "libpmemblk1",
        "librados2",
        "librbd1",
        "librdmacm1",
        "libselinux1",
        "libssl3",
        "libstdc++6",
        "libtasn1-6",
        "libtirpc3",
        "libudev1",
        "libunistring2",
        "libuuid1",
        "libxml2",
        "libzstd1",
        "zlib1g",
    ],
    programs: &["usr/bin/fio"],
};

/// What [`add`] put in the archive.
pub struct Added {
    /// The libraries, by soname.
    pub libraries: Vec<String>,
    /// Bytes of programs and libraries.
    pub bytes: u64,
}

/// Fetches `userland`'s packages into `dir` (each unpacked once) and adds
/// its programs and their libraries to `archive`, whose `lib`, `usr` and
/// `usr/bin` directories must exist.
pub fn add(apt: &PrivateApt, dir: &Path, userland: &Userland, archive: &mut Newc) -> Result<Added> {
    let mut roots = Vec::new();
    for package in userland.packages {
        let root = dir.join(package);
        apt.fetch_and_unpack(&[package], &root)?;
        roots.push(root);
    }
    let libraries = library_index(&roots)?;
    let mut programs = Vec::new();
    for program in userland.programs {
        let path = roots
            .iter()
            .map(|r| r.join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::msg(format!("{program}: in none of its packages")))?;
        programs.push((program.to_string(), read(&path)?));
    }
    let mut needed = BTreeMap::new();
    let mut interpreter = None;
    let mut pending: Vec<(String, Vec<u8>)> = programs.clone();
    while let Some((name, bytes)) = pending.pop() {
        let elf = ElfLinks::parse(&bytes).map_err(|e| Error::msg(format!("{name}: {e}")))?;
        if let Some(interp) = elf.interpreter {
            interpreter.get_or_insert(interp);
        }
        for soname in elf.needed {
            if needed.contains_key(&soname) {
                continue;
            }
            let path = libraries.get(&soname).ok_or_else(|| {
                Error::msg(format!(
                    "{name} needs {soname}, which none of the packages has"
                ))
            })?;
            let lib = read(path)?;
            needed.insert(soname.clone(), lib.clone());
            pending.push((soname, lib));
        }
    }
    let mut bytes = 0;
    for (path, data) in &programs {
        archive.file(path, 0o755, data);
        bytes += data.len() as u64;
    }
    archive.dir(LIB_DIR, 0o755);
    for (soname, data) in &needed {
        archive.file(&format!("{LIB_DIR}/{soname}"), 0o755, data);
        bytes += data.len() as u64;
    }
    // The loader where the programs look for it (`/lib/ld-linux-aarch64.so.1`).
    if let Some(interp) = interpreter {
        let soname = interp.rsplit('/').next().unwrap_or(&interp).to_string();
        if !needed.contains_key(&soname) {
            return Err(Error::msg(format!(
                "the programs' loader {interp} is not among their libraries"
            )));
        }
        let link = interp.trim_start_matches('/');
        if link != format!("{LIB_DIR}/{soname}") {
            archive.symlink(link, &format!("/{LIB_DIR}/{soname}"));
        }
    }
    Ok(Added {
        libraries: needed.into_keys().collect(),
        bytes,
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path.to_path_buf(), e))
}

/// Every file under the search directories of `roots`, by file name (the
/// first root wins).
fn library_index(roots: &[PathBuf]) -> Result<HashMap<String, PathBuf>> {
    let mut index = HashMap::new();
    for root in roots {
        for sub in SEARCH {
            let dir = root.join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.map_err(|e| Error::io(dir.clone(), e))?.path();
                if let Some(name) = path.file_name().and_then(|n| n.to_str())
                    && name.contains(".so")
                    && path.is_file()
                {
                    index.entry(name.to_string()).or_insert(path);
                }
            }
        }
    }
    Ok(index)
}

/// What an ELF file needs from the dynamic loader.
#[derive(Debug, PartialEq)]
struct ElfLinks {
    /// `PT_INTERP`, for a program.
    interpreter: Option<String>,
    /// `DT_NEEDED` sonames.
    needed: Vec<String>,
}

impl ElfLinks {
    /// Reads a little-endian 64-bit ELF file (arm64).
    fn parse(data: &[u8]) -> std::result::Result<Self, String> {
        Self::read(data).map_err(|e| e.to_string())
    }

    fn read(data: &[u8]) -> std::result::Result<Self, object::read::Error> {
        let header = FileHeader64::<Endianness>::parse(data)?;
        let endian = header.endian()?;
        let mut interpreter = None;
        for segment in header.program_headers(endian, data)? {
            if segment.p_type(endian) == PT_INTERP {
                // A segment past the file's end is no interpreter.
                let bytes = segment.data(endian, data).unwrap_or_default();
                let text = bytes.split(|&b| b == 0).next().unwrap_or_default();
                interpreter = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
        let sections = header.sections(endian, data)?;
        let mut needed = Vec::new();
        if let Some((dynamic, link)) = sections.dynamic(endian, data)? {
            let strings = sections.strings(endian, data, link)?;
            for entry in dynamic {
                if entry.tag32(endian) == Some(DT_NEEDED) {
                    let name = entry.string(endian, strings)?;
                    needed.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
        Ok(Self {
            interpreter,
            needed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_links_of_a_host_program() {
        // The test binary itself is a dynamically linked ELF on the
        // (little-endian, 64-bit) hosts the project builds on.
        let me = std::env::current_exe().unwrap();
        let links = ElfLinks::parse(&std::fs::read(me).unwrap()).unwrap();
        assert!(
            links.needed.iter().any(|n| n.starts_with("libc.so")),
            "{links:?}"
        );
        assert!(links.interpreter.is_some_and(|i| i.starts_with('/')));
        assert!(ElfLinks::parse(b"not an ELF file").is_err());
    }
}
