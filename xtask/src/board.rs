//! Boards QEMU emulates besides `virt`, booted with the board's own device
//! tree: the QEMU machine, where the tree comes from, and what the tree says
//! about the command line (CPUs, which UART is the console).
//!
//! Everything that differs from `virt` is read from the board's tree, not
//! special-cased: the number of CPUs (`-smp`), the console UART's index (how
//! many `-serial null` come before the console's `-serial`), and where the
//! SD slot is.

use std::path::{Path, PathBuf};

use crate::devicetree::{Node, Tree};
use crate::qemu::Disk;
use crate::{Error, Result, Workspace};

/// A board with a QEMU machine model and a device tree of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    /// NXP i.MX 8M Plus EVK (QEMU 10's `imx8mp-evk`).
    Imx8mpEvk,
}

/// The boards `--board` accepts.
pub const BOARDS: &[Board] = &[Board::Imx8mpEvk];

impl Board {
    /// The board's name on the command line (and QEMU's machine name).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Imx8mpEvk => "imx8mp-evk",
        }
    }

    /// The board named `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        BOARDS
            .iter()
            .copied()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = BOARDS.iter().map(|b| b.name()).collect();
                Error::msg(format!(
                    "unknown board {name:?} (known: {})",
                    known.join(", ")
                ))
            })
    }

    /// The board's DTB in Debian's arm64 Linux image package (fetched
    /// into build/ once).
    pub fn dtb(self, ws: &Workspace) -> Result<PathBuf> {
        let file = match self {
            Self::Imx8mpEvk => "freescale/imx8mp-evk.dtb",
        };
        let path = crate::tools::board_dtbs(ws)?.join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::msg(format!("{} is missing", path.display())))
        }
    }

    /// The board's device tree, parsed.
    pub fn tree(self, ws: &Workspace) -> Result<Tree> {
        let path = self.dtb(ws)?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(path.clone(), e))?;
        Tree::from_dtb(&bytes).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }

    /// QEMU's default RAM for the board: 2 GiB at 0x40000000 (the EVK has
    /// more, but 2 GiB covers the board's reserved regions, and QEMU
    /// rewrites the tree's memory node to `-m`).
    pub const fn default_memory(self) -> &'static str {
        match self {
            Self::Imx8mpEvk => "2G",
        }
    }

    /// The SD bus (`-drive if=sd,bus=N`) of the board's SD card slot: on the
    /// EVK, uSDHC2 (`mmc@30b50000`); bus 0 is uSDHC1, bus 2 the eMMC's
    /// uSDHC3.
    pub const fn sd_slot_bus(self) -> u32 {
        match self {
            Self::Imx8mpEvk => 1,
        }
    }

    /// tidepool's bootargs as Xen's dom0 on the board: Xen removes
    /// `stdout-path` from dom0's tree, so `console-uart=` names the board's
    /// console UART (Xen 4.17 has no driver for it and leaves it to dom0).
    pub fn dom0_bootargs(self, tree: &Tree, bootargs: &str) -> Result<String> {
        let facts =
            BoardFacts::of(tree).map_err(|e| Error::msg(format!("{}: {e}", self.name())))?;
        Ok(format!("console-uart={} {bootargs}", facts.console)
            .trim_end()
            .to_string())
    }

    /// The machine arguments: `-machine`, `-m`, `-smp` (the tree's CPU
    /// count), a `-serial null` for each UART before the console (the
    /// caller's `-serial` then reaches the console UART), and the SD card.
    pub fn hardware_args(self, tree: &Tree, memory: &str, disks: &[Disk]) -> Result<Vec<String>> {
        let facts =
            BoardFacts::of(tree).map_err(|e| Error::msg(format!("{}: {e}", self.name())))?;
        let mut args: Vec<String> = [
            "-machine",
            self.name(),
            "-m",
            memory,
            "-smp",
            &facts.cpus.to_string(),
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ]
        .map(String::from)
        .to_vec();
        for _ in 0..facts.console_index {
            args.extend(["-serial", "null"].map(String::from));
        }
        match disks {
            [] => {}
            [card] => {
                sd_card_size(Path::new(&card.file))?;
                let ro = if card.read_only { ",readonly=on" } else { "" };
                args.push("-drive".into());
                args.push(format!(
                    "if=sd,bus={},format=raw,file={}{ro}",
                    self.sd_slot_bus(),
                    card.file
                ));
            }
            _ => {
                return Err(Error::msg(format!(
                    "{} has one SD card slot: give one --disk, not {}",
                    self.name(),
                    disks.len()
                )));
            }
        }
        Ok(args)
    }
}

/// What the command line needs from a board's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardFacts {
    /// `cpu@` nodes under `/cpus`.
    pub cpus: usize,
    /// N of the `serialN` alias that names the `stdout-path` UART: QEMU
    /// connects its N-th `-serial` to it.
    pub console_index: usize,
    /// The `stdout-path` UART's node path.
    pub console: String,
}

impl BoardFacts {
    /// Reads the facts from `tree`; the error says which is missing.
    pub fn of(tree: &Tree) -> std::result::Result<Self, String> {
        let cpus = tree
            .node("/cpus")
            .map(|cpus| {
                cpus.children
                    .iter()
                    .filter(|c| c.name.starts_with("cpu@"))
                    .count()
            })
            .unwrap_or(0);
        if cpus == 0 {
            return Err("the device tree has no /cpus/cpu@ nodes".into());
        }
        let text = |node: &Node, name: &str| {
            node.property(name)
                .and_then(|v| v.split(|&b| b == 0).next())
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        };
        let chosen = tree
            .node("/chosen")
            .map_err(|_| "the device tree has no /chosen".to_string())?;
        let stdout = text(chosen, "stdout-path").ok_or("/chosen has no stdout-path".to_string())?;
        let stdout = stdout.split(':').next().unwrap_or_default().to_string();
        let aliases = tree
            .node("/aliases")
            .map_err(|_| "the device tree has no /aliases".to_string())?;
        // stdout-path names the node by path or by alias.
        let path = if stdout.starts_with('/') {
            stdout.clone()
        } else {
            text(aliases, &stdout).ok_or(format!("stdout-path alias {stdout:?} is undefined"))?
        };
        let console_index = aliases
            .props
            .iter()
            .filter_map(|(name, _)| {
                let index = name.strip_prefix("serial")?.parse::<usize>().ok()?;
                (text(aliases, name)? == path).then_some(index)
            })
            .min()
            .ok_or(format!("no serialN alias names the console {path}"))?;
        Ok(Self {
            cpus,
            console_index,
            console: path,
        })
    }
}

/// Checks an SD card image: QEMU's SD card model needs a power-of-two size
/// ("SD card size has to be a power of 2").
pub fn sd_card_size(file: &Path) -> Result<u64> {
    let size = std::fs::metadata(file)
        .map_err(|e| Error::io(file.to_path_buf(), e))?
        .len();
    if size.is_power_of_two() {
        Ok(size)
    } else {
        Err(Error::msg(format!(
            "SD card image {} is {size} bytes: QEMU's SD card needs a power-of-two size \
             (e.g. `truncate -s 64M {}`)",
            file.display(),
            file.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evk() -> Option<Tree> {
        let ws = Workspace::locate();
        let path = ws.build.join("linux-image");
        // The board test fetches the package; without it there is no tree.
        path.exists()
            .then(|| Board::Imx8mpEvk.tree(&ws).expect("the EVK's tree parses"))
    }

    #[test]
    fn the_evk_tree_gives_four_cpus_and_uart2() {
        let Some(tree) = evk() else {
            eprintln!("build/linux-image not fetched: skipping the EVK tree");
            return;
        };
        assert_eq!(
            BoardFacts::of(&tree),
            Ok(BoardFacts {
                cpus: 4,
                console_index: 1,
                console: "/soc@0/bus@30800000/serial@30890000".into()
            })
        );
    }

    #[test]
    fn facts_come_from_aliases_and_stdout_path() {
        let mut tree = Tree::from_dtb(&crate::devicetree::test_fixture::qemu_like_dtb()).unwrap();
        assert!(BoardFacts::of(&tree).is_err(), "the fixture has no /cpus");
        tree.get_or_create("/cpus/cpu@0").unwrap();
        tree.get_or_create("/cpus/cpu@1").unwrap();
        tree.get_or_create("/aliases").unwrap();
        tree.set_string("/aliases", "serial0", "/soc/serial@1")
            .unwrap();
        tree.set_string("/aliases", "serial3", "/soc/serial@2")
            .unwrap();
        tree.get_or_create("/chosen").unwrap();
        tree.set_string("/chosen", "stdout-path", "serial3:115200n8")
            .unwrap();
        assert_eq!(
            BoardFacts::of(&tree),
            Ok(BoardFacts {
                cpus: 2,
                console_index: 3,
                console: "/soc/serial@2".into()
            })
        );
        tree.set_string("/chosen", "stdout-path", "/soc/serial@9")
            .unwrap();
        assert_eq!(
            BoardFacts::of(&tree),
            Err("no serialN alias names the console /soc/serial@9".into())
        );
    }

    #[test]
    fn sd_cards_must_be_a_power_of_two() {
        let dir = std::env::temp_dir().join(format!("xtask-sd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.img");
        let bad = dir.join("bad.img");
        std::fs::File::create(&good)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        std::fs::File::create(&bad)
            .unwrap()
            .set_len(48 << 20)
            .unwrap();
        assert_eq!(sd_card_size(&good).unwrap(), 64 << 20);
        let err = sd_card_size(&bad).unwrap_err().to_string();
        assert!(
            err.contains("is 50331648 bytes: QEMU's SD card needs a power-of-two size"),
            "{err}"
        );
        let disks = [Disk {
            file: bad.display().to_string(),
            read_only: false,
        }];
        let mut tree = Tree::from_dtb(&crate::devicetree::test_fixture::qemu_like_dtb()).unwrap();
        tree.get_or_create("/cpus/cpu@0").unwrap();
        tree.get_or_create("/aliases").unwrap();
        tree.set_string("/aliases", "serial1", "/u").unwrap();
        tree.get_or_create("/chosen").unwrap();
        tree.set_string("/chosen", "stdout-path", "/u").unwrap();
        assert!(Board::Imx8mpEvk.hardware_args(&tree, "2G", &disks).is_err());
        let disks = [Disk {
            file: good.display().to_string(),
            read_only: false,
        }];
        let args = Board::Imx8mpEvk.hardware_args(&tree, "2G", &disks).unwrap();
        assert!(args.join(" ").ends_with(&format!(
            "-serial null -drive if=sd,bus=1,format=raw,file={}",
            good.display()
        )));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
