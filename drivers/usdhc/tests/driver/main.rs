//! The whole driver against a simulated uSDHC and SD card, on host memory,
//! through the real DMA layer with recording fakes of the machine under it
//! (the same rig as virtio-blk's tests).

#[path = "../../../virtio-blk/tests/driver/host.rs"]
#[allow(dead_code)]
mod host;
mod sim;

use std::task::Poll;

use tidepool_block::{BlockDriver, Deadline, ExtentError, Op, Request};
use tidepool_dma::CacheOp;
use tidepool_usdhc::{AdmaError, InitError, Options, SdCard, SdError, WriteProtect};

use crate::host::{CountingAllocator, DYNAMIC_PHYS, DeviceKind, NC_PHYS, Rig, STATIC_PHYS};
use crate::sim::{CDIHB, CIHB, CTOE, DCE, Sim, SimConfig};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const DEVICE: &str = "/soc@0/bus@30800000/mmc@30b50000";

fn ticking() -> impl FnMut() -> u64 {
    let mut now = 0;
    move || {
        now += 1;
        now
    }
}

fn init(
    rig: &mut Rig,
    sim: &Sim,
    kind: DeviceKind,
    options: Options,
) -> Result<SdCard<'static, Sim>, InitError<'static>> {
    let dma = rig.dma_device_named(kind, DEVICE);
    let mut clock = ticking();
    // SAFETY: the rig's pool windows are leaked host allocations and its
    // linear pool is one too; the DMA layer hands each page to one owner.
    unsafe { SdCard::new(sim.clone(), dma, &mut rig.env(), options, &mut clock) }
}

struct Bench {
    rig: Rig,
    sim: Sim,
    card: SdCard<'static, Sim>,
}

fn bench(config: SimConfig, kind: DeviceKind, xen: bool) -> Bench {
    let mut rig = Rig::new(xen);
    let sim = Sim::new(config, rig.map);
    let card = init(&mut rig, &sim, kind, Options::default()).unwrap();
    rig.forget();
    Bench { rig, sim, card }
}

impl Bench {
    /// Submits, completes (by the simulated interrupt) and finishes.
    fn run(&mut self, request: Request<'_>, read_into: &mut [u8]) -> Result<(), SdError<'static>> {
        let token = self
            .card
            .submit(&mut self.rig.env(), request, Deadline::NEVER)?;
        if self.sim.state().pending.is_some() {
            self.sim.complete();
        }
        let done = self.card.poll(&mut self.rig.env());
        if request != Request::Flush {
            assert_eq!(done.as_slice(), [token]);
        }
        match self
            .card
            .finish(token, &mut |bytes| read_into.copy_from_slice(bytes))
        {
            Poll::Ready(result) => result.map(|_| ()),
            Poll::Pending => panic!("request still pending after completion"),
        }
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), SdError<'static>> {
        self.run(Request::Write { lba, data }, &mut [])
    }

    fn read(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), SdError<'static>> {
        let sectors = (buffer.len() / 512) as u32;
        self.run(Request::Read { lba, sectors }, buffer)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn commands(sim: &Sim) -> Vec<u8> {
    sim.state().commands.iter().map(|&(cmd, _)| cmd).collect()
}

#[test]
fn an_sdhc_card_is_initialised_in_the_specified_order() {
    let b = bench(SimConfig::sdhc(), DeviceKind::DynamicPool, false);
    let card = b.card.card();
    assert!(card.high_capacity);
    assert_eq!(card.sectors, 16384);
    assert_eq!(card.rca, 0x4567);
    assert_eq!(&card.product, b"SIMSD");
    assert_eq!(card.clock_hz, 25_000_000);
    assert!(b.sim.state().hcs_requested);
    assert_eq!(
        commands(&b.sim),
        [0, 8, 55, 41, 55, 41, 55, 41, 55, 41, 2, 3, 9, 7, 55, 6]
    );
    let line = b.card.info_line().to_string();
    assert!(
        line.starts_with(&format!(
            "blk: {DEVICE} sd capacity=16384 block_size=512 max_request=262144 slots=1 read_only=no card=sdhc csd=2 rca=0x4567 product=SIMSD bus_width=4 clock_hz=25000000 dma=adma2 table=0x7c"
        )),
        "{line}"
    );
}

#[test]
fn a_standard_capacity_card_uses_byte_addresses_and_cmd16() {
    let mut b = bench(SimConfig::sdsc(), DeviceKind::DynamicPool, false);
    assert!(!b.card.card().high_capacity);
    assert_eq!(b.card.card().sectors, 8192);
    assert_eq!(commands(&b.sim).last(), Some(&16));
    let data = pattern(1024, 7);
    b.write(10, &data).unwrap();
    assert_eq!(
        b.sim.state().commands.iter().rev().nth(1),
        Some(&(25, 10 * 512))
    );
    assert_eq!(&b.sim.state().disk[10 * 512..12 * 512], &data[..]);
}

#[test]
fn a_version_1_card_gets_no_hcs_and_is_standard_capacity() {
    let config = SimConfig {
        version2: false,
        ..SimConfig::sdhc()
    };
    let b = bench(config, DeviceKind::DynamicPool, false);
    assert!(!b.sim.state().hcs_requested);
    assert!(!b.card.card().high_capacity);
}

#[test]
fn single_and_multi_block_reads_and_writes_reach_the_card_through_every_pool() {
    for kind in [DeviceKind::DynamicPool, DeviceKind::StaticPool] {
        let mut b = bench(SimConfig::sdhc(), kind, true);
        let one = pattern(512, 1);
        b.write(3, &one).unwrap();
        let many = pattern(256 * 1024, 2);
        b.write(100, &many).unwrap();
        assert_eq!(&b.sim.state().disk[3 * 512..4 * 512], &one[..]);
        assert_eq!(
            &b.sim.state().disk[100 * 512..100 * 512 + many.len()],
            &many[..]
        );
        let mut back = vec![0; 512];
        b.read(3, &mut back).unwrap();
        assert_eq!(back, one);
        let mut back = vec![0; many.len()];
        b.read(100, &mut back).unwrap();
        assert_eq!(back, many);
        let log = commands(&b.sim);
        // Multi-block transfers end with the controller's auto-CMD12.
        assert_eq!(log[log.len() - 6..], [24, 25, 12, 17, 18, 12]);
        let stats = *b.card.stats();
        assert_eq!((stats.reads, stats.writes, stats.errors), (2, 2, 0));
        // Every completion read the data after a DmaRead barrier.
        assert_eq!(b.sim.state().read_barriers, 4);
        assert_eq!(stats.bytes_read, 512 + 256 * 1024);
        // Every bounce buffer went back to the pool.
        let dma = b.card.dma().stats();
        assert_eq!((dma.maps, dma.unmaps), (4, 4), "{kind:?}");
    }
}

#[test]
fn a_request_through_a_pool_xen_flushes_costs_at_most_one_hypercall() {
    let mut b = bench(SimConfig::sdhc(), DeviceKind::DynamicPool, true);
    for i in 0..4 {
        b.write(i * 64, &pattern(32 * 1024, i as u8)).unwrap();
        let mut back = vec![0; 64 * 1024];
        b.read(i * 64, &mut back).unwrap();
    }
    // The DMA layer's policy: a write's bounce buffer was filled through
    // the pool's non-cacheable window, so nothing is flushed before the
    // card reads it; a read's bounce buffer is invalidated once, at
    // completion, before the CPU copies it out: one hypercall per read.
    let calls = b.rig.hypercalls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    for (op, range) in calls {
        assert_eq!(*op, CacheOp::Invalidate, "{calls:?}");
        assert_eq!(range.size, 64 * 1024);
        assert!(range.base.0 >= DYNAMIC_PHYS.base.0 && range.end() <= DYNAMIC_PHYS.end());
    }
    let dma = b.card.dma().stats();
    assert_eq!((dma.hypercalls, dma.maps), (4, 8));
}

#[test]
fn a_pool_xen_refuses_is_maintained_through_its_window_without_hypercalls() {
    let mut b = bench(SimConfig::sdhc(), DeviceKind::StaticPool, true);
    b.write(0, &pattern(4096, 3)).unwrap();
    let mut back = vec![0; 4096];
    b.read(0, &mut back).unwrap();
    assert!(b.rig.hypercalls().is_empty());
    // The read's one invalidate, through the pool's window.
    assert_eq!(b.rig.cache.ops.len(), 1, "{:?}", b.rig.cache.ops);
    assert_eq!(b.rig.cache.ops[0].0, CacheOp::Invalidate);
    let stats = b.card.dma().stats();
    assert_eq!((stats.hypercalls, stats.va_ops), (0, 1));
    // The table lives in the device's own pool.
    assert!(STATIC_PHYS.contains(tidepool_mm::PhysAddr(b.card.table_dma_addr())));
}

#[test]
fn without_a_pool_the_table_is_in_the_kernel_nc_pool_and_high_buffers_are_refused() {
    // The host heap (this rig's linear RAM) lies above 4 GiB, which 32-bit
    // ADMA2 cannot reach: the request is refused and nothing stays mapped.
    let mut b = bench(SimConfig::sdhc(), DeviceKind::NonCoherent, false);
    assert!(NC_PHYS.contains(tidepool_mm::PhysAddr(b.card.table_dma_addr())));
    let before = commands(&b.sim).len();
    let error = b.write(0, &pattern(512, 1)).unwrap_err();
    assert!(
        matches!(
            error,
            SdError::Adma {
                op: Op::Write,
                lba: 0,
                error: AdmaError::AboveFourGiB { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(commands(&b.sim).len(), before);
    let dma = b.card.dma().stats();
    assert_eq!(dma.maps, dma.unmaps);
}

#[test]
fn writes_to_a_write_protected_card_are_refused_before_the_card_sees_them() {
    for (config, reason) in [
        (
            SimConfig {
                wp_switch: true,
                ..SimConfig::sdhc()
            },
            WriteProtect::Switch,
        ),
        (
            SimConfig {
                csd_wp: true,
                ..SimConfig::sdhc()
            },
            WriteProtect::Csd,
        ),
    ] {
        let mut b = bench(config, DeviceKind::DynamicPool, false);
        let before = commands(&b.sim).len();
        let error = b.write(5, &pattern(512, 1)).unwrap_err();
        assert_eq!(
            error,
            SdError::ReadOnly {
                device: DEVICE,
                lba: 5,
                reason
            }
        );
        assert!(error.to_string().contains("write-protected"));
        assert_eq!(commands(&b.sim).len(), before);
        // Reads still work.
        let mut back = vec![0; 512];
        b.read(5, &mut back).unwrap();
    }
    // A slot without a switch (`disable-wp`) ignores the pin.
    let mut rig = Rig::new(false);
    let sim = Sim::new(
        SimConfig {
            wp_switch: true,
            ..SimConfig::sdhc()
        },
        rig.map,
    );
    let options = Options {
        ignore_write_protect_pin: true,
        ..Options::default()
    };
    let mut card = init(&mut rig, &sim, DeviceKind::DynamicPool, options).unwrap();
    let data = pattern(512, 9);
    let token = card
        .submit(
            &mut rig.env(),
            Request::Write {
                lba: 1,
                data: &data,
            },
            Deadline::NEVER,
        )
        .unwrap();
    card.poll(&mut rig.env());
    assert!(matches!(
        card.finish(token, &mut |_| {}),
        Poll::Ready(Ok(_))
    ));
}

#[test]
fn a_data_error_names_the_command_argument_and_registers_and_the_card_recovers() {
    let mut b = bench(SimConfig::sdhc(), DeviceKind::DynamicPool, false);
    b.sim.state().inject.push(DCE);
    let mut back = vec![0; 4096];
    let error = b.read(40, &mut back).unwrap_err();
    let SdError::Controller {
        cmd,
        arg,
        registers,
        ..
    } = error
    else {
        panic!("{error:?}");
    };
    assert_eq!((cmd, arg), (18, 40));
    assert_ne!(registers.int_status & DCE, 0);
    let text = error.to_string();
    assert!(
        text.contains("CMD18 arg=0x28") && text.contains("data-crc"),
        "{text}"
    );
    // Both lines were reset and the multi-block read stopped.
    assert_eq!(b.sim.state().resets, (1, 1));
    assert_eq!(commands(&b.sim).last(), Some(&12));
    assert_eq!(b.card.stats().errors, 1);
    let dma = b.card.dma().stats();
    assert_eq!(dma.maps, dma.unmaps);
    // The next request works.
    b.write(40, &pattern(4096, 5)).unwrap();
    b.read(40, &mut back).unwrap();
    assert_eq!(back, pattern(4096, 5));
}

#[test]
fn a_card_status_error_is_reported_with_the_status() {
    let mut b = bench(SimConfig::sdhc(), DeviceKind::DynamicPool, false);
    b.sim.state().card_error = 1 << 31;
    let error = b.read(0, &mut vec![0; 512]).unwrap_err();
    assert!(
        matches!(
            error,
            SdError::Card {
                cmd: 17,
                arg: 0,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("OUT_OF_RANGE"), "{error}");
}

#[test]
fn completion_is_interrupt_driven_and_a_late_request_times_out_and_is_stopped() {
    let config = SimConfig {
        auto_complete: false,
        ..SimConfig::sdhc()
    };
    let mut b = bench(config, DeviceKind::DynamicPool, false);
    let baseline = b.rig.usage();
    let token = b
        .card
        .submit(
            &mut b.rig.env(),
            Request::Read {
                lba: 8,
                sectors: 16,
            },
            Deadline(100),
        )
        .unwrap();
    // Command complete only: the interrupt is signalled, the request stays.
    assert!(b.sim.irq());
    assert!(!b.card.has_completions());
    assert!(b.card.poll(&mut b.rig.env()).is_empty());
    assert_eq!(b.card.finish(token, &mut |_| {}), Poll::Pending);
    assert_eq!(b.sim.state().int_signal_en & 0x3, 0x3);
    assert_eq!(b.card.in_flight(), 1);
    // A second request waits: the card takes one at a time.
    let busy = b
        .card
        .submit(
            &mut b.rig.env(),
            Request::Read { lba: 0, sectors: 1 },
            Deadline::NEVER,
        )
        .unwrap_err();
    assert!(b.card.is_busy(&busy) && b.card.is_full(&busy));
    assert!(b.card.expire(99).is_empty());
    assert_eq!(b.card.expire(100).as_slice(), [token]);
    assert_eq!(b.sim.state().resets, (1, 1));
    assert!(b.sim.state().pending.is_none(), "the DMA was not stopped");
    let error = match b
        .card
        .finish(token, &mut |_| panic!("a timed-out read lent data"))
    {
        Poll::Ready(Err(error)) => error,
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(
            error,
            SdError::Timeout {
                cmd: 18,
                arg: 8,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(b.card.stats().timeouts, 1);
    // The region goes back to the pool at the next poll.
    b.card.poll(&mut b.rig.env());
    assert_eq!(b.rig.usage(), baseline);
    // And the card takes requests again.
    let token = b
        .card
        .submit(
            &mut b.rig.env(),
            Request::Read { lba: 0, sectors: 1 },
            Deadline::NEVER,
        )
        .unwrap();
    b.sim.complete();
    assert!(b.card.has_completions());
    assert_eq!(b.card.poll(&mut b.rig.env()).as_slice(), [token]);
    assert!(!b.card.has_completions());
    // A finished request holds the slot until its owner finishes it: a
    // submission is refused, and waiting would not help.
    let held = b
        .card
        .submit(
            &mut b.rig.env(),
            Request::Read { lba: 1, sectors: 1 },
            Deadline::NEVER,
        )
        .unwrap_err();
    assert!(matches!(held, SdError::Busy { .. }) && !b.card.is_busy(&held));
    assert!(
        b.card.is_full(&held),
        "finishing the held request frees the slot"
    );
    assert!(matches!(
        b.card
            .finish(token, &mut |bytes| assert_eq!(bytes.len(), 512)),
        Poll::Ready(Ok(_))
    ));
}

#[test]
fn turning_interrupts_off_is_a_hint_the_card_ignores() {
    // One request at a time, whose one interrupt the kernel's handler
    // masks: a polling waiter finds the completion either way, so the
    // card keeps signalling and polling still works.
    let config = SimConfig {
        auto_complete: false,
        ..SimConfig::sdhc()
    };
    let mut b = bench(config, DeviceKind::DynamicPool, false);
    for enabled in [false, true, false] {
        BlockDriver::set_interrupts(&mut b.card, enabled);
        let token = b
            .card
            .submit(
                &mut b.rig.env(),
                Request::Read { lba: 0, sectors: 1 },
                Deadline::NEVER,
            )
            .unwrap();
        b.sim.complete();
        assert!(b.sim.irq(), "interrupts {enabled}: the card still signals");
        assert!(b.card.has_completions());
        assert_eq!(b.card.poll(&mut b.rig.env()).as_slice(), [token]);
        assert!(matches!(
            b.card.finish(token, &mut |_| {}),
            Poll::Ready(Ok(_))
        ));
    }
}

#[test]
fn requests_the_card_cannot_do_are_refused_before_it_sees_them() {
    let mut b = bench(SimConfig::sdhc(), DeviceKind::DynamicPool, false);
    let before = commands(&b.sim).len();
    let capacity = 16384;
    let cases = [
        (
            Request::Read {
                lba: capacity - 1,
                sectors: 2,
            },
            Op::Read,
            ExtentError::BeyondDisk {
                lba: capacity - 1,
                sectors: 2,
                capacity,
            },
        ),
        (
            Request::Read { lba: 0, sectors: 0 },
            Op::Read,
            ExtentError::Empty { lba: 0 },
        ),
        (
            Request::Write {
                lba: 0,
                data: &[0; 100],
            },
            Op::Write,
            ExtentError::Misaligned {
                lba: 0,
                bytes: 100,
                block_bytes: 512,
            },
        ),
        (
            Request::Read {
                lba: 0,
                sectors: 1024,
            },
            Op::Read,
            ExtentError::TooLarge {
                bytes: 1024 * 512,
                max: 256 * 1024,
            },
        ),
    ];
    for (request, op, error) in cases {
        let refused = b
            .card
            .submit(&mut b.rig.env(), request, Deadline::NEVER)
            .unwrap_err();
        assert_eq!(
            refused,
            SdError::Extent {
                device: DEVICE,
                op,
                error
            }
        );
        assert_eq!(refused.to_string(), format!("{DEVICE}: {op}: {error}"));
        assert!(!b.card.is_busy(&refused) && !b.card.is_full(&refused));
    }
    assert_eq!(commands(&b.sim).len(), before);
    // A flush completes without a command: no card cache is enabled.
    b.run(Request::Flush, &mut []).unwrap();
    assert_eq!(commands(&b.sim).len(), before);
    assert_eq!(b.card.stats().flushes, 1);
}

#[test]
fn no_card_is_a_command_timeout_during_setup() {
    let mut rig = Rig::new(false);
    let sim = Sim::new(
        SimConfig {
            present: false,
            ..SimConfig::sdhc()
        },
        rig.map,
    );
    let baseline = rig.usage();
    let error = init(&mut rig, &sim, DeviceKind::DynamicPool, Options::default())
        .err()
        .unwrap();
    let InitError::Command(SdError::Controller { cmd, registers, .. }) = error else {
        panic!("{error:?}");
    };
    assert_eq!(cmd, 55);
    assert_ne!(registers.int_status & CTOE, 0);
    assert!(error.to_string().contains("command-timeout"), "{error}");
    assert_eq!(rig.usage(), baseline);
}

/// Sets up a card whose controller keeps the `stuck` inhibit bits set:
/// the command that waited, `PRES_STATE` then, and the commands sent. The
/// setup must fail with `LineBusy` and leak nothing.
fn setup_with_stuck_lines(stuck: u32) -> (u8, u32, Vec<u8>) {
    let mut rig = Rig::new(false);
    let sim = Sim::new(
        SimConfig {
            stuck_lines: stuck,
            ..SimConfig::sdhc()
        },
        rig.map,
    );
    let baseline = rig.usage();
    let error = init(&mut rig, &sim, DeviceKind::DynamicPool, Options::default())
        .err()
        .unwrap();
    let InitError::Command(SdError::LineBusy {
        cmd, pres_state, ..
    }) = error
    else {
        panic!("{error:?}");
    };
    assert_eq!(rig.usage(), baseline);
    (cmd, pres_state, commands(&sim))
}

/// A controller whose command line never frees is reported at the first
/// command, after a bounded wait, not waited on for ever.
#[test]
fn a_command_line_that_never_frees_is_reported() {
    let (cmd, pres_state, sent) = setup_with_stuck_lines(CIHB);
    assert_eq!(cmd, 0, "the first command of setup");
    assert_ne!(pres_state & CIHB, 0);
    assert!(sent.is_empty(), "no command was sent");
}

/// A data line that never frees holds back the first command that needs
/// it (CMD7, SELECT_CARD: its R1b response holds DAT0 busy), and only
/// that: the commands before it were sent.
#[test]
fn a_data_line_that_never_frees_is_reported_at_the_first_data_command() {
    let (cmd, pres_state, sent) = setup_with_stuck_lines(CDIHB);
    assert_eq!(cmd, 7);
    assert_eq!(pres_state & (CIHB | CDIHB), CDIHB);
    assert_eq!(sent.first(), Some(&0));
    assert_eq!(sent.last(), Some(&9), "up to CMD9 (SEND_CSD)");
}

#[test]
fn a_card_that_never_powers_up_is_reported() {
    let mut rig = Rig::new(false);
    let sim = Sim::new(
        SimConfig {
            busy_polls: u32::MAX,
            ..SimConfig::sdhc()
        },
        rig.map,
    );
    let error = init(&mut rig, &sim, DeviceKind::DynamicPool, Options::default())
        .err()
        .unwrap();
    assert!(matches!(error, InitError::NeverReady { .. }), "{error:?}");
}

#[test]
fn shutdown_gives_every_page_back() {
    let mut rig = Rig::new(false);
    let baseline = rig.usage();
    let sim = Sim::new(SimConfig::sdhc(), rig.map);
    let card = init(&mut rig, &sim, DeviceKind::StaticPool, Options::default()).unwrap();
    assert_ne!(rig.usage(), baseline);
    card.shutdown(&mut rig.env()).unwrap();
    assert_eq!(rig.usage(), baseline);
}

#[test]
fn the_noted_interrupt_is_handled_and_a_held_card_is_not_waited_for_forever() {
    let config = SimConfig {
        auto_complete: false,
        ..SimConfig::sdhc()
    };
    let mut b = bench(config, DeviceKind::DynamicPool, false);
    let noted: &'static std::sync::atomic::AtomicBool =
        Box::leak(Box::new(std::sync::atomic::AtomicBool::new(false)));
    b.card.use_interrupt_flag(noted);
    let token = b
        .card
        .submit(
            &mut b.rig.env(),
            Request::Read { lba: 0, sectors: 1 },
            Deadline::NEVER,
        )
        .unwrap();
    // Another request waits a whole timeout for the slot, then gives up.
    let mut clock = ticking();
    let mut waits = 0;
    let error = b
        .card
        .submit_waiting(
            &mut b.rig.env(),
            Request::Read { lba: 1, sectors: 1 },
            &mut clock,
            10,
            &mut |_, _| waits += 1,
        )
        .unwrap_err();
    assert!(matches!(error, SdError::NoFreeSlot { .. }), "{error:?}");
    assert!(waits > 0);
    // The handler notes the interrupt; the driver acts on it once.
    b.sim.complete();
    noted.store(true, std::sync::atomic::Ordering::Release);
    assert!(b.card.interrupt_noted());
    let done = b.card.handle_interrupt(&mut b.rig.env(), &mut |_| {
        panic!("the SD card has no notices")
    });
    assert_eq!(done.as_slice(), [token]);
    assert!(!b.card.interrupt_noted());
}
