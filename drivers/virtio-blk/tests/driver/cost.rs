//! What a request costs in syncs, cache maintenance and hypercalls, for
//! every kind of device, through the real DMA layer.

use core::task::Poll;

use tidepool_dma::CacheOp;
use tidepool_mm::{PhysRange, VirtAddr};
use tidepool_virtio_blk::{Deadline, Request};

use crate::host::{DYNAMIC_PHYS, DeviceKind, NC_PHYS, STATIC_PHYS, VaOp};
use crate::sim::SimConfig;
use crate::{Bench, bench};

/// Bytes of a request's region: header, data, status.
const fn region(data: u64) -> u64 {
    16 + data + 1
}

/// What one request did: hypercalls made by the time it was submitted, all
/// its hypercalls, and its maintenance by VA.
struct Cost {
    hypercalls_at_submit: usize,
    hypercalls: Vec<(CacheOp, PhysRange)>,
    va_ops: Vec<VaOp>,
}

fn one_request(b: &mut Bench, request: Request<'_>, read_into: &mut [u8]) -> Cost {
    b.rig.forget();
    let token = b
        .disk
        .submit(&mut b.rig.env(), request, Deadline::NEVER)
        .unwrap();
    let hypercalls_at_submit = b.rig.hypercalls().len();
    let env = &mut b.rig.env();
    assert_eq!(b.disk.handle_interrupt(env).completions.as_slice(), [token]);
    assert!(matches!(
        b.disk
            .finish(env, token, &mut |bytes| read_into.copy_from_slice(bytes)),
        Poll::Ready(Ok(_))
    ));
    Cost {
        hypercalls_at_submit,
        hypercalls: b.rig.hypercalls().to_vec(),
        va_ops: b.rig.cache.ops.clone(),
    }
}

/// The ring's physical range (two pages for 64 entries).
fn ring(b: &Bench) -> PhysRange {
    PhysRange::new(b.sim.state().desc, 0x2000)
}

/// Where the CPU reaches the ring: its pool's window.
fn ring_window(b: &Bench) -> VirtAddr {
    b.rig.map.window_address(ring(b).base).unwrap()
}

/// `ops` split into those on the ring (at `ring`) and the others.
fn split_ring(ops: &[VaOp], ring: VirtAddr) -> (Vec<VaOp>, Vec<VaOp>) {
    ops.iter()
        .partition(|(_, va, _)| (ring.0..ring.0 + 0x2000).contains(&va.0))
}

/// The used ring's syncs for the CPU when an interrupt brings back the
/// `n`-th request: `used.idx`, the one entry it publishes, `used.idx`
/// again (nothing more came back). Each an invalidate through the window
/// of just those bytes (so of their lines), never a hypercall.
fn used_ring_syncs(ring: VirtAddr, n: u64) -> Vec<VaOp> {
    let used = ring.0 + 0x1000;
    vec![
        (CacheOp::Invalidate, VirtAddr(used + 2), 2),
        (CacheOp::Invalidate, VirtAddr(used + 4 + 8 * (n % 64)), 8),
        (CacheOp::Invalidate, VirtAddr(used + 2), 2),
    ]
}

#[test]
fn a_4k_read_through_a_pool_xen_flushes_costs_one_hypercall() {
    let mut b = bench(SimConfig::modern(), DeviceKind::DynamicPool, true);
    let ring = ring(&b);
    let window = ring_window(&b);
    assert!(
        DYNAMIC_PHYS.contains(ring.base),
        "the ring is in the device's pool"
    );
    let mut buffer = [0; 4096];
    const REQUESTS: u64 = 10;
    for i in 0..REQUESTS {
        let cost = one_request(
            &mut b,
            Request::Read {
                lba: i * 8,
                sectors: 8,
            },
            &mut buffer,
        );
        // Exactly one hypercall, made at completion (the unmap's ForCpu
        // sync): an invalidate of the whole region (two pages, one batch)
        // in the pool, dropping lines Xen's directmap may have allocated
        // while the device wrote. Submission needs none: the pool holds no
        // dirty line and the device reads what the bounce copy wrote.
        assert_eq!(
            (cost.hypercalls_at_submit, cost.hypercalls.len()),
            (0, 1),
            "request {i}"
        );
        let (op, range) = cost.hypercalls[0];
        assert_eq!((op, range.size), (CacheOp::Invalidate, region(4096)));
        assert!(DYNAMIC_PHYS.contains(range.base) && !range.overlaps(&ring));
        // By VA, only the used ring's lines, invalidated before the CPU
        // reads what the device wrote there (Xen's directmap may hold stale
        // lines of it).
        assert_eq!(cost.va_ops, used_ring_syncs(window, i), "request {i}");
    }
    // A write and a flush cost the same.
    let data = [0x5a; 4096];
    let write = one_request(
        &mut b,
        Request::Write {
            lba: 0,
            data: &data,
        },
        &mut [],
    );
    assert_eq!((write.hypercalls_at_submit, write.hypercalls.len()), (0, 1));
    let flush = one_request(&mut b, Request::Flush, &mut []);
    assert_eq!((flush.hypercalls_at_submit, flush.hypercalls.len()), (0, 1));
    assert_eq!(flush.hypercalls[0].1.size, region(0));
    // Per request: one map and one unmap, two sync points, one hypercall.
    let stats = *b.disk.dma().stats();
    let requests = REQUESTS + 2;
    assert_eq!(
        (stats.maps, stats.unmaps, stats.syncs),
        (requests, requests, 2 * requests)
    );
    assert_eq!(
        (stats.hypercalls, stats.pages),
        (requests, 2 * REQUESTS + 2 + 1)
    );
    assert_eq!((stats.refusals, stats.fallbacks, stats.va_ops), (0, 0, 0));
    // Requests are built in the pool: nothing is bounced in or out.
    assert_eq!(stats.bounced, 0);
    // Two sync points to publish (for the device: nothing, the device does
    // not snoop), three to take back, and the new ring's at setup.
    assert_eq!(
        (stats.coherent_syncs, stats.coherent_va_ops),
        (5 * requests + 1, 3 * requests)
    );
}

#[test]
fn the_largest_request_is_one_hypercall_of_65_pages() {
    let mut b = bench(SimConfig::modern(), DeviceKind::DynamicPool, true);
    let max = b.disk.max_request_bytes();
    assert_eq!(max, 256 * 1024);
    let mut buffer = vec![0; max as usize];
    let cost = one_request(
        &mut b,
        Request::Read {
            lba: 0,
            sectors: max / 512,
        },
        &mut buffer,
    );
    assert_eq!(cost.hypercalls.len(), 1, "one batch for the whole region");
    assert_eq!(cost.hypercalls[0].1.size, region(u64::from(max)));
    let stats = *b.disk.dma().stats();
    assert_eq!((stats.hypercalls, stats.pages), (1, 65));
}

#[test]
fn a_pool_xen_refuses_is_maintained_through_its_window_without_hypercalls() {
    let mut b = bench(SimConfig::modern(), DeviceKind::StaticPool, true);
    let window = b
        .rig
        .pools
        .iter()
        .find(|p| p.phys() == STATIC_PHYS)
        .unwrap()
        .window();
    let ring = ring_window(&b);
    let mut buffer = [0; 4096];
    for i in 0..4 {
        let cost = one_request(
            &mut b,
            Request::Read {
                lba: i * 8,
                sectors: 8,
            },
            &mut buffer,
        );
        assert_eq!(
            cost.hypercalls,
            [],
            "the refusal was learned once, at setup"
        );
        // Nothing for the device; one invalidate of the region through the
        // window for the CPU, after the device wrote; and the used ring's.
        let (ring_ops, region_ops) = split_ring(&cost.va_ops, ring);
        assert_eq!(ring_ops, used_ring_syncs(ring, i));
        let [(op, va, len)] = region_ops[..] else {
            panic!("{:?}", cost.va_ops);
        };
        assert_eq!((op, len), (CacheOp::Invalidate, region(4096)));
        assert!(va.0 >= window.0 && va.0 + len <= window.0 + STATIC_PHYS.size);
    }
    let stats = *b.disk.dma().stats();
    assert_eq!(
        (stats.syncs, stats.fallbacks, stats.va_ops, stats.hypercalls),
        (8, 4, 4, 0)
    );
}

#[test]
fn a_non_coherent_device_without_pool_maintains_its_staging_region_by_linear_va() {
    let mut b = bench(SimConfig::modern(), DeviceKind::NonCoherent, true);
    assert!(
        NC_PHYS.contains(ring(&b).base),
        "the ring is in the kernel's NC pool"
    );
    let ring = ring_window(&b);
    let mut buffer = [0; 4096];
    let mut regions = Vec::new();
    for i in 0..3 {
        let cost = one_request(
            &mut b,
            Request::Read {
                lba: i * 8,
                sectors: 8,
            },
            &mut buffer,
        );
        assert_eq!(cost.hypercalls, [], "linear RAM is never flushed by Xen");
        let (ring_ops, region_ops) = split_ring(&cost.va_ops, ring);
        assert_eq!(ring_ops, used_ring_syncs(ring, i));
        let [(first, va, len), second] = region_ops[..] else {
            panic!("{:?}", cost.va_ops);
        };
        assert_eq!((first, len), (CacheOp::CleanInvalidate, region(4096)));
        assert_eq!(second, (CacheOp::Invalidate, va, len));
        // The region is the staging buffer itself: ordinary heap memory.
        assert!(b.rig.map.virt_to_phys(va).is_ok_and(|pa| pa.0 == va.0));
        regions.push(va);
    }
    // One slot is reused while it is the only free one... or another: any
    // staging region is page-aligned.
    assert!(
        regions
            .iter()
            .all(|va: &VirtAddr| va.0.is_multiple_of(4096))
    );
}

#[test]
fn a_coherent_device_costs_no_maintenance() {
    let mut b = bench(SimConfig::modern(), DeviceKind::Coherent, true);
    let mut buffer = [0; 4096];
    let cost = one_request(&mut b, Request::Read { lba: 0, sectors: 8 }, &mut buffer);
    assert_eq!((cost.hypercalls, cost.va_ops), (vec![], vec![]));
    let stats = b.disk.dma().stats();
    assert_eq!((stats.syncs, stats.coherent_va_ops), (2, 0));
}

/// A coherent device whose ring is in a no-map pool under Xen snoops the
/// cache, so the ring is invalidated for the device where the driver wrote
/// it: the descriptors and available ring before `avail.idx` is written,
/// then `avail.idx`; nothing before the CPU reads (the device's writes
/// update any line). Still no hypercall for the ring.
#[test]
fn a_coherent_device_with_a_pool_under_xen_gets_its_ring_invalidated_for_it() {
    let mut b = bench(SimConfig::modern(), DeviceKind::CoherentPool, true);
    let ring = ring_window(&b);
    let mut buffer = [0; 4096];
    for i in 0..3 {
        let cost = one_request(
            &mut b,
            Request::Read {
                lba: i * 8,
                sectors: 8,
            },
            &mut buffer,
        );
        let (ring_ops, region_ops) = split_ring(&cost.va_ops, ring);
        // A queue of 128: 16-byte descriptors, then the available ring.
        let (descriptors, avail) = (128 * 16, 4 + 128 * 2 + 2);
        assert_eq!(
            ring_ops,
            [
                (CacheOp::Invalidate, ring, descriptors + avail),
                (CacheOp::Invalidate, VirtAddr(ring.0 + descriptors + 2), 2),
            ]
        );
        assert_eq!(region_ops, []);
        // The region's one invalidate, for the device, at submission.
        assert_eq!((cost.hypercalls_at_submit, cost.hypercalls.len()), (1, 1));
    }
}
