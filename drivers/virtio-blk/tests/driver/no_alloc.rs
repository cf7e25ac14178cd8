//! Nothing on the I/O path touches the heap: allocations of this thread are
//! counted around submission, completion (interrupt and polling), expiry,
//! finishing, the error paths and the blocking helpers.

use core::task::Poll;

use tidepool_block::ExtentError;
use tidepool_virtio_blk::{BlkError, Deadline, MAX_IN_FLIGHT, Options, Request, Token};

use crate::bench_with;
use crate::host::{DeviceKind, allocations};
use crate::sim::{S_IOERR, SimConfig};

#[test]
fn the_io_path_does_not_allocate() {
    for kind in [
        DeviceKind::DynamicPool,
        DeviceKind::StaticPool,
        DeviceKind::NonCoherent,
        DeviceKind::Coherent,
    ] {
        let mut b = bench_with(
            SimConfig::held(),
            kind,
            true,
            Options {
                in_flight: MAX_IN_FLIGHT,
            },
        );
        b.sim.with(|s| s.errors.push((500, S_IOERR)));
        // Two of the largest requests, for the split read below.
        let mut buffer = vec![0; 512 * 1024];
        let data = vec![0xa5; 8192];
        let sim = b.sim.clone();
        let mut now = 0;
        // Time passes, and the device works.
        let mut clock = move || {
            sim.complete_all();
            now += 1;
            now
        };

        let before = allocations();
        for _ in 0..3 {
            let env = &mut b.rig.env();
            let mut tokens = [None::<Token>; MAX_IN_FLIGHT];
            for (i, token) in tokens.iter_mut().enumerate() {
                let lba = 8 * i as u64;
                let request = match i % 3 {
                    0 => Request::Read { lba, sectors: 8 },
                    1 => Request::Write {
                        lba,
                        data: &data[..4096],
                    },
                    _ => Request::Flush,
                };
                *token = Some(b.disk.submit(env, request, Deadline::NEVER).unwrap());
            }
            // Refusals build their errors without the heap.
            let full = b.disk.submit(env, Request::Flush, Deadline::NEVER);
            assert!(matches!(full, Err(BlkError::QueueFull { .. })));
            let beyond = b.disk.submit(
                env,
                Request::Read {
                    lba: 1 << 40,
                    sectors: 1,
                },
                Deadline::NEVER,
            );
            assert!(matches!(
                beyond,
                Err(BlkError::Extent {
                    error: ExtentError::BeyondDisk { .. },
                    ..
                })
            ));
            b.disk.kick(env);
            // Completed newest first, half by interrupt, half by polling.
            for _ in 0..MAX_IN_FLIGHT / 2 {
                b.sim.complete(b.sim.pending() - 1);
            }
            assert!(!b.disk.handle_interrupt(env).completions.is_empty());
            b.sim.complete_all();
            assert!(!b.disk.poll(env).is_empty());
            for (i, token) in tokens.iter().enumerate() {
                let read_into = if i % 3 == 0 {
                    &mut buffer[..4096]
                } else {
                    &mut buffer[..0]
                };
                assert!(matches!(
                    b.disk.finish(env, token.unwrap(), &mut |bytes| read_into
                        .copy_from_slice(bytes)),
                    Poll::Ready(Ok(_))
                ));
            }
            // A device error, and a timeout.
            let failing = b
                .disk
                .submit(
                    env,
                    Request::Read {
                        lba: 500,
                        sectors: 1,
                    },
                    Deadline::NEVER,
                )
                .unwrap();
            let late = b
                .disk
                .submit(
                    env,
                    Request::Read {
                        lba: 501,
                        sectors: 1,
                    },
                    Deadline(0),
                )
                .unwrap();
            b.disk.kick(env);
            assert_eq!(b.disk.expire(0).len(), 1);
            b.sim.complete_all();
            b.disk.poll(env);
            assert!(matches!(
                b.disk.finish(env, failing, &mut |_| {}),
                Poll::Ready(Err(BlkError::Device { .. }))
            ));
            assert!(matches!(
                b.disk.finish(env, late, &mut |_| {}),
                Poll::Ready(Err(BlkError::Timeout { .. }))
            ));
            // The blocking helpers: a split read, a write and a flush.
            b.disk.read(env, 1000, &mut buffer, &mut clock, 10).unwrap();
            b.disk.write(env, 2000, &data, &mut clock, 10).unwrap();
            b.disk.flush(env, &mut clock, 10).unwrap();
        }
        let after = allocations();
        assert_eq!(after - before, 0, "{kind:?}");

        // The paths ran.
        let stats = *b.disk.stats();
        assert_eq!((stats.errors, stats.timeouts), (3, 3));
        assert_eq!(stats.reads, 3 * (MAX_IN_FLIGHT.div_ceil(3) as u64 + 2));
        assert!(b.disk.dma().stats().maps > 0);
        if kind == DeviceKind::DynamicPool {
            assert!(b.disk.dma().stats().hypercalls > 0);
        }
    }
}
