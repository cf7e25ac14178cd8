//! Boot tests: tidepool booted in QEMU in every supported way, its console
//! checked line by line. Each has a deadline so a hang fails fast, and a
//! failure prints the console tail.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::qemu::{self, Captured, Machine, Mode};
use crate::{Error, Result, Workspace};

/// A check over a whole console: `Err` says what is wrong.
type ConsoleCheck = fn(&[String]) -> std::result::Result<(), String>;

/// One boot and what its console must (and must not) show.
pub struct BootTest {
    /// Unique name (also the run directory).
    pub name: String,
    /// The machine to boot.
    pub machine: Machine,
    /// Substrings that must appear, each on a later line than the previous one.
    pub expect: Vec<String>,
    /// Substrings that must appear nowhere.
    pub reject: Vec<String>,
    /// Stop this long after a line containing this appears (crash shutdowns,
    /// where Xen would wait 5 s before QEMU exits).
    pub stop_after: Option<&'static str>,
    /// Deadline for the whole run.
    pub timeout: Duration,
    /// A check beyond substrings, over the whole console.
    pub check: Option<ConsoleCheck>,
}

const CLEAN_REJECT: &[&str] = &["fault:", "panic:", "error:", "shutdown: crash"];

impl BootTest {
    fn new(name: &str, machine: Machine) -> Self {
        Self {
            name: name.into(),
            machine,
            expect: Vec::new(),
            reject: Vec::new(),
            stop_after: None,
            timeout: Duration::from_secs(60),
            check: None,
        }
    }

    fn check_with(mut self, check: ConsoleCheck) -> Self {
        self.check = Some(check);
        self
    }

    fn expect(mut self, lines: &[&str]) -> Self {
        self.expect.extend(lines.iter().map(|s| s.to_string()));
        self
    }

    fn reject(mut self, lines: &[&str]) -> Self {
        self.reject.extend(lines.iter().map(|s| s.to_string()));
        self
    }

    /// A boot that must reach `boot: ready` and power off cleanly.
    fn clean(self) -> Self {
        let mode = self.machine.mode.clone();
        let mut t = self
            .expect(&["boot: ready", "shutdown: poweroff"])
            .reject(CLEAN_REJECT);
        match mode {
            Mode::XenDom0 { .. } => t.expect.push("Hardware Dom0 halted".into()),
            // With no hardware domain, Xen keeps running after the domU
            // powers off: the test ends at the guest's last line.
            Mode::XenDomU { .. } => t.stop_after = Some("shutdown: poweroff"),
            Mode::Bare | Mode::LoaderOnly => {}
        }
        t
    }

    /// A boot that must end in a crash shutdown after the given lines.
    fn crash(mut self, lines: &[&str]) -> Self {
        self = self
            .expect(lines)
            .expect(&["shutdown: crash"])
            .reject(&["boot: ready"]);
        self.stop_after = Some("shutdown: crash");
        self
    }

    /// Checks a finished run; `Err` says what is wrong.
    fn check(&self, run: &Captured) -> std::result::Result<(), String> {
        if run.timed_out {
            return Err(format!("timed out after {:?}", self.timeout));
        }
        // Expectations match in order, by position: several may match one
        // line ("boot: tidepool" then "el=1" in the banner).
        let (mut line, mut column) = (0, 0);
        for want in &self.expect {
            let found = run
                .lines
                .iter()
                .enumerate()
                .skip(line)
                .find_map(|(i, text)| {
                    let start = if i == line { column } else { 0 };
                    text.get(start..)?
                        .find(want.as_str())
                        .map(|at| (i, start + at + want.len()))
                });
            match found {
                Some(next) => (line, column) = next,
                None => return Err(format!("missing (in order): {want:?}")),
            }
        }
        for bad in &self.reject {
            if let Some(line) = run.lines.iter().find(|l| l.contains(bad.as_str())) {
                return Err(format!("unexpected {bad:?} in line {line:?}"));
            }
        }
        match self.check {
            Some(check) => check(&run.lines),
            None => Ok(()),
        }
    }
}

/// `0x...` in `text` after `key`, as a number.
fn hex_after(text: &str, key: &str) -> Option<u64> {
    let rest = text.split(key).nth(1)?;
    let digits = rest
        .strip_prefix("0x")?
        .split(|c: char| !c.is_ascii_hexdigit())
        .next()?;
    u64::from_str_radix(digits, 16).ok()
}

/// Every no-map reserved region the plan printed is outside every linear
/// range it printed, and at least one such region exists.
fn no_map_regions_not_linear(lines: &[String]) -> std::result::Result<(), String> {
    let ranges = |prefix: &str, needs: &str| -> Vec<(u64, u64)> {
        lines
            .iter()
            .filter(|l| l.starts_with(prefix) && l.contains(needs))
            .filter_map(|l| {
                let base = hex_after(l, "base=").or_else(|| hex_after(l, "linear "))?;
                Some((base, base + hex_after(l, "size=")?))
            })
            .collect()
    };
    let no_map = ranges("mem: reserved ", " no-map");
    let linear = ranges("mem: linear ", "");
    if no_map.is_empty() || linear.is_empty() {
        return Err(format!(
            "expected no-map regions and linear ranges, found {no_map:x?} and {linear:x?}"
        ));
    }
    for &(base, end) in &no_map {
        if let Some(l) = linear.iter().find(|&&(lb, le)| lb < end && base < le) {
            return Err(format!(
                "no-map region {base:#x}..{end:#x} overlaps linear range {:#x}..{:#x}",
                l.0, l.1
            ));
        }
    }
    Ok(())
}

fn xen_dom0(dom0_mem: &str) -> Machine {
    Machine::new(Mode::XenDom0 {
        dom0_mem: dom0_mem.into(),
    })
}

fn with(mut machine: Machine, edit: impl FnOnce(&mut Machine)) -> Machine {
    edit(&mut machine);
    machine
}

/// Every boot test.
pub fn all() -> Vec<BootTest> {
    let banner_xen = ["boot: tidepool", "el=1", "xen: version 4.17"];
    let mut tests = vec![
        BootTest::new("xen-dom0-gicv3", xen_dom0("256M"))
            .expect(&banner_xen)
            .clean(),
        BootTest::new("xen-dom0-gicv2", with(xen_dom0("256M"), |m| m.gic = 2))
            .expect(&banner_xen)
            .clean(),
        BootTest::new("xen-dom0-smp2", with(xen_dom0("256M"), |m| m.cpus = 2))
            .expect(&banner_xen)
            .clean(),
        BootTest::new("xen-dom0-mem128", xen_dom0("128M"))
            .expect(&banner_xen)
            .clean(),
        BootTest::new("xen-dom0-mem512", xen_dom0("512M"))
            .expect(&banner_xen)
            .clean(),
        BootTest::new(
            "xen-domu",
            Machine::new(Mode::XenDomU {
                memory_kib: 8 * 1024,
            }),
        )
        .expect(&["boot: tidepool", "el=1", "xen: version 4.17"])
        .clean(),
        BootTest::new("bare-el1", Machine::new(Mode::Bare))
            .expect(&["boot: tidepool", "el=1", "boot: no hypervisor"])
            .clean(),
        BootTest::new(
            "bare-el2",
            with(Machine::new(Mode::Bare), |m| m.virtualization = true),
        )
        .expect(&["boot: tidepool", "el=2", "boot: no hypervisor"])
        .clean(),
        BootTest::new("bare-gicv2", with(Machine::new(Mode::Bare), |m| m.gic = 2))
            .expect(&["boot: no hypervisor"])
            .clean(),
        BootTest::new("no-dtb", Machine::new(Mode::LoaderOnly)).crash(&[
            "boot: tidepool",
            "dtb=0x0",
            "boot: no usable device tree at 0x0: x0 is 0",
        ]),
        BootTest::new(
            "bootargs-bad-word",
            with(xen_dom0("256M"), |m| {
                m.bootargs = "log=loud frobnicate".into()
            }),
        )
        .expect(&[
            "warning: bootarg log=loud: bad value",
            "warning: bootarg frobnicate: unknown, ignored",
        ])
        .clean(),
        BootTest::new(
            "log-level-warn",
            with(Machine::new(Mode::Bare), |m| m.bootargs = "log=warn".into()),
        )
        .expect(&["shutdown: poweroff"])
        .reject(&["boot: tidepool", "boot: ready"]),
        BootTest::new(
            "selftest-undef-xen",
            with(xen_dom0("256M"), |m| m.bootargs = "selftest=undef".into()),
        )
        .crash(&[
            "selftest: undefined instruction",
            "fault: synchronous exception in kernel: class=unknown-reason",
        ]),
        BootTest::new(
            "selftest-brk-bare",
            with(Machine::new(Mode::Bare), |m| {
                m.bootargs = "selftest=brk".into()
            }),
        )
        .crash(&[
            "selftest: brk",
            "fault: synchronous exception in kernel: class=brk",
        ]),
        BootTest::new("mmu-xen-static-pool", with(xen_dom0("256M"), |m| {
            m.scenario = Some("static-pool".into());
            m.bootargs = "selftest=pool-window".into();
        }))
        .expect(&[
            "mem: bank 0x78000000 size=0x400000",
            "mem: reserved /reserved-memory/dma@78000000 base=0x78000000 size=0x400000 static no-map compatible=shared-dma-pool users=/virtio_mmio@a003e00",
            "mm: map pool /reserved-memory/dma@78000000 [0x78000000..0x78400000) at 0xffff8",
            "Normal NC RW",
            "mm: pool /reserved-memory/dma@78000000 [0x78000000..0x78400000) no-map: not in the linear map, window 0xffff8",
            "mm: heap ",
            "selftest: pool /reserved-memory/dma@78000000 window 0xffff8",
            "pattern 4096 bytes ok",
        ])
        .check_with(no_map_regions_not_linear)
        .clean(),
        BootTest::new("mmu-xen-pool-alias", with(xen_dom0("256M"), |m| {
            m.scenario = Some("static-pool".into());
            m.bootargs = "selftest=pool-alias".into();
        }))
        .crash(&[
            "selftest: reading the linear alias 0xffff000078000000 of no-map pool /reserved-memory/dma@78000000",
            "fault: synchronous exception in kernel: class=data-abort",
            "far=0xffff000078000000",
            "fault: translation fault at level",
            "fault: address 0xffff000078000000 is the linear alias of 0x78000000: no-map pool /reserved-memory/dma@78000000, which is not in the linear map",
        ]),
        BootTest::new("mmu-xen-dynamic-pool", with(xen_dom0("256M"), |m| {
            m.scenario = Some("dynamic-pool".into());
            m.bootargs = "selftest=pool-window".into();
        }))
        .expect(&[
            "mem: reserved /reserved-memory/dma-pool-dynamic base=",
            "dynamic no-map compatible=shared-dma-pool users=/virtio_mmio@a003c00",
            "mm: pool /reserved-memory/dma-pool-dynamic ",
            "selftest: pool /reserved-memory/dma-pool-dynamic window 0xffff8",
        ])
        .check_with(no_map_regions_not_linear)
        .clean(),
        BootTest::new("mmu-bare-static-pool", with(Machine::new(Mode::Bare), |m| {
            m.scenario = Some("static-pool".into());
            m.bootargs = "selftest=pool-window".into();
        }))
        .expect(&[
            "mem: linear 0x40000000 size=0x38000000",
            "mem: linear 0x78400000 size=0x7c00000",
            "mm: pool /reserved-memory/dma@78000000 [0x78000000..0x78400000) no-map: not in the linear map",
            "selftest: pool /reserved-memory/dma@78000000 window 0xffff8",
        ])
        .check_with(no_map_regions_not_linear)
        .clean(),
        BootTest::new("mmu-bare-pool-alias", with(Machine::new(Mode::Bare), |m| {
            m.scenario = Some("static-pool".into());
            m.bootargs = "selftest=pool-alias".into();
        }))
        .crash(&[
            "fault: translation fault at level",
            "fault: address 0xffff000078000000 is the linear alias of 0x78000000: no-map pool /reserved-memory/dma@78000000, which is not in the linear map",
        ]),
        BootTest::new("heap-too-big-domu", with(Machine::new(Mode::XenDomU { memory_kib: 8 * 1024 }), |m| {
            m.bootargs = "heap=64M".into();
        }))
        .crash(&["error: mm: heap of 0x4000000 bytes: no 0x4000000 bytes aligned to 0x1000 free in linear RAM"]),
        BootTest::new("heap-oom-bare", with(Machine::new(Mode::Bare), |m| m.bootargs = "selftest=oom".into()))
            .crash(&["selftest: allocating", "heap: out of memory: ", "panic: "]),
        BootTest::new(
            "selftest-panic-xen",
            with(xen_dom0("256M"), |m| m.bootargs = "selftest=panic".into()),
        )
        .crash(&["panic: selftest: deliberate panic at kernel/core/src/selftest.rs:"])
        .expect(&["Hardware Dom0 crashed"]),
    ];
    tests.extend(xen_platform());
    tests.extend(dma());
    tests
}

/// The Xen platform layer (issue 5): timer, events, grants, cache flush.
fn xen_platform() -> Vec<BootTest> {
    Vec::new()
}

/// The DMA layer (issue 6): per-device contexts, pools, sync paths, counters.
/// The imx8-like scenario has all four kinds of device: a static no-map pool
/// (a003e00), a dynamic no-map pool (a003c00), non-coherent without a pool
/// (a003a00), and coherent (a000000, the first plain one).
fn dma() -> Vec<BootTest> {
    let imx8 = |machine: Machine, bootargs: &str| {
        with(machine, |m| {
            m.scenario = Some("imx8-like".into());
            m.bootargs = bootargs.into();
        })
    };
    const COHERENT: &str = "dma: stats /virtio_mmio@a000000 syncs=4 hypercalls=0 pages=0 refusals=0 fallbacks=0 \
                            va_ops=0 va_bytes=0 bounced=0 maps=2 unmaps=2 allocs=1 frees=1";
    const NON_COHERENT: &str = "dma: stats /virtio_mmio@a003a00 syncs=4 hypercalls=0 pages=0 refusals=0 fallbacks=0 \
                                va_ops=3 va_bytes=24576 bounced=0 maps=2 unmaps=2 allocs=1 frees=1";
    vec![
        BootTest::new("dma-xen-dom0-all-paths", imx8(xen_dom0("256M"), "selftest=dma"))
            .expect(&[
                "dma: pool /reserved-memory/dma-pool-dynamic 0x",
                "nc xen-flush=accepted -> xen cache flush",
                "dma: pool /reserved-memory/dma@78000000 0x78000000+0x400000 window 0xffff8",
                "nc xen-flush=refused(EPERM) -> window VA maintenance",
                "dma: pool tidepool:nc-pool ",
                "dma: pool tidepool:linear-pool ",
                "dma: device /virtio_mmio@a000000 coherent=yes pool=none coherent-allocs=tidepool:linear-pool",
                "dma: selftest /virtio_mmio@a000000 ok bounced=no",
                COHERENT,
                "dma: device /virtio_mmio@a003a00 coherent=no pool=none coherent-allocs=tidepool:nc-pool",
                "dma: selftest /virtio_mmio@a003a00 ok bounced=no",
                NON_COHERENT,
                "dma: device /virtio_mmio@a003c00 coherent=no pool=/reserved-memory/dma-pool-dynamic",
                "dma: selftest /virtio_mmio@a003c00 ok bounced=yes",
                // One hypercall per sync for the device, covering both pages; none for the CPU.
                "dma: stats /virtio_mmio@a003c00 syncs=4 hypercalls=2 pages=4 refusals=0 fallbacks=0 va_ops=0 \
                 va_bytes=0 bounced=24576 maps=2 unmaps=2 allocs=1 frees=1",
                "dma: device /virtio_mmio@a003e00 coherent=no pool=/reserved-memory/dma@78000000",
                "dma: selftest /virtio_mmio@a003e00 ok bounced=yes",
                // Xen refused the pool at setup: window VA maintenance, no hypercall.
                "dma: stats /virtio_mmio@a003e00 syncs=4 hypercalls=0 pages=0 refusals=0 fallbacks=2 va_ops=2 \
                 va_bytes=16384 bounced=24576 maps=2 unmaps=2 allocs=1 frees=1",
                "dma: pool /reserved-memory/dma-pool-dynamic usage 0/1024 pages",
                "dma: pool /reserved-memory/dma@78000000 usage 0/1024 pages",
            ])
            .clean(),
        BootTest::new("dma-bare-all-paths", imx8(Machine::new(Mode::Bare), "selftest=dma"))
            .expect(&[
                "nc xen-flush=none -> no CPU maintenance",
                COHERENT,
                NON_COHERENT,
                "dma: stats /virtio_mmio@a003c00 syncs=4 hypercalls=0 pages=0 refusals=0 fallbacks=0 va_ops=0 \
                 va_bytes=0 bounced=24576",
                "dma: stats /virtio_mmio@a003e00 syncs=4 hypercalls=0 pages=0 refusals=0 fallbacks=0 va_ops=0 \
                 va_bytes=0 bounced=24576",
            ])
            .clean(),
        BootTest::new("dma-xen-naive-path-faults", imx8(xen_dom0("256M"), "selftest=dma-naive")).crash(&[
            "dma: naive: tidepool path ok for /virtio_mmio@a003c00 buffer 0x",
            "dma: naive: tidepool refuses phys_to_virt(0x",
            "refused: no-map pool /reserved-memory/dma-pool-dynamic, not in the linear map",
            "dma: naive: the MMU has no translation for the linear alias 0xffff0000",
            "dma: naive: Linux's path: DC CIVAC by phys_to_virt(0x",
            "fault: synchronous exception in kernel: class=data-abort",
            "fault: translation fault at level",
            "is the linear alias of 0x",
            ": no-map pool /reserved-memory/dma-pool-dynamic, which is not in the linear map",
        ]),
    ]
}

/// Cross-checks between runs: dom0's load address must follow dom0_mem.
fn cross_checks(results: &[(String, Captured)]) -> Vec<(String, std::result::Result<(), String>)> {
    let load_of = |name: &str| {
        results
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, run)| {
                run.lines.iter().find_map(|l| {
                    l.split("load=")
                        .nth(1)
                        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                })
            })
    };
    let mut checks = Vec::new();
    if let (Some(a), Some(b)) = (load_of("xen-dom0-mem128"), load_of("xen-dom0-mem512")) {
        let verdict = if a != b {
            Ok(())
        } else {
            Err(format!(
                "both dom0 boots loaded at {a}: the placement did not change"
            ))
        };
        checks.push(("dom0-load-address-moves".to_string(), verdict));
    }
    checks
}

/// Runs the boot tests (those matching `filter`) two at a time.
pub fn run_all(ws: &Workspace, image: &Path, filter: Option<&str>) -> Result<()> {
    let tests: Vec<BootTest> = all()
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.name.contains(f)))
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Captured)>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let passed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(test) = tests.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let verdict = run_one(ws, image, test);
                    match verdict {
                        Ok(run) => {
                            match test.check(&run) {
                                Ok(()) => {
                                    println!("boot test {} ... ok ({:.1}s)", test.name, run.elapsed.as_secs_f64());
                                    passed.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(why) => {
                                    println!(
                                        "boot test {} ... FAILED: {why}\n--- console tail ---\n{}\n--- qemu stderr ---\n{}\n---",
                                        test.name,
                                        run.tail(40),
                                        run.stderr.trim()
                                    );
                                    failures.lock().expect("not poisoned").push(test.name.clone());
                                }
                            }
                            results.lock().expect("not poisoned").push((test.name.clone(), run));
                        }
                        Err(err) => {
                            println!("boot test {} ... FAILED: {err}", test.name);
                            failures.lock().expect("not poisoned").push(test.name.clone());
                        }
                    }
                }
            });
        }
    });
    let results = results.into_inner().expect("not poisoned");
    let mut failures = failures.into_inner().expect("not poisoned");
    let mut passed = passed.into_inner();
    for (name, verdict) in cross_checks(&results) {
        match verdict {
            Ok(()) => {
                println!("boot check {name} ... ok");
                passed += 1;
            }
            Err(why) => {
                println!("boot check {name} ... FAILED: {why}");
                failures.push(name);
            }
        }
    }
    println!("boot tests: {passed} passed, {} failed", failures.len());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "failed boot tests: {}",
            failures.join(", ")
        )))
    }
}

fn run_one(ws: &Workspace, image: &Path, test: &BootTest) -> Result<Captured> {
    let run_dir = ws.build.join("boot-tests").join(&test.name);
    let args = test.machine.prepare(ws, image, &run_dir)?;
    let run = qemu::run_captured(&args, test.timeout, test.stop_after)?;
    std::fs::write(run_dir.join("console.log"), run.lines.join("\n"))
        .map_err(|e| Error::io(run_dir.join("console.log"), e))?;
    Ok(run)
}
