//! The PV block front end's protocol logic: the XenbusState handshake with
//! the back end over xenstore (`io/blkif.h`, `io/xenbus.h`), request
//! building, and checking every response before it is trusted.
//!
//! The kernel supplies what touches memory (the ring page, grants, the
//! event channel); everything here is host-tested against the simulated
//! xenstored with a simulated Linux blkback.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::blkif::{
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_RING_ORDER, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SEGMENTS_PER_INDIRECT_PAGE,
    BlkifRequest, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse, blkif_ring_slots,
};
use crate::domain::DomId;
use crate::event::EvtchnPort;
use crate::grant::GrantRef;
use crate::xenstore::{StoreChannel, TxId, Xenstore, XsErrno, XsError};

/// Bytes of a sector as blkif counts them, whatever `sector-size` says.
pub const BLKIF_SECTOR_BYTES: usize = 512;
/// Sectors of a 4 KiB page.
pub const SECTORS_PER_PAGE: usize = 8;
/// `VDISK_READONLY` in the back end's `info`.
pub const VDISK_READONLY: u32 = 4;
/// Looks at the back end's state while waiting for it to change, each
/// after a watch event or a bounded wait of the store channel without one,
/// before giving up. The back end may wait for dom0's hotplug script (a bash
/// script, seconds under emulation) before it connects.
const STATE_EVENTS_MAX: u32 = 24;
/// The same for a back end that is closing: it answers from its own
/// xenstore watch, with no script to wait for, so a back end that does not
/// (its domain died) holds the front end's close (and so the guest's
/// power-off, or its console monitor) for a few waits, not two minutes.
const CLOSE_EVENTS_MAX: u32 = 3;

/// `enum xenbus_state`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XenbusState {
    /// 0.
    Unknown,
    /// 1.
    Initialising,
    /// 2: the back end published its features.
    InitWait,
    /// 3: the front end published its ring.
    Initialised,
    /// 4.
    Connected,
    /// 5.
    Closing,
    /// 6.
    Closed,
    /// 7.
    Reconfiguring,
    /// 8.
    Reconfigured,
}

impl XenbusState {
    /// The number xenstore holds.
    pub const fn raw(self) -> u32 {
        match self {
            Self::Unknown => 0,
            Self::Initialising => 1,
            Self::InitWait => 2,
            Self::Initialised => 3,
            Self::Connected => 4,
            Self::Closing => 5,
            Self::Closed => 6,
            Self::Reconfiguring => 7,
            Self::Reconfigured => 8,
        }
    }

    fn from_raw(raw: u32) -> Option<Self> {
        [
            Self::Unknown,
            Self::Initialising,
            Self::InitWait,
            Self::Initialised,
            Self::Connected,
            Self::Closing,
            Self::Closed,
            Self::Reconfiguring,
            Self::Reconfigured,
        ]
        .into_iter()
        .find(|s| s.raw() == raw)
    }
}

/// What went wrong in the block front end.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BlkfrontError {
    /// A xenstore operation failed.
    Store(XsError),
    /// A key holds something that cannot be right.
    BadKey {
        /// The key's path.
        path: String,
        /// Its value.
        value: String,
    },
    /// The back end is closing or closed (detached, or its domain died).
    BackendClosed {
        /// The state it reported.
        state: XenbusState,
    },
    /// The back end did not reach the wanted state.
    StateTimeout {
        /// The state wanted.
        want: XenbusState,
        /// The last state seen.
        seen: XenbusState,
    },
    /// The disk is read-only and a write was asked for.
    ReadOnly,
    /// A request is malformed (no segments, too many, a sector range
    /// outside its page).
    BadRequest(&'static str),
    /// Every request slot is in use.
    Busy,
    /// A response names no request in flight.
    UnknownId {
        /// Its id.
        id: u64,
    },
    /// A response's operation is not its request's.
    WrongOperation {
        /// The request id.
        id: u64,
        /// The operation sent.
        sent: u8,
        /// The operation in the response.
        got: u8,
    },
    /// A status blkif does not define.
    BadStatus {
        /// The request id.
        id: u64,
        /// The status.
        status: i16,
    },
    /// The back end failed the request (`BLKIF_RSP_ERROR`).
    Io {
        /// The operation.
        op: u8,
        /// Its first sector.
        sector: u64,
    },
    /// The back end does not support the operation (`BLKIF_RSP_EOPNOTSUPP`).
    NotSupported {
        /// The operation.
        op: u8,
    },
    /// A request got no response in time.
    Timeout {
        /// The operation.
        op: u8,
        /// Its first sector.
        sector: u64,
    },
}

impl From<XsError> for BlkfrontError {
    fn from(error: XsError) -> Self {
        Self::Store(error)
    }
}

fn op_name(op: u8) -> &'static str {
    match op {
        BLKIF_OP_READ => "read",
        BLKIF_OP_WRITE => "write",
        BLKIF_OP_FLUSH_DISKCACHE => "flush",
        _ => "op?",
    }
}

impl fmt::Display for BlkfrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(error) => write!(f, "xenstore: {error}"),
            Self::BadKey { path, value } => write!(f, "{path} = {value:?} is not valid"),
            Self::BackendClosed { state } => write!(f, "back end went away (state {state:?})"),
            Self::StateTimeout { want, seen } => {
                write!(f, "back end not {want:?} (still {seen:?})")
            }
            Self::ReadOnly => f.write_str("the disk is read-only"),
            Self::BadRequest(what) => write!(f, "bad request: {what}"),
            Self::Busy => f.write_str("no free request slot"),
            Self::UnknownId { id } => write!(f, "response for unknown request id {id:#x}"),
            Self::WrongOperation { id, sent, got } => {
                write!(f, "response {id:#x}: op {got}, sent {}", op_name(*sent))
            }
            Self::BadStatus { id, status } => {
                write!(f, "response {id:#x}: bad status {status}")
            }
            Self::Io { op, sector } => {
                write!(f, "{} at sector {sector} failed", op_name(*op))
            }
            Self::NotSupported { op } => {
                write!(f, "{} not supported", op_name(*op))
            }
            Self::Timeout { op, sector } => {
                write!(f, "{} at sector {sector} timed out", op_name(*op))
            }
        }
    }
}

/// One virtual block device and its back end.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Vbd {
    /// Its id under `device/vbd` (51712 is xvda).
    pub devid: u32,
    /// The front end's directory (relative to the domain's home).
    pub frontend: String,
    /// The back end's directory.
    pub backend: String,
    /// The back end's domain.
    pub backend_id: DomId,
}

/// What the back end offers before connecting.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BackendFeatures {
    /// `max-ring-page-order` (0 if absent).
    pub max_ring_page_order: u32,
    /// `feature-max-indirect-segments` (0: no indirect requests).
    pub max_indirect_segments: u32,
    /// `feature-persistent`.
    pub persistent: bool,
}

/// What the back end says about the disk when it connects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// The disk's logical sector size.
    pub sector_size: u32,
    /// `info & VDISK_READONLY`.
    pub read_only: bool,
    /// `feature-flush-cache`.
    pub flush: bool,
}

/// The virtual disk name Linux gives a devid (`xvda` for 51712).
pub fn disk_name(devid: u32) -> String {
    // Xen's vdev numbering: 202 << 8 | disk << 4 | partition.
    if devid >> 8 == 202 {
        let disk = (devid >> 4) & 0xf;
        format!("xvd{}", char::from(b'a' + disk as u8))
    } else {
        format!("vbd{devid}")
    }
}

fn parse<T: core::str::FromStr>(path: &str, value: String) -> Result<T, BlkfrontError> {
    value.trim().parse().map_err(|_| BlkfrontError::BadKey {
        path: path.into(),
        value,
    })
}

/// Reads an optional number: absent is `None`.
fn read_opt<C: StoreChannel, T: core::str::FromStr>(
    xs: &mut Xenstore<'_, C>,
    path: &str,
) -> Result<Option<T>, BlkfrontError> {
    match xs.read(TxId::NONE, path) {
        Ok(value) => parse(path, value).map(Some),
        Err(XsError::Errno {
            errno: XsErrno::NoEnt,
            ..
        }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The devids under `device/vbd` (none if the directory does not exist).
pub fn find_vbds<C: StoreChannel>(xs: &mut Xenstore<'_, C>) -> Result<Vec<u32>, BlkfrontError> {
    let names = match xs.directory(TxId::NONE, "device/vbd") {
        Ok(names) => names,
        Err(XsError::Errno {
            errno: XsErrno::NoEnt,
            ..
        }) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    names
        .into_iter()
        .map(|name| parse("device/vbd", name))
        .collect()
}

/// The back end's state.
pub fn backend_state<C: StoreChannel>(
    xs: &mut Xenstore<'_, C>,
    vbd: &Vbd,
) -> Result<XenbusState, BlkfrontError> {
    let path = format!("{}/state", vbd.backend);
    let raw: u32 = parse(&path, xs.read(TxId::NONE, &path)?)?;
    XenbusState::from_raw(raw).ok_or(BlkfrontError::BadKey {
        path,
        value: format!("{raw}"),
    })
}

/// Finds device `devid`'s back end, waits until it has published its
/// features (InitWait) and reads them.
pub fn probe<C: StoreChannel>(
    xs: &mut Xenstore<'_, C>,
    devid: u32,
) -> Result<(Vbd, BackendFeatures), BlkfrontError> {
    let frontend = format!("device/vbd/{devid}");
    let backend = xs.read(TxId::NONE, &format!("{frontend}/backend"))?;
    let id_path = format!("{frontend}/backend-id");
    let backend_id: u16 = parse(&id_path, xs.read(TxId::NONE, &id_path)?)?;
    let vbd = Vbd {
        devid,
        frontend,
        backend,
        backend_id: DomId(backend_id),
    };
    // The features are there once the back end is in InitWait (a device
    // just attached may still be Initialising).
    wait_for_backend(xs, &vbd, XenbusState::InitWait)?;
    let features = BackendFeatures {
        max_ring_page_order: read_opt(xs, &format!("{}/max-ring-page-order", vbd.backend))?
            .unwrap_or(0),
        max_indirect_segments: read_opt(
            xs,
            &format!("{}/feature-max-indirect-segments", vbd.backend),
        )?
        .unwrap_or(0),
        persistent: read_opt::<_, u32>(xs, &format!("{}/feature-persistent", vbd.backend))?
            == Some(1),
    };
    Ok((vbd, features))
}

/// Grants of a front end that Linux's blkback keeps mapped
/// (`max_persistent_grants`, default 1056: 32 requests of 32 segments and an
/// indirect page, what Linux's blkfront keeps on a one-page ring). Beyond
/// them blkback maps and unmaps grants for every request and purges its
/// mappings by LRU. Blkback does not advertise the number in xenstore.
pub const BLKBACK_PERSISTENT_GRANTS: usize = 1056;

/// The shared ring the front end sets up for a back end, and how many
/// requests it keeps in flight on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RingLayout {
    /// `ring-page-order`: the ring is `2^order` pages.
    pub order: u32,
    /// Entries of the ring (`BLK_RING_SIZE`).
    pub entries: usize,
    /// Requests in flight at most: one ring entry each, so never more than
    /// the ring holds.
    pub requests: usize,
}

impl RingLayout {
    /// The ring for a back end offering `max-ring-page-order` `offered` (0
    /// when it offers none: one page, published as `ring-ref`), for a front
    /// end that keeps at most `in_flight` requests in flight (the block
    /// layer's `MAX_IN_FLIGHT`), each with `grants_per_request` pages kept
    /// granted, against a back end that keeps `persistent_grants` of them
    /// mapped ([`BLKBACK_PERSISTENT_GRANTS`] for Linux's blkback).
    ///
    /// The requests in flight are as many as `in_flight` allows whose pages
    /// all fit the back end's persistent grants: more would have the back
    /// end map and unmap pages for every request, which cut sequential
    /// throughput by 1.5-2.8x when measured (42 requests of 33 grants
    /// against blkback's 1056: 26-29 MiB/s, against 43-79 with 32, in
    /// alternated runs on the same noisy host). The order is
    /// then the smallest whose ring holds those requests, within the offer
    /// and [`BLKIF_MAX_RING_ORDER`]: each request in flight takes one ring
    /// entry, so more entries only cost pages and grants. Against Linux's
    /// blkback with 128 KiB indirect requests that is one page (32
    /// requests); with direct requests (11 grants) or a larger grant budget,
    /// two pages (64 entries) for 42. A back end offering less gets the
    /// largest ring it takes, and the requests shrink to its entries.
    pub fn choose(
        offered: u32,
        in_flight: usize,
        grants_per_request: usize,
        persistent_grants: usize,
    ) -> Self {
        let wanted = in_flight
            .min(persistent_grants / grants_per_request.max(1))
            .max(1);
        let cap = offered.min(BLKIF_MAX_RING_ORDER);
        let order = (0..=cap)
            .find(|&order| blkif_ring_slots(order) >= wanted)
            .unwrap_or(cap);
        let entries = blkif_ring_slots(order);
        Self {
            order,
            entries,
            requests: entries.min(wanted),
        }
    }

    /// Pages of the ring.
    pub const fn pages(&self) -> usize {
        1 << self.order
    }
}

/// What the front end publishes.
#[derive(Clone, Copy, Debug)]
pub struct FrontendSetup<'a> {
    /// The ring's pages, granted to the back end (one: `ring-ref`; more:
    /// `ring-page-order` and `ring-refN`).
    pub ring_refs: &'a [GrantRef],
    /// The front end's port, unbound for the back end's domain.
    pub port: EvtchnPort,
    /// Ask for persistent grants (`feature-persistent`).
    pub persistent: bool,
}

/// Publishes the ring and event channel and moves to Initialised, in one
/// transaction (retried on conflicts).
pub fn publish<C: StoreChannel>(
    xs: &mut Xenstore<'_, C>,
    vbd: &Vbd,
    setup: &FrontendSetup<'_>,
) -> Result<(), BlkfrontError> {
    let pages = setup.ring_refs.len();
    if !pages.is_power_of_two() {
        return Err(BlkfrontError::BadRequest("ring pages not 2^n"));
    }
    let fe = &vbd.frontend;
    xs.transaction(|xs, tx| {
        if pages == 1 {
            xs.write(
                tx,
                &format!("{fe}/ring-ref"),
                &format!("{}", setup.ring_refs[0].0),
            )?;
        } else {
            xs.write(
                tx,
                &format!("{fe}/ring-page-order"),
                &format!("{}", pages.trailing_zeros()),
            )?;
            for (i, gref) in setup.ring_refs.iter().enumerate() {
                xs.write(tx, &format!("{fe}/ring-ref{i}"), &format!("{}", gref.0))?;
            }
        }
        xs.write(
            tx,
            &format!("{fe}/event-channel"),
            &format!("{}", setup.port.0),
        )?;
        xs.write(tx, &format!("{fe}/protocol"), "arm-abi")?;
        xs.write(
            tx,
            &format!("{fe}/feature-persistent"),
            if setup.persistent { "1" } else { "0" },
        )?;
        xs.write(
            tx,
            &format!("{fe}/state"),
            &format!("{}", XenbusState::Initialised.raw()),
        )
    })?;
    Ok(())
}

/// Sets the front end's state.
pub fn set_state<C: StoreChannel>(
    xs: &mut Xenstore<'_, C>,
    vbd: &Vbd,
    state: XenbusState,
) -> Result<(), BlkfrontError> {
    xs.write(
        TxId::NONE,
        &format!("{}/state", vbd.frontend),
        &format!("{}", state.raw()),
    )?;
    Ok(())
}

/// Waits (through a watch on the back end's state) until the back end is
/// `want` (or past it: Initialised or Connected for InitWait, Closed for
/// Closing). Closing or Closed on the way is
/// [`BlkfrontError::BackendClosed`] unless that is what is wanted. Gives up
/// with [`BlkfrontError::StateTimeout`] after `STATE_EVENTS_MAX` looks
/// (`CLOSE_EVENTS_MAX` for Closing or Closed).
pub fn wait_for_backend<C: StoreChannel>(
    xs: &mut Xenstore<'_, C>,
    vbd: &Vbd,
    want: XenbusState,
) -> Result<(), BlkfrontError> {
    let path = format!("{}/state", vbd.backend);
    let token = format!("blkfront-{}", vbd.devid);
    xs.watch(&path, &token)?;
    let result = (|| {
        let mut seen = XenbusState::Unknown;
        let looks = match want {
            XenbusState::Closing | XenbusState::Closed => CLOSE_EVENTS_MAX,
            _ => STATE_EVENTS_MAX,
        };
        for _ in 0..looks {
            seen = backend_state(xs, vbd)?;
            // Skipped states are allowed: past InitWait counts as InitWait,
            // Closed as Closing.
            let past = match want {
                XenbusState::InitWait => {
                    matches!(seen, XenbusState::Initialised | XenbusState::Connected)
                }
                XenbusState::Closing => seen == XenbusState::Closed,
                _ => false,
            };
            if seen == want || past {
                return Ok(());
            }
            let closing = matches!(seen, XenbusState::Closing | XenbusState::Closed);
            if closing && !matches!(want, XenbusState::Closing | XenbusState::Closed) {
                return Err(BlkfrontError::BackendClosed { state: seen });
            }
            match xs.wait_event(&token) {
                // Nothing changed in one wait: look again.
                Ok(_) | Err(XsError::Timeout { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(BlkfrontError::StateTimeout { want, seen })
    })();
    // The watch is not needed any more; a failure to drop it changes nothing.
    let _ = xs.unwatch(&path, &token);
    result
}

/// Reads the disk's properties, which the back end writes when it connects.
pub fn disk_info<C: StoreChannel>(
    xs: &mut Xenstore<'_, C>,
    vbd: &Vbd,
) -> Result<DiskInfo, BlkfrontError> {
    let be = &vbd.backend;
    let sectors_path = format!("{be}/sectors");
    let sectors = parse(&sectors_path, xs.read(TxId::NONE, &sectors_path)?)?;
    let sector_size: u32 = read_opt(xs, &format!("{be}/sector-size"))?.unwrap_or(512);
    if sector_size == 0 || !sector_size.is_power_of_two() || sector_size < 512 {
        return Err(BlkfrontError::BadKey {
            path: format!("{be}/sector-size"),
            value: format!("{sector_size}"),
        });
    }
    let info: u32 = read_opt(xs, &format!("{be}/info"))?.unwrap_or(0);
    let flush: u32 = read_opt(xs, &format!("{be}/feature-flush-cache"))?.unwrap_or(0);
    Ok(DiskInfo {
        sectors,
        sector_size,
        read_only: info & VDISK_READONLY != 0,
        flush: flush == 1,
    })
}

/// The whole connection of a probed device: wait for the back end's
/// features (InitWait), publish `setup`, wait for Connected, read the disk,
/// go Connected.
pub fn connect<C: StoreChannel>(
    xs: &mut Xenstore<'_, C>,
    vbd: &Vbd,
    setup: &FrontendSetup<'_>,
) -> Result<DiskInfo, BlkfrontError> {
    // Linux's blkback waits in InitWait for the front end's keys.
    wait_for_backend(xs, vbd, XenbusState::InitWait)?;
    publish(xs, vbd, setup)?;
    wait_for_backend(xs, vbd, XenbusState::Connected)?;
    let info = disk_info(xs, vbd)?;
    set_state(xs, vbd, XenbusState::Connected)?;
    Ok(info)
}

/// A request in flight.
#[derive(Clone, Copy, Debug)]
struct Pending {
    op: u8,
    sector: u64,
    deadline: u64,
}

/// One slot: free, a request in flight, or finished and holding its data
/// until the caller collects it ([`Inflight::release`]): a finished slot
/// is not reused before that, or a new request would overwrite its pages.
/// A slot whose request timed out is never reused: the back end may still
/// write its pages whenever it gets to the request.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Free,
    InFlight(Pending),
    Done,
    Expired,
}

/// The requests in flight, by slot; ids carry a generation so a stale or
/// forged id is caught.
#[derive(Debug)]
pub struct Inflight {
    slots: Vec<Slot>,
    generation: Vec<u32>,
}

/// A finished request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Completed {
    /// Its slot (which buffers it used).
    pub slot: usize,
    /// What it was.
    pub op: u8,
    /// Its first sector (for an error's context).
    pub sector: u64,
    /// Its result.
    pub result: Result<(), RequestFailure>,
}

/// The failure of one request, in the small form a completion carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestFailure {
    /// `BLKIF_RSP_ERROR`.
    Io,
    /// `BLKIF_RSP_EOPNOTSUPP`.
    NotSupported,
}

impl Inflight {
    /// `slots` free slots (see [`RingLayout::requests`]).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: alloc::vec![Slot::Free; slots],
            generation: alloc::vec![0; slots],
        }
    }

    /// Slots, taken or free.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Requests in flight.
    pub fn count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::InFlight(_)))
            .count()
    }

    /// Whether a slot is free for [`Inflight::start`].
    pub fn has_free(&self) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Free))
    }

    /// Takes a free slot for `op` at `sector`, due by `deadline`; returns
    /// the slot and the request id to send.
    pub fn start(
        &mut self,
        op: u8,
        sector: u64,
        deadline: u64,
    ) -> Result<(usize, u64), BlkfrontError> {
        let slot = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Free))
            .ok_or(BlkfrontError::Busy)?;
        self.generation[slot] = self.generation[slot].wrapping_add(1);
        self.slots[slot] = Slot::InFlight(Pending {
            op,
            sector,
            deadline,
        });
        Ok((slot, u64::from(self.generation[slot]) << 32 | slot as u64))
    }

    /// Checks a response against what is in flight and marks its slot
    /// done (still taken until [`Inflight::release`]).
    pub fn complete(&mut self, rsp: BlkifResponse) -> Result<Completed, BlkfrontError> {
        let slot = (rsp.id & 0xffff_ffff) as usize;
        let generation = (rsp.id >> 32) as u32;
        let pending = match self.slots.get(slot) {
            Some(Slot::InFlight(p)) if self.generation[slot] == generation => *p,
            _ => return Err(BlkfrontError::UnknownId { id: rsp.id }),
        };
        if rsp.operation != pending.op {
            return Err(BlkfrontError::WrongOperation {
                id: rsp.id,
                sent: pending.op,
                got: rsp.operation,
            });
        }
        let result = match rsp.status {
            BLKIF_RSP_OKAY => Ok(()),
            BLKIF_RSP_ERROR => Err(RequestFailure::Io),
            BLKIF_RSP_EOPNOTSUPP => Err(RequestFailure::NotSupported),
            status => return Err(BlkfrontError::BadStatus { id: rsp.id, status }),
        };
        self.slots[slot] = Slot::Done;
        Ok(Completed {
            slot,
            op: pending.op,
            sector: pending.sector,
            result,
        })
    }

    /// Frees `slot` for a request that never reached the ring, or one
    /// whose result the caller has collected. A slot whose request timed
    /// out stays taken for good (see [`Inflight::expire`]).
    pub fn release(&mut self, slot: usize) {
        if let Some(entry) = self.slots.get_mut(slot)
            && !matches!(entry, Slot::Expired)
        {
            *entry = Slot::Free;
        }
    }

    /// Marks every request due before `now` timed out and returns their
    /// slots. Those slots are never handed out again: the back end may
    /// still answer, and write the slot's granted pages, at any time
    /// (a late answer then breaks the device, as an unknown id).
    pub fn expire(&mut self, now: u64) -> Vec<(usize, BlkfrontError)> {
        let mut late = Vec::new();
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if let Slot::InFlight(p) = *entry
                && now >= p.deadline
            {
                late.push((
                    slot,
                    BlkfrontError::Timeout {
                        op: p.op,
                        sector: p.sector,
                    },
                ));
                *entry = Slot::Expired;
            }
        }
        late
    }
}

/// Turns a completion's failure into the full error.
pub fn completion_error(op: u8, sector: u64, error: RequestFailure) -> BlkfrontError {
    match error {
        RequestFailure::Io => BlkfrontError::Io { op, sector },
        RequestFailure::NotSupported => BlkfrontError::NotSupported { op },
    }
}

/// The segments covering `sectors` 512-byte sectors from the start of the
/// pages `grefs` (8 sectors a page, the last one partly).
pub fn segments(
    sectors: usize,
    grefs: &[GrantRef],
) -> impl Iterator<Item = BlkifRequestSegment> + '_ {
    grefs
        .iter()
        .take(sectors.div_ceil(SECTORS_PER_PAGE))
        .enumerate()
        .map(move |(i, gref)| {
            let in_page = (sectors - i * SECTORS_PER_PAGE).min(SECTORS_PER_PAGE);
            BlkifRequestSegment {
                gref: gref.0,
                first_sect: 0,
                last_sect: (in_page - 1) as u8,
            }
        })
}

fn check_rw(op: u8, sectors: usize, pages: usize, max: usize) -> Result<usize, BlkfrontError> {
    if op != BLKIF_OP_READ && op != BLKIF_OP_WRITE {
        return Err(BlkfrontError::BadRequest("not a read or write"));
    }
    let needed = sectors.div_ceil(SECTORS_PER_PAGE);
    if sectors == 0 || needed > max || needed > pages {
        return Err(BlkfrontError::BadRequest("segment count"));
    }
    Ok(needed)
}

/// A direct read or write of `sectors` 512-byte sectors at `sector`, in the
/// granted pages `grefs` (each page holds 8 sectors; the transfer starts at
/// the first page's start).
pub fn rw_request(
    op: u8,
    handle: u16,
    id: u64,
    sector: u64,
    sectors: usize,
    grefs: &[GrantRef],
) -> Result<BlkifRequest, BlkfrontError> {
    let pages = check_rw(op, sectors, grefs.len(), BLKIF_MAX_SEGMENTS_PER_REQUEST)?;
    let mut request = BlkifRequest {
        operation: op,
        nr_segments: pages as u8,
        handle,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (slot, seg) in request.seg.iter_mut().zip(segments(sectors, grefs)) {
        *slot = seg;
    }
    Ok(request)
}

/// An indirect read or write of `sectors` 512-byte sectors at `sector` in
/// the data pages `grefs`, whose segments the caller writes (see
/// [`segments`]) into the indirect pages `indirect`; at most
/// `max_segments` (the back end's `feature-max-indirect-segments`).
#[allow(clippy::too_many_arguments)]
pub fn indirect_request(
    op: u8,
    handle: u16,
    id: u64,
    sector: u64,
    sectors: usize,
    grefs: &[GrantRef],
    indirect: &[GrantRef],
    max_segments: usize,
) -> Result<BlkifRequestIndirect, BlkfrontError> {
    let pages = check_rw(op, sectors, grefs.len(), max_segments)?;
    let indirect_pages = pages.div_ceil(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
    if indirect_pages > indirect.len() || indirect_pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
        return Err(BlkfrontError::BadRequest("indirect pages"));
    }
    let mut indirect_grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
    for (slot, gref) in indirect_grefs.iter_mut().zip(&indirect[..indirect_pages]) {
        *slot = gref.0;
    }
    Ok(BlkifRequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: pages as u16,
        id,
        sector_number: sector,
        handle,
        indirect_grefs,
    })
}

/// A cache flush (`BLKIF_OP_FLUSH_DISKCACHE`, no segments).
pub fn flush_request(handle: u16, id: u64) -> BlkifRequest {
    BlkifRequest {
        operation: BLKIF_OP_FLUSH_DISKCACHE,
        handle,
        id,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
