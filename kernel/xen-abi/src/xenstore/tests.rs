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
    let first = xs.wait_event().unwrap();
    assert_eq!(
        (first.path.as_str(), first.token.as_str()),
        (state, "be-state")
    );
    assert_eq!(xs.poll_event().unwrap(), None);
    // A write by "the backend" (here ourselves) fires it; the event
    // arrives after the write's reply and waits in the queue.
    xs.write(TxId::NONE, state, "4").unwrap();
    assert_eq!(xs.read(TxId::NONE, state).unwrap(), "4");
    assert_eq!(xs.poll_event().unwrap().unwrap().token, "be-state");
    xs.unwatch(state, "be-state").unwrap();
    xs.write(TxId::NONE, state, "5").unwrap();
    assert_eq!(xs.poll_event().unwrap(), None);
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
