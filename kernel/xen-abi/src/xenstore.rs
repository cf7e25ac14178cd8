//! A xenstore client on the shared store ring (`xen/include/public/io/xs_wire.h`).
//!
//! The store page holds two 1 KiB byte rings (requests to xenstored,
//! responses from it) with free-running indices. A message is a 16-byte
//! header (`type`, `req_id`, `tx_id`, `len`) and `len` bytes of payload,
//! NUL-separated strings. [`Xenstore`] has one request outstanding at a
//! time, matches its reply by request id, maps xenstored's error strings to
//! [`XsErrno`], and treats a reply longer than [`XENSTORE_PAYLOAD_MAX`], a
//! wrong id or type, or a ring whose indices cannot be right as an error,
//! never a wait without end: the [`StoreChannel`] bounds every wait.
//!
//! # Watch events
//!
//! Every watch has its own token and its own queue: an event read off the
//! ring (while a reply is awaited, or by any owner looking for its own) is
//! queued under its token, and only [`Xenstore::poll_event`] or
//! [`Xenstore::wait_event`] with that token takes it, in arrival order. So
//! several owners (two PV disks watching their back ends, the dom0less
//! guest's `device/vbd` watch) share the one ring without taking each
//! other's events. Memory is bounded: a queue holds at most
//! [`WATCH_EVENTS_MAX`] events, and an event arriving at a full queue
//! collapses it into one event naming the watched path itself. A watch event
//! only means "look again at or under this path", and the watched path
//! covers every path the dropped events named, so nothing an owner would
//! act on is lost. An event whose token no watch has (one xenstored sent
//! before it processed an unwatch) is dropped when it arrives, and
//! [`Xenstore::unwatch`] drops the events its watch still had queued.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// `XENSTORE_RING_SIZE`.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// `XENSTORE_PAYLOAD_MAX`: the longest payload either side may send.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Bytes of `struct xsd_sockmsg`.
pub const HEADER_BYTES: usize = 16;
/// Transactions retried this many times on `EAGAIN` before giving up.
pub const TRANSACTION_RETRIES: u32 = 8;
/// Watch events queued per watch before the queue collapses into one (see
/// the module's *Watch events*).
pub const WATCH_EVENTS_MAX: usize = 16;

/// `struct xenstore_domain_interface`.
#[repr(C)]
#[derive(Debug)]
pub struct XenstoreInterface {
    /// Requests (guest to xenstored).
    pub req: [AtomicU8; XENSTORE_RING_SIZE],
    /// Replies and watch events (xenstored to guest).
    pub rsp: [AtomicU8; XENSTORE_RING_SIZE],
    /// Requests consumed (xenstored).
    pub req_cons: AtomicU32,
    /// Requests produced (guest).
    pub req_prod: AtomicU32,
    /// Replies consumed (guest).
    pub rsp_cons: AtomicU32,
    /// Replies produced (xenstored).
    pub rsp_prod: AtomicU32,
    /// `XENSTORE_SERVER_FEATURE_*`.
    pub server_features: AtomicU32,
    /// `XENSTORE_CONNECTED` (0) or `XENSTORE_RECONNECT` (1).
    pub connection: AtomicU32,
    /// `XENSTORE_ERROR_*` set by the server.
    pub error: AtomicU32,
}

crate::assert_layout!(XenstoreInterface, size 2076, align 4,
    req @ 0, rsp @ 1024, req_cons @ 2048, req_prod @ 2052, rsp_cons @ 2056,
    rsp_prod @ 2060, server_features @ 2064, connection @ 2068, error @ 2072);

impl XenstoreInterface {
    /// An empty interface (for tests and simulated servers).
    pub const fn new() -> Self {
        Self {
            req: [const { AtomicU8::new(0) }; XENSTORE_RING_SIZE],
            rsp: [const { AtomicU8::new(0) }; XENSTORE_RING_SIZE],
            req_cons: AtomicU32::new(0),
            req_prod: AtomicU32::new(0),
            rsp_cons: AtomicU32::new(0),
            rsp_prod: AtomicU32::new(0),
            server_features: AtomicU32::new(0),
            connection: AtomicU32::new(0),
            error: AtomicU32::new(0),
        }
    }
}

impl Default for XenstoreInterface {
    fn default() -> Self {
        Self::new()
    }
}

/// `enum xsd_sockmsg_type`, the ones this client sends or receives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XsType {
    /// `XS_DIRECTORY`.
    Directory,
    /// `XS_READ`.
    Read,
    /// `XS_WATCH`.
    Watch,
    /// `XS_UNWATCH`.
    Unwatch,
    /// `XS_TRANSACTION_START`.
    TransactionStart,
    /// `XS_TRANSACTION_END`.
    TransactionEnd,
    /// `XS_WRITE`.
    Write,
    /// `XS_MKDIR`.
    Mkdir,
    /// `XS_RM`.
    Rm,
    /// `XS_WATCH_EVENT`.
    WatchEvent,
    /// `XS_ERROR`.
    Error,
}

impl XsType {
    /// The wire value.
    pub const fn raw(self) -> u32 {
        match self {
            Self::Directory => 1,
            Self::Read => 2,
            Self::Watch => 4,
            Self::Unwatch => 5,
            Self::TransactionStart => 6,
            Self::TransactionEnd => 7,
            Self::Write => 11,
            Self::Mkdir => 12,
            Self::Rm => 13,
            Self::WatchEvent => 15,
            Self::Error => 16,
        }
    }

    /// The type with wire value `raw`, if this client knows it.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Directory,
            2 => Self::Read,
            4 => Self::Watch,
            5 => Self::Unwatch,
            6 => Self::TransactionStart,
            7 => Self::TransactionEnd,
            11 => Self::Write,
            12 => Self::Mkdir,
            13 => Self::Rm,
            15 => Self::WatchEvent,
            16 => Self::Error,
            _ => return None,
        })
    }
}

/// xenstored's error names (`xsd_errors[]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XsErrno {
    /// `EINVAL`.
    Inval,
    /// `EACCES`.
    Access,
    /// `EEXIST`.
    Exist,
    /// `EISDIR`.
    IsDir,
    /// `ENOENT`.
    NoEnt,
    /// `ENOMEM`.
    NoMem,
    /// `ENOSPC`.
    NoSpc,
    /// `EIO`.
    Io,
    /// `ENOTEMPTY`.
    NotEmpty,
    /// `ENOSYS`.
    NoSys,
    /// `EROFS`.
    RoFs,
    /// `EBUSY`.
    Busy,
    /// `EAGAIN`: a transaction conflicted; retry it.
    Again,
    /// `EISCONN`.
    IsConn,
    /// `E2BIG`.
    TooBig,
    /// `EPERM`.
    Perm,
    /// `EQUOTA`.
    Quota,
}

// Matches rather than a table of names: a table of `&str` costs a
// relocation per entry in the kernel Image, which has a size limit.
impl XsErrno {
    /// The error xenstored names `name`, if it is one of `xsd_errors`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "EINVAL" => Self::Inval,
            "EACCES" => Self::Access,
            "EEXIST" => Self::Exist,
            "EISDIR" => Self::IsDir,
            "ENOENT" => Self::NoEnt,
            "ENOMEM" => Self::NoMem,
            "ENOSPC" => Self::NoSpc,
            "EIO" => Self::Io,
            "ENOTEMPTY" => Self::NotEmpty,
            "ENOSYS" => Self::NoSys,
            "EROFS" => Self::RoFs,
            "EBUSY" => Self::Busy,
            "EAGAIN" => Self::Again,
            "EISCONN" => Self::IsConn,
            "E2BIG" => Self::TooBig,
            "EPERM" => Self::Perm,
            "EQUOTA" => Self::Quota,
            _ => return None,
        })
    }

    /// xenstored's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inval => "EINVAL",
            Self::Access => "EACCES",
            Self::Exist => "EEXIST",
            Self::IsDir => "EISDIR",
            Self::NoEnt => "ENOENT",
            Self::NoMem => "ENOMEM",
            Self::NoSpc => "ENOSPC",
            Self::Io => "EIO",
            Self::NotEmpty => "ENOTEMPTY",
            Self::NoSys => "ENOSYS",
            Self::RoFs => "EROFS",
            Self::Busy => "EBUSY",
            Self::Again => "EAGAIN",
            Self::IsConn => "EISCONN",
            Self::TooBig => "E2BIG",
            Self::Perm => "EPERM",
            Self::Quota => "EQUOTA",
        }
    }
}

/// What went wrong talking to xenstored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum XsError {
    /// xenstored refused the request.
    Errno {
        /// The request.
        op: XsType,
        /// The path it named (empty for transactions).
        path: String,
        /// The error.
        errno: XsErrno,
    },
    /// xenstored sent an error string that is not one of `xsd_errors`.
    UnknownError(String),
    /// The request would exceed [`XENSTORE_PAYLOAD_MAX`].
    RequestTooLong {
        /// Its payload length.
        len: usize,
    },
    /// A reply announced more than [`XENSTORE_PAYLOAD_MAX`] bytes.
    ReplyTooLong {
        /// The length in its header.
        len: u32,
    },
    /// A reply answered another request.
    WrongRequestId {
        /// The id sent.
        sent: u32,
        /// The id received.
        got: u32,
    },
    /// A reply of another type than the request (or of an unknown type).
    WrongType {
        /// The request.
        sent: XsType,
        /// The type received.
        got: u32,
    },
    /// A reply's payload is not what its type requires (e.g. not UTF-8, a
    /// transaction id that is not a number, a watch event without a token).
    Malformed {
        /// The request.
        op: XsType,
        /// What was wrong.
        what: &'static str,
    },
    /// The ring's indices are impossible (more in flight than it holds).
    RingCorrupt {
        /// `"req"` or `"rsp"`.
        ring: &'static str,
        /// Its producer index.
        prod: u32,
        /// Its consumer index.
        cons: u32,
    },
    /// xenstored did not answer in time.
    Timeout {
        /// The request.
        op: XsType,
    },
    /// A transaction still conflicted after [`TRANSACTION_RETRIES`] tries.
    TransactionRetries,
    /// A watch with this token exists already: each watch's token must be
    /// its own, since it says whose queue its events go to.
    TokenInUse {
        /// The token.
        token: String,
    },
    /// No watch has this token: nothing will ever come for it.
    NotWatched {
        /// The token.
        token: String,
    },
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Errno { op, path, errno } => {
                write!(f, "{op:?} {path:?}: {}", errno.name())
            }
            Self::UnknownError(name) => write!(f, "unknown xenstore error {name:?}"),
            Self::RequestTooLong { len } => {
                write!(f, "request of {len} bytes")
            }
            Self::ReplyTooLong { len } => {
                write!(f, "reply of {len} bytes")
            }
            Self::WrongRequestId { sent, got } => {
                write!(f, "reply id {got}, sent {sent}")
            }
            Self::WrongType { sent, got } => write!(f, "reply type {got} to {sent:?}"),
            Self::Malformed { op, what } => write!(f, "malformed reply to {op:?}: {what}"),
            Self::RingCorrupt { ring, prod, cons } => {
                write!(f, "{ring} ring corrupt: prod {prod} cons {cons}")
            }
            Self::Timeout { op } => write!(f, "no reply to {op:?}"),
            Self::TransactionRetries => f.write_str("transaction kept conflicting"),
            Self::TokenInUse { token } => write!(f, "watch token {token:?} already in use"),
            Self::NotWatched { token } => write!(f, "no watch with token {token:?}"),
        }
    }
}

/// The event channel to xenstored, as the client needs it.
pub trait StoreChannel {
    /// Signals xenstored that the rings changed.
    fn notify(&mut self);
    /// Waits until xenstored may have signalled; `Err(())` once the
    /// deadline of the current request has passed.
    #[allow(clippy::result_unit_err)]
    fn wait(&mut self) -> Result<(), ()>;
}

/// A transaction id (0: none).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TxId(pub u32);

impl TxId {
    /// Outside any transaction.
    pub const NONE: Self = Self(0);
}

/// A watch firing: the path that changed and the watch's token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WatchEvent {
    /// The path that changed (at or under the watched one).
    pub path: String,
    /// The token given to [`Xenstore::watch`].
    pub token: String,
}

/// One watch: its path, its token and the events queued for it.
struct Watch {
    path: String,
    token: String,
    /// Paths of the events not taken yet, oldest first; at most
    /// [`WATCH_EVENTS_MAX`].
    events: VecDeque<String>,
}

impl Watch {
    /// Queues an event for `path`; a full queue collapses into one event
    /// for the watched path (see the module's *Watch events*).
    fn push(&mut self, path: String) {
        if self.events.len() == WATCH_EVENTS_MAX {
            self.events.clear();
            self.events.push_back(self.path.clone());
        } else {
            self.events.push_back(path);
        }
    }
}

/// A xenstore client over one store page.
pub struct Xenstore<'a, C: StoreChannel> {
    page: &'a XenstoreInterface,
    channel: C,
    next_id: u32,
    watches: Vec<Watch>,
}

impl<'a, C: StoreChannel> Xenstore<'a, C> {
    /// A client on `page`, signalling through `channel`.
    pub fn new(page: &'a XenstoreInterface, channel: C) -> Self {
        Self {
            page,
            channel,
            next_id: 1,
            watches: Vec::new(),
        }
    }

    /// Reads `path`.
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<String, XsError> {
        let reply = self.request(XsType::Read, tx, path, &[path.as_bytes(), b"\0"])?;
        utf8(XsType::Read, reply)
    }

    /// Writes `value` at `path` (creating it and its parents).
    pub fn write(&mut self, tx: TxId, path: &str, value: &str) -> Result<(), XsError> {
        self.request(
            XsType::Write,
            tx,
            path,
            &[path.as_bytes(), b"\0", value.as_bytes()],
        )
        .map(drop)
    }

    /// Creates the directory `path`.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.request(XsType::Mkdir, tx, path, &[path.as_bytes(), b"\0"])
            .map(drop)
    }

    /// Removes `path` and everything under it.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.request(XsType::Rm, tx, path, &[path.as_bytes(), b"\0"])
            .map(drop)
    }

    /// The names of `path`'s children.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        let reply = self.request(XsType::Directory, tx, path, &[path.as_bytes(), b"\0"])?;
        let text = utf8(XsType::Directory, reply)?;
        Ok(text
            .split('\0')
            .filter(|name| !name.is_empty())
            .map(String::from)
            .collect())
    }

    /// Watches `path` (and everything under it); its events are queued
    /// under `token`, which no other watch may have
    /// ([`XsError::TokenInUse`]), for [`Self::poll_event`] and
    /// [`Self::wait_event`] with it. xenstored fires it once at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        if self.watches.iter().any(|w| w.token == token) {
            return Err(XsError::TokenInUse {
                token: token.into(),
            });
        }
        // Registered before the request: the first firing may follow the
        // reply at once.
        self.watches.push(Watch {
            path: path.into(),
            token: token.into(),
            events: VecDeque::new(),
        });
        let result = self.request(
            XsType::Watch,
            TxId::NONE,
            path,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        );
        if result.is_err() {
            self.forget(path, token);
        }
        result.map(drop)
    }

    /// Stops the watch of `path` with `token` and drops the events it
    /// still had queued; later events with its token are dropped when they
    /// arrive. The watch is forgotten here even if xenstored refuses.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let result = self.request(
            XsType::Unwatch,
            TxId::NONE,
            path,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        );
        self.forget(path, token);
        result.map(drop)
    }

    fn forget(&mut self, path: &str, token: &str) {
        self.watches
            .retain(|w| !(w.path == path && w.token == token));
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let reply = self.request(XsType::TransactionStart, TxId::NONE, "", &[b"\0"])?;
        let text = utf8(XsType::TransactionStart, reply)?;
        text.trim_end_matches('\0')
            .parse()
            .ok()
            .filter(|&id| id != 0)
            .map(TxId)
            .ok_or(XsError::Malformed {
                op: XsType::TransactionStart,
                what: "bad transaction id",
            })
    }

    /// Ends transaction `tx`, committing it or not; `EAGAIN` means it
    /// conflicted and nothing was written.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        let verdict: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(XsType::TransactionEnd, tx, "", &[verdict])
            .map(drop)
    }

    /// Runs `body` in a transaction and commits it, starting again when
    /// xenstored reports a conflict (`EAGAIN`, from the body or the commit),
    /// at most [`TRANSACTION_RETRIES`] times. Any other error aborts the
    /// transaction and is returned.
    pub fn transaction<T>(
        &mut self,
        mut body: impl FnMut(&mut Self, TxId) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        for _ in 0..TRANSACTION_RETRIES {
            let tx = self.transaction_start()?;
            let value = match body(self, tx) {
                Ok(value) => value,
                Err(err) => {
                    // The transaction is abandoned either way.
                    let _ = self.transaction_end(tx, false);
                    if is_again(&err) {
                        continue;
                    }
                    return Err(err);
                }
            };
            match self.transaction_end(tx, true) {
                Ok(()) => return Ok(value),
                Err(err) if is_again(&err) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(XsError::TransactionRetries)
    }

    /// The oldest event of the watch with `token`, without waiting. Every
    /// event already on the ring is queued under its own token first;
    /// other watches' events stay queued for their owners.
    pub fn poll_event(&mut self, token: &str) -> Result<Option<WatchEvent>, XsError> {
        while self.reply_available()? {
            let (header, body) = self.receive(XsType::WatchEvent)?;
            if header.kind != XsType::WatchEvent.raw() {
                return Err(XsError::WrongType {
                    sent: XsType::WatchEvent,
                    got: header.kind,
                });
            }
            self.queue_event(body)?;
        }
        let watch = self
            .watches
            .iter_mut()
            .find(|w| w.token == token)
            .ok_or_else(|| XsError::NotWatched {
                token: token.into(),
            })?;
        Ok(watch.events.pop_front().map(|path| WatchEvent {
            path,
            token: token.into(),
        }))
    }

    /// The oldest event of the watch with `token`, waiting for one (each
    /// wait bounded by the channel; other watches' events that arrive
    /// meanwhile stay queued for their owners).
    pub fn wait_event(&mut self, token: &str) -> Result<WatchEvent, XsError> {
        loop {
            if let Some(event) = self.poll_event(token)? {
                return Ok(event);
            }
            self.channel.wait().map_err(|()| XsError::Timeout {
                op: XsType::WatchEvent,
            })?;
        }
    }

    fn reply_available(&self) -> Result<bool, XsError> {
        let prod = self.page.rsp_prod.load(Ordering::Acquire);
        let cons = self.page.rsp_cons.load(Ordering::Relaxed);
        check_ring("rsp", prod, cons)?;
        Ok(prod != cons)
    }

    fn request(
        &mut self,
        op: XsType,
        tx: TxId,
        path: &str,
        parts: &[&[u8]],
    ) -> Result<Vec<u8>, XsError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::RequestTooLong { len });
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut header = [0u8; HEADER_BYTES];
        for (i, word) in [op.raw(), id, tx.0, len as u32].into_iter().enumerate() {
            header[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        self.send(op, &header)?;
        for part in parts {
            self.send(op, part)?;
        }
        loop {
            let (reply, body) = self.receive(op)?;
            if reply.kind == XsType::WatchEvent.raw() {
                self.queue_event(body)?;
                continue;
            }
            if reply.req_id != id {
                return Err(XsError::WrongRequestId {
                    sent: id,
                    got: reply.req_id,
                });
            }
            if reply.kind == XsType::Error.raw() {
                let name = utf8(op, body)?;
                let name = name.trim_end_matches('\0');
                return Err(match XsErrno::from_name(name) {
                    Some(errno) => XsError::Errno {
                        op,
                        path: path.into(),
                        errno,
                    },
                    None => XsError::UnknownError(name.into()),
                });
            }
            if reply.kind != op.raw() {
                return Err(XsError::WrongType {
                    sent: op,
                    got: reply.kind,
                });
            }
            return Ok(body);
        }
    }

    /// Queues an event under its token; one for a token no watch has is
    /// dropped.
    fn queue_event(&mut self, body: Vec<u8>) -> Result<(), XsError> {
        let text = utf8(XsType::WatchEvent, body)?;
        let mut fields = text.split('\0');
        let (Some(path), Some(token)) = (fields.next(), fields.next()) else {
            return Err(XsError::Malformed {
                op: XsType::WatchEvent,
                what: "watch event fields",
            });
        };
        if let Some(watch) = self.watches.iter_mut().find(|w| w.token == token) {
            watch.push(path.into());
        }
        Ok(())
    }

    /// Writes all of `bytes` to the request ring.
    fn send(&mut self, op: XsType, mut bytes: &[u8]) -> Result<(), XsError> {
        while !bytes.is_empty() {
            let cons = self.page.req_cons.load(Ordering::Acquire);
            let prod = self.page.req_prod.load(Ordering::Relaxed);
            check_ring("req", prod, cons)?;
            let room = XENSTORE_RING_SIZE - prod.wrapping_sub(cons) as usize;
            if room == 0 {
                self.channel.notify();
                self.channel.wait().map_err(|()| XsError::Timeout { op })?;
                continue;
            }
            let n = room.min(bytes.len());
            for (i, &b) in bytes[..n].iter().enumerate() {
                let at = prod.wrapping_add(i as u32) as usize % XENSTORE_RING_SIZE;
                self.page.req[at].store(b, Ordering::Relaxed);
            }
            self.page
                .req_prod
                .store(prod.wrapping_add(n as u32), Ordering::Release);
            self.channel.notify();
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes from the reply ring.
    fn recv(&mut self, op: XsType, buf: &mut [u8]) -> Result<(), XsError> {
        let mut got = 0;
        while got < buf.len() {
            let prod = self.page.rsp_prod.load(Ordering::Acquire);
            let cons = self.page.rsp_cons.load(Ordering::Relaxed);
            check_ring("rsp", prod, cons)?;
            let avail = prod.wrapping_sub(cons) as usize;
            if avail == 0 {
                self.channel.wait().map_err(|()| XsError::Timeout { op })?;
                continue;
            }
            let n = avail.min(buf.len() - got);
            for (i, slot) in buf[got..got + n].iter_mut().enumerate() {
                let at = cons.wrapping_add(i as u32) as usize % XENSTORE_RING_SIZE;
                *slot = self.page.rsp[at].load(Ordering::Relaxed);
            }
            self.page
                .rsp_cons
                .store(cons.wrapping_add(n as u32), Ordering::Release);
            self.channel.notify();
            got += n;
        }
        Ok(())
    }

    /// One whole message: its header and payload.
    fn receive(&mut self, op: XsType) -> Result<(Header, Vec<u8>), XsError> {
        let mut raw = [0u8; HEADER_BYTES];
        self.recv(op, &mut raw)?;
        let word = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let header = Header {
            kind: word(0),
            req_id: word(4),
            len: word(12),
        };
        if header.len as usize > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::ReplyTooLong { len: header.len });
        }
        let mut body = alloc::vec![0u8; header.len as usize];
        self.recv(op, &mut body)?;
        Ok((header, body))
    }
}

struct Header {
    kind: u32,
    req_id: u32,
    len: u32,
}

fn is_again(err: &XsError) -> bool {
    matches!(
        err,
        XsError::Errno {
            errno: XsErrno::Again,
            ..
        }
    )
}

fn check_ring(ring: &'static str, prod: u32, cons: u32) -> Result<(), XsError> {
    if prod.wrapping_sub(cons) as usize > XENSTORE_RING_SIZE {
        return Err(XsError::RingCorrupt { ring, prod, cons });
    }
    Ok(())
}

fn utf8(op: XsType, bytes: Vec<u8>) -> Result<String, XsError> {
    String::from_utf8(bytes).map_err(|_| XsError::Malformed {
        op,
        what: "not UTF-8",
    })
}

#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
