//! The client against the simulated xenstored.

use std::sync::atomic::Ordering;

use super::sim::{Fault, client};
use super::*;

const VBD: &str = "/local/domain/1/device/vbd";

#[test]
fn read_write_mkdir_rm_directory() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    assert_eq!(
        xs.read(TxId::NONE, "/local/domain/1/name").unwrap(),
        "tidepool"
    );
    assert_eq!(xs.directory(TxId::NONE, VBD).unwrap(), ["51712", "51728"]);
    xs.write(TxId::NONE, "/local/domain/1/data/x", "42")
        .unwrap();
    assert_eq!(xs.read(TxId::NONE, "/local/domain/1/data/x").unwrap(), "42");
    xs.mkdir(TxId::NONE, "/local/domain/1/empty").unwrap();
    assert_eq!(xs.read(TxId::NONE, "/local/domain/1/empty").unwrap(), "");
    xs.rm(TxId::NONE, "/local/domain/1/data").unwrap();
    let err = xs.read(TxId::NONE, "/local/domain/1/data/x").unwrap_err();
    assert_eq!(
        err,
        XsError::Errno {
            op: XsType::Read,
            path: "/local/domain/1/data/x".into(),
            errno: XsErrno::NoEnt
        }
    );
    assert_eq!(err.to_string(), "Read \"/local/domain/1/data/x\": ENOENT");
    // Every request had its own id.
    let ids: Vec<u32> = sim.borrow().requests.iter().map(|r| r.1).collect();
    assert_eq!(ids, (1..=ids.len() as u32).collect::<Vec<_>>());
}

#[test]
fn values_longer_than_the_ring_cross_it_in_pieces() {
    let page = XenstoreInterface::new();
    let (mut xs, _) = client(&page);
    let long = "v".repeat(3000);
    xs.write(TxId::NONE, "/local/domain/1/long", &long).unwrap();
    assert_eq!(xs.read(TxId::NONE, "/local/domain/1/long").unwrap(), long);
    let too_long = "v".repeat(XENSTORE_PAYLOAD_MAX);
    assert!(matches!(
        xs.write(TxId::NONE, "/x", &too_long),
        Err(XsError::RequestTooLong { .. })
    ));
}

#[test]
fn watches_deliver_events_queued_around_replies() {
    let page = XenstoreInterface::new();
    let (mut xs, _) = client(&page);
    let state = "/local/domain/0/backend/vbd/1/51712/state";
    xs.watch(state, "be-state").unwrap();
    // The initial firing.
    let first = xs.wait_event("be-state").unwrap();
    assert_eq!(
        (first.path.as_str(), first.token.as_str()),
        (state, "be-state")
    );
    assert_eq!(xs.poll_event("be-state").unwrap(), None);
    // A write by "the backend" (here ourselves) fires it; the event
    // arrives after the write's reply and waits in the queue.
    xs.write(TxId::NONE, state, "4").unwrap();
    assert_eq!(xs.read(TxId::NONE, state).unwrap(), "4");
    assert_eq!(
        xs.poll_event("be-state").unwrap().unwrap().token,
        "be-state"
    );
    xs.unwatch(state, "be-state").unwrap();
    xs.write(TxId::NONE, state, "5").unwrap();
    assert_eq!(
        xs.poll_event("be-state").unwrap_err(),
        XsError::NotWatched {
            token: "be-state".into()
        }
    );
}

/// Every path `token`'s owner gets now, oldest first.
fn take_all(xs: &mut Xenstore<'_, super::sim::Channel<'_>>, token: &str) -> Vec<String> {
    let mut paths = Vec::new();
    while let Some(event) = xs.poll_event(token).unwrap() {
        assert_eq!(event.token, token);
        paths.push(event.path);
    }
    paths
}

/// Two disks' back ends change in turn; each disk takes only its own
/// events, all of them, in order, whichever looks first and however the
/// events interleave with replies (the drain-everything client lost every
/// event of the owner that looked second).
#[test]
fn each_watch_owner_gets_its_own_events_in_order() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    xs.watch("/be", "a").unwrap();
    xs.watch("/be2", "b").unwrap();
    for i in 1..=3 {
        sim.borrow_mut().peer_write(&page, &format!("/be/{i}"), "x");
        sim.borrow_mut()
            .peer_write(&page, &format!("/be2/{i}"), "x");
    }
    // A request in between: the events that arrive around its reply are
    // queued, not taken.
    xs.write(TxId::NONE, "/be2/4", "x").unwrap();
    assert_eq!(
        take_all(&mut xs, "b"),
        ["/be2", "/be2/1", "/be2/2", "/be2/3", "/be2/4"]
    );
    sim.borrow_mut().peer_write(&page, "/be/4", "x");
    assert_eq!(
        take_all(&mut xs, "a"),
        ["/be", "/be/1", "/be/2", "/be/3", "/be/4"]
    );
    assert_eq!(take_all(&mut xs, "b"), Vec::<String>::new());
    // Waiting for one's own event goes past another's, which stays.
    sim.borrow_mut().peer_write(&page, "/be2/5", "x");
    sim.borrow_mut().peer_write(&page, "/be/5", "x");
    assert_eq!(xs.wait_event("a").unwrap().path, "/be/5");
    assert_eq!(take_all(&mut xs, "b"), ["/be2/5"]);
    // A token is one watch's.
    assert_eq!(
        xs.watch("/be3", "a").unwrap_err(),
        XsError::TokenInUse { token: "a".into() }
    );
    assert_eq!(take_all(&mut xs, "a"), Vec::<String>::new());
}

/// An unwatch drops the events its watch still had queued, and an event
/// xenstored sent for it before the unwatch is dropped when it arrives;
/// another watch's events, interleaved with them, all stay.
#[test]
fn unwatch_drops_its_own_queued_events_only() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    xs.watch("/be", "a").unwrap();
    xs.watch("/be2", "b").unwrap();
    // Owner a looks once, then its back end and b's change in turn.
    assert_eq!(xs.poll_event("a").unwrap().unwrap().path, "/be");
    for i in 1..=2 {
        sim.borrow_mut().peer_write(&page, &format!("/be/{i}"), "x");
        sim.borrow_mut()
            .peer_write(&page, &format!("/be2/{i}"), "x");
    }
    assert_eq!(xs.poll_event("a").unwrap().unwrap().path, "/be/1");
    xs.unwatch("/be", "a").unwrap();
    assert_eq!(
        xs.poll_event("a").unwrap_err(),
        XsError::NotWatched { token: "a".into() }
    );
    sim.borrow_mut().send_event(&page, "/be/late", "a");
    assert_eq!(take_all(&mut xs, "b"), ["/be2", "/be2/1", "/be2/2"]);
    // Watching again starts afresh: only the new watch's first firing,
    // nothing of the old watch's (/be/2) or the late one.
    xs.watch("/be", "a").unwrap();
    assert_eq!(take_all(&mut xs, "a"), ["/be"]);
}

/// Two watches on one path (two owners of the same node) are two watches:
/// unwatching one keeps the other and its events.
#[test]
fn unwatching_one_of_two_watches_on_a_path_keeps_the_other() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    xs.watch("/be", "a").unwrap();
    xs.watch("/be", "b").unwrap();
    xs.unwatch("/be", "a").unwrap();
    sim.borrow_mut().peer_write(&page, "/be/1", "x");
    assert_eq!(take_all(&mut xs, "b"), ["/be", "/be/1"]);
}

/// A queue holds at most WATCH_EVENTS_MAX events; one more collapses it
/// into one event for the watched path, which covers every path dropped.
/// Another watch's queue is not touched.
#[test]
fn a_full_queue_collapses_into_its_watched_path() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    xs.watch("/be", "a").unwrap();
    xs.watch("/be2", "b").unwrap();
    sim.borrow_mut().peer_write(&page, "/be2/1", "x");
    // The first firing and 15 writes fill a's queue; the 16th write
    // collapses it, and the rest queue behind.
    let writes = WATCH_EVENTS_MAX + 3;
    for i in 0..writes {
        sim.borrow_mut().peer_write(&page, &format!("/be/{i}"), "x");
    }
    let taken = take_all(&mut xs, "a");
    let mut expected = vec!["/be".to_string()];
    expected.extend((WATCH_EVENTS_MAX..writes).map(|i| format!("/be/{i}")));
    assert_eq!(taken, expected);
    assert!(taken.len() <= WATCH_EVENTS_MAX);
    assert_eq!(take_all(&mut xs, "b"), ["/be2", "/be2/1"]);
    // Exactly full is not collapsed.
    for i in 0..WATCH_EVENTS_MAX {
        sim.borrow_mut().peer_write(&page, &format!("/be/{i}"), "x");
    }
    assert_eq!(take_all(&mut xs, "a").len(), WATCH_EVENTS_MAX);
}

#[test]
fn transactions_commit_and_retry_on_eagain() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    sim.borrow_mut().conflicts = 2;
    let mut tries = 0;
    let value = xs
        .transaction(|xs, tx| {
            tries += 1;
            xs.write(tx, "/local/domain/1/device/vbd/51712/ring-ref", "8")?;
            xs.write(tx, "/local/domain/1/device/vbd/51712/state", "3")?;
            Ok(tries)
        })
        .unwrap();
    assert_eq!(value, 3, "two conflicts, then a commit");
    assert_eq!(
        xs.read(TxId::NONE, "/local/domain/1/device/vbd/51712/state")
            .unwrap(),
        "3"
    );
    sim.borrow_mut().conflicts = TRANSACTION_RETRIES;
    let err = xs
        .transaction(|xs, tx| xs.write(tx, "/a", "1"))
        .unwrap_err();
    assert_eq!(err, XsError::TransactionRetries);
    assert!(!sim.borrow().tree.contains_key("/a"), "nothing leaked");
    // Another error aborts without retrying.
    let mut calls = 0;
    let err = xs
        .transaction(|xs, tx| {
            calls += 1;
            xs.read(tx, "/absent")
        })
        .unwrap_err();
    assert!(matches!(
        err,
        XsError::Errno {
            errno: XsErrno::NoEnt,
            ..
        }
    ));
    assert_eq!(calls, 1);
}

fn header(kind: u32, id: u32, len: u32) -> Vec<u8> {
    [kind, id, 0, len]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

#[test]
fn bad_replies_are_errors_not_hangs() {
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    sim.borrow_mut().fault = Fault::Raw(header(2, 1, 5000));
    assert_eq!(
        xs.read(TxId::NONE, "/x").unwrap_err(),
        XsError::ReplyTooLong { len: 5000 }
    );

    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    sim.borrow_mut().fault = Fault::Raw(header(2, 99, 0));
    assert_eq!(
        xs.read(TxId::NONE, "/x").unwrap_err(),
        XsError::WrongRequestId { sent: 1, got: 99 }
    );

    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    sim.borrow_mut().fault = Fault::Raw(header(11, 1, 0));
    assert!(matches!(
        xs.read(TxId::NONE, "/x").unwrap_err(),
        XsError::WrongType { got: 11, .. }
    ));

    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    let mut unknown = header(16, 1, 6);
    unknown.extend_from_slice(b"EWHAT\0");
    sim.borrow_mut().fault = Fault::Raw(unknown);
    assert_eq!(
        xs.read(TxId::NONE, "/x").unwrap_err(),
        XsError::UnknownError("EWHAT".into())
    );

    // A reply that announces more than ever arrives: a timeout.
    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    sim.borrow_mut().fault = Fault::Raw(header(2, 1, 100));
    assert_eq!(
        xs.read(TxId::NONE, "/x").unwrap_err(),
        XsError::Timeout { op: XsType::Read }
    );

    let page = XenstoreInterface::new();
    let (mut xs, sim) = client(&page);
    sim.borrow_mut().fault = Fault::Silent;
    assert_eq!(
        xs.read(TxId::NONE, "/x").unwrap_err(),
        XsError::Timeout { op: XsType::Read }
    );

    let page = XenstoreInterface::new();
    page.rsp_prod.store(5000, Ordering::Relaxed);
    let (mut xs, _) = client(&page);
    assert!(matches!(
        xs.read(TxId::NONE, "/x").unwrap_err(),
        XsError::RingCorrupt { ring: "rsp", .. }
    ));
}

#[test]
fn error_names_round_trip() {
    let all = [
        XsErrno::Inval,
        XsErrno::Access,
        XsErrno::Exist,
        XsErrno::IsDir,
        XsErrno::NoEnt,
        XsErrno::NoMem,
        XsErrno::NoSpc,
        XsErrno::Io,
        XsErrno::NotEmpty,
        XsErrno::NoSys,
        XsErrno::RoFs,
        XsErrno::Busy,
        XsErrno::Again,
        XsErrno::IsConn,
        XsErrno::TooBig,
        XsErrno::Perm,
        XsErrno::Quota,
    ];
    for errno in all {
        let name = errno.name();
        assert_eq!(XsErrno::from_name(name), Some(errno));
        assert_eq!(errno.name(), name);
    }
    assert_eq!(XsErrno::from_name("ENOPE"), None);
    for raw in 0..32 {
        if let Some(t) = XsType::from_raw(raw) {
            assert_eq!(t.raw(), raw);
        }
    }
}
