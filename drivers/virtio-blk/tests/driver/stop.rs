//! Stopping a device: `shutdown` and dropping, with devices whose reset
//! completes and devices whose reset does not (which may still write their
//! memory, so none of it may be given back).

use tidepool_virtio_blk::{BlkError, Deadline, DeviceFault, InitError, Options, Request};

use crate::host::{DEVICE, DeviceKind, Rig, freed_bytes, take_log};
use crate::sim::{Sim, SimConfig, status};
use crate::{Bench, bench, init};

/// The staging buffers of a default device on the simulated one: 16 slots
/// of a 256 KiB request with header and status, page-rounded.
const STAGING_BYTES: u64 = 16 * 266_240;

/// A device without a pool (the device writes the staging buffers
/// directly) with one read in flight that it has not returned.
fn busy_direct_device() -> Bench {
    let mut b = bench(SimConfig::held(), DeviceKind::NonCoherent, false);
    assert_eq!(b.disk.slots(), Options::default().in_flight);
    b.disk
        .submit(
            &mut b.rig.env(),
            Request::Read { lba: 0, sectors: 8 },
            Deadline::NEVER,
        )
        .unwrap();
    b
}

#[test]
fn a_shutdown_whose_reset_fails_gives_back_no_memory_and_says_so() {
    let baseline = Rig::new(false).usage();
    let Bench { mut rig, sim, disk } = busy_direct_device();
    sim.with(|s| s.config.stuck_reset = true);
    take_log();
    let freed_before = freed_bytes();
    let Err(error) = disk.shutdown(&mut rig.env()) else {
        panic!("shutdown of a device that did not reset succeeded");
    };
    let freed = freed_bytes() - freed_before;
    assert_eq!(
        error,
        BlkError::Broken {
            device: DEVICE,
            fault: DeviceFault::ResetIncomplete
        }
    );
    assert!(freed < STAGING_BYTES, "staging freed ({freed} bytes)");
    assert_eq!(
        take_log(),
        [format!(
            "blk: {DEVICE} reset incomplete: staging buffers leaked bytes={STAGING_BYTES} \
             (the device may still write them)"
        )]
    );
    assert_ne!(rig.usage(), baseline, "the ring stays allocated");
    assert_ne!(sim.state().status & status::FAILED, 0);
    // The device goes on: its write lands in memory that is still there.
    sim.complete_all();
}

#[test]
fn a_shutdown_whose_reset_completes_frees_everything() {
    let baseline = Rig::new(false).usage();
    let Bench { mut rig, sim, disk } = busy_direct_device();
    take_log();
    let freed_before = freed_bytes();
    disk.shutdown(&mut rig.env()).unwrap();
    assert!(freed_bytes() - freed_before >= STAGING_BYTES);
    assert_eq!(rig.usage(), baseline);
    assert_eq!(sim.state().status, 0);
    assert_eq!(take_log(), Vec::<String>::new());
}

#[test]
fn dropping_a_device_resets_it_before_its_staging_buffers_go() {
    let Bench { rig, sim, disk } = busy_direct_device();
    take_log();
    let freed_before = freed_bytes();
    drop(disk);
    assert!(freed_bytes() - freed_before >= STAGING_BYTES);
    assert_eq!(sim.state().status_writes.last(), Some(&0), "reset");
    assert_eq!(sim.state().status, 0);
    assert_eq!(
        take_log(),
        [format!(
            "blk: {DEVICE} dropped without shutdown: reset; its ring and bounce buffers stay allocated"
        )]
    );
    drop(rig);
}

#[test]
fn dropping_a_device_whose_reset_fails_leaks_its_staging_buffers() {
    let Bench { rig, sim, disk } = busy_direct_device();
    sim.with(|s| s.config.stuck_reset = true);
    take_log();
    let freed_before = freed_bytes();
    drop(disk);
    let freed = freed_bytes() - freed_before;
    assert!(freed < STAGING_BYTES, "staging freed ({freed} bytes)");
    assert_eq!(
        take_log(),
        [
            format!(
                "blk: {DEVICE} dropped without shutdown: reset; its ring and bounce buffers stay allocated"
            ),
            format!(
                "blk: {DEVICE} reset incomplete: staging buffers leaked bytes={STAGING_BYTES} \
                 (the device may still write them)"
            ),
        ]
    );
    sim.complete_all();
    drop(rig);
}

#[test]
fn a_setup_failure_whose_reset_fails_keeps_the_ring() {
    let mut config = SimConfig::modern();
    config.fail_on_driver_ok = true;
    config.stuck_reset = true;
    let mut rig = Rig::new(false);
    let baseline = rig.usage();
    let sim = Sim::new(config, rig.map);
    take_log();
    let Err(error) = init(&mut rig, &sim, DeviceKind::NonCoherent, Options::default()) else {
        panic!("setup of a failing device succeeded");
    };
    assert!(matches!(error, InitError::DeviceFailed { .. }), "{error}");
    assert_ne!(rig.usage(), baseline, "the ring stays allocated");
    assert_eq!(
        take_log(),
        [format!(
            "blk: {DEVICE} reset incomplete: its ring stays allocated (the device may still write it)"
        )]
    );
}
