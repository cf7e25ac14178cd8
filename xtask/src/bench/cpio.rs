//! A writer for the `newc` cpio format, which Linux unpacks as an initramfs
//! (Linux `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (`070701`, then thirteen 8-digit hex
//! fields), the NUL-terminated name padded to 4 bytes, and the data padded to
//! 4 bytes; the archive ends with an entry named `TRAILER!!!`. Owners are
//! root, times are 0, so the archive depends only on what is added.

/// File type bits of `st_mode` (Linux `include/uapi/linux/stat.h`).
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::{Error, Result};

/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

/// An archive being written, in memory.
pub struct Newc {
    out: Vec<u8>,
    next_ino: u32,
    dirs: HashSet<String>,
}

impl Newc {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
            dirs: HashSet::new(),
        }
    }

    /// A directory `path` (no leading `/`) with permission bits `perm`.
    pub fn dir(&mut self, path: &str, perm: u32) {
        if self.dirs.insert(path.to_string()) {
            self.entry(path, S_IFDIR | perm, 2, (0, 0), b"");
        }
    }

    /// Everything under the host directory `root` whose path relative to it
    /// `keep` accepts: regular files with their permission bits, symbolic
    /// links as they are, and the directories leading to them (each once).
    pub fn tree(&mut self, root: &Path, keep: fn(&str) -> bool) -> Result<()> {
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(dir.clone(), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for path in entries {
                let rel = path
                    .strip_prefix(root)
                    .ok()
                    .and_then(|p| p.to_str())
                    .ok_or_else(|| Error::msg(format!("{}: not UTF-8", path.display())))?
                    .to_string();
                let meta =
                    std::fs::symlink_metadata(&path).map_err(|e| Error::io(path.clone(), e))?;
                if meta.is_dir() {
                    pending.push(path);
                    continue;
                }
                if !keep(&rel) {
                    continue;
                }
                self.parents(&rel);
                if meta.file_type().is_symlink() {
                    let target =
                        std::fs::read_link(&path).map_err(|e| Error::io(path.clone(), e))?;
                    self.symlink(&rel, &target.to_string_lossy());
                } else if meta.is_file() {
                    let bytes = std::fs::read(&path).map_err(|e| Error::io(path.clone(), e))?;
                    self.file(&rel, meta.permissions().mode() & 0o7777, &bytes);
                }
            }
        }
        Ok(())
    }

    /// The directories above `path`, outermost first.
    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(slash) = path[at..].find('/') {
            self.dir(&path[..at + slash], 0o755);
            at += slash + 1;
        }
    }

    /// A regular file `path` with permission bits `perm` and contents `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data);
    }

    /// A symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node `path` with device number `major:minor`.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), b"");
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(TRAILER, 0, 0, 1, (0, 0), 0);
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len()).expect("an initramfs member is under 4 GiB");
        self.header(path, ino, mode, nlink, rdev, size);
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), size: u32) {
        let namesize = u32::try_from(name.len() + 1).expect("a short name");
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back.
    struct Entry {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Reads back every entry, checking magic, alignment and the trailer.
    fn entries(archive: &[u8]) -> Vec<Entry> {
        let field = |at: usize, i: usize| {
            let start = at + 6 + 8 * i;
            let text = std::str::from_utf8(&archive[start..start + 8]).unwrap();
            u32::from_str_radix(text, 16).unwrap() as usize
        };
        let align = |n: usize| n.next_multiple_of(4);
        let mut at = 0;
        let mut found = Vec::new();
        loop {
            assert_eq!(at % 4, 0, "entries start 4-aligned");
            assert_eq!(&archive[at..at + 6], b"070701");
            let (mode, size, namesize) = (field(at, 1), field(at, 6), field(at, 11));
            let rdev = (field(at, 9) as u32, field(at, 10) as u32);
            let name_start = at + 110;
            let name = &archive[name_start..name_start + namesize - 1];
            assert_eq!(
                archive[name_start + namesize - 1],
                0,
                "name is NUL-terminated"
            );
            let name = String::from_utf8(name.to_vec()).unwrap();
            let data_start = align(name_start + namesize);
            let data = archive[data_start..data_start + size].to_vec();
            at = align(data_start + size);
            if name == TRAILER {
                assert_eq!(at, archive.len(), "nothing after the trailer");
                return found;
            }
            found.push(Entry {
                name,
                mode: mode as u32,
                rdev,
                data,
            });
        }
    }

    #[test]
    fn one_file_exact_bytes() {
        let mut a = Newc::new();
        a.file("init", 0o755, b"hi\n");
        let bytes = a.finish();
        let fields = [
            "00000001", // ino
            "000081ed", // mode: regular file, 0755
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "00000003", // filesize
            "00000000", // devmajor
            "00000000", // devminor
            "00000000", // rdevmajor
            "00000000", // rdevminor
            "00000005", // namesize, with the NUL
            "00000000", // check
        ];
        let mut want = b"070701".to_vec();
        want.extend(fields.concat().bytes());
        // 110 + 5 = 115 bytes: one pad byte, then 3 data bytes and one pad.
        want.extend_from_slice(b"init\0\0hi\n\0");
        assert_eq!(&bytes[..want.len()], &want[..]);
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn every_kind_round_trips() {
        let mut a = Newc::new();
        a.dir("bin", 0o755);
        a.file("bin/busybox", 0o755, &[7u8; 1001]);
        a.symlink("bin/sh", "busybox");
        a.char_device("dev/console", 0o600, 5, 1);
        a.file("empty", 0o644, b"");
        let got = entries(&a.finish());
        let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "bin/sh", "dev/console", "empty"]
        );
        assert_eq!(got[0].mode, 0o040_755);
        assert_eq!(got[1].mode, 0o100_755);
        assert_eq!(got[1].data, vec![7u8; 1001]);
        assert_eq!(
            (got[2].mode, got[2].data.as_slice()),
            (0o120_777, &b"busybox"[..])
        );
        assert_eq!((got[3].mode, got[3].rdev), (0o020_600, (5, 1)));
        assert!(got[4].data.is_empty());
    }

    #[test]
    fn tree_keeps_what_is_asked_with_parents_once() {
        let root = std::env::temp_dir().join(format!("cpio-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib/x")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/doc")).unwrap();
        std::fs::write(root.join("usr/lib/x/a.so"), b"elf").unwrap();
        std::fs::write(root.join("usr/share/doc/README"), b"doc").unwrap();
        std::os::unix::fs::symlink("x/a.so", root.join("usr/lib/a.so.1")).unwrap();
        let mut a = Newc::new();
        a.dir("usr", 0o755);
        a.tree(&root, |p| !p.starts_with("usr/share")).unwrap();
        let got = entries(&a.finish());
        let _ = std::fs::remove_dir_all(&root);
        let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/lib",
                "usr/lib/a.so.1",
                "usr/lib/x",
                "usr/lib/x/a.so"
            ]
        );
        assert_eq!(got[2].data, b"x/a.so");
        assert_eq!(got[4].data, b"elf");
    }
}
