//! Requests: reads and writes on every kind of DMA, splitting, flush,
//! read-only devices, device errors, refusals, timeouts, many requests in
//! flight completed out of order, interrupts, faults and shutdown.

use core::sync::atomic::AtomicU32;
use core::task::Poll;
use tidepool_block::{BlockDriver, ExtentError};

use tidepool_block::pattern::{self, SECTOR_BYTES};
use tidepool_dma::DmaEnv;
use tidepool_virtio_blk::transport::feature;
use tidepool_virtio_blk::{
    BlkError, BlockDevice, CapacityChange, Completion, Deadline, DeviceFault, DeviceStatus, Op,
    Options, Request, Token,
};

use crate::host::{DEVICE, DYNAMIC_PHYS, DeviceKind, Rig};
use crate::sim::{S_IOERR, S_UNSUPP, Sim, SimConfig};
use crate::{Bench, bench, bench_with, ticking};

const KINDS: [DeviceKind; 5] = [
    DeviceKind::Coherent,
    DeviceKind::NonCoherent,
    DeviceKind::DynamicPool,
    DeviceKind::StaticPool,
    DeviceKind::CoherentPool,
];

/// Fills the simulated disk with the pattern of `seed`.
fn fill_disk(sim: &Sim, seed: u64) {
    sim.with(|s| {
        let (sectors, _) = s.disk.as_chunks_mut::<SECTOR_BYTES>();
        pattern::fill_sectors(seed, 0, sectors);
    });
}

fn pattern_bytes(seed: u64, lba: u64, sectors: usize) -> Vec<u8> {
    let mut bytes = vec![0; sectors * SECTOR_BYTES];
    pattern::fill_sectors(seed, lba, bytes.as_chunks_mut::<SECTOR_BYTES>().0);
    bytes
}

fn verify(seed: u64, lba: u64, bytes: &[u8]) {
    let (sectors, rest) = bytes.as_chunks::<SECTOR_BYTES>();
    assert!(rest.is_empty());
    if let Err(mismatch) = pattern::verify_sectors(seed, lba, sectors) {
        panic!("{mismatch}");
    }
}

/// Finishes `token`, which must be ready, copying a read's data into
/// `read_into` (exactly its length).
fn finish(
    disk: &mut BlockDevice<'static, Sim>,
    env: &mut DmaEnv<'_, 'static>,
    token: Token,
    read_into: &mut [u8],
) -> Result<Completion, BlkError<'static>> {
    match disk.finish(env, token, &mut |bytes| read_into.copy_from_slice(bytes)) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("{token} still pending"),
    }
}

/// Releases the device and checks every pool is back to `baseline`.
fn shut_down(b: Bench, baseline: &[tidepool_dma::PoolUsage]) {
    let Bench { mut rig, disk, .. } = b;
    let dma = disk.shutdown(&mut rig.env()).unwrap();
    assert_eq!(dma.stats().maps, dma.stats().unmaps);
    assert_eq!(rig.usage(), baseline);
}

#[test]
fn reads_and_writes_round_trip_on_every_kind_of_dma_and_transport() {
    for kind in KINDS {
        for config in [SimConfig::modern(), SimConfig::legacy()] {
            if kind == DeviceKind::Coherent && config.version == 1 {
                // Its ring is host memory above a legacy page frame's reach.
                continue;
            }
            let baseline = Rig::new(true).usage();
            let mut b = bench(config, kind, true);
            fill_disk(&b.sim, 1);
            let mut clock = ticking();
            let mut buffer = vec![0; 3 * SECTOR_BYTES];
            b.disk
                .read(&mut b.rig.env(), 5, &mut buffer, &mut clock, 100)
                .unwrap();
            verify(1, 5, &buffer);
            let data = pattern_bytes(2, 100, 8);
            b.disk
                .write(&mut b.rig.env(), 100, &data, &mut clock, 100)
                .unwrap();
            assert_eq!(
                b.sim.state().disk[100 * 512..108 * 512],
                data[..],
                "{kind:?}"
            );
            let mut back = vec![0; 8 * SECTOR_BYTES];
            b.disk
                .read(&mut b.rig.env(), 100, &mut back, &mut clock, 100)
                .unwrap();
            verify(2, 100, &back);
            b.disk.flush(&mut b.rig.env(), &mut clock, 100).unwrap();
            assert_eq!(
                b.disk.stats_line().to_string(),
                "blk: stats /virtio_mmio@a003e00 reads=2 writes=1 flushes=1 errors=0 timeouts=0 \
                 bytes_read=5632 bytes_written=4096 notifies=4"
            );
            assert_eq!(b.sim.state().notifications, 4);
            shut_down(b, &baseline);
        }
    }
}

#[test]
fn large_transfers_are_split_and_kept_in_flight_together() {
    let mut b = bench(SimConfig::held(), DeviceKind::DynamicPool, true);
    let data = pattern_bytes(9, 1000, 1600);
    // The device works only while the driver waits (time passes without a
    // new submission); note how many requests it held at once.
    let sim = b.sim.clone();
    let mut most = 0;
    let mut last = 0;
    let mut now = 0;
    let mut clock = || {
        let pending = sim.pending();
        most = most.max(pending);
        if pending == last {
            sim.complete_all();
        }
        last = sim.pending();
        now += 1;
        now
    };
    b.disk
        .write(&mut b.rig.env(), 1000, &data, &mut clock, 1000)
        .unwrap();
    assert_eq!(b.sim.state().disk[1000 * 512..2600 * 512], data[..]);
    // 800 KiB: three of 256 KiB and one of 32 KiB, all submitted before the
    // first completion.
    assert_eq!(b.disk.stats().writes, 4);
    assert_eq!(b.disk.stats().bytes_written, 1600 * 512);
    let mut back = vec![0; 1600 * SECTOR_BYTES];
    b.disk
        .read(&mut b.rig.env(), 1000, &mut back, &mut clock, 1000)
        .unwrap();
    verify(9, 1000, &back);
    assert_eq!(most, 4);
    assert_eq!(b.disk.stats().reads, 4);
}

#[test]
fn flush_goes_to_the_device_only_when_it_has_a_write_cache() {
    let mut clock = ticking();
    let mut b = bench(SimConfig::modern(), DeviceKind::NonCoherent, false);
    b.disk.flush(&mut b.rig.env(), &mut clock, 10).unwrap();
    assert_eq!(b.sim.state().flushes, 1);
    assert_eq!(b.disk.stats().flushes, 1);

    let mut config = SimConfig::modern();
    config.features &= !feature::BLK_FLUSH;
    let mut b = bench(config, DeviceKind::NonCoherent, false);
    assert!(!b.disk.has_flush());
    b.disk.flush(&mut b.rig.env(), &mut clock, 10).unwrap();
    let refused = b
        .disk
        .submit(&mut b.rig.env(), Request::Flush, Deadline::NEVER);
    assert_eq!(refused, Err(BlkError::FlushNotSupported { device: DEVICE }));
    assert_eq!(b.sim.state().notifications, 0);
    assert_eq!(b.disk.stats().flushes, 0);
}

#[test]
fn writes_to_a_read_only_device_are_refused_before_touching_it() {
    let mut config = SimConfig::modern();
    config.features |= feature::BLK_RO;
    let mut b = bench(config, DeviceKind::DynamicPool, true);
    assert!(b.disk.is_read_only());
    let data = [0; 512];
    let refused = b.disk.submit(
        &mut b.rig.env(),
        Request::Write {
            lba: 7,
            data: &data,
        },
        Deadline::NEVER,
    );
    assert_eq!(
        refused,
        Err(BlkError::ReadOnly {
            device: DEVICE,
            lba: 7
        })
    );
    let mut clock = ticking();
    let blocking = b
        .disk
        .write(&mut b.rig.env(), 9, &[0; 4096], &mut clock, 10);
    assert_eq!(
        blocking,
        Err(BlkError::ReadOnly {
            device: DEVICE,
            lba: 9
        })
    );
    assert_eq!(
        refused.unwrap_err().to_string(),
        "blk /virtio_mmio@a003e00: write at sector 7 to a read-only device"
    );
    // Neither the device nor the DMA layer saw anything.
    assert_eq!(b.sim.state().notifications, 0);
    assert_eq!(b.disk.dma().stats().maps, 0);
    assert_eq!(b.rig.hypercalls(), []);
    // Reads still work.
    fill_disk(&b.sim, 4);
    let mut buffer = [0; 512];
    b.disk
        .read(&mut b.rig.env(), 7, &mut buffer, &mut clock, 10)
        .unwrap();
    verify(4, 7, &buffer);
}

#[test]
fn device_errors_carry_the_operation_sector_and_status() {
    let mut b = bench(SimConfig::modern(), DeviceKind::NonCoherent, false);
    b.sim
        .with(|s| s.errors.extend([(40, S_IOERR), (41, S_UNSUPP), (42, 0x7f)]));
    let mut clock = ticking();
    let mut buffer = [0; 512];
    let read = b
        .disk
        .read(&mut b.rig.env(), 40, &mut buffer, &mut clock, 10);
    let expected = BlkError::Device {
        device: DEVICE,
        op: Op::Read,
        lba: 40,
        status: DeviceStatus::IoError,
    };
    assert_eq!(read, Err(expected));
    assert_eq!(
        expected.to_string(),
        "blk /virtio_mmio@a003e00: read at sector 40 failed: VIRTIO_BLK_S_IOERR"
    );
    let write = b.disk.write(&mut b.rig.env(), 41, &buffer, &mut clock, 10);
    assert_eq!(
        write,
        Err(BlkError::Device {
            device: DEVICE,
            op: Op::Write,
            lba: 41,
            status: DeviceStatus::Unsupported
        })
    );
    let token = b
        .disk
        .submit(
            &mut b.rig.env(),
            Request::Read {
                lba: 42,
                sectors: 1,
            },
            Deadline::NEVER,
        )
        .unwrap();
    b.disk.kick(&mut b.rig.env());
    b.disk.poll(&mut b.rig.env());
    let error = finish(&mut b.disk, &mut b.rig.env(), token, &mut buffer).unwrap_err();
    assert_eq!(
        error.to_string(),
        "blk /virtio_mmio@a003e00: read at sector 42 failed: status 0x7f"
    );
    let stats = *b.disk.stats();
    assert_eq!((stats.errors, stats.reads, stats.writes), (3, 0, 0));
    // The slots came back: the queue still works.
    b.disk
        .read(&mut b.rig.env(), 43, &mut buffer, &mut clock, 10)
        .unwrap();
}

#[test]
fn impossible_requests_are_refused_before_touching_the_device() {
    let mut config = SimConfig::modern();
    config.blk_size = 4096;
    let mut b = bench(config, DeviceKind::NonCoherent, false);
    let mut env = b.rig.env();
    let mut submit = |request| {
        b.disk
            .submit(&mut env, request, Deadline::NEVER)
            .unwrap_err()
    };
    let extent = |op, error| BlkError::Extent {
        device: DEVICE,
        op,
        error,
    };
    assert_eq!(
        submit(Request::Read {
            lba: 8192,
            sectors: 8
        }),
        extent(
            Op::Read,
            ExtentError::BeyondDisk {
                lba: 8192,
                sectors: 8,
                capacity: 8192
            }
        )
    );
    assert_eq!(
        submit(Request::Read {
            lba: u64::MAX - 3,
            sectors: 8
        }),
        extent(
            Op::Read,
            ExtentError::Misaligned {
                lba: u64::MAX - 3,
                bytes: 4096,
                block_bytes: 4096
            }
        )
    );
    assert_eq!(
        submit(Request::Read { lba: 1, sectors: 8 }),
        extent(
            Op::Read,
            ExtentError::Misaligned {
                lba: 1,
                bytes: 4096,
                block_bytes: 4096
            }
        )
    );
    assert_eq!(
        submit(Request::Write {
            lba: 8,
            data: &[0; 512]
        }),
        extent(
            Op::Write,
            ExtentError::Misaligned {
                lba: 8,
                bytes: 512,
                block_bytes: 4096
            }
        )
    );
    assert_eq!(
        submit(Request::Read {
            lba: 0,
            sectors: 520
        }),
        extent(
            Op::Read,
            ExtentError::TooLarge {
                bytes: 520 * 512,
                max: 262144
            }
        )
    );
    assert_eq!(
        submit(Request::Write { lba: 0, data: &[] }),
        extent(Op::Write, ExtentError::Empty { lba: 0 })
    );
    assert_eq!(
        submit(Request::Read {
            lba: 8184,
            sectors: 16
        })
        .to_string(),
        format!("blk {DEVICE}: read: sectors 8184+16 are beyond the capacity of 8192 sectors"),
        "the message names the device and the operation"
    );
    assert_eq!(b.sim.state().notifications, 0);
    assert_eq!(b.disk.dma().stats().maps, 0);
}

#[test]
fn a_request_past_its_deadline_times_out_once_and_its_slot_returns_with_the_device() {
    let config = SimConfig::held();
    let baseline = Rig::new(true).usage();
    let mut b = bench(config, DeviceKind::DynamicPool, true);
    let env = &mut b.rig.env();
    let token = b
        .disk
        .submit(env, Request::Read { lba: 0, sectors: 8 }, Deadline(100))
        .unwrap();
    b.disk.kick(env);
    let mut buffer = [0; 4096];
    assert_eq!(b.disk.finish(env, token, &mut |_| {}), Poll::Pending);
    assert!(b.disk.expire(99).is_empty());
    assert_eq!(b.disk.expire(100).as_slice(), [token]);
    assert!(b.disk.expire(1000).is_empty(), "reported once");
    let timeout = BlkError::Timeout {
        device: DEVICE,
        op: Op::Read,
        lba: 0,
    };
    assert_eq!(finish(&mut b.disk, env, token, &mut buffer), Err(timeout));
    assert_eq!(
        finish(&mut b.disk, env, token, &mut buffer),
        Err(BlkError::UnknownToken {
            device: DEVICE,
            token
        })
    );
    // The device still holds the request, so the slot and its mapping stay.
    assert_eq!(b.disk.in_flight(), 1);
    assert_eq!(b.disk.dma().stats().unmaps, 0);
    b.sim.complete_all();
    assert!(
        b.disk.handle_interrupt(env).completions.is_empty(),
        "not reported again"
    );
    assert_eq!(b.disk.in_flight(), 0);
    assert_eq!(b.disk.dma().stats().unmaps, 1);

    // Timed out, then returned by the device before being finished: still a
    // timeout, and not a read.
    let token = b
        .disk
        .submit(env, Request::Read { lba: 8, sectors: 8 }, Deadline(5))
        .unwrap();
    b.disk.kick(env);
    assert_eq!(b.disk.expire(5).as_slice(), [token]);
    b.sim.complete_all();
    assert!(b.disk.poll(env).is_empty());
    assert_eq!(
        finish(&mut b.disk, env, token, &mut buffer),
        Err(BlkError::Timeout {
            device: DEVICE,
            op: Op::Read,
            lba: 8
        })
    );
    let stats = *b.disk.stats();
    assert_eq!((stats.timeouts, stats.reads, stats.errors), (2, 0, 0));

    // The blocking helpers give up at the deadline, after waiting for what
    // they submitted.
    let mut clock = ticking();
    let read = b.disk.read(env, 16, &mut buffer, &mut clock, 50);
    assert_eq!(
        read,
        Err(BlkError::Timeout {
            device: DEVICE,
            op: Op::Read,
            lba: 16
        })
    );
    assert_eq!(b.disk.in_flight(), 1);
    b.sim.complete_all();
    b.disk.poll(env);
    assert_eq!(b.disk.stats().timeouts, 3);
    shut_down(b, &baseline);
}

#[test]
fn twenty_one_requests_in_flight_complete_out_of_order_by_interrupt() {
    for kind in [DeviceKind::DynamicPool, DeviceKind::NonCoherent] {
        let mut b = bench_with(SimConfig::held(), kind, true, Options { in_flight: 21 });
        fill_disk(&b.sim, 77);
        let env = &mut b.rig.env();
        // 21 reads of 4 KiB at scattered sectors.
        let lbas: Vec<u64> = (0..21).map(|i| (i * 389) % 8000).collect();
        let tokens: Vec<Token> = lbas
            .iter()
            .map(|&lba| {
                b.disk
                    .submit(env, Request::Read { lba, sectors: 8 }, Deadline::NEVER)
                    .unwrap()
            })
            .collect();
        // Published, not yet notified: the device has not looked.
        assert_eq!((b.disk.in_flight(), b.sim.pending()), (21, 0));
        assert_eq!(b.sim.state().notifications, 0);
        // One notification for the batch.
        b.disk.kick(env);
        assert_eq!((b.disk.in_flight(), b.sim.pending()), (21, 21));
        assert_eq!(b.sim.state().notifications, 1);
        assert_eq!(
            b.disk.submit(env, Request::Flush, Deadline::NEVER),
            Err(BlkError::QueueFull {
                device: DEVICE,
                in_flight: 21
            })
        );
        // Complete in a scrambled order, a few at a time; each interrupt
        // reports exactly those.
        let order: Vec<usize> = (0..21).map(|i| (i * 8 + 5) % 21).collect();
        let mut buffer = vec![0; 4096];
        for batch in order.chunks(4) {
            for &request in batch {
                let position = b
                    .sim
                    .state()
                    .pending
                    .iter()
                    .position(|p| p.sector == lbas[request])
                    .unwrap();
                b.sim.complete(position);
            }
            let completed = b.disk.handle_interrupt(env).completions;
            assert_eq!(b.sim.state().interrupt_status, 0, "acknowledged");
            let expected: Vec<Token> = batch.iter().map(|&r| tokens[r]).collect();
            assert_eq!(completed.as_slice(), expected);
            for &request in batch {
                let done = finish(&mut b.disk, env, tokens[request], &mut buffer).unwrap();
                assert_eq!(
                    done,
                    Completion {
                        op: Op::Read,
                        lba: lbas[request],
                        bytes: 4096
                    }
                );
                verify(77, lbas[request], &buffer);
            }
        }
        assert_eq!(b.disk.in_flight(), 0);
        assert_eq!(b.disk.stats().reads, 21);
    }
}

#[test]
fn a_read_is_lent_in_place_where_the_device_wrote_it_on_every_kind_of_dma() {
    for kind in KINDS {
        let mut b = bench(SimConfig::modern(), kind, false);
        fill_disk(&b.sim, 9);
        let env = &mut b.rig.env();
        let token = b
            .disk
            .submit(env, Request::Read { lba: 6, sectors: 8 }, Deadline::NEVER)
            .unwrap();
        b.disk.kick(env);
        assert_eq!(b.disk.poll(env).as_slice(), [token]);
        let mut lent = None;
        let done = b.disk.finish(env, token, &mut |bytes| {
            verify(9, 6, bytes);
            lent = Some((bytes.as_ptr().expose_provenance(), bytes.len() as u32));
        });
        assert!(matches!(done, Poll::Ready(Ok(_))), "{kind:?}");
        // The very bytes the device wrote, not a copy of them.
        assert_eq!(lent, b.sim.state().reads_at.last().copied(), "{kind:?}");
        // Writes, flushes and failed reads lend nothing.
        let write = b
            .disk
            .submit(
                env,
                Request::Write {
                    lba: 6,
                    data: &[1; 512],
                },
                Deadline::NEVER,
            )
            .unwrap();
        b.sim.with(|s| s.errors.push((7, S_IOERR)));
        let failing = b
            .disk
            .submit(env, Request::Read { lba: 7, sectors: 1 }, Deadline::NEVER)
            .unwrap();
        b.disk.kick(env);
        b.disk.poll(env);
        for token in [write, failing] {
            let _ = b.disk.finish(env, token, &mut |_| panic!("{kind:?}: lent"));
        }
    }
}

#[test]
fn tokens_are_finished_once() {
    let mut b = bench(SimConfig::modern(), DeviceKind::NonCoherent, false);
    fill_disk(&b.sim, 5);
    let env = &mut b.rig.env();
    let token = b
        .disk
        .submit(env, Request::Read { lba: 3, sectors: 2 }, Deadline::NEVER)
        .unwrap();
    b.disk.kick(env);
    assert_eq!(b.disk.poll(env).as_slice(), [token]);
    let mut buffer = [0; 1024];
    finish(&mut b.disk, env, token, &mut buffer).unwrap();
    verify(5, 3, &buffer);
    let unknown = finish(&mut b.disk, env, token, &mut buffer).unwrap_err();
    assert_eq!(
        unknown.to_string(),
        format!("blk /virtio_mmio@a003e00: {token} is not waiting to be finished")
    );
    // The slot is reused under a new generation; the old token stays dead.
    let again = b
        .disk
        .submit(env, Request::Read { lba: 3, sectors: 2 }, Deadline::NEVER)
        .unwrap();
    assert_ne!(again, token);
    b.disk.kick(env);
    b.disk.poll(env);
    assert!(finish(&mut b.disk, env, token, &mut buffer).is_err());
    assert!(finish(&mut b.disk, env, again, &mut buffer).is_ok());
}

#[test]
fn interrupts_acknowledge_and_report_capacity_changes() {
    let mut b = bench(SimConfig::held(), DeviceKind::Coherent, false);
    let env = &mut b.rig.env();
    // Not this device's interrupt.
    let nothing = b.disk.handle_interrupt(env);
    assert!(nothing.completions.is_empty());
    assert_eq!((nothing.capacity, nothing.fault), (None, None));
    b.sim.set_capacity(16384);
    let outcome = b.disk.handle_interrupt(env);
    assert!(outcome.completions.is_empty());
    assert_eq!(
        outcome.capacity,
        Some(CapacityChange {
            device: DEVICE,
            before: 8192,
            after: 16384
        })
    );
    assert_eq!(
        outcome.capacity.unwrap().to_string(),
        "blk: /virtio_mmio@a003e00 capacity=16384 was=8192"
    );
    assert_eq!(b.disk.capacity(), 16384);
    assert_eq!(b.sim.state().interrupt_status, 0);
    // The new sectors are readable.
    let token = b
        .disk
        .submit(
            env,
            Request::Read {
                lba: 16000,
                sectors: 1,
            },
            Deadline::NEVER,
        )
        .unwrap();
    b.disk.kick(env);
    b.sim.complete_all();
    assert_eq!(b.disk.handle_interrupt(env).completions.as_slice(), [token]);
    assert!(finish(&mut b.disk, env, token, &mut [0; 512]).is_ok());
    // A configuration change that changes nothing reports nothing.
    b.sim.set_capacity(16384);
    assert_eq!(b.disk.handle_interrupt(env).capacity, None);
}

#[test]
fn the_interrupt_handler_acknowledges_and_the_driver_acts_on_what_it_noted() {
    let mut b = bench(SimConfig::held(), DeviceKind::Coherent, false);
    let pending: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let handler = b.disk.interrupt_handler(pending).unwrap();
    assert!(
        b.disk.interrupt_handler(pending).is_none(),
        "handed out once"
    );
    let env = &mut b.rig.env();
    // Another device's interrupt on the line: nothing noted.
    handler.handle();
    assert!(!b.disk.interrupt_noted());
    let token = b
        .disk
        .submit(env, Request::Read { lba: 0, sectors: 8 }, Deadline::NEVER)
        .unwrap();
    b.disk.kick(env);
    b.sim.complete_all();
    b.sim.set_capacity(16384);
    // In the interrupt: acknowledged (the line drops), noted, nothing else.
    handler.handle();
    assert_eq!(b.sim.state().interrupt_status, 0);
    assert!(b.disk.interrupt_noted());
    assert_eq!(b.disk.capacity(), 8192);
    assert_eq!(b.disk.dma().stats().unmaps, 0);
    // After it, the driver acts on both causes, without reading the
    // registers again.
    let outcome = b.disk.handle_interrupt(env);
    assert_eq!(outcome.completions.as_slice(), [token]);
    assert_eq!(outcome.capacity.map(|change| change.after), Some(16384));
    assert!(!b.disk.interrupt_noted());
    assert!(b.disk.handle_interrupt(env).completions.is_empty());
    // The registers are the handler's now: a cause it has not seen waits
    // for it.
    b.sim.set_capacity(32768);
    assert_eq!(b.disk.handle_interrupt(env).capacity, None);
    handler.handle();
    assert_eq!(
        b.disk
            .handle_interrupt(env)
            .capacity
            .map(|change| change.after),
        Some(32768)
    );
}

#[test]
fn a_device_that_needs_a_reset_is_failed_and_its_requests_fail_at_once() {
    let config = SimConfig::held();
    let baseline = Rig::new(false).usage();
    let mut b = bench(config, DeviceKind::NonCoherent, false);
    let env = &mut b.rig.env();
    let token = b
        .disk
        .submit(env, Request::Read { lba: 0, sectors: 8 }, Deadline::NEVER)
        .unwrap();
    // The device gives up without returning the request.
    b.sim.need_reset();
    let outcome = b.disk.handle_interrupt(env);
    assert_eq!(outcome.fault, Some(DeviceFault::NeedsReset));
    assert_eq!(outcome.capacity, None);
    assert_ne!(b.sim.state().status & crate::sim::status::FAILED, 0);
    let broken = BlkError::Broken {
        device: DEVICE,
        fault: DeviceFault::NeedsReset,
    };
    // Its request fails now (no deadline would ever end it), once.
    assert_eq!(finish(&mut b.disk, env, token, &mut [0; 4096]), Err(broken));
    assert!(matches!(
        finish(&mut b.disk, env, token, &mut [0; 4096]),
        Err(BlkError::UnknownToken { .. })
    ));
    assert_eq!(
        b.disk.submit(env, Request::Flush, Deadline::NEVER),
        Err(broken)
    );
    // Reported once; the request's memory stays with the device until the
    // reset of shutdown.
    assert_eq!(b.disk.handle_interrupt(env).fault, None);
    b.sim.need_reset();
    assert_eq!(b.disk.handle_interrupt(env).fault, None);
    assert_eq!(b.disk.in_flight(), 1);
    shut_down(b, &baseline);
}

#[test]
fn waiting_for_a_slot_gives_up_after_a_request_timeout() {
    let mut b = bench_with(
        SimConfig::held(),
        DeviceKind::NonCoherent,
        false,
        Options { in_flight: 2 },
    );
    let env = &mut b.rig.env();
    let now = std::cell::Cell::new(0_u64);
    let tokens = [0, 8].map(|lba| {
        b.disk
            .submit(env, Request::Read { lba, sectors: 8 }, Deadline(100))
            .unwrap()
    });
    // A device that never returns them: each wait lets 10 ticks pass.
    let mut waits = 0;
    let result = b.disk.submit_waiting(
        env,
        Request::Flush,
        &mut || now.get(),
        100,
        &mut |disk, env| {
            waits += 1;
            now.set(now.get() + 10);
            disk.poll(env);
            disk.expire(now.get());
        },
    );
    assert_eq!(
        result,
        Err(BlkError::NoFreeSlot {
            device: DEVICE,
            in_flight: 2,
            timed_out: 2
        })
    );
    assert_eq!(waits, 10, "a whole timeout, then no more");
    assert_eq!(
        (b.sim.pending(), b.sim.state().notifications),
        (2, 1),
        "kicked once, before the first wait"
    );
    assert_eq!(
        result.unwrap_err().to_string(),
        "blk /virtio_mmio@a003e00: no request slot came free within a request timeout: the device \
         holds 2 requests, 2 of them timed out"
    );

    // Their owners learn they timed out; a device that returns one late
    // while the caller waits frees its slot, and the request goes in.
    for token in tokens {
        assert!(matches!(
            finish(&mut b.disk, env, token, &mut [0; 4096]),
            Err(BlkError::Timeout { .. })
        ));
    }
    let sim = b.sim.clone();
    let token = b
        .disk
        .submit_waiting(
            env,
            Request::Flush,
            &mut || now.get(),
            100,
            &mut |disk, env| {
                sim.complete(0);
                disk.poll(env);
            },
        )
        .unwrap();
    b.disk.kick(env);
    assert_eq!(b.sim.pending(), 2, "one returned, the flush taken");
    b.sim.complete_all();
    b.disk.poll(env);
    assert!(finish(&mut b.disk, env, token, &mut []).is_ok());
}

#[test]
fn a_device_returning_what_it_was_not_given_is_stopped_and_shutdown_reclaims_all() {
    let config = SimConfig::held();
    let baseline = Rig::new(true).usage();
    let mut b = bench(config, DeviceKind::DynamicPool, true);
    let env = &mut b.rig.env();
    for lba in 0..3 {
        b.disk
            .submit(env, Request::Read { lba, sectors: 8 }, Deadline::NEVER)
            .unwrap();
    }
    b.sim.return_bogus(199);
    assert!(b.disk.handle_interrupt(env).completions.is_empty());
    let fault = DeviceFault::UsedIdOutOfRange { id: 199, size: 128 };
    assert_eq!(b.disk.fault(), Some(fault));
    let error = b
        .disk
        .submit(env, Request::Flush, Deadline::NEVER)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "blk /virtio_mmio@a003e00: device broken: used entry names descriptor 199 of a queue of 128"
    );
    // Three regions still mapped and the ring allocated; shutdown resets the
    // device and gives everything back.
    assert_eq!(b.disk.in_flight(), 3);
    shut_down(b, &baseline);
}

#[test]
fn the_blocking_helpers_stop_waiting_for_a_broken_device() {
    let mut b = bench(SimConfig::held(), DeviceKind::NonCoherent, false);
    let sim = b.sim.clone();
    // The device returns garbage instead of the request, and the driver
    // waits without a deadline.
    let mut clock = move || {
        sim.return_bogus(199);
        1
    };
    let mut buffer = [0; 1024];
    let broken = BlkError::Broken {
        device: DEVICE,
        fault: DeviceFault::UsedIdOutOfRange { id: 199, size: 128 },
    };
    let read = b
        .disk
        .read(&mut b.rig.env(), 0, &mut buffer, &mut clock, u64::MAX);
    assert_eq!(read, Err(broken));
    assert_eq!(b.disk.in_flight(), 1);
    assert_eq!(
        b.disk.flush(&mut b.rig.env(), &mut clock, u64::MAX),
        Err(broken)
    );
}

#[test]
fn the_driver_survives_the_wrap_of_its_16_bit_ring_indices() {
    let mut config = SimConfig::modern();
    config.queue_num_max = 4;
    let mut b = bench(config, DeviceKind::Coherent, false);
    let env = &mut b.rig.env();
    for round in 0..70_000_u32 {
        let token = b.disk.submit(env, Request::Flush, Deadline::NEVER).unwrap();
        b.disk.kick(env);
        assert_eq!(b.disk.poll(env).as_slice(), [token], "round {round}");
        finish(&mut b.disk, env, token, &mut []).unwrap();
    }
    assert_eq!(b.disk.stats().flushes, 70_000);
    assert_eq!(b.sim.state().flushes, 70_000);
}

/// The outer-shareable barriers a device that is not a CPU needs: a
/// `DmaWrite` per submission (before `avail.idx`), a `DmaFull` per kick
/// (before reading `VIRTQ_USED_F_NO_NOTIFY`, and before `QueueNotify`: the
/// simulated device refuses a notify without a barrier since the last
/// register write), and `DmaRead`s after an interrupt's causes and after
/// each `used.idx` that publishes entries.
#[test]
fn the_ring_is_ordered_for_the_device_by_the_transport_barriers() {
    // The simulated device completes each request when notified.
    let mut b = bench(SimConfig::modern(), DeviceKind::DynamicPool, true);
    let barriers = |b: &Bench| {
        let s = b.sim.state();
        (s.write_barriers, s.read_barriers, s.full_barriers)
    };
    let before = barriers(&b);
    let token = b
        .disk
        .submit(
            &mut b.rig.env(),
            Request::Read { lba: 0, sectors: 1 },
            Deadline::NEVER,
        )
        .unwrap();
    assert_eq!(barriers(&b), (before.0 + 1, before.1, before.2));
    b.disk.kick(&mut b.rig.env());
    assert_eq!(barriers(&b), (before.0 + 1, before.1, before.2 + 1));
    let outcome = b.disk.handle_interrupt(&mut b.rig.env());
    assert_eq!(outcome.completions.as_slice(), [token]);
    assert_eq!(barriers(&b), (before.0 + 1, before.1 + 2, before.2 + 1));
    finish(&mut b.disk, &mut b.rig.env(), token, &mut [0; SECTOR_BYTES]).unwrap();
    // Polling has no interrupt cause to order after: the used index's only.
    let token = b
        .disk
        .submit(
            &mut b.rig.env(),
            Request::Read { lba: 0, sectors: 1 },
            Deadline::NEVER,
        )
        .unwrap();
    b.disk.kick(&mut b.rig.env());
    assert_eq!(b.disk.poll(&mut b.rig.env()).as_slice(), [token]);
    assert_eq!(barriers(&b), (before.0 + 2, before.1 + 3, before.2 + 2));
}

/// A batch of submissions costs one `QueueNotify`, written by the kick that
/// ends it: the device (which looks at its queue only when notified) sees
/// none of it before, all of it after; a kick with nothing new writes
/// nothing; the blocking helpers notify once per batch too.
#[test]
fn a_batch_of_submissions_is_one_notification() {
    let mut b = bench(SimConfig::modern(), DeviceKind::DynamicPool, true);
    fill_disk(&b.sim, 3);
    let env = &mut b.rig.env();
    let tokens: Vec<Token> = (0..16)
        .map(|i| {
            b.disk
                .submit(
                    env,
                    Request::Read {
                        lba: 8 * i,
                        sectors: 8,
                    },
                    Deadline::NEVER,
                )
                .unwrap()
        })
        .collect();
    assert_eq!(b.sim.state().notifications, 0);
    assert!(
        b.sim.state().reads_at.is_empty(),
        "the device has not looked"
    );
    assert!(b.disk.poll(env).is_empty());
    b.disk.kick(env);
    assert_eq!(b.sim.state().notifications, 1);
    assert_eq!(b.disk.poll(env).as_slice(), tokens);
    b.disk.kick(env);
    assert_eq!(
        b.sim.state().notifications,
        1,
        "nothing new, no notification"
    );
    let mut buffer = [0; 4096];
    for (i, token) in (0..).zip(tokens) {
        finish(&mut b.disk, env, token, &mut buffer).unwrap();
        verify(3, 8 * i, &buffer);
    }
    // Eight requests of 256 KiB, one batch.
    let mut big = vec![0; 2 << 20];
    b.disk.read(env, 0, &mut big, &mut ticking(), 10).unwrap();
    verify(3, 0, &big);
    assert_eq!(b.sim.state().notifications, 2);
    assert_eq!(b.disk.stats().notifies, 2, "counted");
}

/// A waiter never waits on a request the device was not told about:
/// `submit_waiting` kicks before it waits. The requests holding both slots
/// were only published, and the device looks at its queue only when
/// notified: without the kick, the wait (which, like the kernel's, only
/// takes what came back, here finishing it) would last until the slot
/// timeout and fail with `NoFreeSlot`.
#[test]
fn a_waiter_for_a_slot_kicks_the_requests_holding_the_slots_first() {
    let mut b = bench_with(
        SimConfig::modern(),
        DeviceKind::NonCoherent,
        false,
        Options { in_flight: 2 },
    );
    let env = &mut b.rig.env();
    let held = [0, 8].map(|lba| {
        b.disk
            .submit(env, Request::Read { lba, sectors: 8 }, Deadline::NEVER)
            .unwrap()
    });
    let now = std::cell::Cell::new(0_u64);
    let mut waits = 0;
    let mut ready = Vec::new();
    let token = b
        .disk
        .submit_waiting(
            env,
            Request::Read {
                lba: 16,
                sectors: 8,
            },
            &mut || now.get(),
            100,
            &mut |disk, env| {
                waits += 1;
                now.set(now.get() + 10);
                // What came back is finished, which frees its slot.
                for &token in &disk.poll(env) {
                    assert!(matches!(
                        disk.finish(env, token, &mut |_| {}),
                        Poll::Ready(Ok(_))
                    ));
                    ready.push(token);
                }
            },
        )
        .unwrap();
    assert_eq!((waits, b.sim.state().notifications), (1, 1));
    assert_eq!(ready, held);
    b.disk.kick(env);
    assert_eq!(b.disk.poll(env).as_slice(), [token]);
}

/// A device that set `VIRTQ_USED_F_NO_NOTIFY` (it polls its queue) is not
/// notified; once it clears the flag, it is again.
#[test]
fn a_device_that_asks_not_to_be_notified_is_not() {
    let mut b = bench(SimConfig::modern(), DeviceKind::Coherent, false);
    let env = &mut b.rig.env();
    b.sim.suppress_notifications(true);
    let token = b
        .disk
        .submit(env, Request::Read { lba: 0, sectors: 8 }, Deadline::NEVER)
        .unwrap();
    b.disk.kick(env);
    assert_eq!(b.sim.state().notifications, 0);
    b.sim.look();
    assert_eq!(b.disk.poll(env).as_slice(), [token]);
    b.sim.suppress_notifications(false);
    let token = b
        .disk
        .submit(env, Request::Read { lba: 0, sectors: 8 }, Deadline::NEVER)
        .unwrap();
    b.disk.kick(env);
    assert_eq!(b.sim.state().notifications, 1);
    assert_eq!(b.disk.stats().notifies, 1, "counted");
    assert_eq!(b.disk.poll(env).as_slice(), [token]);
}

/// A pool device's request regions are allocated once, at setup: one per
/// slot, each for the largest request, as many as its pool holds. A request
/// neither allocates from the pool nor waits for room in it (a sixth waits
/// for a slot), and shutdown gives every region back.
#[test]
fn a_pool_device_has_a_region_per_slot_allocated_once_at_setup() {
    const PAGE: u64 = 4096;
    let mut rig = Rig::new(true);
    let baseline = rig.usage();
    // Another allocation leaves room for the ring (two pages) and five
    // regions of 65 pages.
    let mut other = rig.dma_device_named(DeviceKind::DynamicPool, "/other");
    let taken = other
        .alloc_in_pool(&mut rig.env(), DYNAMIC_PHYS.size - (2 + 5 * 65) * PAGE)
        .unwrap();
    let sim = Sim::new(SimConfig::modern(), rig.map);
    let mut disk = crate::init(
        &mut rig,
        &sim,
        DeviceKind::DynamicPool,
        Options { in_flight: 16 },
    )
    .unwrap();
    assert_eq!(disk.slots(), 5);
    let set_up = rig.usage();
    fill_disk(&sim, 4);
    for round in 0..3_u64 {
        let env = &mut rig.env();
        let tokens: Vec<Token> = (0..5)
            .map(|i| {
                let request = if i % 2 == 0 {
                    Request::Read {
                        lba: 512 * i,
                        sectors: 512,
                    }
                } else {
                    Request::Read {
                        lba: 8 * i,
                        sectors: 8,
                    }
                };
                disk.submit(env, request, Deadline::NEVER).unwrap()
            })
            .collect();
        assert!(matches!(
            disk.submit(env, Request::Read { lba: 0, sectors: 8 }, Deadline::NEVER),
            Err(BlkError::QueueFull { .. })
        ));
        assert_eq!(
            rig.usage(),
            set_up,
            "round {round}: in flight, nothing allocated"
        );
        let env = &mut rig.env();
        disk.kick(env);
        assert_eq!(disk.poll(env).as_slice(), tokens, "round {round}");
        for (i, token) in (0..).zip(tokens) {
            let lba = if i % 2 == 0 { 512 * i } else { 8 * i };
            let done = disk.finish(env, token, &mut |bytes| verify(4, lba, bytes));
            assert!(matches!(done, Poll::Ready(Ok(_))));
        }
        assert_eq!(
            rig.usage(),
            set_up,
            "round {round}: finished, nothing freed"
        );
    }
    disk.shutdown(&mut rig.env()).unwrap();
    other.free_in_pool(&mut rig.env(), taken).unwrap();
    assert_eq!(rig.usage(), baseline);
}

#[test]
fn with_interrupts_off_completions_raise_none_and_polling_finds_them() {
    for kind in [DeviceKind::Coherent, DeviceKind::DynamicPool] {
        let mut b = bench(SimConfig::held(), kind, false);
        let env = &mut b.rig.env();
        let mut round = |disk: &mut BlockDevice<'static, Sim>, interrupts: bool| {
            BlockDriver::set_interrupts(disk, interrupts);
            let token = disk
                .submit(env, Request::Read { lba: 8, sectors: 8 }, Deadline::NEVER)
                .unwrap();
            disk.kick(env);
            b.sim.complete_all();
            let raised = b.sim.with(|s| core::mem::take(&mut s.interrupt_status));
            assert!(disk.has_completions(), "the used ring shows it either way");
            assert_eq!(disk.poll(env).as_slice(), [token]);
            assert!(finish(disk, env, token, &mut [0; 4096]).is_ok());
            raised
        };
        assert_eq!(round(&mut b.disk, false), 0, "{kind:?}: no interrupt");
        assert_eq!(round(&mut b.disk, true), 1, "{kind:?}: interrupts back on");
        assert_eq!(round(&mut b.disk, false), 0, "{kind:?}: off again");
    }
}

#[test]
fn a_full_queue_or_pool_is_full_and_busy_only_while_requests_are_in_flight() {
    // The queue: two slots, both in flight.
    let mut b = bench_with(
        SimConfig::held(),
        DeviceKind::NonCoherent,
        false,
        Options { in_flight: 2 },
    );
    let env = &mut b.rig.env();
    let read = Request::Read { lba: 0, sectors: 8 };
    let tokens = [0, 1].map(|_| b.disk.submit(env, read, Deadline::NEVER).unwrap());
    let full = b.disk.submit(env, read, Deadline::NEVER).unwrap_err();
    assert!(matches!(full, BlkError::QueueFull { .. }), "{full:?}");
    assert!(b.disk.is_full(&full) && b.disk.is_busy(&full));
    b.disk.kick(env);
    // Refusals that waiting or finishing cannot cure are neither.
    let beyond = Request::Read {
        lba: b.disk.capacity(),
        sectors: 1,
    };
    for refused in [
        b.disk.submit(env, beyond, Deadline::NEVER).unwrap_err(),
        b.disk
            .submit(env, Request::Read { lba: 0, sectors: 0 }, Deadline::NEVER)
            .unwrap_err(),
    ] {
        assert!(
            !b.disk.is_full(&refused) && !b.disk.is_busy(&refused),
            "{refused:?}"
        );
    }
    b.sim.complete_all();
    b.disk.poll(env);
    // Returned but not finished: still full, and waiting cannot help.
    let held = b.disk.submit(env, read, Deadline::NEVER).unwrap_err();
    assert!(b.disk.is_full(&held) && !b.disk.is_busy(&held), "{held:?}");
    for token in tokens {
        assert!(finish(&mut b.disk, env, token, &mut [0; 4096]).is_ok());
    }

    // The pool: each slot has its region, so a full pool device is a full
    // queue, never an exhausted pool.
    let mut b = bench_with(
        SimConfig::held(),
        DeviceKind::DynamicPool,
        false,
        Options { in_flight: 21 },
    );
    let env = &mut b.rig.env();
    let sectors = b.disk.max_request_bytes() / SECTOR_BYTES as u32;
    let big = Request::Read { lba: 0, sectors };
    let mut tokens = Vec::new();
    let exhausted = loop {
        match b.disk.submit(env, big, Deadline::NEVER) {
            Ok(token) => tokens.push(token),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(exhausted, BlkError::QueueFull { .. }) && tokens.len() == 21,
        "{exhausted:?} after {}",
        tokens.len()
    );
    assert!(b.disk.is_full(&exhausted) && b.disk.is_busy(&exhausted));
    b.disk.kick(env);
    // Returned but not finished: the regions stay taken. Waiting cannot
    // help; finishing one does.
    b.sim.complete_all();
    assert_eq!(b.disk.poll(env).len(), tokens.len());
    assert_eq!(b.disk.in_flight(), 0);
    let held = b.disk.submit(env, big, Deadline::NEVER).unwrap_err();
    assert!(b.disk.is_full(&held) && !b.disk.is_busy(&held), "{held:?}");
    let mut buffer = vec![0; sectors as usize * SECTOR_BYTES];
    assert!(finish(&mut b.disk, env, tokens.remove(0), &mut buffer).is_ok());
    tokens.push(b.disk.submit(env, big, Deadline::NEVER).unwrap());
}

/// A virtio disk is beside the CPU and answers in milliseconds: its
/// requests may take the block layer's `REQUEST_TIMEOUT` (5 s), the bound
/// the kernel's waiter also spins for (a Xen PV disk says 30 s).
#[test]
fn a_virtio_disk_takes_the_block_layers_request_timeout() {
    let b = bench(SimConfig::modern(), DeviceKind::Coherent, false);
    assert_eq!(b.disk.request_timeout(), tidepool_block::REQUEST_TIMEOUT);
    assert_eq!(
        tidepool_block::REQUEST_TIMEOUT,
        core::time::Duration::from_secs(5)
    );
}
