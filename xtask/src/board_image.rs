//! `cargo xtask image --board B --out DIR [--xen FILE]`: what a user copies
//! to the boot partition of a physical board's SD card to boot tidepool as
//! Xen's dom0.
//!
//! DIR gets:
//! - `xen`: the Xen binary given (default Debian's 4.17, which boots but
//!   has no driver for the i.MX UART: see [`XEN_417_UART_WARNING`]);
//! - `tidepool.img`: the kernel Image;
//! - `BOARD.dtb`: the board's own DTB, as U-Boot loads it;
//! - `BOARD-xen.dtb`: the same with Xen's `/chosen` (Xen's command line and
//!   the dom0 module node): what the script makes of `BOARD.dtb` at boot,
//!   for inspection (`cargo xtask dt`) and for loaders without scripts;
//! - `boot.source` and `boot.scr`: a U-Boot script in the form Xen's
//!   ImageBuilder (`uboot-script-gen`) writes: each file loaded at a 2 MiB
//!   aligned address, from the start of RAM plus 2 MiB upward, `fdt addr`
//!   and `fdt resize`, `/chosen` filled with `fdt set` and `fdt mknod`, then
//!   `booti` of Xen with the edited DTB; compiled with `mkimage`.
//!
//! Before writing, the load ranges are checked against the board tree's
//! plan: each inside a memory bank, none overlapping another, a
//! `/memreserve/` entry or a reserved region.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tidepool_dt::{AddrRange, Plan};

use crate::board::Board;
use crate::devicetree::{self, Module, Tree};
use crate::{Error, Result, Workspace};

/// Why Debian's Xen 4.17 is not enough on the i.MX 8M Plus.
pub const XEN_417_UART_WARNING: &str = "Debian's Xen 4.17 boots on the i.MX 8M Plus but has no driver for \
its UART (fsl,imx6q-uart family): Xen's own messages reach only its console ring, which tidepool prints \
as dom0 (`xen: ring:` lines). For Xen's console on the UART use a Xen built from upstream's master with \
xen/drivers/char/imx-uart.c (merged after 4.22), given with --xen.";

/// Load addresses start this far above the start of RAM (ImageBuilder's
/// default: the first 2 MiB are left to firmware and U-Boot's own use).
const FIRST_OFFSET: u64 = 2 << 20;
/// Every file starts on this alignment (what `booti` wants for an Image,
/// and ImageBuilder's granule).
const ALIGN: u64 = 2 << 20;
/// Bytes `fdt resize` adds for the `/chosen` edits (ImageBuilder's value).
const FDT_PADDING: u64 = 1024;

/// One file the script loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    /// File name in DIR.
    pub file: String,
    /// Load address.
    pub addr: u64,
    /// Bytes of the file.
    pub file_size: u64,
    /// Bytes of memory it occupies from `addr` (an Image's `image_size`,
    /// a DTB's size plus the resize padding).
    pub memory_size: u64,
}

impl Load {
    /// The memory it occupies, `None` if it would wrap past 2^64.
    pub fn range(&self) -> Option<AddrRange> {
        AddrRange::new(self.addr, self.memory_size)
    }
}

/// Places `files` (name, file size, memory size) one after the other from
/// `ram_start + 2 MiB`, each at a 2 MiB-aligned address.
pub fn place(ram_start: u64, files: &[(&str, u64, u64)]) -> Vec<Load> {
    let mut next = ram_start + FIRST_OFFSET;
    files
        .iter()
        .map(|&(file, file_size, memory_size)| {
            let addr = next.next_multiple_of(ALIGN);
            next = addr + memory_size;
            Load {
                file: file.to_string(),
                addr,
                file_size,
                memory_size,
            }
        })
        .collect()
}

/// Checks `loads` against `plan`: each inside one memory bank, clear of
/// each other, of `/memreserve/` entries and of reserved regions.
pub fn check_loads(loads: &[Load], plan: &Plan) -> std::result::Result<(), String> {
    let range = |load: &Load| {
        load.range().ok_or_else(|| {
            format!(
                "{} at {:#x} wraps past the end of memory",
                load.file, load.addr
            )
        })
    };
    for (i, load) in loads.iter().enumerate() {
        let here = range(load)?;
        if !plan.memory().iter().any(|bank| bank.contains(here)) {
            return Err(format!(
                "{} at {here} is outside every memory bank",
                load.file
            ));
        }
        for other in &loads[i + 1..] {
            let there = range(other)?;
            if here.overlaps(there) {
                return Err(format!(
                    "{} at {here} overlaps {} at {there}",
                    load.file, other.file
                ));
            }
        }
        if let Some(reserved) = plan.memreserve().iter().find(|r| here.overlaps(**r)) {
            return Err(format!(
                "{} at {here} overlaps /memreserve/ {reserved}",
                load.file
            ));
        }
        if let Some(region) = plan.reserved().iter().find(|r| here.overlaps(r.range)) {
            return Err(format!(
                "{} at {here} overlaps reserved region {} at {}",
                load.file, region.path, region.range
            ));
        }
    }
    Ok(())
}

/// What the script puts in `/chosen`.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// `xen,xen-bootargs`.
    pub xen_bootargs: String,
    /// The dom0 kernel module: address, size, its bootargs.
    pub dom0: Module,
}

/// The U-Boot script: loads, `fdt` edits, `booti`. `xen`, `dtb` and
/// `kernel` index `loads`.
pub fn script(board: Board, loads: &[Load], chosen: &Chosen) -> String {
    let [xen, dtb, kernel] = [0, 1, 2].map(|i| &loads[i]);
    let module = format!("/chosen/module@{:x}", chosen.dom0.addr);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# tidepool as Xen dom0 on the {}, written by `cargo xtask image`.",
        board.name()
    );
    let _ = writeln!(
        s,
        "# Xen ImageBuilder's form: files at 2 MiB-aligned addresses from RAM start + 2 MiB,"
    );
    let _ = writeln!(
        s,
        "# the device tree's /chosen filled in with fdt set/mknod, then booti."
    );
    let _ = writeln!(
        s,
        "# Run from the SD card's boot partition (distro boot sets devtype, devnum and"
    );
    let _ = writeln!(
        s,
        "# distro_bootpart; by hand: setenv devtype mmc; setenv devnum 1; setenv distro_bootpart 1)."
    );
    for load in loads {
        let _ = writeln!(
            s,
            "load ${{devtype}} ${{devnum}}:${{distro_bootpart}} {:#x} {}",
            load.addr, load.file
        );
    }
    let _ = writeln!(s, "fdt addr {:#x}", dtb.addr);
    let _ = writeln!(s, "fdt resize {FDT_PADDING}");
    let _ = writeln!(s, "fdt set /chosen \\#address-cells <0x2>");
    let _ = writeln!(s, "fdt set /chosen \\#size-cells <0x2>");
    let _ = writeln!(
        s,
        "fdt set /chosen xen,xen-bootargs \"{}\"",
        chosen.xen_bootargs
    );
    let _ = writeln!(s, "fdt mknod /chosen module@{:x}", chosen.dom0.addr);
    let _ = writeln!(
        s,
        "fdt set {module} compatible \"multiboot,kernel\" \"multiboot,module\""
    );
    let _ = writeln!(
        s,
        "fdt set {module} reg <{:#x} {:#x} {:#x} {:#x}>",
        chosen.dom0.addr >> 32,
        chosen.dom0.addr & 0xffff_ffff,
        chosen.dom0.size >> 32,
        chosen.dom0.size & 0xffff_ffff
    );
    let _ = writeln!(s, "fdt set {module} bootargs \"{}\"", chosen.dom0.bootargs);
    let _ = writeln!(s, "booti {:#x} - {:#x}", xen.addr, dtb.addr);
    debug_assert_eq!(kernel.addr, chosen.dom0.addr);
    s
}

/// Arguments of `cargo xtask image`.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// The board (imx8mp-evk).
    #[arg(long)]
    pub board: String,
    /// Where to write the files (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The Xen binary (an arm64 Image); default `$TIDEPOOL_XEN`, else
    /// Debian's Xen 4.17.
    #[arg(long)]
    pub xen: Option<PathBuf>,
    /// Xen's dom0_mem.
    #[arg(long, default_value = "512M")]
    pub dom0_mem: String,
    /// Extra tidepool bootargs.
    #[arg(long, default_value = "")]
    pub bootargs: String,
}

/// Writes the boot files for `args.board` into `args.out`.
pub fn run(ws: &Workspace, args: ImageArgs) -> Result<()> {
    let board = Board::from_name(&args.board)?;
    let image = crate::build_kernel(ws)?;
    let xen = match &args.xen {
        Some(path) => path.clone(),
        None => {
            if std::env::var_os("TIDEPOOL_XEN").is_none() {
                eprintln!("xtask: warning: {XEN_417_UART_WARNING}");
            }
            crate::tools::xen_image(ws)?
        }
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| Error::io(path.to_path_buf(), e));
    let (xen_bytes, kernel_bytes) = (read(&xen)?, read(&image)?);
    let xen_memory = crate::image::header_memory_size(&xen_bytes)
        .map_err(|e| Error::msg(format!("{}: {e}", xen.display())))?;
    let kernel_memory = crate::image::header_memory_size(&kernel_bytes)?;
    let board_dtb = read(&board.dtb(ws)?)?;
    let tree = Tree::from_dtb(&board_dtb).map_err(|e| Error::msg(format!("board DTB: {e}")))?;
    let plan = Plan::from_dtb(&board_dtb).map_err(|e| Error::msg(format!("board DTB: {e}")))?;
    let ram_start = plan
        .memory()
        .iter()
        .map(|bank| bank.base())
        .min()
        .ok_or_else(|| Error::msg("the board DTB has no memory bank"))?;

    let dtb_name = format!("{}.dtb", board.name());
    let loads = place(
        ram_start,
        &[
            ("xen", xen_bytes.len() as u64, xen_memory),
            (
                &dtb_name,
                board_dtb.len() as u64,
                board_dtb.len() as u64 + FDT_PADDING,
            ),
            ("tidepool.img", kernel_bytes.len() as u64, kernel_memory),
        ],
    );
    check_loads(&loads, &plan).map_err(|e| Error::msg(format!("load plan: {e}")))?;
    let chosen = Chosen {
        xen_bootargs: format!("console=dtuart dom0_mem={}", args.dom0_mem),
        dom0: Module {
            addr: loads[2].addr,
            size: loads[2].file_size,
            bootargs: board.dom0_bootargs(&tree, &args.bootargs)?,
        },
    };

    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.clone(), e))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
    };
    write("xen", &xen_bytes)?;
    write("tidepool.img", &kernel_bytes)?;
    write(&dtb_name, &board_dtb)?;
    let mut with_chosen = tree.clone();
    devicetree::add_xen_dom0(&mut with_chosen, &chosen.xen_bootargs, &chosen.dom0)
        .map_err(|e| Error::msg(format!("device tree: {e}")))?;
    let xen_dtb = with_chosen
        .to_dtb()
        .map_err(|e| Error::msg(format!("writing DT: {e}")))?;
    write(&format!("{}-xen.dtb", board.name()), &xen_dtb)?;
    let source = script(board, &loads, &chosen);
    write("boot.source", source.as_bytes())?;
    let scr = out.join("boot.scr");
    crate::run_checked(
        Command::new(crate::tools::mkimage(ws)?)
            .args([
                "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n",
            ])
            .arg(format!("tidepool on {}", board.name()))
            .arg("-d")
            .arg(out.join("boot.source"))
            .arg(&scr)
            .stdout(std::process::Stdio::null()),
    )?;
    for load in &loads {
        eprintln!(
            "xtask: {} at {:#x} ({} bytes, {:#x} in memory)",
            load.file, load.addr, load.file_size, load.memory_size
        );
    }
    check_written(ws, board, out)?;
    eprintln!(
        "xtask: wrote and checked {} (copy it to the SD card's boot partition; docs/boards/{}.md)",
        out.display(),
        board.name()
    );
    Ok(())
}

/// Checks a written boot folder: `mkimage -l` lists `boot.scr` as an
/// AArch64 script holding exactly `boot.source`; the load addresses
/// `boot.source` uses pass [`check_loads`] against the plan of
/// `BOARD-xen.dtb` (what `cargo xtask dt` prints for it); and the dom0
/// module node of that DTB has the kernel's load address and file size.
pub fn check_written(ws: &Workspace, board: Board, dir: &Path) -> Result<()> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| Error::io(path, e))
    };
    let source = String::from_utf8(read("boot.source")?)
        .map_err(|_| Error::msg("boot.source is not UTF-8"))?;
    let listing = Command::new(crate::tools::mkimage(ws)?)
        .arg("-l")
        .arg(dir.join("boot.scr"))
        .output()
        .map_err(|e| Error::msg(format!("mkimage -l: {e}")))?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let contents = format!("Image 0: {} Bytes", source.len());
    if !listing.contains("AArch64 Linux Script (uncompressed)") || !listing.contains(&contents) {
        return Err(Error::msg(format!(
            "mkimage -l boot.scr does not list an AArch64 script of {} bytes:\n{listing}",
            source.len()
        )));
    }
    let mut loads = Vec::new();
    for line in source.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["load", _, _, addr, file] = words.as_slice() {
            let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16)
                .map_err(|_| Error::msg(format!("boot.source: bad address in {line:?}")))?;
            let bytes = read(file)?;
            let memory_size = match crate::image::header_memory_size(&bytes) {
                Ok(size) => size,
                // The DTB: its size plus the script's resize padding.
                Err(_) => bytes.len() as u64 + FDT_PADDING,
            };
            loads.push(Load {
                file: file.to_string(),
                addr,
                file_size: bytes.len() as u64,
                memory_size,
            });
        }
    }
    let xen_dtb = read(&format!("{}-xen.dtb", board.name()))?;
    let plan = Plan::from_dtb(&xen_dtb)
        .map_err(|e| Error::msg(format!("{}-xen.dtb: {e}", board.name())))?;
    check_loads(&loads, &plan).map_err(|e| Error::msg(format!("boot.source: {e}")))?;
    let kernel = loads
        .iter()
        .find(|l| l.file == "tidepool.img")
        .ok_or_else(|| Error::msg("boot.source does not load tidepool.img"))?;
    let tree = Tree::from_dtb(&xen_dtb).map_err(|e| Error::msg(format!("{e}")))?;
    let module = tree
        .node(&format!("/chosen/module@{:x}", kernel.addr))
        .map_err(|e| Error::msg(format!("{}-xen.dtb: {e}", board.name())))?;
    let reg: Vec<u8> = [kernel.addr, kernel.file_size]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    if module.property("reg") != Some(reg.as_slice()) {
        return Err(Error::msg(format!(
            "{}-xen.dtb: the dom0 module's reg is not tidepool.img's load address and size",
            board.name()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evk_plan() -> Plan {
        // The EVK's layout: 6 GiB from 0x40000000 (two banks), the DSP's
        // no-map region at 0x92400000.
        let dts = "/dts-v1/; / { #address-cells = <2>; #size-cells = <2>; \
            memory@40000000 { device_type = \"memory\"; reg = <0 0x40000000 0 0xc0000000 1 0 0 0xc0000000>; }; \
            reserved-memory { #address-cells = <2>; #size-cells = <2>; ranges; \
            dsp@92400000 { reg = <0 0x92400000 0 0x2000000>; no-map; }; }; };";
        Plan::from_dtb(&dtc(dts)).unwrap()
    }

    /// `program` from the device-tree-compiler `cargo xtask test` fetches.
    fn dtc_tool(program: &str) -> Command {
        crate::tools::DtcTools::unpacked(&crate::Workspace::locate().build.join("dtc"))
            .expect("device-tree-compiler unpacked in build/dtc")
            .command(program)
    }

    fn dtc(source: &str) -> Vec<u8> {
        use std::io::Write as _;
        let mut child = dtc_tool("dtc")
            .args(["-q", "-I", "dts", "-O", "dtb"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("dtc runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(source.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn evk_loads() -> Vec<Load> {
        place(
            0x4000_0000,
            &[
                ("xen", 983_048, 0x13_60c8),
                ("imx8mp-evk.dtb", 34_473, 34_473 + FDT_PADDING),
                ("tidepool.img", 344_080, 0xd_2000),
            ],
        )
    }

    #[test]
    fn files_go_at_2mib_steps_from_ram_plus_2mib() {
        let loads = evk_loads();
        let addrs: Vec<u64> = loads.iter().map(|l| l.addr).collect();
        // Xen needs 0x1360c8 bytes: the DTB goes at the next 2 MiB boundary.
        assert_eq!(addrs, [0x4020_0000, 0x4040_0000, 0x4060_0000]);
        assert!(loads.iter().all(|l| l.addr % ALIGN == 0));
        // A bigger file pushes the next one further.
        let big = place(0x4000_0000, &[("a", 1, 0x30_0001), ("b", 1, 1)]);
        assert_eq!(big[1].addr, 0x4060_0000);
        assert_eq!(check_loads(&evk_loads(), &evk_plan()), Ok(()));
    }

    #[test]
    fn overlaps_and_reserved_memory_are_refused() {
        let plan = evk_plan();
        let mut loads = evk_loads();
        loads[1].addr = 0x4030_0000;
        assert!(
            check_loads(&loads, &plan)
                .unwrap_err()
                .starts_with("xen at ")
        );
        let mut loads = evk_loads();
        loads[2].addr = 0x9240_0000;
        assert_eq!(
            check_loads(&loads, &plan).unwrap_err(),
            "tidepool.img at 0x92400000 size=0xd2000 overlaps reserved region \
             /reserved-memory/dsp@92400000 at 0x92400000 size=0x2000000"
        );
        let loads = place(0x3000_0000, &[("xen", 1, 1)]);
        assert!(
            check_loads(&loads, &plan)
                .unwrap_err()
                .contains("outside every memory bank")
        );
    }

    fn chosen(loads: &[Load]) -> Chosen {
        Chosen {
            xen_bootargs: "console=dtuart dom0_mem=512M".into(),
            dom0: Module {
                addr: loads[2].addr,
                size: loads[2].file_size,
                bootargs: "console-uart=/soc@0/bus@30800000/serial@30890000".into(),
            },
        }
    }

    #[test]
    fn the_script_has_imagebuilders_form() {
        let loads = evk_loads();
        let text = script(Board::Imx8mpEvk, &loads, &chosen(&loads));
        let commands: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            commands,
            [
                "load ${devtype} ${devnum}:${distro_bootpart} 0x40200000 xen",
                "load ${devtype} ${devnum}:${distro_bootpart} 0x40400000 imx8mp-evk.dtb",
                "load ${devtype} ${devnum}:${distro_bootpart} 0x40600000 tidepool.img",
                "fdt addr 0x40400000",
                "fdt resize 1024",
                "fdt set /chosen \\#address-cells <0x2>",
                "fdt set /chosen \\#size-cells <0x2>",
                "fdt set /chosen xen,xen-bootargs \"console=dtuart dom0_mem=512M\"",
                "fdt mknod /chosen module@40600000",
                "fdt set /chosen/module@40600000 compatible \"multiboot,kernel\" \"multiboot,module\"",
                "fdt set /chosen/module@40600000 reg <0x0 0x40600000 0x0 0x54010>",
                "fdt set /chosen/module@40600000 bootargs \"console-uart=/soc@0/bus@30800000/serial@30890000\"",
                "booti 0x40200000 - 0x40400000",
            ]
        );
    }

    /// Applies the script's `fdt` edits to `dtb` with dtc's `fdtput` (what
    /// U-Boot's `fdt set`/`fdt mknod` do) and returns the result.
    fn apply_fdt_commands(dtb: &[u8], source: &str) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("xtask-fdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.dtb");
        std::fs::write(&file, dtb).unwrap();
        for line in source.lines() {
            let words = shell_words(line);
            let fdtput = |args: &[&str]| {
                let status = dtc_tool("fdtput").args(args).status().expect("fdtput runs");
                assert!(status.success(), "fdtput {args:?}");
            };
            let f = file.to_str().unwrap();
            match words
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["fdt", "mknod", parent, name] => fdtput(&["-c", f, &format!("{parent}/{name}")]),
                ["fdt", "set", node, prop, values @ ..] => {
                    let cells: Option<Vec<String>> = values
                        .iter()
                        .map(|v| v.trim_matches(|c| c == '<' || c == '>'))
                        .filter(|v| !v.is_empty())
                        .map(|v| {
                            u32::from_str_radix(v.trim_start_matches("0x"), 16)
                                .ok()
                                .map(|n| n.to_string())
                        })
                        .collect();
                    let prop = prop.trim_start_matches('\\');
                    if values.first().is_some_and(|v| v.starts_with('<')) {
                        let cells = cells.unwrap();
                        let mut args = vec!["-t", "u", f, node, prop];
                        args.extend(cells.iter().map(String::as_str));
                        fdtput(&args);
                    } else {
                        let mut args = vec!["-t", "s", f, node, prop];
                        args.extend(values.iter().copied());
                        fdtput(&args);
                    }
                }
                _ => {}
            }
        }
        let out = std::fs::read(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    /// Splits a script line like U-Boot's shell: words, `"..."` quoting.
    fn shell_words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                ' ' if !quoted => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                _ => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        words
    }

    #[test]
    fn the_script_makes_the_dtb_that_xtask_writes() {
        let board_dtb = dtc(
            "/dts-v1/; / { #address-cells = <2>; #size-cells = <2>; chosen { stdout-path = \"/u\"; }; };",
        );
        let loads = evk_loads();
        let chosen = chosen(&loads);
        let text = script(Board::Imx8mpEvk, &loads, &chosen);
        let scripted = Tree::from_dtb(&apply_fdt_commands(&board_dtb, &text)).unwrap();
        let mut written = Tree::from_dtb(&board_dtb).unwrap();
        devicetree::add_xen_dom0(&mut written, &chosen.xen_bootargs, &chosen.dom0).unwrap();
        let sorted = |tree: &Tree| {
            let chosen = tree.node("/chosen").unwrap();
            let mut props = chosen.props.clone();
            props.sort();
            let module = chosen
                .children
                .iter()
                .map(|c| {
                    let mut p = c.props.clone();
                    p.sort();
                    (c.name.clone(), p)
                })
                .collect::<Vec<_>>();
            (props, module)
        };
        assert_eq!(sorted(&scripted), sorted(&written));
    }
}
