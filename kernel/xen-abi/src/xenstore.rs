//! A xenstore client on the shared store ring (`xen/include/public/io/xs_wire.h`).
//!
//! The store page holds two 1 KiB byte rings (requests to xenstored,
//! responses from it) with free-running indices. A message is a 16-byte
//! header (`type`, `req_id`, `tx_id`, `len`) and `len` bytes of payload,
//! NUL-separated strings. [`Xenstore`] has one request outstanding at a
//! time, matches its reply by request id, queues watch events that arrive
//! meanwhile, maps xenstored's error strings to [`XsErrno`], and treats a
//! reply longer than [`XENSTORE_PAYLOAD_MAX`], a wrong id or type, or a ring
//! whose indices cannot be right as an error, never a wait without end: the
//! [`StoreChannel`] bounds every wait.

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

/// A xenstore client over one store page.
pub struct Xenstore<'a, C: StoreChannel> {
    page: &'a XenstoreInterface,
    channel: C,
    next_id: u32,
    events: VecDeque<WatchEvent>,
}

impl<'a, C: StoreChannel> Xenstore<'a, C> {
    /// A client on `page`, signalling through `channel`.
    pub fn new(page: &'a XenstoreInterface, channel: C) -> Self {
        Self {
            page,
            channel,
            next_id: 1,
            events: VecDeque::new(),
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

    /// Watches `path` (and everything under it); events carry `token`.
    /// xenstored fires it once at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request(
            XsType::Watch,
            TxId::NONE,
            path,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        )
        .map(drop)
    }

    /// Stops the watch of `path` with `token`.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request(
            XsType::Unwatch,
            TxId::NONE,
            path,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        )
        .map(drop)?;
        self.events.retain(|e| e.token != token);
        Ok(())
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

    /// The next queued watch event, without waiting.
    pub fn poll_event(&mut self) -> Result<Option<WatchEvent>, XsError> {
        while self.events.is_empty() && self.reply_available()? {
            let (header, body) = self.receive(XsType::WatchEvent)?;
            if header.kind != XsType::WatchEvent.raw() {
                return Err(XsError::WrongType {
                    sent: XsType::WatchEvent,
                    got: header.kind,
                });
            }
            self.queue_event(body)?;
        }
        Ok(self.events.pop_front())
    }

    /// The next watch event, waiting for one (bounded by the channel).
    pub fn wait_event(&mut self) -> Result<WatchEvent, XsError> {
        loop {
            if let Some(event) = self.poll_event()? {
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

    fn queue_event(&mut self, body: Vec<u8>) -> Result<(), XsError> {
        let text = utf8(XsType::WatchEvent, body)?;
        let mut fields = text.split('\0');
        let (Some(path), Some(token)) = (fields.next(), fields.next()) else {
            return Err(XsError::Malformed {
                op: XsType::WatchEvent,
                what: "watch event fields",
            });
        };
        self.events.push_back(WatchEvent {
            path: path.into(),
            token: token.into(),
        });
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
