//! Disk images for the block tests: filled with the disk pattern the kernel
//! checks (`tidepool_block::pattern`), verified after QEMU exits, and
//! QEMU `blkdebug` configurations that inject I/O errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use tidepool_block::pattern::{self, DiskPattern, SECTOR_BYTES};

use crate::{Error, Result};

/// Creates `path`: `sectors` sectors of the pattern of `seed`.
pub fn create(path: &Path, sectors: u64, seed: u64) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path.to_path_buf(), e))?;
    let mut out = std::io::BufWriter::new(file);
    for lba in 0..sectors {
        out.write_all(&pattern::sector(seed, lba))
            .map_err(|e| Error::io(path.to_path_buf(), e))?;
    }
    out.flush().map_err(|e| Error::io(path.to_path_buf(), e))
}

/// Checks that `path` holds `content`; `Err` names the first bad sector and
/// how many there are.
pub fn verify(path: &Path, content: DiskPattern) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() % SECTOR_BYTES != 0 {
        return Err(format!(
            "{}: {} bytes is not whole sectors",
            path.display(),
            bytes.len()
        ));
    }
    let mut first = None;
    let mut bad = 0u64;
    for (lba, sector) in bytes.chunks_exact(SECTOR_BYTES).enumerate() {
        let lba = lba as u64;
        let sector: &[u8; SECTOR_BYTES] =
            sector.try_into().expect("chunks_exact gives whole sectors");
        if let Err(mismatch) = pattern::verify(content.seed_of(lba), lba, sector) {
            first.get_or_insert(mismatch.to_string());
            bad += 1;
        }
    }
    match first {
        None => Ok(()),
        Some(first) => Err(format!(
            "{}: {bad} bad sectors, first: {first}",
            path.display()
        )),
    }
}

/// A `blkdebug` configuration that fails the first read (or write) touching
/// `sector` with EIO, once.
pub fn blkdebug_config(dir: &Path, event: &str, sector: u64) -> Result<PathBuf> {
    let path = dir.join(format!("blkdebug-{event}.conf"));
    let text = format!(
        "[inject-error]\nevent = \"{event}\"\nsector = \"{sector}\"\nerrno = \"5\"\nonce = \"on\"\n"
    );
    std::fs::write(&path, text).map_err(|e| Error::io(path.clone(), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_verify_and_spot_a_rewrite() {
        let dir = std::env::temp_dir().join(format!("tidepool-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.img");
        create(&path, 64, 7).unwrap();
        assert_eq!(
            verify(
                &path,
                DiskPattern {
                    seed: 7,
                    written: None
                }
            ),
            Ok(())
        );
        let err = verify(
            &path,
            DiskPattern {
                seed: 8,
                written: None,
            },
        )
        .unwrap_err();
        assert!(err.contains("64 bad sectors"), "{err}");

        // Rewrite sectors 8..16 with seed 9, as the kernel's blk-write does.
        let mut bytes = std::fs::read(&path).unwrap();
        for lba in 8..16u64 {
            let at = lba as usize * SECTOR_BYTES;
            bytes[at..at + SECTOR_BYTES].copy_from_slice(&pattern::sector(9, lba));
        }
        std::fs::write(&path, &bytes).unwrap();
        let written = Some(pattern::SectorRange {
            seed: 9,
            lba: 8,
            count: 8,
        });
        assert_eq!(verify(&path, DiskPattern { seed: 7, written }), Ok(()));
        let err = verify(
            &path,
            DiskPattern {
                seed: 7,
                written: None,
            },
        )
        .unwrap_err();
        assert!(err.contains("8 bad sectors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blkdebug_config_text() {
        let dir = std::env::temp_dir().join(format!("tidepool-blkdebug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = blkdebug_config(&dir, "read_aio", 4096).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("event = \"read_aio\"") && text.contains("sector = \"4096\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
