//! The handshake against the simulated xenstored with a simulated Linux
//! blkback, and the response checks.

use alloc::string::ToString;
use alloc::vec;

use super::*;
use crate::xenstore::XenstoreInterface;
use crate::xenstore::sim::{Hook, client};

const BE: &str = "/local/domain/0/backend/vbd/1/51712";
const FE: &str = "device/vbd/51712";

/// Whether the front end's ring keys are what Linux's blkback takes
/// (`read_per_ring_refs`): without `ring-page-order`, one page in
/// `ring-ref`; with it, an order within the back end's
/// `max-ring-page-order` and `ring-ref0` .. `ring-ref{2^order - 1}`.
fn ring_keys_valid(tree: &alloc::collections::BTreeMap<String, String>) -> bool {
    let offered: u32 = tree
        .get(&format!("{BE}/max-ring-page-order"))
        .map_or(0, |v| v.parse().unwrap());
    let fe = |key: &str| tree.get(&format!("{FE}/{key}"));
    match fe("ring-page-order") {
        None => fe("ring-ref").is_some(),
        Some(order) => match order.parse::<u32>() {
            Ok(order) if order <= offered => {
                (0..1 << order).all(|i| fe(&format!("ring-ref{i}")).is_some())
            }
            _ => false,
        },
    }
}

/// Linux's blkback as xenstore sees it: InitWait with its features; when
/// the front end says Initialised, it checks the ring keys, publishes the
/// disk and connects (or fails the device: Closed).
fn blkback(connects: bool) -> Hook {
    Box::new(move |tree, path| {
        if path == format!("{FE}/state") && tree.get(path).map(String::as_str) == Some("3") {
            if !connects || !ring_keys_valid(tree) {
                return vec![(format!("{BE}/state"), "6".into())];
            }
            vec![
                (format!("{BE}/sectors"), "131072".into()),
                (format!("{BE}/sector-size"), "512".into()),
                (format!("{BE}/info"), "4".into()),
                (format!("{BE}/feature-flush-cache"), "1".into()),
                (format!("{BE}/state"), "4".into()),
            ]
        } else {
            vec![]
        }
    })
}

fn seed(tree: &mut alloc::collections::BTreeMap<String, String>) {
    for (k, v) in [
        (format!("{FE}/backend"), BE.to_string()),
        (format!("{FE}/backend-id"), "0".into()),
        (format!("{FE}/state"), "1".into()),
        (format!("{BE}/state"), "2".into()),
        (format!("{BE}/max-ring-page-order"), "4".into()),
        (format!("{BE}/feature-max-indirect-segments"), "256".into()),
        (format!("{BE}/feature-persistent"), "1".into()),
    ] {
        tree.insert(k, v);
    }
}

#[test]
fn handshake_with_blkback() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    sim.borrow_mut().hook = Some(blkback(true));
    assert_eq!(find_vbds(&mut xs).unwrap(), [51712]);
    let (vbd, features) = probe(&mut xs, 51712).unwrap();
    assert_eq!(vbd.backend, BE);
    assert_eq!(vbd.backend_id, DomId(0));
    assert_eq!(
        features,
        BackendFeatures {
            max_ring_page_order: 4,
            max_indirect_segments: 256,
            persistent: true
        }
    );
    let refs = [GrantRef(9)];
    let setup = FrontendSetup {
        ring_refs: &refs,
        port: EvtchnPort(5),
        persistent: true,
    };
    let info = connect(&mut xs, &vbd, &setup).unwrap();
    assert_eq!(
        info,
        DiskInfo {
            sectors: 131072,
            sector_size: 512,
            read_only: true,
            flush: true
        }
    );
    let sim = sim.borrow();
    let key = |k: &str| sim.tree.get(&format!("{FE}/{k}")).cloned();
    assert_eq!(key("ring-ref").as_deref(), Some("9"));
    assert_eq!(key("event-channel").as_deref(), Some("5"));
    assert_eq!(key("protocol").as_deref(), Some("arm-abi"));
    assert_eq!(key("feature-persistent").as_deref(), Some("1"));
    assert_eq!(key("state").as_deref(), Some("4"));
    assert_eq!(disk_name(51712), "xvda");
    assert_eq!(disk_name(51728), "xvdb");
}

#[test]
fn multi_page_rings_publish_their_order() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    let (vbd, _) = probe(&mut xs, 51712).unwrap();
    let refs = [GrantRef(8), GrantRef(9), GrantRef(10), GrantRef(11)];
    let setup = FrontendSetup {
        ring_refs: &refs,
        port: EvtchnPort(5),
        persistent: false,
    };
    publish(&mut xs, &vbd, &setup).unwrap();
    let sim = sim.borrow();
    assert_eq!(sim.tree[&format!("{FE}/ring-page-order")], "2");
    assert_eq!(sim.tree[&format!("{FE}/ring-ref3")], "11");
    assert!(!sim.tree.contains_key(&format!("{FE}/ring-ref")));
    let three = [GrantRef(1); 3];
    drop(sim);
    assert!(matches!(
        publish(
            &mut xs,
            &vbd,
            &FrontendSetup {
                ring_refs: &three,
                ..setup
            }
        ),
        Err(BlkfrontError::BadRequest(_))
    ));
}

#[test]
fn a_backend_that_closes_or_never_answers_is_an_error() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    sim.borrow_mut().hook = Some(blkback(false));
    let (vbd, _) = probe(&mut xs, 51712).unwrap();
    let refs = [GrantRef(9)];
    let setup = FrontendSetup {
        ring_refs: &refs,
        port: EvtchnPort(5),
        persistent: false,
    };
    let err = connect(&mut xs, &vbd, &setup).unwrap_err();
    assert_eq!(
        err,
        BlkfrontError::BackendClosed {
            state: XenbusState::Closed
        }
    );
    assert_eq!(err.to_string(), "back end went away (state Closed)");

    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    let (vbd, _) = probe(&mut xs, 51712).unwrap();
    let err = connect(&mut xs, &vbd, &setup).unwrap_err();
    assert_eq!(
        err,
        BlkfrontError::StateTimeout {
            want: XenbusState::Connected,
            seen: XenbusState::InitWait
        }
    );

    // A garbage size.
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    sim.borrow_mut()
        .tree
        .insert(format!("{BE}/sectors"), "lots".into());
    let (vbd, _) = probe(&mut xs, 51712).unwrap();
    assert!(matches!(
        disk_info(&mut xs, &vbd),
        Err(BlkfrontError::BadKey { .. })
    ));
}

/// The refs a front end grants for `layout`: 20, 21, ...
fn ring_refs(layout: &RingLayout) -> Vec<GrantRef> {
    (0..layout.pages() as u32)
        .map(|i| GrantRef(20 + i))
        .collect()
}

/// Probes and connects against a blkback offering `offered` as its
/// `max-ring-page-order` (`None`: no such key), with the ring
/// [`RingLayout::choose`] picks for 42 direct requests in flight (11 grants
/// each, within blkback's persistent grants); returns the layout and the
/// front end's keys.
fn connect_offering(offered: Option<&str>) -> (RingLayout, Vec<(String, String)>) {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    match offered {
        Some(order) => sim
            .borrow_mut()
            .tree
            .insert(format!("{BE}/max-ring-page-order"), order.into()),
        None => sim
            .borrow_mut()
            .tree
            .remove(&format!("{BE}/max-ring-page-order")),
    };
    sim.borrow_mut().hook = Some(blkback(true));
    let (vbd, features) = probe(&mut xs, 51712).unwrap();
    let layout = RingLayout::choose(
        features.max_ring_page_order,
        42,
        11,
        BLKBACK_PERSISTENT_GRANTS,
    );
    let refs = ring_refs(&layout);
    let setup = FrontendSetup {
        ring_refs: &refs,
        port: EvtchnPort(5),
        persistent: true,
    };
    connect(&mut xs, &vbd, &setup).unwrap();
    let sim = sim.borrow();
    let keys = sim
        .tree
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(&format!("{FE}/"))?;
            key.starts_with("ring-")
                .then(|| (key.to_string(), v.clone()))
        })
        .collect();
    (layout, keys)
}

fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_ring_keys_follow_the_order() {
    // Linux's blkback offers 4: the ring for 42 direct requests is order 1.
    let (layout, written) = connect_offering(Some("4"));
    assert_eq!(
        layout,
        RingLayout {
            order: 1,
            entries: 64,
            requests: 42
        }
    );
    assert_eq!(
        written,
        keys(&[
            ("ring-page-order", "1"),
            ("ring-ref0", "20"),
            ("ring-ref1", "21")
        ])
    );
    // A back end offering no order, or order 0: one page, `ring-ref` only.
    for offered in [None, Some("0")] {
        let (layout, written) = connect_offering(offered);
        assert_eq!(
            layout,
            RingLayout {
                order: 0,
                entries: 32,
                requests: 32
            }
        );
        assert_eq!(written, keys(&[("ring-ref", "20")]));
    }
}

#[test]
fn the_ring_order_is_the_smallest_that_holds_the_requests_within_the_offer() {
    // Grants are no limit here.
    let choose = |offered, in_flight| {
        let layout = RingLayout::choose(offered, in_flight, 1, usize::MAX);
        (
            layout.order,
            layout.pages(),
            layout.entries,
            layout.requests,
        )
    };
    assert_eq!(choose(4, 42), (1, 2, 64, 42));
    assert_eq!(choose(1, 42), (1, 2, 64, 42));
    assert_eq!(choose(4, 32), (0, 1, 32, 32));
    assert_eq!(choose(4, 200), (3, 8, 256, 200));
    assert_eq!(choose(4, 512), (4, 16, 512, 512));
    // A back end offering less than wanted: its largest ring, and no more
    // requests in flight than that ring holds.
    assert_eq!(choose(0, 42), (0, 1, 32, 32));
    assert_eq!(choose(2, 1000), (2, 4, 128, 128));
    // Beyond XENBUS_MAX_RING_GRANT_ORDER (16 pages), whatever is offered.
    assert_eq!(choose(9, 1000), (4, 16, 512, 512));
}

#[test]
fn the_requests_in_flight_keep_within_blkback_persistent_grants() {
    let choose = |grants_per_request, persistent_grants| {
        let layout = RingLayout::choose(4, 42, grants_per_request, persistent_grants);
        (layout.pages(), layout.requests)
    };
    // 32 data pages and an indirect page: 32 requests, one page, as Linux's
    // blkfront and blkback are sized.
    assert_eq!(choose(33, BLKBACK_PERSISTENT_GRANTS), (1, 32));
    // Direct requests (11 pages): all 42, on two pages.
    assert_eq!(choose(11, BLKBACK_PERSISTENT_GRANTS), (2, 42));
    // A back end told to keep more (dom0's max_persistent_grants=2048).
    assert_eq!(choose(33, 2048), (2, 42));
    // A budget too small for even one request still leaves one.
    assert_eq!(choose(33, 10), (1, 1));
}

#[test]
fn blkback_fails_a_ring_above_its_offer() {
    // The simulated blkback checks the keys as Linux's does: an order over
    // its offer fails the device, so the accepted handshakes above are real.
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    sim.borrow_mut()
        .tree
        .insert(format!("{BE}/max-ring-page-order"), "1".into());
    sim.borrow_mut().hook = Some(blkback(true));
    let (vbd, features) = probe(&mut xs, 51712).unwrap();
    assert_eq!(features.max_ring_page_order, 1);
    let refs = ring_refs(&RingLayout::choose(2, 100, 1, usize::MAX));
    assert_eq!(refs.len(), 4);
    let setup = FrontendSetup {
        ring_refs: &refs,
        port: EvtchnPort(5),
        persistent: true,
    };
    assert_eq!(
        connect(&mut xs, &vbd, &setup),
        Err(BlkfrontError::BackendClosed {
            state: XenbusState::Closed
        })
    );
}

#[test]
fn no_vbd_directory_means_no_disks() {
    let page = XenstoreInterface::new();
    let (mut xs, _) = client(&page);
    assert!(find_vbds(&mut xs).unwrap().is_empty());
}

fn response(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        status,
    }
}

#[test]
fn responses_are_checked_before_they_are_trusted() {
    let mut inflight = Inflight::new(4);
    let (slot, id) = inflight.start(BLKIF_OP_READ, 8, 100).unwrap();
    assert_eq!(inflight.count(), 1);
    assert_eq!(
        inflight.complete(response(id + 1, BLKIF_OP_READ, 0)),
        Err(BlkfrontError::UnknownId { id: id + 1 })
    );
    assert_eq!(
        inflight.complete(response(id, BLKIF_OP_WRITE, 0)),
        Err(BlkfrontError::WrongOperation {
            id,
            sent: BLKIF_OP_READ,
            got: BLKIF_OP_WRITE
        })
    );
    assert_eq!(
        inflight.complete(response(id, BLKIF_OP_READ, 7)),
        Err(BlkfrontError::BadStatus { id, status: 7 })
    );
    let done = inflight.complete(response(id, BLKIF_OP_READ, 0)).unwrap();
    assert_eq!((done.slot, done.result), (slot, Ok(())));
    // The same id again is stale.
    assert_eq!(
        inflight.complete(response(id, BLKIF_OP_READ, 0)),
        Err(BlkfrontError::UnknownId { id })
    );
    // A reused slot has a new id.
    inflight.release(slot);
    let (slot2, id2) = inflight.start(BLKIF_OP_WRITE, 16, 100).unwrap();
    assert_eq!(slot2, slot);
    assert_ne!(id2, id);
    let done = inflight
        .complete(response(id2, BLKIF_OP_WRITE, BLKIF_RSP_ERROR))
        .unwrap();
    assert_eq!(done.result, Err(RequestFailure::Io));
    assert_eq!(
        completion_error(done.op, 16, RequestFailure::Io).to_string(),
        "write at sector 16 failed"
    );
}

#[test]
fn slots_run_out_and_late_requests_expire() {
    let mut inflight = Inflight::new(2);
    inflight.start(BLKIF_OP_READ, 0, 10).unwrap();
    inflight.start(BLKIF_OP_READ, 8, 20).unwrap();
    assert_eq!(
        inflight.start(BLKIF_OP_READ, 16, 30),
        Err(BlkfrontError::Busy)
    );
    let late = inflight.expire(15);
    assert_eq!(
        late,
        [(
            0,
            BlkfrontError::Timeout {
                op: BLKIF_OP_READ,
                sector: 0
            }
        )]
    );
    assert_eq!(inflight.count(), 1);
    inflight.release(1);
    assert_eq!(inflight.count(), 0);
    // The expired slot stays taken, even once its failure is collected:
    // the back end may still write its pages.
    assert_eq!(inflight.start(BLKIF_OP_READ, 24, 40).unwrap().0, 1);
    assert_eq!(
        inflight.start(BLKIF_OP_READ, 24, 40),
        Err(BlkfrontError::Busy)
    );
    inflight.release(0);
    assert!(!inflight.has_free());
    assert_eq!(inflight.count(), 1);
}

#[test]
fn a_finished_slot_is_not_reused_before_it_is_collected() {
    let mut inflight = Inflight::new(2);
    let (a, id_a) = inflight.start(BLKIF_OP_READ, 0, 100).unwrap();
    let (b, _) = inflight.start(BLKIF_OP_READ, 8, 100).unwrap();
    inflight.complete(response(id_a, BLKIF_OP_READ, 0)).unwrap();
    // `a` finished but its data is still in its pages: no new request
    // may take it.
    assert_eq!(inflight.count(), 1);
    assert!(!inflight.has_free());
    assert_eq!(
        inflight.start(BLKIF_OP_READ, 16, 100),
        Err(BlkfrontError::Busy)
    );
    inflight.release(a);
    assert_eq!(inflight.start(BLKIF_OP_READ, 16, 100).unwrap().0, a);
    assert_ne!(a, b);
}

#[test]
fn requests_cover_their_sectors_page_by_page() {
    let grefs: Vec<GrantRef> = (100..111).map(GrantRef).collect();
    let req = rw_request(BLKIF_OP_WRITE, 51712, 7, 64, 9, &grefs).unwrap();
    assert_eq!((req.nr_segments, req.sector_number, req.id), (2, 64, 7));
    assert_eq!((req.seg[0].gref, req.seg[0].last_sect), (100, 7));
    assert_eq!((req.seg[1].gref, req.seg[1].last_sect), (101, 0));
    let full = rw_request(BLKIF_OP_READ, 0, 1, 0, 88, &grefs).unwrap();
    assert_eq!(full.nr_segments, 11);
    assert!(rw_request(BLKIF_OP_READ, 0, 1, 0, 89, &grefs).is_err());
    assert!(rw_request(BLKIF_OP_READ, 0, 1, 0, 0, &grefs).is_err());
    assert!(rw_request(BLKIF_OP_FLUSH_DISKCACHE, 0, 1, 0, 8, &grefs).is_err());
    let flush = flush_request(3, 9);
    assert_eq!(
        (flush.operation, flush.nr_segments),
        (BLKIF_OP_FLUSH_DISKCACHE, 0)
    );
}

#[test]
fn indirect_requests_name_their_segment_pages() {
    let data: Vec<GrantRef> = (200..232).map(GrantRef).collect();
    let indirect = [GrantRef(300)];
    let req = indirect_request(BLKIF_OP_READ, 0xca00, 5, 1024, 255, &data, &indirect, 256).unwrap();
    assert_eq!(
        (req.operation, req.indirect_op, req.nr_segments),
        (crate::blkif::BLKIF_OP_INDIRECT, BLKIF_OP_READ, 32)
    );
    assert_eq!(req.indirect_grefs[..2], [300, 0]);
    let segs: Vec<_> = segments(255, &data).collect();
    assert_eq!(segs.len(), 32);
    assert_eq!((segs[31].gref, segs[31].last_sect), (231, 6));
    // More than the back end takes, or than the pages given.
    assert!(indirect_request(BLKIF_OP_READ, 0, 5, 0, 257, &data, &indirect, 256).is_err());
    assert!(indirect_request(BLKIF_OP_READ, 0, 5, 0, 64, &data, &indirect, 4).is_err());
    assert!(indirect_request(BLKIF_OP_READ, 0, 5, 0, 8, &data, &[], 256).is_err());
}

#[test]
fn probe_waits_for_the_backend_to_publish_its_features() {
    // A device just attached: the back end is still Initialising and has
    // written no features yet; reading them now would see none.
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    sim.borrow_mut()
        .tree
        .insert(format!("{BE}/state"), "1".into());
    assert_eq!(
        probe(&mut xs, 51712).unwrap_err(),
        BlkfrontError::StateTimeout {
            want: XenbusState::InitWait,
            seen: XenbusState::Initialising
        }
    );
}

#[test]
fn a_back_end_that_never_closes_is_given_up_on_after_a_few_looks() {
    // Its domain died: it stays Closing after the front end said Closed.
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    seed(&mut sim.borrow_mut().tree);
    sim.borrow_mut()
        .tree
        .insert(format!("{BE}/state"), "5".into());
    let vbd = Vbd {
        devid: 51712,
        frontend: FE.into(),
        backend: BE.into(),
        backend_id: DomId(0),
    };
    let reads = |sim: &core::cell::RefCell<crate::xenstore::sim::Sim>| {
        sim.borrow()
            .requests
            .iter()
            .filter(|&&(kind, _)| kind == crate::xenstore::XsType::Read.raw())
            .count()
    };
    let before = reads(&sim);
    assert_eq!(
        wait_for_backend(&mut xs, &vbd, XenbusState::Closed).unwrap_err(),
        BlkfrontError::StateTimeout {
            want: XenbusState::Closed,
            seen: XenbusState::Closing
        }
    );
    // One read of the state per look: a close gives up after
    // CLOSE_EVENTS_MAX, a connect only after STATE_EVENTS_MAX.
    assert_eq!(reads(&sim) - before, CLOSE_EVENTS_MAX as usize);
    sim.borrow_mut()
        .tree
        .insert(format!("{BE}/state"), "2".into());
    let before = reads(&sim);
    assert!(wait_for_backend(&mut xs, &vbd, XenbusState::Connected).is_err());
    assert_eq!(reads(&sim) - before, STATE_EVENTS_MAX as usize);
}
