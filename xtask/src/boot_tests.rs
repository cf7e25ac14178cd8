//! Boot tests: tidepool booted in QEMU in every supported way, its console
//! checked line by line. Each has a deadline so a hang fails fast, and a
//! failure prints the console tail.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tidepool_block::pattern::{DiskPattern, SectorRange};

use crate::board::Board;
use crate::qemu::{self, Captured, Machine, Mode};
use crate::{Error, Failure, Result, Workspace};

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
    /// Substrings that must appear somewhere, in any order.
    pub anywhere: Vec<String>,
    /// Deadline for the whole run.
    pub timeout: Duration,
    /// A check beyond substrings, over the whole console.
    pub check: Option<ConsoleCheck>,
    /// Disk images created (with the disk pattern) before the boot.
    pub disks: Vec<TestDisk>,
    /// Lines typed into the console after `boot: ready` (see
    /// [`qemu::Typing`]).
    pub typing: Vec<&'static str>,
    /// One of `typing` (its index) typed only once the console has also
    /// shown this text (see [`qemu::Typing::hold`]).
    pub typing_hold: Option<(usize, &'static str)>,
    /// Exactly this many lines contain `error:` (deliberately bad input).
    pub errors: Option<usize>,
    /// A second boot on the same disks with these bootargs; its console
    /// follows the first's (after [`SECOND_BOOT`]), so `expect` continues
    /// into it.
    pub second_boot: Option<&'static str>,
    /// Boot as an `xl` guest of a Linux dom0 (`pv.rs`), the disks as its
    /// `xvda`, `xvdb`, ..., instead of as `machine` says.
    pub pv: Option<PvSpec>,
}

/// What the Linux dom0 of a PV test does beyond creating the guest.
#[derive(Clone, Copy, Debug, Default)]
pub struct PvSpec {
    /// `xl block-detach` a disk during the run.
    pub detach: Option<crate::pv::Detach>,
    /// tidepool is a dom0less domU next to the Linux dom0 (see
    /// `crate::pv::PvGuest::dom0less`).
    pub dom0less: bool,
    /// Module parameters for Linux's blkback (see
    /// `crate::pv::PvGuest::blkback_params`).
    pub blkback_params: &'static str,
    /// Xen's limit on the guest's grant table (see
    /// `crate::pv::PvGuest::max_grant_frames`).
    pub max_grant_frames: Option<u32>,
}

/// Printed between the consoles of a test's two boots.
const SECOND_BOOT: &str = "xtask: --- second boot ---";
/// Printed when a disk image does not hold what it should after a boot.
const DISK_CHECK_FAILED: &str = "xtask: disk check failed";

/// A disk of a block test.
#[derive(Clone, Copy, Debug)]
pub struct TestDisk {
    /// Size in sectors.
    pub sectors: u64,
    /// Pattern seed it is created with.
    pub seed: u64,
    /// Attached read-only.
    pub read_only: bool,
    /// A `blkdebug` error injection: QEMU event (`read_aio`, `write_aio`) and sector.
    pub inject: Option<(&'static str, u64)>,
    /// What it must hold after the (last) boot.
    pub after: Option<DiskPattern>,
}

const CLEAN_REJECT: &[&str] = &["fault:", "panic:", "error:", "shutdown: crash"];

/// The classes of mappings the kernel has the MMU translate at every boot
/// (`tidepool_mm::verify`), and whether a boot under Xen / on bare QEMU must
/// have at least one of the class.
const VERIFIED_CLASSES: &[(&str, bool, bool)] = &[
    ("image", true, true),
    ("linear-ram", true, true),
    ("pool-window", true, true),
    ("device-window", true, true),
    ("xen-shared", true, false),
    ("no-map-alias", true, true),
];

/// The console line of one verified class (the count precedes it).
fn verified_line(class: &str) -> String {
    format!(" mappings by translation, 0 mismatches class={class}")
}

impl BootTest {
    fn new(name: &str, machine: Machine) -> Self {
        Self {
            name: name.into(),
            machine,
            expect: Vec::new(),
            reject: Vec::new(),
            anywhere: Vec::new(),
            timeout: Duration::from_secs(60),
            check: None,
            disks: Vec::new(),
            typing: Vec::new(),
            typing_hold: None,
            errors: None,
            second_boot: None,
            pv: None,
        }
    }

    /// Boots with the `monitor` bootarg and types `lines` once it is ready;
    /// the last should power off. Exactly `errors` `error:` lines may
    /// appear (the deliberately bad commands).
    fn monitor(mut self, lines: &[&'static str], errors: usize) -> Self {
        self.machine.bootargs = format!("{} monitor", self.machine.bootargs)
            .trim()
            .to_string();
        self.typing = lines.to_vec();
        self.errors = Some(errors);
        self.reject(&["fault:", "panic:", "shutdown: crash", "monitor: input lost"])
    }

    fn with_disks(mut self, disks: &[TestDisk]) -> Self {
        self.disks = disks.to_vec();
        self.reject.push(DISK_CHECK_FAILED.into());
        self
    }

    fn then_boot(mut self, bootargs: &'static str) -> Self {
        self.second_boot = Some(bootargs);
        self
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

    /// A boot that must reach `boot: ready` and power off cleanly, after
    /// the MMU confirmed every mapping class ([`VERIFIED_CLASSES`]). (With
    /// no hardware domain, Xen keeps running after a domU powers off: the
    /// run stops shortly after the guest's `shutdown:` line.)
    fn clean(self) -> Self {
        let mode = self.machine.mode.clone();
        let mut t = self
            .expect(&["boot: ready", "shutdown: poweroff"])
            .reject(CLEAN_REJECT);
        let xen = matches!(mode, Mode::XenDom0 { .. } | Mode::XenDomU { .. });
        for &(class, under_xen, bare) in VERIFIED_CLASSES {
            t.anywhere.push(verified_line(class));
            if (xen && under_xen) || (!xen && bare) {
                t.reject
                    .push(format!("mm: verified 0{}", verified_line(class)));
            }
        }
        // On a board whose UART Xen cannot drive, Xen's own lines go only
        // to its ring (printed by dom0 at boot, before this one).
        if let Mode::XenDom0 { .. } = mode
            && t.machine.board.is_none()
        {
            t.expect.push("Hardware Dom0 halted".into());
        }
        t
    }

    /// A boot that must end in a crash shutdown after the given lines.
    fn crash(self, lines: &[&str]) -> Self {
        self.expect(lines)
            .expect(&["shutdown: crash"])
            .reject(&["boot: ready"])
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
        for want in &self.anywhere {
            if !run.lines.iter().any(|l| l.contains(want.as_str())) {
                return Err(format!("missing: {want:?}"));
            }
        }
        for bad in &self.reject {
            if let Some(line) = run.lines.iter().find(|l| l.contains(bad.as_str())) {
                return Err(format!("unexpected {bad:?} in line {line:?}"));
            }
        }
        if let Some(want) = self.errors {
            let errors: Vec<&String> = run.lines.iter().filter(|l| l.contains("error:")).collect();
            if errors.len() != want {
                return Err(format!("expected {want} error lines, found {errors:?}"));
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
        // The MMU check of every boot, against a plan that asks for a
        // write-back pool window: QEMU's AT reports non-cacheable, fatal.
        BootTest::new("mmu-xen-mismatch", with(xen_dom0("256M"), |m| {
            m.scenario = Some("static-pool".into());
            m.bootargs = "selftest=mm-mismatch".into();
        }))
        .crash(&[
            "mm: verified 1 mappings by translation, 0 mismatches class=linear-ram",
            "selftest: mm-mismatch: expecting ",
            "error: mm: translation mismatch class=pool-window ",
            " va=0xffff8",
            " expected=Normal WB pa=0x",
            " found=Normal NC pa=0x",
        ]),
        BootTest::new("mmu-bare-mismatch", with(Machine::new(Mode::Bare), |m| {
            m.bootargs = "selftest=mm-mismatch".into();
        }))
        .crash(&[
            "selftest: mm-mismatch: expecting tidepool:nc-pool write-back",
            "error: mm: translation mismatch class=pool-window tidepool:nc-pool va=0xffff8",
            " expected=Normal WB pa=0x",
            " found=Normal NC pa=0x",
        ]),
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
            "selftest-irq-unhandled-bare",
            with(Machine::new(Mode::Bare), |m| m.bootargs = "selftest=irq-unhandled".into()),
        )
        .crash(&[
            "selftest: an interrupt without a handler",
            "irq: INTID 30 (PPI 14) has no handler",
            "fault: unhandled IRQ in kernel elr=0x",
        ]),
        BootTest::new(
            "selftest-irq-unhandled-xen",
            with(xen_dom0("256M"), |m| m.bootargs = "selftest=irq-unhandled".into()),
        )
        .crash(&["irq: INTID 30 (PPI 14) has no handler", "fault: unhandled IRQ in kernel elr=0x"]),
        BootTest::new(
            "selftest-panic-xen",
            with(xen_dom0("256M"), |m| m.bootargs = "selftest=panic".into()),
        )
        .crash(&["panic: selftest: deliberate panic at kernel/core/src/selftest.rs:"])
        .expect(&["Hardware Dom0 crashed"]),
    ];
    tests.extend(xen_platform());
    tests.extend(dma());
    tests.extend(block());
    tests.extend(board());
    tests.extend(sd_card());
    tests.extend(monitor());
    tests.extend(pv());
    tests
}

/// The console monitor (issue 16): commands typed into QEMU's stdin under
/// Xen dom0, as a dom0less domU and bare, each answered with records.
fn monitor() -> Vec<BootTest> {
    let e00 = "/virtio_mmio@a003e00";
    vec![
        BootTest::new(
            "monitor-xen-dom0",
            with(xen_dom0("256M"), |m| m.scenario = Some("imx8-like".into())),
        )
        .with_disks(&[disk(5, None)])
        .monitor(
            &[
                "help",
                "pools",
                "dma",
                "dma /nothing",
                "xen",
                "irq",
                "blk",
                "blk read virtio_mmio@a003e00 1 3",
                "blk verify virtio_mmio@a003e00 5",
                "blk bench virtio_mmio@a003e00 1",
                "dt /reserved-memory/dma@78000000",
                "mem",
                "log warn",
                "pools",
                "\x1b[A",
                "poweroff",
            ],
            1,
        )
        .expect(&[
            "monitor: input console_io VIRQ_CONSOLE port ",
            "boot: ready",
            "> help",
            "monitor: command=\"blk read DEV LBA COUNT\" about=",
            "> pools",
            "dma: pool /reserved-memory/dma@78000000 0x78000000+0x400000",
            "xen-flush=refused(EPERM) -> window VA maintenance users=/virtio_mmio@a003e00",
            "users=kernel",
            "dma: pool /reserved-memory/dma@78000000 usage ",
            " largest_free=0x",
            "(now)",
            "> dma",
            &format!("dma: stats {e00} syncs="),
            "> dma /nothing",
            "error: monitor: dma: no DMA device /nothing",
            "> xen",
            "xen: version 4.17",
            "domain=d0 direct-mapped=yes",
            "xen: features 0x",
            "xen: event-channels bound=1 ports=",
            "xen: grants in_use=0 usable=504 frames=1 limit=64",
            "> irq",
            "irq: GICv3 registered=3",
            "irq: intid=16 count=",
            " device=/hypervisor",
            "irq: intid=27 count=",
            " device=/timer",
            "> blk",
            "blk: devices=1",
            &format!("blk: {e00} virtio-mmio legacy capacity=16384"),
            &format!("blk: stats {e00} reads="),
            "> blk read virtio_mmio@a003e00 1 3",
            &format!("blk: dump {e00} lba=1 offset=0x000 hex="),
            &format!("blk: dump {e00} lba=1 offset=0x1f0 hex="),
            &format!("blk: read {e00} lba=1 sectors=3 rest_sectors=2 rest_fnv1a64=0x"),
            "> blk verify virtio_mmio@a003e00 5",
            &format!("blk: verify {e00} sectors=16384 ok"),
            "> blk bench virtio_mmio@a003e00 1",
            &format!("blk: bench seq device={e00} wait=poll mib=1 "),
            "> dt /reserved-memory/dma@78000000",
            "dt: /reserved-memory/dma@78000000 compatible=\"shared-dma-pool\"",
            "dt: /reserved-memory/dma@78000000 reg=0x78000000+0x400000",
            "dt: /reserved-memory/dma@78000000 no-map=true",
            "> mem",
            "mem: reserved /reserved-memory/dma@78000000 base=0x78000000 size=0x400000 static no-map",
            "mm: map linear RAM",
            "mm: map mmio /virtio_mmio@a003e00",
            "mm: heap ",
            "> log warn",
            "log: level=warn",
            "> pools",
            // The up arrow through Xen's console recalls pools.
            "> pools",
            "> poweroff",
            "shutdown: poweroff",
            "Hardware Dom0 halted",
        ])
        // At log=warn a command's answer is still printed.
        .check_with(|lines| {
            let after = lines
                .iter()
                .position(|l| l.ends_with("> log warn"))
                .unwrap_or(lines.len());
            let pools = lines[after..]
                .iter()
                .filter(|l| l.starts_with("dma: pool ") && l.ends_with("(now)"))
                .count();
            if pools != 8 {
                return Err(format!("{pools} pool usage records at log=warn, not 2 x 4"));
            }
            Ok(())
        }),
        BootTest::new(
            "monitor-xen-domu",
            Machine::new(Mode::XenDomU {
                memory_kib: 8 * 1024,
            }),
        )
        .monitor(&["pools", "xen", "irq", "dt /", "frob 1", "poweroff"], 1)
        .expect(&[
            "monitor: input pl011 /sbsa-uart@22000000 intid=",
            "boot: ready",
            "> pools",
            "dma: pool tidepool:nc-pool ",
            "users=kernel",
            "dma: pool tidepool:nc-pool usage 0/64 pages largest_free=0x40000 (now)",
            "> xen",
            "domain=d1 direct-mapped=no",
            "xen: grants in_use=0 usable=504 frames=1 limit=64",
            "> irq",
            "irq: intid=32 count=",
            " device=/sbsa-uart@22000000",
            "> dt /",
            "dt: / #address-cells=2",
            "dt: / child=chosen",
            "> frob 1",
            "error: monitor: unknown command \"frob\" (help lists them)",
            "> poweroff",
            "shutdown: poweroff",
        ]),
        // A command whose buffer the heap cannot hold is refused, and the
        // monitor goes on.
        BootTest::new(
            "monitor-bare-small-heap",
            with(Machine::new(Mode::Bare), |m| m.bootargs = "heap=5M".into()),
        )
        .with_disks(&[disk(3, None)])
        .monitor(
            &[
                "blk bench virtio_mmio@a003e00 1",
                "blk verify virtio_mmio@a003e00 3",
                "blk read virtio_mmio@a003e00 0 2048",
                "blk read virtio_mmio@a003e00 0 1",
                "poweroff",
            ],
            0,
        )
        .expect(&[
            "mm: heap ",
            "(5120 KiB)",
            // 16 request slots fit (32 do not). Reads are checked in place
            // in the requests' own memory, so neither the benchmark, nor
            // the whole-disk verify, nor a 1 MiB read needs heap of its own.
            &format!("blk: {e00} virtio-mmio legacy capacity=16384 block_size=512 max_request=262144 queue=128 slots=16 "),
            &format!("blk: bench seq device={e00} wait=poll mib=1 "),
            &format!("blk: verify {e00} sectors=16384 ok"),
            &format!("blk: read {e00} lba=0 sectors=2048 rest_sectors=2047 "),
            &format!("blk: read {e00} lba=0 sectors=1 "),
            "shutdown: poweroff",
        ]),
        BootTest::new("monitor-bare", Machine::new(Mode::Bare))
            .with_disks(&[disk(3, None)])
            .monitor(
                &[
                    "pools",
                    "dt /pl011@9000000",
                    "blk read /virtio_mmio@a003e00 0 1",
                    "blk read virtio_mmio@a003e00 16384 1",
                    "blk verify virtio_mmio@a003e00 3",
                    "irq",
                    "xen",
                    "\x1b[A",
                    "blk\x15poolx\x7fs",
                    "reboot now",
                    "reboot",
                ],
                2,
            )
            .expect(&[
                "monitor: input pl011 /pl011@9000000 intid=33 level",
                "boot: ready",
                "> pools",
                "dma: pool tidepool:linear-pool usage 2/64 pages largest_free=0x3e000 (now)",
                "> dt /pl011@9000000",
                "dt: /pl011@9000000 interrupts=0x0,0x1,0x4",
                "dt: /pl011@9000000 reg=0x9000000+0x1000",
                "> blk read /virtio_mmio@a003e00 0 1",
                &format!("blk: read {e00} lba=0 sectors=1 rest_sectors=0 rest_fnv1a64=0xcbf29ce484222325"),
                "> blk read virtio_mmio@a003e00 16384 1",
                "error: monitor: blk read: /virtio_mmio@a003e00: sectors 16384+1 are beyond the capacity of 16384 sectors",
                "> blk verify virtio_mmio@a003e00 3",
                &format!("blk: verify {e00} sectors=16384 ok"),
                "> irq",
                "irq: intid=33 count=",
                " device=/pl011@9000000",
                "> xen",
                "xen: none (no hypervisor)",
                // The up arrow ran xen again; Ctrl-U and backspace edited.
                "> xen",
                "xen: none (no hypervisor)",
                "dma: pool tidepool:nc-pool usage 0/64 pages",
                "> reboot now",
                "error: monitor: reboot: unexpected argument \"now\"",
                "> reboot",
                "shutdown: reboot",
            ]),
    ]
}

/// The Xen platform layer (issue 5): timer, events, grants, cache flush,
/// under `selftest=xen`, as dom0 and as a dom0less domU on GICv2 and GICv3,
/// and the GIC and timer alone on bare QEMU.
fn xen_platform() -> Vec<BootTest> {
    let selftest = |machine: Machine| {
        with(machine, |m| {
            m.bootargs = "selftest=xen".into();
        })
    };
    let timer = [
        "timer: interrupt fired after",
        "(sleep of 1000 us)",
        "timer: wait_for 1000 us timed out after",
    ];
    let events = |domid: u16| {
        [
            "xen: event channel port ".to_string(),
            " (ipi vcpu0) delivered after ".to_string(),
            " masked: held; unmasked: delivered".to_string(),
            format!(" (interdomain loopback d{domid}) delivered after "),
            " bound to VIRQ_DEBUG".to_string(),
        ]
    };
    let grants = [
        "end refused while in use (flags 0x19), grant kept",
        // Granting until refused grows the table from one frame to its limit
        // (Xen's default `max_nr_frames`, 64): only there is a grant refused,
        // and the count leaves out the read-only grant held meanwhile.
        "xen: grant table grown frames=2 entries=1024 free=511",
        "xen: grant table grown frames=64 entries=32768 free=511",
        "xen: grant table full after 32759 grants besides 1 held (grant table exhausted: all 32760 usable entries are granted, frames=64 limit=64); all ended, 32759 free",
        " (rw) and gref ",
        " (ro) of gfn 0x",
        " made and ended",
        "xen: cache_flush available",
    ];
    let dom0 = |name: &str, gic: u8| {
        BootTest::new(
            name,
            selftest(with(xen_dom0("256M"), |m| {
                m.gic = gic;
                m.scenario = Some("static-pool".into());
            })),
        )
        .expect(&[
            &format!("irq: GICv{gic} /"),
            "timer: virtual timer /timer intid=27 level",
            "xen: features 0x",
            "dom0",
            "xen: shared info at gpa 0x40400000 va 0x",
            "xen: event channel upcall intid=16 level",
            "xen: domain d0 direct-mapped (guest-physical = machine)",
            "xen: grant table v1 at gpa 0x40200000 va 0x",
            // One frame at setup; the table grows from there.
            "frames=1 limit=64 region_frames=",
            " max_nr_frames=64 entries=512 free=504",
        ])
        .expect(&timer)
        .expect(&events(0).each_ref().map(String::as_str))
        .expect(&grants)
        .expect(&[
            "xen: cache_flush own-ram 0x",
            " pages=1 hypercalls=1 ok (clean)",
            "xen: cache_flush own-ram 0x",
            " pages=3 hypercalls=1 ok (clean+invalidate)",
            "xen: cache_flush pool /reserved-memory/dma@78000000 page 0x78000000 -> EPERM (cache_flush 0x78000000+0x1000: EPERM (-1) at page 0x78000000, 0 of 1 pages known done (clean+invalidate, 1 hypercalls))",
        ])
        .clean()
    };
    let domu = |name: &str, gic: u8| {
        BootTest::new(
            name,
            selftest(with(
                Machine::new(Mode::XenDomU {
                    memory_kib: 8 * 1024,
                }),
                |m| m.gic = gic,
            )),
        )
        .expect(&[
            &format!("irq: GICv{gic} /"),
            "timer: virtual timer /timer intid=27 level",
            "xen: features 0x",
            "xen: shared info at gpa 0x40800000 va 0x",
            "xen: event channel upcall intid=31 level",
            "xen: domain d1 not direct-mapped",
            "xen: grant table v1 at gpa 0x38000000 va 0x",
            // One frame at setup; the table grows from there.
            "frames=1 limit=64 region_frames=",
            " max_nr_frames=64 entries=512 free=504",
        ])
        .expect(&timer)
        .expect(&events(1).each_ref().map(String::as_str))
        .expect(&grants)
        .expect(&[
            "xen: cache_flush own-ram 0x",
            ": not issued: cache_flush: this domain is not direct-mapped (guest-physical is not machine)",
        ])
        // No pool page reaches Xen from a domain that is not direct-mapped.
        .reject(&["-> EPERM", "-> ok"])
        .clean()
    };
    let bare = |name: &str, gic: u8| {
        BootTest::new(
            name,
            selftest(with(Machine::new(Mode::Bare), |m| m.gic = gic)),
        )
        .expect(&[
            &format!("irq: GICv{gic} /intc@8000000"),
            "timer: virtual timer /timer intid=27 level freq=",
        ])
        .expect(&timer)
        .expect(&["selftest: xen: no hypervisor: timer only"])
        .reject(&["xen: features", "xen: event channel"])
        .clean()
    };
    vec![
        dom0("xen-platform-dom0-gicv3", 3),
        dom0("xen-platform-dom0-gicv2", 2),
        domu("xen-platform-domu-gicv3", 3),
        domu("xen-platform-domu-gicv2", 2),
        bare("xen-platform-bare-gicv3", 3),
        bare("xen-platform-bare-gicv2", 2),
    ]
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
                // One invalidate after the device wrote (the from-device round
                // trip); nothing for the to-device one (tidepool_dma::sync_action).
                "dma: stats /virtio_mmio@a003c00 syncs=4 hypercalls=1 pages=2 refusals=0 fallbacks=0 va_ops=0 \
                 va_bytes=0 bounced=24576 maps=2 unmaps=2 allocs=1 frees=1",
                "dma: device /virtio_mmio@a003e00 coherent=no pool=/reserved-memory/dma@78000000",
                "dma: selftest /virtio_mmio@a003e00 ok bounced=yes",
                // Xen refused the pool at setup: window VA maintenance, no hypercall.
                "dma: stats /virtio_mmio@a003e00 syncs=4 hypercalls=0 pages=0 refusals=0 fallbacks=1 va_ops=1 \
                 va_bytes=8192 bounced=24576 maps=2 unmaps=2 allocs=1 frees=1",
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

/// The i.MX 8M Plus EVK on QEMU 10 with its own tree: bare (entered at EL2)
/// and as Xen dom0, the console on the i.MX UART; Xen's ring printed by
/// dom0; the board's no-map regions (its own dsp@92400000, which Xen 4.17
/// hands dom0 as a memory bank, and the scenarios' pools) kept out of the
/// linear map; dma-naive faulting on a pool's linear alias.
fn board() -> Vec<BootTest> {
    let evk = |machine: Machine| {
        with(machine, |m| {
            m.board = Some(Board::Imx8mpEvk);
            m.memory = Board::Imx8mpEvk.default_memory().into();
        })
    };
    let scenario = |mut m: Machine, name: &str, bootargs: &str| {
        m.scenario = Some(name.into());
        m.bootargs = bootargs.into();
        m
    };
    const CONSOLE: &str = "console=imx-uart@0x30890000";
    const DSP: &str =
        "mem: reserved /reserved-memory/dsp@92400000 base=0x92400000 size=0x2000000 static no-map";
    let naive = |pool: &str| {
        [
            "dma: naive: tidepool path ok for /soc@0/bus@30800000/mmc@30b50000 buffer 0x"
                .to_string(),
            format!("refused: no-map pool /reserved-memory/{pool}, not in the linear map"),
            "dma: naive: the MMU has no translation for the linear alias 0xffff0000".into(),
            "fault: synchronous exception in kernel: class=data-abort".into(),
            format!(": no-map pool /reserved-memory/{pool}, which is not in the linear map"),
        ]
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let slow = |mut t: BootTest| {
        // Four emulated CPUs under Xen on a shared host.
        t.timeout = Duration::from_secs(180);
        t
    };
    vec![
        BootTest::new("imx8mp-bare", evk(Machine::new(Mode::Bare)))
            .expect(&["boot: tidepool", "el=2", "boot: no hypervisor", CONSOLE, DSP])
            .check_with(no_map_regions_not_linear)
            .clean(),
        slow(
            BootTest::new("imx8mp-xen-dom0", evk(xen_dom0("256M")))
                .expect(&[
                    "boot: tidepool",
                    "el=1",
                    "xen: version 4.17",
                    CONSOLE,
                    "mem: bank 0x92400000 size=0x2000000",
                    DSP,
                    "xen: ring: (XEN) Xen version 4.17",
                    "xen: ring: (XEN) *** LOADING DOMAIN 0 ***",
                    "xen: console ring printed bytes=",
                ])
                .check_with(no_map_regions_not_linear)
                .clean(),
        ),
        slow(
            BootTest::new(
                "imx8mp-xen-rpmsg-naive-faults",
                scenario(evk(xen_dom0("256M")), "imx8mp-evk-rpmsg", "selftest=dma-naive"),
            )
            .expect(&[
                "mem: reserved /reserved-memory/vdevbuffer@55400000 base=0x55400000 size=0x100000 static no-map",
                "compatible=shared-dma-pool users=/soc@0/bus@30800000/mmc@30b50000",
                "dma: pool /reserved-memory/vdevbuffer@55400000 0x55400000+0x100000 window 0xffff8",
                "nc xen-flush=refused(EPERM) -> window VA maintenance",
            ])
            .crash(&strs(&naive("vdevbuffer@55400000"))),
        ),
        slow(
            BootTest::new(
                "imx8mp-xen-dynamic-pool",
                scenario(evk(xen_dom0("256M")), "imx8mp-evk-dynamic-pool", "selftest=dma"),
            )
            .expect(&[
                "dma: pool /reserved-memory/sd-dma-pool 0x",
                "nc xen-flush=accepted -> xen cache flush",
            ])
            .clean(),
        ),
        // The monitor reads the i.MX UART by its interrupt (SPI 27). As Xen
        // 4.17's dom0 the same input gets no interrupt on QEMU (the model
        // receives the bytes, dom0 never takes SPI 27): not covered yet.
        BootTest::new("imx8mp-monitor-bare", evk(Machine::new(Mode::Bare)))
            .monitor(&["irq", "pools", "poweroff"], 0)
            .expect(&[
                "monitor: input imx-uart /soc@0/bus@30800000/serial@30890000 intid=59 level",
                "boot: ready",
                "> irq",
                "irq: intid=59 count=",
                " device=/soc@0/bus@30800000/serial@30890000",
                "> pools",
                "dma: pool tidepool:nc-pool usage 0/64 pages",
                "> poweroff",
                "shutdown: poweroff",
            ]),
        BootTest::new(
            "imx8mp-bare-dynamic-pool-naive-faults",
            scenario(evk(Machine::new(Mode::Bare)), "imx8mp-evk-dynamic-pool", "selftest=dma-naive"),
        )
        .crash(&strs(&naive("sd-dma-pool"))),
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

/// Runs the boot tests (those matching `filter`) two at a time; returns
/// those that failed. `Err` only if they could not run at all.
pub fn run_all(ws: &Workspace, image: &Path, filter: Option<&str>) -> Result<Vec<Failure>> {
    let tests: Vec<BootTest> = all()
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.name.contains(f)))
        .collect();
    // Fetch Xen once, before the tests run in parallel.
    if tests
        .iter()
        .any(|t| matches!(t.machine.mode, Mode::XenDom0 { .. } | Mode::XenDomU { .. }))
    {
        crate::tools::xen_image(ws)?;
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Captured)>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let passed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(test) = tests.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let verdict = run_one(ws, image, test);
                    let report = match &verdict {
                        Ok(run) => match test.check(run) {
                            Ok(()) => {
                                println!("boot test {} ... ok ({:.1}s)", test.name, run.elapsed.as_secs_f64());
                                passed.fetch_add(1, Ordering::SeqCst);
                                None
                            }
                            Err(why) => Some(format!(
                                "boot test {} ... FAILED: {why}\n--- console tail ---\n{}\n--- qemu stderr ---\n{}\n---",
                                test.name,
                                run.tail(40),
                                run.stderr.trim()
                            )),
                        },
                        Err(err) => Some(format!("boot test {} ... FAILED: {err}", test.name)),
                    };
                    if let Some(report) = report {
                        println!("{report}");
                        failures.lock().expect("not poisoned").push(Failure {
                            name: test.name.clone(),
                            report,
                        });
                    }
                    if let Ok(run) = verdict {
                        results.lock().expect("not poisoned").push((test.name.clone(), run));
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
                let report = format!("boot check {name} ... FAILED: {why}");
                println!("{report}");
                failures.push(Failure { name, report });
            }
        }
    }
    println!("boot tests: {passed} passed, {} failed", failures.len());
    Ok(failures)
}

fn run_one(ws: &Workspace, image: &Path, test: &BootTest) -> Result<Captured> {
    let run_dir = ws.build.join("boot-tests").join(&test.name);
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(run_dir.clone(), e))?;
    let mut machine = test.machine.clone();
    let mut images = Vec::new();
    for (i, disk) in test.disks.iter().enumerate() {
        let path = run_dir.join(format!("disk{i}.img"));
        crate::disk::create(&path, disk.sectors, disk.seed)?;
        let file = match disk.inject {
            Some((event, sector)) => {
                let config = crate::disk::blkdebug_config(&run_dir, event, sector)?;
                format!("blkdebug:{}:{}", config.display(), path.display())
            }
            None => path.display().to_string(),
        };
        machine.disks.push(qemu::Disk {
            file,
            read_only: disk.read_only,
        });
        images.push(path);
    }
    let console = qemu::Console::Captured(test.timeout);
    let mut run = match test.pv {
        Some(spec) => {
            let guest = crate::pv::PvGuest {
                bootargs: machine.bootargs.clone(),
                disks: machine.disks.clone(),
                detach: spec.detach,
                dom0less: spec.dom0less,
                blkback_params: spec.blkback_params.into(),
                max_grant_frames: spec.max_grant_frames,
            };
            // xl console in dom0 reads the serial line, where Xen sends
            // input for dom0: typing needs no console switch.
            let typing = (!test.typing.is_empty()).then(|| qemu::Typing {
                hold: test.typing_hold.map(|(at, text)| (at, text.to_string())),
                ..qemu::Typing::after_boot(
                    &machine.mode,
                    test.typing.iter().map(|s| s.to_string()).collect(),
                )
            });
            crate::pv::qemu_args(ws, image, &guest, &run_dir)?.run_typing(
                console,
                None,
                typing.as_ref(),
            )?
        }
        None => {
            let args = machine.prepare(ws, image, &run_dir)?;
            let typing = (!test.typing.is_empty()).then(|| {
                qemu::Typing::after_boot(
                    &machine.mode,
                    test.typing.iter().map(|s| s.to_string()).collect(),
                )
            });
            args.run_typing(console, None, typing.as_ref())?
        }
    };
    if let Some(bootargs) = test.second_boot
        && !run.timed_out
    {
        machine.bootargs = bootargs.into();
        let args = machine.prepare(ws, image, &run_dir)?;
        let second = args.run(console, None)?;
        run.lines.push(SECOND_BOOT.into());
        run.lines.extend(second.lines);
        run.timed_out |= second.timed_out;
        run.elapsed += second.elapsed;
    }
    for (disk, path) in test.disks.iter().zip(&images) {
        if let Some(content) = disk.after
            && let Err(why) = crate::disk::verify(path, content)
        {
            run.lines.push(format!("{DISK_CHECK_FAILED}: {why}"));
        }
    }
    std::fs::write(run_dir.join("console.log"), run.lines.join("\n"))
        .map_err(|e| Error::io(run_dir.join("console.log"), e))?;
    Ok(run)
}

/// What no PV run may show. Linux shares the console, so tidepool's own
/// prefixes are matched with more context than `CLEAN_REJECT`'s ("default:"
/// in Linux's boot log contains "fault:").
const PV_REJECT: &[&str] = &[
    "fault: synchronous",
    "fault: translation",
    "panic: ",
    "shutdown: crash",
    "pv-dom0: guest-crashed",
    "pv-dom0: error",
];

/// tidepool as an `xl` guest of a real Linux dom0 (issue 14): PV console,
/// xenstore, and blkfront against Linux's xen-blkback on the 8 MiB test
/// disk. Each boots Linux and the toolstack, so they are the slowest tests;
/// one run covers write, verify and the benchmark.
fn pv() -> Vec<BootTest> {
    let guest = |name: &str, bootargs: &str| {
        let mut t = BootTest::new(
            name,
            with(xen_dom0(crate::pv::DOM0_MEM), |m| {
                m.bootargs = bootargs.into()
            }),
        );
        t.pv = Some(PvSpec::default());
        t.timeout = Duration::from_secs(300);
        t
    };
    let attached = [
        "pv-dom0: created name=tidepool",
        "boot: tidepool",
        "console: xen-pv gpa=0x39000000",
        "xenstore: connected gpa=0x39001000",
        "name=tidepool",
        "blk: xvda pv devid=51712 backend=/local/domain/0/backend/vbd/",
        "sectors=16384 sector_size=512",
    ];
    let shut_down = [
        "boot: ready",
        "shutdown: poweroff",
        "pv-dom0: guest-shutdown name=tidepool state=---s--",
        "pv-dom0: done",
    ];
    let mut detach = guest(
        "pv-xl-detach-during-io",
        "blk-verify=1 bench=8 blk-verify=1",
    )
    .with_disks(&[disk(
        1,
        Some(DiskPattern {
            seed: 1,
            written: None,
        }),
    )])
    .expect(&attached)
    .expect(&[
        // Linux's blkback with its defaults: its 1056 persistent grants hold
        // 32 requests of 33 grants, which one page (32 entries) holds,
        // although it offers 16.
        "max_ring_page_order=4 indirect_segments=256 request_bytes=131072 \
         ring_pages=1 ring_entries=32 slots=32",
        "back end went away (state Closing)",
        // The disk closes itself as soon as nothing of it is in flight,
        // before the boot's disk work ends (its counters, `blk: stats
        // xvda`), not at power-off: dom0's detach waits for it. No request
        // failed (`errors=0`: whatever was in flight when the back end
        // went Closing was answered); later ones were refused before they
        // started.
        "blk: xvda closed state=6 grants_still_mapped=0",
        "writes=0 flushes=0 errors=0 timeouts=0 ",
    ])
    .expect(&shut_down)
    .check_with(detached_promptly)
    .reject(PV_REJECT);
    detach.pv = Some(PvSpec {
        detach: Some(crate::pv::Detach {
            vdev: "xvda",
            on: "blk: xvda pv devid=",
        }),
        ..PvSpec::default()
    });
    let mut dom0less = guest("pv-dom0less-block-attach", WRITE_AND_VERIFY)
        .with_disks(&[disk(1, Some(REWRITTEN))])
        .expect(&[
            "boot: tidepool",
            "xenstore: waiting for dom0's init-dom0less evtchn=",
            "xenstore: connected gpa=0x39001000",
            "blk: xvda pv devid=51712 backend=/local/domain/0/backend/vbd/1/51712 sectors=16384 \
             sector_size=512 read_only=0 flush=1 persistent=1 max_ring_page_order=4 indirect_segments=256",
            "blk: wrote xvda lba=2048 sectors=2048 seed=2, flushed",
            "blk: verify xvda sectors=16384 ok",
            "blk: xvda closed state=6 grants_still_mapped=0",
            "boot: ready",
            "shutdown: poweroff",
            "pv-dom0: guest-shutdown name=1 state=---s--",
            "pv-dom0: done",
        ])
        .reject(PV_REJECT)
        // tidepool's errors; dom0's toolstack may print its own.
        .reject(&["(d1) error: "]);
    dom0less.pv = Some(PvSpec {
        dom0less: true,
        ..PvSpec::default()
    });
    // Read-only, and the single-page fallback: dom0 loads blkback with
    // `max_ring_page_order=0`, so the ring is one page (`ring-ref`) with 32
    // entries and 32 requests in flight (the verify keeps them busy).
    let mut read_only = guest("pv-xl-read-only", "blk-write=2@0+8 blk-verify=1")
        .with_disks(&[TestDisk {
            read_only: true,
            ..disk(
                1,
                Some(DiskPattern {
                    seed: 1,
                    written: None,
                }),
            )
        }])
        .expect(&attached)
        .expect(&[
            "read_only=1 flush=1 persistent=1 max_ring_page_order=0 indirect_segments=256 \
             request_bytes=131072 ring_pages=1 ring_entries=32 slots=32",
            "error: blk: xvda write of sectors 0..8: the disk is read-only",
            "blk: verify xvda sectors=16384 ok",
        ])
        .expect(&shut_down)
        .reject(PV_REJECT);
    read_only.pv = Some(PvSpec {
        blkback_params: "max_ring_page_order=0",
        ..PvSpec::default()
    });
    // The monitor's `blk` commands on a PV disk go through the same loop as
    // on virtio; the disk stays open until `poweroff` closes it.
    let mut monitor = guest("pv-xl-monitor-input", "monitor")
        .with_disks(&[disk(
            1,
            Some(DiskPattern {
                seed: 1,
                written: None,
            }),
        )])
        .expect(&[
            "console: xen-pv gpa=0x39000000",
            "monitor: input xen pv console",
            "boot: ready",
            "> help",
            "monitor: command=\"blk read DEV LBA COUNT\" about=",
            "> blk verify xvda 1",
            "blk: verify xvda sectors=16384 ok",
            "> blk",
            "blk: xvda pv devid=51712",
            "blk: stats xvda reads=",
            // The PV disk is a grant device of the DMA layer: its grants
            // are its DMA counters.
            "> dma",
            "dma: stats xvda syncs=",
            " grants_made=",
            "> poweroff",
            "blk: xvda closed state=6 grants_still_mapped=0",
            "dma: stats xvda syncs=",
            " grants_leaked=0",
            "shutdown: poweroff",
            "pv-dom0: guest-shutdown name=tidepool state=---s--",
        ])
        .reject(PV_REJECT);
    monitor.typing = vec!["help", "blk verify xvda 1", "blk", "dma", "poweroff"];
    // The PV disk's memory, ring and slots, is a grant device of the DMA
    // layer (`persistent_grants` checks its numbers). The multi-page ring:
    // dom0's blkback keeps 2048 grants mapped and the guest is told so, so
    // all 42 requests of 33 grants fit; blkback offers 16 pages and 2 (64
    // entries) hold them.
    let mut bench = guest(
        "pv-xl-write-verify-bench",
        &format!("{WRITE_AND_VERIFY} bench=8 blk-pv-grants=2048"),
    )
    .with_disks(&[disk(1, Some(REWRITTEN))])
    .expect(&attached)
    .expect(&[
        "read_only=0 flush=1 persistent=1 max_ring_page_order=4 indirect_segments=256 \
         request_bytes=131072 ring_pages=2 ring_entries=64 slots=42",
        "blk: wrote xvda lba=2048 sectors=2048 seed=2, flushed",
        "blk: verify xvda sectors=16384 ok",
        // The one transfer loop's lines, as for virtio; a PV disk waits
        // in WFI by default (its back end needs this CPU).
        "blk: bench seq device=xvda wait=wfi mib=8 ",
        "blk: bench qd1 ",
        // QD32 keeps 32 requests in flight (21 slots kept 21 before).
        "blk: bench qd32 reqs=4096 in_flight=32 ",
        "blk: bench dma requests=",
        "blk: stats xvda reads=",
        "dma: stats xvda syncs=",
        "blk: xvda closed state=6 grants_still_mapped=0",
        "dma: stats xvda syncs=",
    ])
    .expect(&shut_down)
    .check_with(persistent_grants)
    .reject(PV_REJECT)
    .reject(&["error: "]);
    bench.anywhere.extend(
        [
            // The grant table starts with one frame (504 usable entries);
            // the disk's 1388 grants grow it twice, a frame each time it is
            // full (1 for the granted entry that made it grow).
            "xen: grant table grown frames=2 entries=1024 free=511",
            "xen: grant table grown frames=3 entries=1536 free=511",
            "dma: pool tidepool:grants-xvda ",
            "dma: device xvda coherent=yes pool=tidepool:grants-xvda \
             coherent-allocs=tidepool:grants-xvda dma-addr=grant(d0)",
        ]
        .map(String::from),
    );
    bench.pv = Some(PvSpec {
        blkback_params: "max_persistent_grants=2048",
        ..PvSpec::default()
    });
    // Two disks, each watching its own back end, on the one xenstore ring.
    // Both verify; then dom0 detaches xvdb while xvda keeps reading
    // (verifies typed one after another): xvdb's back end goes Closing
    // while only xvda does I/O and looks at watch events. xvdb, idle,
    // must close itself (between xvda's verifies, or while the monitor
    // waits for input), so that dom0's `xl block-detach` returns well
    // before libxl's timeout; xvdb's next verify, typed only once it has
    // returned, must find its back end gone, and xvda must go on working
    // and close cleanly. When every disk drained one shared queue of
    // events, xvda's I/O swallowed xvdb's event and xvdb's verify read on
    // from a back end waiting to close; when a detached disk stayed open
    // until power-off, the detach waited out libxl's 10 s.
    let unchanged = |seed| {
        Some(DiskPattern {
            seed,
            written: None,
        })
    };
    let mut two = guest("pv-xl-two-disks-detach-one", "monitor")
        .with_disks(&[disk(1, unchanged(1)), disk(3, unchanged(3))])
        .expect(&[
            "blk: xvda pv devid=51712 backend=/local/domain/0/backend/vbd/1/51712 sectors=16384",
            "blk: xvdb pv devid=51728 backend=/local/domain/0/backend/vbd/1/51728 sectors=16384",
            "boot: ready",
            "> blk verify xvda 1",
            "blk: verify xvda sectors=16384 ok",
            "> blk verify xvdb 3",
            "blk: verify xvdb sectors=16384 ok",
            // xvdb, idle, closes itself between xvda's verifies once its
            // back end is Closing, before anything asks it for I/O.
            "blk: xvdb closing: back end went away (state Closing)",
            "blk: xvdb closed state=6 grants_still_mapped=0",
            // Typed once dom0's detach returned: its line may take the
            // prompt's, and the echo then has none.
            "blk verify xvdb 3",
            "error: blk: xvdb read of sectors ",
            "back end went away (state Closing)",
            "error: blk: verify xvdb sectors=16384 problems=",
            "> blk verify xvda 1",
            "blk: verify xvda sectors=16384 ok",
            "> poweroff",
            "blk: xvda closed state=6 grants_still_mapped=0",
        ])
        .expect(&shut_down[1..])
        .check_with(detached_promptly)
        .reject(PV_REJECT)
        .reject(&[
            "error: blk: xvda",
            "warning: blk: xvda",
            "pv-dom0: detach-failed",
        ]);
    two.anywhere.extend(
        [
            "pv-dom0: detaching disk=xvdb",
            "pv-dom0: detached disk=xvdb",
        ]
        .map(String::from),
    );
    two.typing = [
        &["blk verify xvda 1", "blk verify xvdb 3"][..],
        &["blk verify xvda 1"; XVDA_VERIFIES_WHILE_DETACHING],
        &["blk verify xvdb 3", "blk verify xvda 1", "poweroff"],
    ]
    .concat();
    // xvdb's second verify waits for dom0's `xl block-detach` to return
    // (however long xl takes to start; its line, `detached` or
    // `detach-failed`, says `elapsed_ms=`): a disk that stays open until
    // power-off has the detach fail after libxl's 10 s timeout.
    two.typing_hold = Some((2 + XVDA_VERIFIES_WHILE_DETACHING, " elapsed_ms="));
    two.pv = Some(PvSpec {
        detach: Some(crate::pv::Detach {
            vdev: "xvdb",
            on: "blk: verify xvdb sectors=16384 ok",
        }),
        ..PvSpec::default()
    });
    // Two disks busy enough for more grants than a table of 4 frames holds
    // (2040 usable entries; the table was that, fixed, before it grew on
    // demand): each reads 8 MiB in 128 KiB requests, 32 in flight (xvda in
    // the boot's `bench=`, xvdb in the monitor's), so each grants its ring
    // and every slot's 33 pages, 1057 grants, and keeps them. The table
    // grows to 5 frames and no request fails.
    let mut busy = guest("pv-xl-two-disks-busy", "bench=8 bench-reads=64 monitor")
        .with_disks(&[disk(1, unchanged(1)), disk(3, unchanged(3))])
        .expect(&[
            "blk: xvda pv devid=51712 ",
            "ring_pages=1 ring_entries=32 slots=32",
            "blk: xvdb pv devid=51728 ",
            "ring_pages=1 ring_entries=32 slots=32",
            "blk: bench qd32 reqs=64 in_flight=32 ",
            "boot: ready",
            "> blk bench xvdb 8",
            "blk: bench qd32 reqs=4096 in_flight=32 ",
            "> dma",
            "dma: stats xvda syncs=",
            " grants_made=1057 ",
            "dma: stats xvdb syncs=",
            " grants_made=1057 ",
            "> poweroff",
        ])
        .expect(&shut_down[1..])
        .reject(PV_REJECT)
        .reject(&["error: "]);
    busy.anywhere.extend(
        [
            "xen: grant table grown frames=5 entries=2560 free=511",
            "blk: xvda closed state=6 grants_still_mapped=0",
            "blk: xvdb closed state=6 grants_still_mapped=0",
        ]
        .map(String::from),
    );
    busy.typing = vec!["blk bench xvdb 8", "dma", "poweroff"];
    // At Xen's limit (`max_grant_frames = 2` in the guest's `xl`
    // configuration: 1016 usable entries) the disk's 1057 grants do not
    // fit. The verify (16 requests in flight, 529 grants) grows the table
    // to its limit and passes; the bench's 32 requests in flight need
    // more: the grant that finds the table full at its limit is refused,
    // naming frames and limit, and the bench stops with that error before
    // the request is sent. Nothing hangs or times out, and the disk closes
    // with every grant ended.
    let mut limit = guest("pv-xl-grant-limit", "bench=8 bench-reads=64 blk-verify=1")
        .with_disks(&[disk(1, unchanged(1))])
        .expect(&attached)
        .expect(&[
            "xen: grant table grown frames=2 entries=1024 free=511",
            "blk: verify xvda sectors=16384 ok",
            "error: blk: bench xvda: grant device xvda: page 0x",
            " not granted to d0: grant table exhausted: all 1016 usable entries are granted, \
             frames=2 limit=2",
            " errors=0 timeouts=0 ",
            "blk: xvda closed state=6 grants_still_mapped=0",
            " grants_made=1016 ",
            " grants_ended=1016 grants_leaked=0",
        ])
        .expect(&shut_down)
        .reject(PV_REJECT);
    // Xen's limit, not the region's (4096 frames), bounds the table.
    limit
        .anywhere
        .push("frames=1 limit=2 region_frames=4096 max_nr_frames=2 entries=512 free=504".into());
    limit.pv = Some(PvSpec {
        max_grant_frames: Some(2),
        ..PvSpec::default()
    });
    vec![
        monitor, bench, read_only, detach, two, busy, limit, dom0less,
    ]
}

/// Verifies of xvda typed in `pv-xl-two-disks-detach-one` after xvdb's
/// detach starts: xvda's I/O while xvdb's back end goes Closing (xl takes
/// about a second to get there, several verifies' time), much less than
/// the 10 s libxl waits for the front end to close.
const XVDA_VERIFIES_WHILE_DETACHING: usize = 8;

/// How long libxl waits for a device's back end to close before it removes
/// the device by force (`LIBXL_DESTROY_TIMEOUT`, 10 s).
const LIBXL_DESTROY_TIMEOUT_MS: u64 = 10_000;

/// dom0's `xl block-detach` returned (`pv-dom0: detached disk=... elapsed_ms=N`)
/// in less than libxl's timeout: the guest closed the detached disk itself,
/// promptly. And no disk closed twice.
fn detached_promptly(lines: &[String]) -> std::result::Result<(), String> {
    if let Some(failed) = lines.iter().find(|l| l.contains("pv-dom0: detach-failed")) {
        return Err(format!("xl block-detach failed: {failed}"));
    }
    let elapsed = lines
        .iter()
        .find_map(|l| l.split("pv-dom0: detached disk=").nth(1))
        .ok_or("no pv-dom0: detached line")?
        .split_once(" elapsed_ms=")
        .and_then(|(_, ms)| ms.trim().parse::<u64>().ok())
        .ok_or("no elapsed_ms= on the detached line")?;
    if elapsed >= LIBXL_DESTROY_TIMEOUT_MS {
        return Err(format!(
            "xl block-detach took {elapsed} ms: libxl waited out its timeout"
        ));
    }
    let mut closed: Vec<&str> = lines
        .iter()
        .filter_map(|l| {
            l.split("blk: ")
                .nth(1)?
                .split_once(" closed state=")
                .map(|(disk, _)| disk)
        })
        .collect();
    closed.sort_unstable();
    if let Some(pair) = closed.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("{} closed twice", pair[0]));
    }
    Ok(())
}

/// Sectors of each block-test disk (8 MiB).
const DISK_SECTORS: u64 = 16384;

fn disk(seed: u64, after: Option<DiskPattern>) -> TestDisk {
    TestDisk {
        sectors: DISK_SECTORS,
        seed,
        read_only: false,
        inject: None,
        after,
    }
}

/// Seed 1 everywhere, seed 2 in sectors 2048..4096 (what `WRITE` writes).
const REWRITTEN: DiskPattern = DiskPattern {
    seed: 1,
    written: Some(SectorRange {
        seed: 2,
        lba: 2048,
        count: 2048,
    }),
};
/// Write seed 2 to sectors 2048..4096 and flush, then read and check the whole disk.
const WRITE_AND_VERIFY: &str = "blk-write=2@2048+2048 blk-verify=1,2@2048+2048";
/// Check the whole disk again, in a later boot.
const VERIFY_AGAIN: &str = "blk-verify=1,2@2048+2048";

/// The PV disk's grants, from its `dma: stats` lines, against its pool and
/// ring. The pool holds all the disk's shared memory: the ring
/// (`ring_pages`, 2 here) and every slot's 32 data pages and indirect page
/// (`slots` x 33, 42 x 33 = 1386 here): 1388 pages. The ring's pages are
/// granted when the disk is set up and each slot's 33 at its first 128 KiB
/// request; the sequential bench takes every slot at once with such
/// requests, so after the run (the line before `blk: xvda closed`) every
/// pool page is granted, once: `grants_made=1388`, the ring's 2 among
/// them. Persistent grants: many more pages reused than granted; no cache
/// maintenance (the back end is a CPU: coherent). After close, the ring's
/// grants ended with the slots': `grants_ended=1388`, none leaked.
fn persistent_grants(lines: &[String]) -> std::result::Result<(), String> {
    let closed = lines
        .iter()
        .position(|l| l.contains("blk: xvda closed"))
        .ok_or("no blk: xvda closed line")?;
    let (before, after) = lines.split_at(closed);
    let counters = |lines: &[String]| -> std::result::Result<Vec<u64>, String> {
        let line = lines
            .iter()
            .rev()
            .find_map(|l| l.split("dma: stats xvda ").nth(1))
            .ok_or("no dma: stats line for xvda")?;
        let values = crate::bench::KeyValues::new(line);
        [
            "grants_made",
            "grants_reused",
            "grants_ended",
            "grants_leaked",
            "va_ops",
            "hypercalls",
        ]
        .iter()
        .map(|key| values.u64(key).map_err(|e| format!("xvda: {e}")))
        .collect()
    };
    let pool_pages = lines
        .iter()
        .find_map(|l| l.split("dma: pool tidepool:grants-xvda ").nth(1))
        .and_then(|rest| hex_after(rest, "+"))
        .ok_or("no size in the dma: pool line of xvda")?
        / 4096;
    let disk = lines
        .iter()
        .find_map(|l| l.split("blk: xvda pv ").nth(1))
        .ok_or("no blk: xvda pv line")?;
    let disk = crate::bench::KeyValues::new(disk);
    let (ring_pages, slots) = (
        disk.u64("ring_pages").map_err(|e| format!("xvda: {e}"))?,
        disk.u64("slots").map_err(|e| format!("xvda: {e}"))?,
    );
    // 32 data pages and an indirect page per slot.
    if pool_pages != ring_pages + slots * 33 {
        return Err(format!(
            "xvda: a pool of {pool_pages} pages for ring_pages={ring_pages} and {slots} slots of 33"
        ));
    }
    let run = counters(before)?;
    let (made, reused, va_ops, hypercalls) = (run[0], run[1], run[4], run[5]);
    if made != pool_pages || reused < 10 * made {
        return Err(format!(
            "xvda: grants_made={made} grants_reused={reused} for a pool of {pool_pages} pages \
             (ring_pages={ring_pages}), each granted once"
        ));
    }
    if va_ops != 0 || hypercalls != 0 {
        return Err(format!(
            "xvda: cache maintenance of a grant device: va_ops={va_ops} hypercalls={hypercalls}"
        ));
    }
    let end = counters(after)?;
    if end[0] != made || end[2] != made || end[3] != 0 {
        return Err(format!(
            "xvda after close: grants_made={} grants_ended={} grants_leaked={}",
            end[0], end[2], end[3]
        ));
    }
    Ok(())
}

/// The counters of a device's last `dma: stats` line that the checks use.
#[derive(Debug)]
struct DmaCounters {
    maps: u64,
    hypercalls: u64,
    fallbacks: u64,
    va_ops: u64,
    bounced: u64,
    coherent_va_ops: u64,
}

fn dma_counters(lines: &[String], device: &str) -> std::result::Result<DmaCounters, String> {
    let prefix = format!("dma: stats {device} ");
    let line = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))
        .ok_or_else(|| format!("no dma: stats line for {device}"))?;
    let counters = crate::bench::KeyValues::new(line);
    let get = |key| counters.u64(key).map_err(|e| format!("{device}: {e}"));
    Ok(DmaCounters {
        maps: get("maps")?,
        hypercalls: get("hypercalls")?,
        fallbacks: get("fallbacks")?,
        va_ops: get("va_ops")?,
        bounced: get("bounced")?,
        coherent_va_ops: get("coherent_va_ops")?,
    })
}

/// The four DMA paths of the imx8-like scenario, from the counters: the
/// dynamic pool (Xen flushes it) costs exactly one hypercall per request, the
/// static pool (Xen refuses) none but one window maintenance per request,
/// the non-coherent device without a pool two linear maintenances per
/// request, the coherent device nothing. Under Xen, the three non-coherent
/// devices also invalidate their used ring through its window before
/// reading it (`coherent_va_ops`, never a hypercall: the dynamic pool's
/// hypercalls are still exactly its requests'); the coherent device's ring
/// is in the linear pool and needs none.
fn four_dma_paths(lines: &[String]) -> std::result::Result<(), String> {
    let dynamic = dma_counters(lines, "/virtio_mmio@a003c00")?;
    if dynamic.hypercalls != dynamic.maps || dynamic.maps == 0 {
        return Err(format!(
            "dynamic pool: {} hypercalls for {} requests",
            dynamic.hypercalls, dynamic.maps
        ));
    }
    let fixed = dma_counters(lines, "/virtio_mmio@a003e00")?;
    if fixed.hypercalls != 0 || fixed.fallbacks != fixed.maps || fixed.va_ops != fixed.maps {
        return Err(format!("static pool: {fixed:?}"));
    }
    let linear = dma_counters(lines, "/virtio_mmio@a003a00")?;
    if linear.hypercalls != 0 || linear.va_ops != 2 * linear.maps || linear.bounced != 0 {
        return Err(format!("non-coherent without a pool: {linear:?}"));
    }
    let coherent = dma_counters(lines, "/virtio_mmio@a003800")?;
    if coherent.va_ops != 0
        || coherent.hypercalls != 0
        || coherent.bounced != 0
        || coherent.coherent_va_ops != 0
    {
        return Err(format!("coherent: {coherent:?}"));
    }
    for (name, counters) in [
        ("dynamic", &dynamic),
        ("static", &fixed),
        ("linear", &linear),
    ] {
        if counters.coherent_va_ops == 0 {
            return Err(format!(
                "{name}: its used ring was never synced: {counters:?}"
            ));
        }
    }
    Ok(())
}

/// Every pool's usage at the end equals its baseline.
fn pools_back_to_baseline(lines: &[String]) -> std::result::Result<(), String> {
    let usage = |label: &str| -> Vec<(String, String)> {
        let suffix = format!(" ({label})");
        lines
            .iter()
            .filter_map(|l| {
                l.strip_prefix("dma: pool ")?
                    .strip_suffix(&suffix)
                    .map(str::to_string)
            })
            .filter_map(|l| {
                l.split_once(" usage ")
                    .map(|(p, u)| (p.to_string(), u.to_string()))
            })
            .collect()
    };
    let (baseline, now) = (usage("baseline"), usage("now"));
    if baseline.is_empty() || baseline != now {
        return Err(format!(
            "pool usage baseline {baseline:?}, at the end {now:?}"
        ));
    }
    Ok(())
}

/// The block driver (issue 7): data integrity across boots, every DMA path,
/// both transports, read-only devices and injected errors.
fn block() -> Vec<BootTest> {
    let verified = |device: &str| format!("blk: verify {device} sectors={DISK_SECTORS} ok");
    let e00 = "/virtio_mmio@a003e00";
    vec![
        BootTest::new(
            "blk-xen-stock",
            with(xen_dom0("256M"), |m| m.bootargs = WRITE_AND_VERIFY.into()),
        )
        .with_disks(&[disk(1, Some(REWRITTEN))])
        .then_boot(VERIFY_AGAIN)
        .expect(&[
            "dma: device /virtio_mmio@a003e00 coherent=yes pool=none",
            "blk: /virtio_mmio@a003e00 virtio-mmio legacy capacity=16384 block_size=512",
            "blk: wrote /virtio_mmio@a003e00 lba=2048 sectors=2048 seed=2, flushed",
            &verified(e00),
            SECOND_BOOT,
            &verified(e00),
        ])
        .check_with(pools_back_to_baseline)
        .clean(),
        BootTest::new(
            "blk-xen-imx8-four-paths",
            with(xen_dom0("256M"), |m| {
                m.scenario = Some("imx8-like".into());
                m.bootargs = WRITE_AND_VERIFY.into();
            }),
        )
        .with_disks(&[
            disk(1, Some(REWRITTEN)),
            disk(1, Some(REWRITTEN)),
            disk(1, Some(REWRITTEN)),
            disk(1, Some(REWRITTEN)),
        ])
        .then_boot(VERIFY_AGAIN)
        .expect(&[
            "dma: pool /reserved-memory/dma@78000000 0x78000000+0x400000",
            "xen-flush=refused(EPERM)",
            // Devices are set up in address order.
            &verified("/virtio_mmio@a003800"),
            &verified("/virtio_mmio@a003a00"),
            &verified("/virtio_mmio@a003c00"),
            &verified(e00),
            SECOND_BOOT,
            &verified("/virtio_mmio@a003800"),
            &verified(e00),
        ])
        .check_with(four_dma_paths)
        .clean(),
        BootTest::new(
            "blk-bare-pool",
            with(Machine::new(Mode::Bare), |m| {
                m.scenario = Some("static-pool".into());
                m.bootargs = WRITE_AND_VERIFY.into();
            }),
        )
        .with_disks(&[disk(1, Some(REWRITTEN))])
        .expect(&[
            "dma: device /virtio_mmio@a003e00 coherent=no pool=/reserved-memory/dma@78000000",
            &verified(e00),
        ])
        .check_with(pools_back_to_baseline)
        .clean(),
        BootTest::new(
            "blk-xen-modern",
            with(xen_dom0("256M"), |m| {
                m.modern_virtio = true;
                m.scenario = Some("dynamic-pool".into());
                m.bootargs = WRITE_AND_VERIFY.into();
            }),
        )
        .with_disks(&[disk(1, Some(REWRITTEN)), disk(1, Some(REWRITTEN))])
        .expect(&[
            "blk: /virtio_mmio@a003e00 virtio-mmio modern capacity=16384",
            &verified("/virtio_mmio@a003c00"),
            &verified(e00),
        ])
        .check_with(pools_back_to_baseline)
        .clean(),
        BootTest::new(
            "blk-read-only",
            with(xen_dom0("256M"), |m| {
                m.bootargs = "blk-write=2@0+8 blk-verify=1".into()
            }),
        )
        .with_disks(&[TestDisk {
            read_only: true,
            ..disk(
                1,
                Some(DiskPattern {
                    seed: 1,
                    written: None,
                }),
            )
        }])
        .expect(&[
            "read_only=yes",
            "error: blk: /virtio_mmio@a003e00 write of sectors 0..8: ",
            "read-only",
            &verified(e00),
            "shutdown: poweroff",
        ])
        .reject(&["fault:", "panic:"]),
        BootTest::new(
            "blk-inject-read-error",
            with(xen_dom0("256M"), |m| m.bootargs = "blk-verify=1".into()),
        )
        .with_disks(&[TestDisk {
            inject: Some(("read_aio", 4096)),
            ..disk(1, None)
        }])
        .expect(&[
            "error: blk: /virtio_mmio@a003e00 read of sectors ",
            "4096",
            "error: blk: verify /virtio_mmio@a003e00 sectors=16384 problems=1",
            "blk: stats /virtio_mmio@a003e00 ",
            "errors=1",
            "shutdown: poweroff",
        ])
        .check_with(pools_back_to_baseline)
        .reject(&["fault:", "panic:"]),
        BootTest::new(
            "blk-inject-write-error",
            with(xen_dom0("256M"), |m| {
                m.scenario = Some("dynamic-pool".into());
                m.bootargs = "blk-write=2@8192+128 blk-verify=1".into();
            }),
        )
        .with_disks(&[TestDisk {
            inject: Some(("write_aio", 8192)),
            ..disk(
                1,
                Some(DiskPattern {
                    seed: 1,
                    written: None,
                }),
            )
        }])
        .expect(&[
            "error: blk: /virtio_mmio@a003e00 write of sectors 8192..8320: ",
            "8192",
            &verified(e00),
            "shutdown: poweroff",
        ])
        .check_with(pools_back_to_baseline)
        .reject(&["fault:", "panic:"]),
    ]
}

/// The SD slot's uSDHC on the i.MX 8M Plus EVK.
const SD_SLOT: &str = "/soc@0/bus@30800000/mmc@30b50000";

/// The SD card's counters of every boot: reads (from `blk: stats`) and the
/// DMA counters (from the `dma: stats` line that follows it).
fn sd_boots(lines: &[String]) -> std::result::Result<Vec<(u64, DmaCounters)>, String> {
    let blk = format!("blk: stats {SD_SLOT} ");
    let dma = format!("dma: stats {SD_SLOT} ");
    let mut boots = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(counters) = line.strip_prefix(&blk) else {
            continue;
        };
        let reads = crate::bench::KeyValues::new(counters)
            .u64("reads")
            .map_err(|e| format!("{SD_SLOT}: {e}"))?;
        let next = lines[i + 1..]
            .iter()
            .find(|l| l.starts_with(&dma))
            .map(std::slice::from_ref)
            .ok_or_else(|| format!("no dma: stats line after {line:?}"))?;
        boots.push((reads, dma_counters(next, SD_SLOT)?));
    }
    if boots.is_empty() {
        return Err(format!("no blk: stats line for {SD_SLOT}"));
    }
    Ok(boots)
}

/// The SD card without a pool (the EVK's own tree): every request is
/// maintained by linear VA, never by Xen, and nothing is bounced.
fn sd_linear_path(lines: &[String]) -> std::result::Result<(), String> {
    for (_, sd) in sd_boots(lines)? {
        if sd.maps == 0 || sd.hypercalls != 0 || sd.va_ops < sd.maps || sd.bounced != 0 {
            return Err(format!("SD card without a pool: {sd:?}"));
        }
    }
    pools_back_to_baseline(lines)
}

/// The SD card on the rpmsg `vdevbuffer` pool, which Xen refuses to flush:
/// no hypercall; a read's bounce buffer is invalidated once through the
/// window (the fallback), a write's needs nothing (filled through the
/// non-cacheable window).
fn sd_refused_pool_path(lines: &[String]) -> std::result::Result<(), String> {
    for (reads, sd) in sd_boots(lines)? {
        if reads == 0 || sd.hypercalls != 0 || sd.fallbacks != reads || sd.va_ops != reads {
            return Err(format!(
                "SD card on the refused pool: {reads} reads, {sd:?}"
            ));
        }
    }
    pools_back_to_baseline(lines)
}

/// The SD card on a dynamic pool Xen flushes: exactly one hypercall per
/// read (its invalidate at completion), none per write.
fn sd_flushed_pool_path(lines: &[String]) -> std::result::Result<(), String> {
    for (reads, sd) in sd_boots(lines)? {
        if reads == 0 || sd.hypercalls != reads || sd.va_ops != 0 {
            return Err(format!(
                "SD card on the flushed pool: {} hypercalls for {reads} reads of {} requests ({sd:?})",
                sd.hypercalls, sd.maps
            ));
        }
    }
    pools_back_to_baseline(lines)
}

/// The SD card (uSDHC driver) on the i.MX 8M Plus EVK as Xen dom0, through
/// each pool scenario: written, verified, checked on the host after QEMU
/// exits, read back in a second boot, with its DMA path asserted from the
/// counters; and bare, a single-sector write (CMD24) that must land on
/// exactly that sector.
fn sd_card() -> Vec<BootTest> {
    let evk = |mut m: Machine, scenario: &str, bootargs: &str| {
        m.board = Some(Board::Imx8mpEvk);
        m.memory = Board::Imx8mpEvk.default_memory().into();
        m.scenario = Some(scenario.into());
        m.bootargs = bootargs.into();
        m
    };
    let slow = |mut t: BootTest| {
        // Four emulated CPUs under Xen on a shared host, and QEMU's SD card
        // reads its image one 512-byte block at a time: a boot takes 10 to
        // 30 s. Not more: were every request to wait out its 5 s for an
        // interrupt that does not come (QEMU's imx8mp-evk delivers none to
        // a guest of Xen), the 37 requests of a boot would take minutes.
        t.timeout = Duration::from_secs(120);
        t
    };
    let verified = format!("blk: verify {SD_SLOT} sectors={DISK_SECTORS} ok");
    let card = format!("blk: {SD_SLOT} sd capacity={DISK_SECTORS} block_size=512");
    let wrote = format!("blk: wrote {SD_SLOT} lba=2048 sectors=2048 seed=2, flushed");
    let through = |name: &str, scenario: &str, device: &str, check: ConsoleCheck| {
        slow(
            BootTest::new(name, evk(xen_dom0("256M"), scenario, WRITE_AND_VERIFY))
                .with_disks(&[disk(1, Some(REWRITTEN))])
                .then_boot(VERIFY_AGAIN)
                .expect(&[
                    device,
                    &card,
                    &wrote,
                    &verified,
                    SECOND_BOOT,
                    &card,
                    &verified,
                ])
                .check_with(check)
                .clean(),
        )
    };
    vec![
        through(
            "sd-xen-stock",
            "imx8mp-evk-stock",
            "dma: device /soc@0/bus@30800000/mmc@30b50000 coherent=no pool=none",
            sd_linear_path,
        ),
        through(
            "sd-xen-rpmsg-refused-pool",
            "imx8mp-evk-rpmsg",
            "dma: device /soc@0/bus@30800000/mmc@30b50000 coherent=no pool=/reserved-memory/vdevbuffer@55400000",
            sd_refused_pool_path,
        ),
        through(
            "sd-xen-dynamic-pool",
            "imx8mp-evk-dynamic-pool",
            "dma: device /soc@0/bus@30800000/mmc@30b50000 coherent=no pool=/reserved-memory/sd-dma-pool",
            sd_flushed_pool_path,
        ),
        BootTest::new(
            "sd-bare-one-sector",
            evk(
                Machine::new(Mode::Bare),
                "imx8mp-evk-stock",
                "blk-write=9@12345+1 blk-verify=1,9@12345+1",
            ),
        )
        .with_disks(&[disk(
            1,
            Some(DiskPattern {
                seed: 1,
                written: Some(SectorRange {
                    seed: 9,
                    lba: 12345,
                    count: 1,
                }),
            }),
        )])
        .expect(&[
            "blk: wrote /soc@0/bus@30800000/mmc@30b50000 lba=12345 sectors=1 seed=9, flushed",
            &format!("blk: verify {SD_SLOT} sectors={DISK_SECTORS} ok"),
        ])
        .clean(),
    ]
}

#[cfg(test)]
mod tests {
    use super::persistent_grants;

    /// The lines `persistent_grants` reads, from a run of
    /// `pv-xl-write-verify-bench`: a pool of `pool_pages`, then the stats
    /// before and after close.
    fn run(pool_pages: u64, made: u64, ended: u64, leaked: u64) -> Vec<String> {
        let stats = |ended: u64, leaked: u64| {
            format!(
                "dma: stats xvda syncs=25120 hypercalls=0 pages=0 refusals=0 fallbacks=0 va_ops=0 \
                 va_bytes=0 bounced=0 maps=12560 unmaps=12560 allocs=1 frees=0 coherent_syncs=0 \
                 coherent_va_ops=0 grants_made={made} grants_reused=15390 grants_ended={ended} \
                 grants_leaked={leaked}"
            )
        };
        vec![
            format!(
                "dma: pool tidepool:grants-xvda 0x46f82000+{:#x} window 0xffff000046f82000 linear",
                pool_pages * 4096
            ),
            "blk: xvda pv devid=51712 sectors=16384 ring_pages=2 ring_entries=64 slots=42".into(),
            stats(0, 0),
            "blk: xvda closed state=6 grants_still_mapped=0".into(),
            stats(ended, leaked),
        ]
    }

    #[test]
    fn the_ring_pages_are_in_the_pool_and_granted_and_ended_with_the_slots() {
        // 2 ring pages + 42 slots x 33 pages, each granted once and ended.
        assert_eq!(persistent_grants(&run(1388, 1388, 1388, 0)), Ok(()));
        // The ring outside the pool (its grants not the DMA layer's).
        assert!(persistent_grants(&run(1386, 1386, 1386, 0)).is_err());
        // A pool page never granted, a grant not ended, one leaked.
        assert!(persistent_grants(&run(1388, 1386, 1386, 0)).is_err());
        assert!(persistent_grants(&run(1388, 1388, 1386, 0)).is_err());
        assert!(persistent_grants(&run(1388, 1388, 1387, 1)).is_err());
    }
}
