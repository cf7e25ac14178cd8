//! Setup: transport checks, status handshake, feature negotiation, queue
//! programming (legacy and modern), and failure handling.

use tidepool_dma::DmaAddr;
use tidepool_virtio_blk::transport::{FeatureSet, MAGIC, TransportVersion, feature};
use tidepool_virtio_blk::{InitError, Options};

use crate::host::{DEVICE, DeviceKind, Rig};
use crate::sim::{Sim, SimConfig, status};
use crate::{bench, bench_with, init};

/// A change to the simulated device, and the error it must cause.
type Case = (fn(&mut SimConfig), InitError<'static>);

/// Sets up a device on `config` and returns the error, checking that
/// nothing stayed allocated in any pool.
fn init_error(config: SimConfig, kind: DeviceKind) -> (InitError<'static>, Sim) {
    let mut rig = Rig::new(false);
    let baseline = rig.usage();
    let sim = Sim::new(config, rig.map);
    let error = init(&mut rig, &sim, kind, Options::default())
        .err()
        .unwrap();
    assert_eq!(rig.usage(), baseline, "{error}");
    (error, sim)
}

#[test]
fn modern_setup_negotiates_only_what_the_driver_implements() {
    let b = bench(SimConfig::modern(), DeviceKind::NonCoherent, false);
    let s = b.sim.state();
    let accepted = feature::BLK_SIZE_MAX
        | feature::BLK_BLK_SIZE
        | feature::BLK_FLUSH
        | feature::VERSION_1
        | feature::ACCESS_PLATFORM;
    // Offered but refused: seg-max, geometry, topology, discard, indirect
    // descriptors, event index, packed ring, order-platform.
    assert_eq!(s.driver_features, accepted);
    assert_eq!(b.disk.features(), FeatureSet(accepted));
    let handshake = status::ACKNOWLEDGE | status::DRIVER;
    assert_eq!(
        s.status_writes,
        [
            0,
            status::ACKNOWLEDGE,
            handshake,
            handshake | status::FEATURES_OK,
            handshake | status::FEATURES_OK | status::DRIVER_OK
        ]
    );
    // One allocation in the kernel's non-cacheable pool: descriptors, then
    // the available ring, then the used ring on the next page.
    assert_eq!((s.queue_num, s.queue_ready), (128, 1));
    assert_eq!(s.desc, 0x7a00_0000);
    assert_eq!((s.driver, s.device), (s.desc + 128 * 16, s.desc + 0x1000));
    assert_eq!(s.guest_page_size, 0, "no legacy register written");
    assert_eq!(b.disk.version(), TransportVersion::Modern);
    assert_eq!((b.disk.capacity(), b.disk.block_size()), (8192, 512));
    assert_eq!(
        (
            b.disk.queue_size(),
            b.disk.slots(),
            b.disk.max_request_bytes()
        ),
        (128, 16, 262144)
    );
    assert!(b.disk.has_flush() && !b.disk.is_read_only());
    assert_eq!(
        b.disk.info_line().to_string(),
        "blk: /virtio_mmio@a003e00 virtio-mmio modern capacity=8192 block_size=512 max_request=262144 queue=128 \
         slots=16 read_only=no flush=yes features=0x300000242 (size-max,blk-size,flush,version-1,access-platform)"
    );
}

#[test]
fn legacy_setup_programs_page_size_alignment_and_page_frame() {
    let b = bench(SimConfig::legacy(), DeviceKind::NonCoherent, false);
    let s = b.sim.state();
    // Legacy: no FEATURES_OK step, and only legacy feature bits.
    assert_eq!(
        s.driver_features,
        feature::BLK_BLK_SIZE | feature::BLK_FLUSH
    );
    let handshake = status::ACKNOWLEDGE | status::DRIVER;
    assert_eq!(
        s.status_writes,
        [
            0,
            status::ACKNOWLEDGE,
            handshake,
            handshake | status::DRIVER_OK
        ]
    );
    assert_eq!(
        (s.guest_page_size, s.queue_align, s.queue_num),
        (4096, 4096, 128)
    );
    assert_eq!(s.queue_pfn, 0x7a000);
    assert_eq!(
        (s.desc, s.queue_ready),
        (0, 0),
        "no modern register written"
    );
    assert_eq!(b.disk.version(), TransportVersion::Legacy);
}

#[test]
fn the_queue_is_as_large_as_the_device_allows_up_to_the_limit() {
    for (max, size, slots) in [
        (1024, 128, 16),
        (64, 64, 16),
        (48, 32, 10),
        (8, 8, 2),
        (3, 2, 0),
    ] {
        let mut config = SimConfig::modern();
        config.queue_num_max = max;
        if slots == 0 {
            let (error, _) = init_error(config, DeviceKind::Coherent);
            assert_eq!(
                error,
                InitError::QueueTooSmall {
                    device: DEVICE,
                    max: 3
                },
                "{error}"
            );
            continue;
        }
        let b = bench(config, DeviceKind::Coherent, false);
        assert_eq!(
            (b.disk.queue_size(), b.disk.slots()),
            (size, slots),
            "QueueNumMax {max}"
        );
    }
    // More slots asked for than the queue holds: a third of the queue, at most.
    let b = bench_with(
        SimConfig::modern(),
        DeviceKind::Coherent,
        false,
        Options { in_flight: 100 },
    );
    assert_eq!(b.disk.slots(), 42);
}

#[test]
fn transport_checks_refuse_before_touching_the_device() {
    let cases: [Case; 4] = [
        (
            |c| c.magic = 0x1234_5678,
            InitError::BadMagic {
                device: DEVICE,
                found: 0x1234_5678,
            },
        ),
        (
            |c| c.version = 3,
            InitError::UnsupportedVersion {
                device: DEVICE,
                found: 3,
            },
        ),
        (|c| c.device_id = 0, InitError::NoDevice { device: DEVICE }),
        (
            |c| c.device_id = 1,
            InitError::NotBlock {
                device: DEVICE,
                device_id: 1,
            },
        ),
    ];
    for (change, expected) in cases {
        let mut config = SimConfig::modern();
        change(&mut config);
        let (error, sim) = init_error(config, DeviceKind::Coherent);
        assert_eq!(error, expected);
        assert_eq!(sim.state().status_writes, [], "{error}");
    }
    assert_eq!(
        InitError::BadMagic {
            device: DEVICE,
            found: 0
        }
        .to_string(),
        "blk /virtio_mmio@a003e00: magic 0x00000000 is not a virtio-mmio transport"
    );
    assert_eq!(MAGIC.to_le_bytes(), *b"virt");
    let mut rig = Rig::new(false);
    let sim = Sim::new(SimConfig::modern(), rig.map);
    let error = init(
        &mut rig,
        &sim,
        DeviceKind::Coherent,
        Options { in_flight: 0 },
    )
    .err()
    .unwrap();
    assert_eq!(error, InitError::NoSlots { device: DEVICE });
}

/// The last status writes of a device the driver gave up on: reset, FAILED.
fn assert_failed(sim: &Sim) {
    let s = sim.state();
    assert_eq!(
        s.status_writes[s.status_writes.len() - 2..],
        [0, status::FAILED]
    );
    assert_eq!(s.status, status::FAILED);
}

#[test]
fn a_modern_device_without_version_1_is_failed() {
    let mut config = SimConfig::modern();
    config.features &= !feature::VERSION_1;
    let offered = config.features;
    let (error, sim) = init_error(config, DeviceKind::NonCoherent);
    assert_eq!(
        error,
        InitError::MissingVersion1 {
            device: DEVICE,
            offered: FeatureSet(offered)
        }
    );
    assert_failed(&sim);
}

#[test]
fn a_device_that_clears_features_ok_is_failed() {
    let mut config = SimConfig::modern();
    config.reject_features = true;
    let (error, sim) = init_error(config, DeviceKind::NonCoherent);
    let InitError::FeaturesRejected { accepted, .. } = error else {
        panic!("{error}");
    };
    assert_eq!(accepted.0 & feature::VERSION_1, feature::VERSION_1);
    assert_failed(&sim);
}

#[test]
fn queue_and_configuration_problems_are_typed() {
    let cases: [Case; 4] = [
        (
            |c| c.queue_num_max = 0,
            InitError::QueueUnavailable { device: DEVICE },
        ),
        (
            |c| c.queue_num_max = 2,
            InitError::QueueTooSmall {
                device: DEVICE,
                max: 2,
            },
        ),
        (
            |c| c.blk_size = 1000,
            InitError::BadBlockSize {
                device: DEVICE,
                blk_size: 1000,
            },
        ),
        (
            |c| {
                c.blk_size = 4096;
                c.size_max = 2048;
            },
            InitError::SegmentTooSmall {
                device: DEVICE,
                size_max: 2048,
                block_size: 4096,
            },
        ),
    ];
    for (change, expected) in cases {
        let mut config = SimConfig::modern();
        change(&mut config);
        let (error, sim) = init_error(config, DeviceKind::NonCoherent);
        assert_eq!(error, expected);
        assert_failed(&sim);
    }
    // A size_max that is not whole blocks is rounded down to them.
    let mut config = SimConfig::modern();
    config.size_max = 10_000;
    let b = bench(config, DeviceKind::NonCoherent, false);
    assert_eq!(b.disk.max_request_bytes(), 9728);
}

#[test]
fn a_device_failing_at_driver_ok_gets_its_ring_back_freed() {
    let mut config = SimConfig::modern();
    config.fail_on_driver_ok = true;
    for kind in [
        DeviceKind::NonCoherent,
        DeviceKind::DynamicPool,
        DeviceKind::Coherent,
    ] {
        let (error, sim) = init_error(config.clone(), kind);
        let expected_status = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::DEVICE_NEEDS_RESET;
        assert_eq!(
            error,
            InitError::DeviceFailed {
                device: DEVICE,
                status: expected_status
            }
        );
        assert_failed(&sim);
    }
}

#[test]
fn a_legacy_ring_beyond_32_bit_page_frames_is_refused() {
    // A coherent device's ring comes from the kernel's linear pool, which in
    // these tests is host memory far above 16 TiB.
    let mut rig = Rig::new(false);
    let baseline = rig.usage();
    let sim = Sim::new(SimConfig::legacy(), rig.map);
    let error = init(&mut rig, &sim, DeviceKind::Coherent, Options::default())
        .err()
        .unwrap();
    let InitError::RingUnreachable { ring, .. } = error else {
        panic!("{error}");
    };
    assert!(ring.0 >= 1 << 44 && ring != DmaAddr(0));
    assert_eq!(rig.usage(), baseline);
    assert_failed(&sim);
}
