//! One named test per maintenance operation of the DMA layer: each runs a
//! short, fixed case that passes with the operation and fails without it
//! (the list of which test catches which omission is in the crate's
//! README). They are the shrunk counterexamples the property tests in
//! `rows.rs` found when that operation was removed, rewritten with the
//! adversary's sweeping moves so that they read as the hazard they show.

use crate::world::{Case, PoolKind, Row, Step, Xen, run};
use tidepool_dma::DmaDirection::{self, Bidirectional, FromDevice, ToDevice};

const WHOLE: Step = Step::DeviceWrite {
    at: 0,
    len: u16::MAX,
};

fn check(row: Row, dir: DmaDirection, len: u16, steps: &[Step]) {
    let case = Case {
        offset: 0,
        len,
        steps: steps.to_vec(),
        chaos: Vec::new(),
        non_cacheable_hits: true,
    };
    assert_eq!(run(row, dir, &case), Ok(()), "{row:?} {dir:?} {case:?}");
}

const fn row(coherent: bool, pool: PoolKind, xen: Xen) -> Row {
    Row {
        coherent,
        pool,
        xen,
    }
}

/// Setup's clean+invalidate of a no-map pool: the pool was cacheable RAM
/// before and holds dirty lines; written back after the bounce copy, they
/// would replace what the device is to read.
#[test]
fn pool_setup_drops_the_dirty_lines_of_earlier_use() {
    for xen in [Xen::Bare, Xen::Accepted] {
        for coherent in [false, true] {
            let row = row(coherent, PoolKind::NoMapNc, xen);
            check(
                row,
                ToDevice,
                0x200,
                &[Step::WriteBackAll, Step::DeviceRead],
            );
        }
    }
}

/// Clean by linear VA before the device reads: the CPU's data is still in
/// dirty lines, and the device reads memory.
#[test]
fn linear_memory_is_cleaned_for_the_device() {
    for xen in [Xen::Bare, Xen::Accepted] {
        check(
            row(false, PoolKind::None, xen),
            ToDevice,
            0x200,
            &[Step::DeviceRead],
        );
        check(
            row(false, PoolKind::Mapped, xen),
            ToDevice,
            0x200,
            &[Step::DeviceRead],
        );
    }
}

/// Clean+invalidate by linear VA before the device writes: a dirty line of
/// the CPU's, written back while the device writes, replaces its data.
#[test]
fn linear_memory_is_cleaned_before_the_device_writes() {
    for dir in [FromDevice, Bidirectional] {
        for pool in [PoolKind::None, PoolKind::Mapped] {
            let steps = [WHOLE, Step::WriteBackAll];
            check(row(false, pool, Xen::Bare), dir, 0x200, &steps);
        }
    }
}

/// Invalidate by linear VA after the device wrote: lines allocated
/// speculatively while it wrote hold the old data.
#[test]
fn linear_memory_is_invalidated_for_the_cpu() {
    for dir in [FromDevice, Bidirectional] {
        for pool in [PoolKind::None, PoolKind::Mapped] {
            let steps = [Step::FillAll, WHOLE];
            check(row(false, pool, Xen::Bare), dir, 0x200, &steps);
        }
    }
}

/// A no-map pool behind a write-back window is maintained like linear
/// memory, through the window (bare) or by Xen (accepted).
#[test]
fn write_back_window_is_cleaned_and_invalidated() {
    for xen in [Xen::Bare, Xen::Accepted] {
        let row = row(false, PoolKind::NoMapWb, xen);
        check(row, ToDevice, 0x200, &[Step::DeviceRead]);
        check(row, FromDevice, 0x200, &[WHOLE, Step::WriteBackAll]);
        check(row, FromDevice, 0x200, &[Step::FillAll, WHOLE]);
    }
}

/// The counterexample to the earlier policy (clean+invalidate before
/// the device, nothing after it for a non-cacheable window): Xen's directmap
/// allocates lines of the bounce buffer while the device writes it, and the
/// CPU's non-cacheable copy back hits them. The invalidate after the device
/// wrote, by Xen when it accepts the pool, prevents it.
#[test]
fn non_cacheable_pool_is_invalidated_by_xen_after_the_device_wrote() {
    for dir in [FromDevice, Bidirectional] {
        let row = row(false, PoolKind::NoMapNc, Xen::Accepted);
        check(row, dir, 0x200, &[Step::FillAll, WHOLE]);
    }
}

/// The same invalidate through the window when Xen refused the pool's probe,
/// refuses during the sync (the fallback), or cannot be asked (a domain that
/// is not direct-mapped).
#[test]
fn non_cacheable_pool_is_invalidated_through_the_window_without_xen_flush() {
    for xen in [Xen::Refused, Xen::RefusedAfterProbe, Xen::NotDirectMapped] {
        for dir in [FromDevice, Bidirectional] {
            let row = row(false, PoolKind::NoMapNc, xen);
            check(row, dir, 0x200, &[Step::FillAll, WHOLE]);
        }
    }
}

/// Invalidate before a coherent device uses a non-cacheable pool under Xen:
/// its reads snoop, and a line allocated through the directmap before the
/// CPU's bounce copy is stale.
#[test]
fn coherent_device_gets_a_non_cacheable_pool_invalidated_first() {
    let steps = [
        Step::SyncForCpu,
        Step::FillAll,
        Step::CpuWrite {
            at: 0,
            len: u16::MAX,
        },
        Step::SyncForDevice,
        Step::DeviceRead,
    ];
    for xen in [Xen::Accepted, Xen::Refused, Xen::RefusedAfterProbe] {
        for dir in [ToDevice, Bidirectional] {
            check(row(true, PoolKind::NoMapNc, xen), dir, 0x200, &steps);
        }
    }
}

/// The ring's sync point for the CPU: a non-coherent device's coherent
/// memory under Xen is invalidated (through the window) after the device
/// wrote, before the CPU reads; Xen's directmap allocated a line of it
/// before the device wrote, and the CPU's non-cacheable read would hit it.
#[test]
fn coherent_memory_of_a_non_coherent_device_is_invalidated_for_the_cpu() {
    let steps = [
        Step::SyncForDevice,
        Step::FillAll,
        Step::DeviceWrite {
            at: 0,
            len: u16::MAX,
        },
        Step::SyncForCpu,
        Step::CpuRead,
    ];
    for pool in [PoolKind::None, PoolKind::NoMapNc] {
        check_coherent(row(false, pool, Xen::Accepted), 0x200, &steps);
    }
}

/// The ring's sync point for a coherent device: its coherent memory in a
/// non-cacheable pool under Xen is invalidated after the CPU wrote, before
/// the device reads; its reads snoop, and a line Xen's directmap allocated
/// before the CPU's non-cacheable write is stale.
#[test]
fn coherent_memory_of_a_coherent_device_is_invalidated_for_the_device() {
    let steps = [
        Step::FillAll,
        Step::CpuWrite {
            at: 0,
            len: u16::MAX,
        },
        Step::SyncForDevice,
        Step::DeviceRead,
    ];
    for xen in [Xen::Accepted, Xen::Refused] {
        check_coherent(row(true, PoolKind::NoMapNc, xen), 0x200, &steps);
    }
}

fn check_coherent(row: Row, len: u16, steps: &[Step]) {
    let case = Case {
        offset: 0,
        len,
        steps: steps.to_vec(),
        chaos: Vec::new(),
        non_cacheable_hits: true,
    };
    assert_eq!(
        crate::world::run_coherent(row, &case),
        Ok(()),
        "{row:?} {case:?}"
    );
}
