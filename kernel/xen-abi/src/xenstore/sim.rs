//! A simulated xenstored on a real interface page, for the client's tests
//! and the block front end's.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::*;

/// Writes a simulated peer makes when a path changes: given the tree and
/// the changed path, the (path, value) pairs to write (each fires watches).
pub type Hook = Box<dyn FnMut(&BTreeMap<String, String>, &str) -> Vec<(String, String)>>;

/// How the simulated server misbehaves.
#[derive(Default)]
pub enum Fault {
    #[default]
    None,
    /// Never answers.
    Silent,
    /// Answers the next request with these raw bytes instead.
    Raw(Vec<u8>),
}

/// A small xenstored: a tree of values, watches, transactions.
#[derive(Default)]
pub struct Sim {
    /// The store.
    pub tree: BTreeMap<String, String>,
    /// A peer reacting to writes.
    pub hook: Option<Hook>,
    watches: Vec<(String, String)>,
    /// Transactions and their buffered writes.
    transactions: BTreeMap<u32, Vec<(String, Option<String>)>>,
    next_tx: u32,
    /// Commits answered with EAGAIN before one succeeds.
    pub conflicts: u32,
    pub fault: Fault,
    /// Watch firings to send after the current reply.
    pending: Vec<(String, String)>,
    pub requests: Vec<(u32, u32)>,
    /// Request bytes taken off the ring, not yet a whole message.
    inbox: Vec<u8>,
    /// Reply bytes not yet on the ring (it was full).
    outbox: std::collections::VecDeque<u8>,
    notified: u32,
}

impl Sim {
    pub fn new() -> Self {
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
    pub fn serve(&mut self, page: &XenstoreInterface) {
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
        if let Some(mut hook) = self.hook.take() {
            for (p, v) in hook(&self.tree, &path) {
                self.set(p, Some(v));
            }
            self.hook = Some(hook);
        }
    }

    /// A write by another domain (a back end changing its state): fires
    /// the watches on `path` at once, with no request from the client.
    pub fn peer_write(&mut self, page: &XenstoreInterface, path: &str, value: &str) {
        self.set(path.into(), Some(value.into()));
        self.fire_watches();
        self.flush(page);
    }

    /// A watch event for `token` whatever the watches are (one xenstored
    /// sent before it processed an unwatch).
    pub fn send_event(&mut self, page: &XenstoreInterface, path: &str, token: &str) {
        self.pending.push((path.into(), token.into()));
        self.fire_watches();
        self.flush(page);
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
pub struct Channel<'a> {
    pub page: &'a XenstoreInterface,
    pub sim: Rc<RefCell<Sim>>,
    pub idle_waits: u32,
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

/// A client on `page` with a fresh simulated server.
pub fn client(page: &XenstoreInterface) -> (Xenstore<'_, Channel<'_>>, Rc<RefCell<Sim>>) {
    let sim = Rc::new(RefCell::new(Sim::new()));
    let channel = Channel {
        page,
        sim: sim.clone(),
        idle_waits: 0,
    };
    (Xenstore::new(page, channel), sim)
}
