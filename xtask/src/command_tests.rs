//! The README's commands run as a user runs them, each as its own process
//! (`cargo xtask ...`, standard input not a terminal): `cargo xtask run` in
//! every mode must return by itself, with the exit code and the closing
//! line that say how the guest ended; with monitor commands on standard
//! input, the monitor answers them; `cargo xtask dt` on a board with a
//! pool outside memory lists the pool and its user.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tidepool_block::pattern::{DiskPattern, SectorRange};

use crate::{Error, Failure, Result, Workspace};

/// How long one command may take, its build check included; past it the
/// command counts as hung and its process group is killed.
const TIMEOUT: Duration = Duration::from_secs(180);

/// Sectors of a disk given with `--disk` (8 MiB).
const DISK_SECTORS: u64 = 16384;

/// One command and what it must do.
struct CommandTest {
    /// Unique name (also the directory of its files under build/).
    name: &'static str,
    /// The words after `cargo xtask`; `{disk}` is replaced by a fresh disk
    /// image, `{boards}` by the board DTB directory.
    args: &'static [&'static str],
    /// What standard input carries (nothing: `/dev/null`).
    stdin: &'static str,
    /// Whether it must exit with success.
    success: bool,
    /// Substrings standard output must contain, in this order.
    stdout: &'static [&'static str],
    /// Substrings standard error must contain.
    stderr: &'static [&'static str],
}

/// Every command test.
fn all() -> Vec<CommandTest> {
    const OFF: &[&str] = &["xtask: guest powered off"];
    const CRASHED: &[&str] = &["xtask: guest crashed", "xtask: error: guest crashed: "];
    vec![
        CommandTest {
            name: "run-dom0",
            args: &["run"],
            stdin: "",
            success: true,
            stdout: &[
                "boot: ready",
                "shutdown: poweroff",
                "(XEN) Hardware Dom0 halted",
            ],
            stderr: OFF,
        },
        // Xen stays up after a dom0less domU powers off: xtask ends the run.
        CommandTest {
            name: "run-domu",
            args: &["run", "--domu"],
            stdin: "",
            success: true,
            stdout: &["(d1) boot: ready", "(d1) shutdown: poweroff"],
            stderr: OFF,
        },
        CommandTest {
            name: "run-bare",
            args: &["run", "--no-xen"],
            stdin: "",
            success: true,
            stdout: &["boot: no hypervisor", "boot: ready", "shutdown: poweroff"],
            stderr: OFF,
        },
        CommandTest {
            name: "run-bare-el2",
            args: &["run", "--no-xen", "--el2"],
            stdin: "",
            success: true,
            stdout: &["el=2", "boot: ready", "shutdown: poweroff"],
            stderr: OFF,
        },
        CommandTest {
            name: "run-scenario-disk",
            args: &["run", "--scenario", "imx8-like", "--disk", "{disk}"],
            stdin: "",
            success: true,
            stdout: &[
                "mem: reserved /reserved-memory/dma@78000000",
                "blk: /virtio_mmio@a003e00 virtio-mmio legacy capacity=16384",
                "shutdown: poweroff",
            ],
            stderr: &["xtask: scenario imx8-like: ", "xtask: guest powered off"],
        },
        CommandTest {
            name: "run-dom0-crash",
            args: &["run", "--bootargs", "selftest=panic"],
            stdin: "",
            success: false,
            stdout: &["panic: selftest: deliberate panic", "shutdown: crash"],
            stderr: CRASHED,
        },
        CommandTest {
            name: "run-domu-crash",
            args: &["run", "--domu", "--bootargs", "selftest=undef"],
            stdin: "",
            success: false,
            stdout: &["(d1) fault: synchronous exception", "(d1) shutdown: crash"],
            stderr: CRASHED,
        },
        CommandTest {
            name: "run-bare-crash",
            args: &["run", "--no-xen", "--bootargs", "selftest=brk"],
            stdin: "",
            success: false,
            stdout: &[
                "fault: synchronous exception in kernel: class=brk",
                "shutdown: crash",
            ],
            stderr: CRASHED,
        },
        // The monitor answers commands typed on a pipe, in each mode.
        CommandTest {
            name: "run-monitor-dom0-pipe",
            args: &["run", "--bootargs", "monitor"],
            stdin: "pools\npoweroff\n",
            success: true,
            stdout: &[
                "boot: ready",
                "> pools",
                "dma: pool tidepool:nc-pool usage 0/64 pages",
                "dma: pool tidepool:linear-pool usage 0/64 pages",
                "> poweroff",
                "shutdown: poweroff",
            ],
            stderr: OFF,
        },
        CommandTest {
            name: "run-monitor-domu-pipe",
            args: &["run", "--domu", "--bootargs", "monitor"],
            stdin: "pools\npoweroff\n",
            success: true,
            stdout: &[
                "(d1) boot: ready",
                "(d1) > pools",
                "(d1) dma: pool tidepool:nc-pool usage 0/64 pages",
                "(d1) > poweroff",
                "(d1) shutdown: poweroff",
            ],
            stderr: OFF,
        },
        CommandTest {
            name: "run-monitor-bare-pipe",
            args: &["run", "--no-xen", "--bootargs", "monitor"],
            stdin: "pools\nreboot\n",
            success: true,
            stdout: &[
                "boot: ready",
                "> pools",
                "dma: pool tidepool:nc-pool usage 0/64 pages",
                "> reboot",
                "shutdown: reboot",
            ],
            stderr: &["xtask: guest rebooted"],
        },
        // 3000 lines, each typed once the last one's echo shows: every line
        // is bytes arriving while the PL011's interrupt handler drains its
        // FIFO. Input stalled for good after about 200 lines when the
        // handler cleared the receive interrupt after reading the FIFO.
        CommandTest {
            name: "run-monitor-bare-pipe-3000-lines",
            args: &["run", "--no-xen", "--bootargs", "monitor"],
            stdin: format!("{}pools\npoweroff\n", "xen\n".repeat(3000)).leak(),
            success: true,
            stdout: &[
                "boot: ready",
                "> xen",
                "xen: none (no hypervisor)",
                "> pools",
                "dma: pool tidepool:nc-pool usage 0/64 pages",
                "> poweroff",
                "shutdown: poweroff",
            ],
            stderr: OFF,
        },
        // The i.MX 8M Plus EVK: Xen 4.17 has no driver for its UART, so
        // the run ends on tidepool's own line, Xen's halt going to its ring.
        CommandTest {
            name: "run-board-dom0",
            args: &["run", "--board", "imx8mp-evk"],
            stdin: "",
            success: true,
            stdout: &[
                "xen: version 4.17",
                "console=imx-uart@0x30890000",
                "xen: ring: (XEN) Xen version 4.17",
                "boot: ready",
                "shutdown: poweroff",
            ],
            stderr: OFF,
        },
        // Bare, entered at EL2, an SD card (8 MiB: a power of two) in the slot.
        CommandTest {
            name: "run-board-bare-sd",
            args: &[
                "run",
                "--board",
                "imx8mp-evk",
                "--no-xen",
                "--disk",
                "{disk}",
            ],
            stdin: "",
            success: true,
            stdout: &[
                "el=2",
                "boot: no hypervisor, console=imx-uart@0x30890000",
                "boot: ready",
                "shutdown: poweroff",
            ],
            stderr: &[
                "-drive if=sd,bus=1,format=raw,file=",
                "xtask: guest powered off",
            ],
        },
        // Arm FVP's display VRAM: a no-map pool outside DRAM, with its user.
        CommandTest {
            name: "dt-fvp-vram",
            args: &["dt", "{boards}/arm/fvp-base-revc.dtb"],
            stdin: "",
            success: true,
            stdout: &[
                "reserved regions (1)",
                "0x18000000          0x18800000          0x800000      8 MiB     static,no-map,outside-memory",
                "path        /reserved-memory/vram@18000000",
                "compatible  shared-dma-pool",
                "user        /bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/clcd@1f0000",
                "errors (0)",
            ],
            stderr: &[],
        },
        CommandTest {
            name: "dt-fvp-vram-json",
            args: &["dt", "--json", "{boards}/arm/fvp-base-revc.dtb"],
            stdin: "",
            success: true,
            stdout: &[
                r#"{"path":"/reserved-memory/vram@18000000","base":"0x18000000","size":"0x800000","#,
                r#""no_map":true,"reusable":false,"dynamic":false,"in_memory":false,"#,
                r#""users":["/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/clcd@1f0000"]"#,
                r#""errors":[]"#,
            ],
            stderr: &[],
        },
        // The SD card as Xen dom0: the pattern lands exactly on the sectors
        // asked for, and nowhere else (checked in the image afterwards,
        // `disk_after`).
        CommandTest {
            name: "run-board-sd-write",
            args: &[
                "run",
                "--board",
                "imx8mp-evk",
                "--disk",
                "{disk}",
                "--bootargs",
                "blk-write=5@1000+300",
            ],
            stdin: "",
            success: true,
            stdout: &[
                "blk: wrote /soc@0/bus@30800000/mmc@30b50000 lba=1000 sectors=300 seed=5, flushed",
                "boot: ready",
                "shutdown: poweroff",
            ],
            stderr: OFF,
        },
        // A Xen PV disk, tidepool as an `xl` guest of a Linux dom0 through
        // its blkback: the pattern lands exactly on the sectors asked for,
        // and nowhere else (issue 14's "done when", checked in the image).
        CommandTest {
            name: "run-pv-write",
            args: &[
                "run",
                "--pv",
                "--disk",
                "{disk}",
                "--bootargs",
                "blk-write=5@100+50",
            ],
            stdin: "",
            success: true,
            stdout: &[
                "blk: wrote xvda lba=100 sectors=50 seed=5, flushed",
                "boot: ready",
                "shutdown: poweroff",
            ],
            stderr: &["xtask: guest powered off"],
        },
        // With no disk work asked, the PV disk still closes cleanly before
        // the domain powers off (its back end sees Closed, every grant
        // ended).
        CommandTest {
            name: "run-pv-idle",
            args: &["run", "--pv", "--disk", "{disk}"],
            stdin: "",
            success: true,
            stdout: &[
                "blk: xvda closed state=6 grants_still_mapped=0",
                "boot: ready",
                "shutdown: poweroff",
            ],
            stderr: &["xtask: guest powered off"],
        },
    ]
}

/// What a command's `{disk}` must hold after it ran (created with seed 1
/// everywhere), by test name.
fn disk_after(name: &str) -> Option<DiskPattern> {
    match name {
        "run-board-sd-write" => Some(DiskPattern {
            seed: 1,
            written: Some(SectorRange {
                seed: 5,
                lba: 1000,
                count: 300,
            }),
        }),
        "run-pv-write" => Some(DiskPattern {
            seed: 1,
            written: Some(SectorRange {
                seed: 5,
                lba: 100,
                count: 50,
            }),
        }),
        _ => None,
    }
}

/// What a finished command did.
struct Finished {
    success: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    timed_out: bool,
    /// The check of its disk image against [`disk_after`], if it has one.
    disk: Option<std::result::Result<(), String>>,
}

impl CommandTest {
    fn command_line(&self, ws: &Workspace, dir: &Path) -> Result<Vec<String>> {
        let mut words = Vec::new();
        for arg in self.args {
            let word = if arg.contains("{disk}") {
                let disk = dir.join("disk.img");
                crate::disk::create(&disk, DISK_SECTORS, 1)?;
                arg.replace("{disk}", &disk.display().to_string())
            } else if arg.contains("{boards}") {
                let boards = crate::tools::board_dtbs(ws)?;
                arg.replace("{boards}", &boards.display().to_string())
            } else {
                arg.to_string()
            };
            words.push(word);
        }
        Ok(words)
    }

    /// Runs `cargo xtask ARGS` in its own process group, killed whole at
    /// the deadline.
    fn run(&self, ws: &Workspace) -> Result<Finished> {
        let dir = ws.build.join("command-tests").join(self.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.clone(), e))?;
        let words = self.command_line(ws, &dir)?;
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO"))
            .current_dir(&ws.root)
            .arg("xtask")
            .args(&words)
            .stdin(if self.stdin.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::msg(format!("cargo xtask {}: {e}", words.join(" "))))?;
        let read = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        if let Some(mut stdin) = child.stdin.take() {
            // All of it at once, then end of file, as `printf ... |` does.
            stdin
                .write_all(self.stdin.as_bytes())
                .map_err(|e| Error::msg(format!("cargo xtask {}: stdin: {e}", words.join(" "))))?;
        }
        let stdout = read(Box::new(child.stdout.take().expect("piped")));
        let stderr = read(Box::new(child.stderr.take().expect("piped")));
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| Error::msg(e.to_string()))? {
                break Some(status);
            }
            if start.elapsed() > TIMEOUT {
                timed_out = true;
                kill_group(&child);
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let finished = Finished {
            success: status.is_some_and(|s| s.success()),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
            elapsed: start.elapsed(),
            timed_out,
            disk: disk_after(self.name)
                .map(|content| crate::disk::verify(&dir.join("disk.img"), content)),
        };
        for (file, text) in [("stdout", &finished.stdout), ("stderr", &finished.stderr)] {
            std::fs::write(dir.join(file), text).map_err(|e| Error::io(dir.join(file), e))?;
        }
        Ok(finished)
    }

    fn check(&self, run: &Finished) -> std::result::Result<(), String> {
        if run.timed_out {
            return Err(format!("did not return within {TIMEOUT:?}"));
        }
        if run.success != self.success {
            return Err(format!(
                "exited with {}, expected {}",
                if run.success { "success" } else { "failure" },
                if self.success { "success" } else { "failure" }
            ));
        }
        let mut rest = run.stdout.as_str();
        for want in self.stdout {
            match rest.find(want) {
                Some(at) => rest = &rest[at + want.len()..],
                None => return Err(format!("stdout lacks (in order) {want:?}")),
            }
        }
        for want in self.stderr {
            if !run.stderr.contains(want) {
                return Err(format!("stderr lacks {want:?}"));
            }
        }
        if let Some(Err(why)) = &run.disk {
            return Err(format!("the disk image after the run: {why}"));
        }
        Ok(())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the command tests whose name contains `filter`, two at a time;
/// returns those that failed.
pub fn run_all(ws: &Workspace, filter: Option<&str>) -> Vec<Failure> {
    let tests: Vec<CommandTest> = all()
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.name.contains(f)))
        .collect();
    // Fetched once here: two commands side by side would both fetch.
    let uses = |word: &str| {
        tests
            .iter()
            .any(|t| t.args.iter().any(|a| a.contains(word)))
    };
    let fetched = if uses("run") {
        crate::tools::xen_image(ws).map(drop)
    } else {
        Ok(())
    }
    .and_then(|()| {
        if uses("{boards}") {
            crate::tools::board_dtbs(ws).map(drop)
        } else {
            Ok(())
        }
    });
    if let Err(e) = fetched {
        let report = format!("command tests: {e}");
        println!("{report}");
        return tests
            .iter()
            .map(|t| Failure {
                name: t.name.to_string(),
                report: report.clone(),
            })
            .collect();
    }
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(test) = tests.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let verdict = test
                        .run(ws)
                        .map_err(|e| (e.to_string(), None))
                        .and_then(|run| match test.check(&run) {
                            Ok(()) => Ok(run),
                            Err(why) => Err((why, Some(run))),
                        });
                    let line = format!(
                        "command test {} (cargo xtask {})",
                        test.name,
                        test.args.join(" ")
                    );
                    match verdict {
                        Ok(run) => println!("{line} ... ok ({:.1}s)", run.elapsed.as_secs_f64()),
                        Err((why, run)) => {
                            let mut report = format!("{line} ... FAILED: {why}");
                            if let Some(run) = run {
                                report.push_str(&format!(
                                    "\n--- stdout tail ---\n{}\n--- stderr tail ---\n{}\n---",
                                    tail(&run.stdout, 30),
                                    tail(&run.stderr, 10)
                                ));
                            }
                            println!("{report}");
                            failures.lock().expect("not poisoned").push(Failure {
                                name: test.name.to_string(),
                                report,
                            });
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("not poisoned");
    println!(
        "command tests: {} passed, {} failed",
        tests.len() - failures.len(),
        failures.len()
    );
    failures
}

/// Kills `child`'s whole process group (cargo, xtask and QEMU), through
/// the shell's POSIX `kill -s KILL -- -PGID`: Debian's `sh` (dash) refuses
/// `kill -KILL -- -PGID` ("Illegal number"), which once left a hung test
/// and its QEMU running for good.
fn kill_group(child: &std::process::Child) {
    let group = format!("kill -s KILL -- -{}", child.id());
    let _ = Command::new("sh").args(["-c", &group]).status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_command_is_killed_with_its_whole_group() {
        // A shell in its own group with a child of its own, as cargo, xtask
        // and QEMU are; it prints the child's pid.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 600 & echo $!; wait"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let sleep: u32 = line.trim().parse().unwrap();
        kill_group(&child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after kill_group");
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        // The orphaned `sleep` is dead: gone, or a zombie its new parent
        // has not reaped yet (state `Z`, after the command in parentheses).
        let dead = || {
            std::fs::read_to_string(format!("/proc/{sleep}/stat")).map_or(true, |stat| {
                stat.rsplit(") ")
                    .next()
                    .is_some_and(|rest| rest.starts_with('Z'))
            })
        };
        while !dead() {
            assert!(Instant::now() < deadline, "a process of the group survived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn every_run_mode_of_the_readme_is_tested() {
        let tests = all();
        let runs: Vec<&[&str]> = tests
            .iter()
            .filter(|t| t.args[0] == "run")
            .map(|t| t.args)
            .collect();
        for flags in [
            &["--domu"][..],
            &["--no-xen"],
            &["--no-xen", "--el2"],
            &["--scenario"],
            &["--disk"],
        ] {
            assert!(
                runs.iter()
                    .any(|args| flags.iter().all(|f| args.contains(f))),
                "no command test runs with {flags:?}"
            );
        }
        assert!(
            runs.iter().any(|args| args.len() == 1),
            "plain `cargo xtask run`"
        );
        assert!(tests.iter().any(|t| t.args[0] == "run" && !t.success));
        let mut names: Vec<&str> = tests.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), tests.len(), "unique names");
    }

    #[test]
    fn checks_order_exit_code_and_timeout() {
        let test = CommandTest {
            name: "t",
            args: &["run"],
            stdin: "",
            success: true,
            stdout: &["a", "b"],
            stderr: &["c"],
        };
        let run = |success, stdout: &str, stderr: &str, timed_out| Finished {
            success,
            stdout: stdout.into(),
            stderr: stderr.into(),
            elapsed: Duration::ZERO,
            timed_out,
            disk: None,
        };
        assert_eq!(test.check(&run(true, "a\nb\n", "c", false)), Ok(()));
        let mut bad_disk = run(true, "a\nb\n", "c", false);
        bad_disk.disk = Some(Err("sector 7 holds seed 5".into()));
        assert!(test.check(&bad_disk).is_err());
        assert!(test.check(&run(true, "b\na\n", "c", false)).is_err());
        assert!(test.check(&run(false, "a\nb\n", "c", false)).is_err());
        assert!(test.check(&run(true, "a\nb\n", "", false)).is_err());
        assert!(test.check(&run(true, "a\nb\n", "c", true)).is_err());
    }
}
