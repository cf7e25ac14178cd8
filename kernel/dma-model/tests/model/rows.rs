//! The real DMA layer on the model, for every row of the policy table and
//! every direction, with random steps and a random adversary.

use crate::world::{Case, PoolKind, Row, Step, Xen, run};
use proptest::prelude::*;
use tidepool_dma::DmaDirection;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(at, len)| Step::CpuWrite { at, len }),
        (any::<u16>(), any::<u16>()).prop_map(|(at, len)| Step::DeviceWrite { at, len }),
        Just(Step::DeviceRead),
        Just(Step::SyncForCpu),
        Just(Step::SyncForDevice),
        Just(Step::CpuRead),
        any::<u8>().prop_map(Step::Chaos),
        Just(Step::FillAll),
        Just(Step::WriteBackAll),
        Just(Step::Remap),
    ]
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        0u16..128,
        1u16..0x2000,
        prop::collection::vec(step(), 0..24),
        prop::collection::vec(any::<u16>(), 0..48),
        any::<bool>(),
    )
        .prop_map(|(offset, len, steps, chaos, non_cacheable_hits)| Case {
            offset,
            len,
            steps,
            chaos,
            non_cacheable_hits,
        })
}

macro_rules! rows {
    ($($name:ident: $row:expr;)*) => {$(
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig {
                    cases: 48,
                    failure_persistence: None,
                    ..ProptestConfig::default()
                })]
                #[test]
                fn to_device(case in case()) {
                    prop_assert_eq!(run($row, DmaDirection::ToDevice, &case), Ok(()));
                }
                #[test]
                fn from_device(case in case()) {
                    prop_assert_eq!(run($row, DmaDirection::FromDevice, &case), Ok(()));
                }
                #[test]
                fn bidirectional(case in case()) {
                    prop_assert_eq!(run($row, DmaDirection::Bidirectional, &case), Ok(()));
                }
            }
        }
    )*};
}

const fn row(coherent: bool, pool: PoolKind, xen: Xen) -> Row {
    Row {
        coherent,
        pool,
        xen,
    }
}

rows! {
    coherent_linear_bare: row(true, PoolKind::None, Xen::Bare);
    coherent_linear_xen: row(true, PoolKind::None, Xen::Accepted);
    coherent_nc_pool_bare: row(true, PoolKind::NoMapNc, Xen::Bare);
    coherent_nc_pool_xen_accepted: row(true, PoolKind::NoMapNc, Xen::Accepted);
    coherent_nc_pool_xen_refused: row(true, PoolKind::NoMapNc, Xen::Refused);
    linear_bare: row(false, PoolKind::None, Xen::Bare);
    linear_xen: row(false, PoolKind::None, Xen::Accepted);
    mapped_pool_xen: row(false, PoolKind::Mapped, Xen::Accepted);
    nc_pool_bare: row(false, PoolKind::NoMapNc, Xen::Bare);
    nc_pool_xen_accepted: row(false, PoolKind::NoMapNc, Xen::Accepted);
    nc_pool_xen_refused: row(false, PoolKind::NoMapNc, Xen::Refused);
    nc_pool_xen_refused_after_probe: row(false, PoolKind::NoMapNc, Xen::RefusedAfterProbe);
    coherent_nc_pool_xen_refused_after_probe: row(true, PoolKind::NoMapNc, Xen::RefusedAfterProbe);
    nc_pool_xen_not_direct_mapped: row(false, PoolKind::NoMapNc, Xen::NotDirectMapped);
    wb_pool_bare: row(false, PoolKind::NoMapWb, Xen::Bare);
    wb_pool_xen_accepted: row(false, PoolKind::NoMapWb, Xen::Accepted);
}

/// The bench's promise: at most one `GNTTABOP_cache_flush` per request
/// through a pool Xen flushes, whatever the direction and the device (a
/// virtio-blk request is one bidirectional mapping of header, data and
/// status).
#[test]
fn at_most_one_flush_hypercall_per_request() {
    for coherent in [false, true] {
        let row = row(coherent, PoolKind::NoMapNc, Xen::Accepted);
        for dir in [
            DmaDirection::ToDevice,
            DmaDirection::FromDevice,
            DmaDirection::Bidirectional,
        ] {
            let calls = crate::world::hypercalls_per_request(row, dir, 0x3000);
            let expected = u64::from(coherent || dir.device_writes());
            assert_eq!(calls, expected, "{row:?} {dir:?}");
        }
    }
}

macro_rules! coherent_allocations {
    ($($name:ident: $row:expr;)*) => {
        mod coherent_allocation {
            use super::*;
            // More cases than the streaming rows: a run is cheap, and the
            // hazard needs five steps in order across ownership changes.
            $(proptest! {
                #![proptest_config(ProptestConfig {
                    cases: 256,
                    failure_persistence: None,
                    ..ProptestConfig::default()
                })]
                #[test]
                fn $name(case in case()) {
                    prop_assert_eq!(crate::world::run_coherent($row, &case), Ok(()));
                }
            })*
        }
    };
}

// Coherent allocations, with the ring's sync points (`sync_coherent` after
// the device wrote and before the CPU reads, after the CPU wrote and before
// the device reads), in every row a coherent allocation can be in.
coherent_allocations! {
    coherent_linear_bare: row(true, PoolKind::None, Xen::Bare);
    coherent_linear_xen: row(true, PoolKind::None, Xen::Accepted);
    coherent_nc_pool_bare: row(true, PoolKind::NoMapNc, Xen::Bare);
    coherent_nc_pool_xen_accepted: row(true, PoolKind::NoMapNc, Xen::Accepted);
    coherent_nc_pool_xen_refused: row(true, PoolKind::NoMapNc, Xen::Refused);
    kernel_nc_pool_bare: row(false, PoolKind::None, Xen::Bare);
    kernel_nc_pool_xen: row(false, PoolKind::None, Xen::Accepted);
    nc_pool_bare: row(false, PoolKind::NoMapNc, Xen::Bare);
    nc_pool_xen_accepted: row(false, PoolKind::NoMapNc, Xen::Accepted);
    nc_pool_xen_refused: row(false, PoolKind::NoMapNc, Xen::Refused);
    nc_pool_xen_not_direct_mapped: row(false, PoolKind::NoMapNc, Xen::NotDirectMapped);
}

/// The hazard the ring's sync point closes, with and without the call: a
/// coherent allocation of a non-coherent device (a virtio ring) is
/// non-cacheable memory, and under Xen the directmap may allocate a line of
/// it before the device writes (the used ring); a non-cacheable read that
/// hits that line sees the old data. With `sync_coherent(ForCpu)` between
/// the device's write and the CPU's read the line is gone; a driver that
/// leaves the call out reads the stale line. Never a hypercall, in either
/// pool kind.
#[test]
fn coherent_allocation_of_a_non_coherent_device_under_xen_is_invalidated_for_the_cpu() {
    let case = Case {
        offset: 0,
        len: 64,
        steps: vec![
            Step::SyncForDevice,
            Step::FillAll,
            Step::DeviceWrite { at: 0, len: 64 },
            Step::SyncForCpu,
            Step::CpuRead,
        ],
        chaos: Vec::new(),
        non_cacheable_hits: true,
    };
    for pool in [PoolKind::None, PoolKind::NoMapNc] {
        for xen in [Xen::Accepted, Xen::Refused, Xen::NotDirectMapped] {
            if pool == PoolKind::None && xen == Xen::Refused {
                continue;
            }
            let row = row(false, pool, xen);
            assert_eq!(crate::world::run_coherent(row, &case), Ok(()), "{row:?}");
            let without = crate::world::run_coherent_with(row, &case, false);
            assert!(
                without.as_ref().is_err_and(|e| e.starts_with("CPU read")),
                "{row:?}: {without:?}"
            );
        }
    }
}

/// Why virtio-blk syncs a used ring's entries again after reading the
/// `used.idx` that publishes them, rather than syncing the whole used ring
/// once before: Xen's directmap may allocate the entries' line between
/// that sync and the device's write of the entries; the device then writes
/// the index, which the CPU reads fresh, and the entry it reads hits the
/// stale line. A second sync after the index was read drops it (any line
/// allocated after that holds what the device wrote). The adversary here
/// allocates the entries' line whenever it is not cached.
#[test]
fn used_entries_are_synced_after_the_index_that_publishes_them() {
    use tidepool_dma::SyncPoint::ForCpu;
    use tidepool_dma_model::LINE;
    use tidepool_mm::{PhysAddr, VirtAddr};

    const IDX: u64 = 2;
    const ENTRY: u64 = LINE;
    for second_sync in [false, true] {
        let row = row(false, PoolKind::NoMapNc, Xen::Accepted);
        // The ring is the pool's first allocation: its two lines are the
        // first two the adversary knows of; choice 5 allocates the second.
        let (mut world, mut device) = crate::world::World::new(row, vec![5], true);
        let ring = device
            .alloc_coherent(&mut world.env(), 2 * LINE, LINE)
            .unwrap();
        let (virt, dma) = (ring.virt(), ring.dma_addr().0);
        device
            .sync_coherent(&mut world.env(), &ring, 0, 2 * LINE, ForCpu)
            .unwrap();
        {
            let mut machine = world.machine.machine();
            let device = tidepool_dma_model::Device::NonCoherent;
            machine.device_write(device, PhysAddr(dma + ENTRY), &[0x5a; 8]);
            machine.device_write(device, PhysAddr(dma + IDX), &[1, 0]);
            assert_eq!(machine.cpu_read(VirtAddr(virt.0 + IDX), 2), [1, 0]);
        }
        if second_sync {
            device
                .sync_coherent(&mut world.env(), &ring, ENTRY, 8, ForCpu)
                .unwrap();
        }
        let entry = world
            .machine
            .machine()
            .cpu_read(VirtAddr(virt.0 + ENTRY), 8);
        assert_eq!(entry == [0x5a; 8], second_sync, "{entry:?}");
        device.free_coherent(&mut world.env(), ring).unwrap();
    }
}
