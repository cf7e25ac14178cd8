//! The client against a simulated xenstored on a real interface page.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::*;

/// How the simulated server misbehaves.
#[derive(Default)]
enum Fault {
    #[default]
    None,
    /// Never answers.
    Silent,
    /// Answers the next request with these raw bytes instead.
    Raw(Vec<u8>),
}

/// A small xenstored: a tree of values, watches, transactions.
#[derive(Default)]
struct Sim {
    tree: BTreeMap<String, String>,
    watches: Vec<(String, String)>,
    /// Transactions and their buffered writes.
    transactions: BTreeMap<u32, Vec<(String, Option<String>)>>,
    next_tx: u32,
    /// Commits answered with EAGAIN before one succeeds.
    conflicts: u32,
    fault: Fault,
    /// Watch firings to send after the current reply.
    pending: Vec<(String, String)>,
    requests: Vec<(u32, u32)>,
    /// Request bytes taken off the ring, not yet a whole message.
    inbox: Vec<u8>,
    /// Reply bytes not yet on the ring (it was full).
    outbox: std::collections::VecDeque<u8>,
    notified: u32,
}

impl Sim {
    fn new() -> Self {
        let mut sim = Self {
            next_tx: 1,
            ..Self::default()
        };
        sim.tree
            .insert("/local/domain/1/name".into(), "tidepool".into());
        sim.tree.insert(
            "/local/domain/1/device/vbd/51712/backend".into(),
            "/be".into(),
        );
        sim.tree.insert(
            "/local/domain/1/device/vbd/51728/backend".into(),
            "/be2".into(),
        );
        sim
    }

    fn exists(&self, path: &str) -> bool {
        self.tree
            .keys()
            .any(|k| k == path || k.starts_with(&format!("{path}/")))
    }

    /// Takes every byte off the request ring (as xenstored does) and
    /// processes every complete request.
    fn serve(&mut self, page: &XenstoreInterface) {
        let prod = page.req_prod.load(Ordering::Acquire);
        let mut cons = page.req_cons.load(Ordering::Relaxed);
        while cons != prod {
            self.inbox
                .push(page.req[cons as usize % XENSTORE_RING_SIZE].load(Ordering::Relaxed));
            cons = cons.wrapping_add(1);
        }
        page.req_cons.store(cons, Ordering::Release);
        self.parse();
        self.flush(page);
    }

    fn parse(&mut self) {
        loop {
            if self.inbox.len() < HEADER_BYTES {
                return;
            }
            let word = |i: usize| u32::from_le_bytes(self.inbox[i..i + 4].try_into().unwrap());
            let (kind, id, tx, len) = (word(0), word(4), word(8), word(12) as usize);
            if self.inbox.len() < HEADER_BYTES + len {
                return;
            }
            let body: Vec<u8> = self.inbox[HEADER_BYTES..HEADER_BYTES + len].to_vec();
            self.inbox.drain(..HEADER_BYTES + len);
            self.requests.push((kind, id));
            match std::mem::take(&mut self.fault) {
                Fault::Silent => {
                    self.fault = Fault::Silent;
                    continue;
                }
                Fault::Raw(bytes) => {
                    self.outbox.extend(bytes);
                    continue;
                }
                Fault::None => {}
            }
            let (reply_kind, payload) = self.handle(kind, tx, &body);
            self.reply(reply_kind, id, tx, &payload);
            self.fire_watches();
        }
    }

    fn handle(&mut self, kind: u32, tx: u32, body: &[u8]) -> (u32, Vec<u8>) {
        let text = String::from_utf8(body.to_vec()).unwrap();
        let mut fields = text.split('\0');
        let path = fields.next().unwrap_or("").to_string();
        let err = |name: &str| (16, format!("{name}\0").into_bytes());
        match XsType::from_raw(kind) {
            Some(XsType::Read) => match self.tree.get(&path) {
                Some(v) => (kind, v.clone().into_bytes()),
                None if self.exists(&path) => (kind, Vec::new()),
                None => err("ENOENT"),
            },
            Some(XsType::Write) => {
                let value = fields.next().unwrap_or("").to_string();
                if tx != 0 {
                    self.transactions
                        .get_mut(&tx)
                        .unwrap()
                        .push((path, Some(value)));
                } else {
                    self.set(path, Some(value));
                }
                (kind, b"OK\0".to_vec())
            }
            Some(XsType::Mkdir) => {
                if !self.exists(&path) {
                    self.tree.insert(path, String::new());
                }
                (kind, b"OK\0".to_vec())
            }
            Some(XsType::Rm) => {
                if !self.exists(&path) {
                    return err("ENOENT");
                }
                self.set(path, None);
                (kind, b"OK\0".to_vec())
            }
            Some(XsType::Directory) => {
                if !self.exists(&path) {
                    return err("ENOENT");
                }
                let prefix = format!("{path}/");
                let mut names: Vec<String> = self
                    .tree
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(|rest| rest.split('/').next().unwrap().to_string())
                    .collect();
                names.dedup();
                let mut out = Vec::new();
                for name in names {
                    out.extend_from_slice(name.as_bytes());
                    out.push(0);
                }
                (kind, out)
            }
            Some(XsType::Watch) => {
                let token = fields.next().unwrap_or("").to_string();
                self.watches.push((path.clone(), token.clone()));
                // xenstored fires a new watch once.
                self.pending.push((path, token));
                (kind, b"OK\0".to_vec())
            }
            Some(XsType::Unwatch) => {
                let token = fields.next().unwrap_or("").to_string();
                self.watches.retain(|w| *w != (path.clone(), token.clone()));
                (kind, b"OK\0".to_vec())
            }
            Some(XsType::TransactionStart) => {
                let id = self.next_tx;
                self.next_tx += 1;
                self.transactions.insert(id, Vec::new());
                (kind, format!("{id}\0").into_bytes())
            }
            Some(XsType::TransactionEnd) => {
                let writes = self.transactions.remove(&tx).unwrap_or_default();
                if path == "T" {
                    if self.conflicts > 0 {
                        self.conflicts -= 1;
                        return err("EAGAIN");
                    }
                    for (p, v) in writes {
                        self.set(p, v);
                    }
                }
                (kind, b"OK\0".to_vec())
            }
            _ => err("ENOSYS"),
        }
    }

    fn set(&mut self, path: String, value: Option<String>) {
        match value {
            Some(v) => {
                self.tree.insert(path.clone(), v);
            }
            None => self
                .tree
                .retain(|k, _| k != &path && !k.starts_with(&format!("{path}/"))),
        }
        for (watched, token) in &self.watches {
            if path == *watched || path.starts_with(&format!("{watched}/")) {
                self.pending.push((path.clone(), token.clone()));
            }
        }
    }

    fn fire_watches(&mut self) {
        for (path, token) in std::mem::take(&mut self.pending) {
            self.reply(15, 0, 0, format!("{path}\0{token}\0").as_bytes());
        }
    }

    fn reply(&mut self, kind: u32, id: u32, tx: u32, payload: &[u8]) {
        for w in [kind, id, tx, payload.len() as u32] {
            self.outbox.extend(w.to_le_bytes());
        }
        self.outbox.extend(payload);
    }

    /// Moves what fits of the outbox onto the reply ring.
    fn flush(&mut self, page: &XenstoreInterface) {
        let cons = page.rsp_cons.load(Ordering::Acquire);
        let mut prod = page.rsp_prod.load(Ordering::Relaxed);
        while prod.wrapping_sub(cons) < XENSTORE_RING_SIZE as u32 {
            let Some(b) = self.outbox.pop_front() else {
                break;
            };
            page.rsp[prod as usize % XENSTORE_RING_SIZE].store(b, Ordering::Relaxed);
            prod = prod.wrapping_add(1);
        }
        page.rsp_prod.store(prod, Ordering::Release);
    }
}

/// The channel: a notification runs the server; a wait runs it too and
/// gives up after a few rounds without progress (the deadline).
struct Channel<'a> {
    page: &'a XenstoreInterface,
    sim: Rc<RefCell<Sim>>,
    idle_waits: u32,
}

impl StoreChannel for Channel<'_> {
    fn notify(&mut self) {
        let mut sim = self.sim.borrow_mut();
        sim.notified += 1;
        sim.serve(self.page);
        self.idle_waits = 0;
    }

    fn wait(&mut self) -> Result<(), ()> {
        self.sim.borrow_mut().serve(self.page);
        self.idle_waits += 1;
        if self.idle_waits > 16 {
            Err(())
        } else {
            Ok(())
        }
    }
}

fn client(page: &XenstoreInterface) -> (Xenstore<'_, Channel<'_>>, Rc<RefCell<Sim>>) {
    let sim = Rc::new(RefCell::new(Sim::new()));
    let channel = Channel {
        page,
        sim: sim.clone(),
        idle_waits: 0,
    };
    (Xenstore::new(page, channel), sim)
}

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
    for (errno, name) in ERRNOS {
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
