//! Xen PV block devices (`device/vbd` in xenstore), served by another
//! domain's back end (Linux's xen-blkback under `xl`), on the protocol
//! logic of `tidepool_xen_abi::blkfront`. A [`PvDisk`] is a
//! [`BlockDriver`], so the kernel's one transfer loop (`crate::block`)
//! drives it like virtio-blk and the SD card: `blk-write=`, `blk-verify=`,
//! `bench=` and the monitor's `blk` commands, with the same lines.
//!
//! A ring of `2^order` pages ([`RingLayout::choose`]: as many requests in
//! flight as the block layer's 42 and the back end's persistent grants
//! allow, on the smallest ring that holds them: against Linux's blkback
//! with indirect requests, 32 on one page; with `blk-pv-grants=2048`, or
//! direct requests, 42 on two pages) and, per request slot, its data pages (11, a direct request's segments; or
//! [`INDIRECT_SEGMENTS`] and one indirect page when the back end takes
//! indirect requests), all granted to the back end once at setup and kept
//! granted (the front end's side of persistent grants, as
//! Linux keeps them): data is copied between the caller's buffer and a
//! slot's pages, so no request grants or revokes anything. Every response is
//! checked (`Inflight::complete`) before its slot is reused; a request
//! without a response after [`REQUEST_TIMEOUT`] fails, and its slot is never
//! reused (the back end may still write its pages). A watch on the back
//! end's state notices a detach (`xl block-detach`): requests in flight and
//! every later one then fail with "back end went away"; every device closes
//! before the kernel powers off ([`PvDisk::close`]).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::Poll;
use core::time::Duration;

use log::{error, info, warn};
use tidepool_block::{
    BlkStats, BlockDriver, Completion, Completions, Deadline, MAX_IN_FLIGHT, Notice, Op, Request,
    Token,
};
use tidepool_dma::{DmaDevice, DmaEnv};
use tidepool_mm::{AddressMap, PhysAddr, VirtAddr};
use tidepool_xen_abi::blkfront::{
    self, BLKBACK_PERSISTENT_GRANTS, BackendFeatures, BlkfrontError, DiskInfo, FrontendSetup,
    Inflight, RingLayout, SECTORS_PER_PAGE, Vbd, XenbusState,
};
use tidepool_xen_abi::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RESPONSE_WORDS, BLKIF_SLOT_WORDS, BlkifFrontRing, BlkifResponse, BlkifSharedRing,
};
use tidepool_xen_abi::ring::RingError;
use tidepool_xen_abi::xenstore::TxId;
use tidepool_xen_abi::{
    EventHandler, EvtchnPort, Grant, GrantAccess, GrantRef, GrantableFrame, Hypervisor,
};

use crate::arch::aarch64::cpu;
use crate::xen::{Xen, events, grants, store};

/// Segments of an indirect request (128 KiB; Linux's blkfront default too).
/// Each request slot keeps its own: 32 slots (Linux's blkback's persistent
/// grants) are 4.1 MiB of the heap (16 MiB in a 128 MiB `xl` guest) and
/// 1056 grants; the block interface's [`MAX_IN_FLIGHT`] (42), 5.4 MiB and
/// 1386 grants of the grant table's 2040.
pub const INDIRECT_SEGMENTS: usize = 32;
/// How long one request may take. Generous: under emulation on a busy host
/// dom0's blkback was seen taking over 5 s for one request of a batch; a
/// response after this time finds its slot expired and breaks the device.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PAGE: usize = 4096;
const SECTOR: usize = 512;

/// A page-aligned, zeroed, never-freed buffer of `pages` pages in linear
/// RAM, and its guest-physical address.
fn alloc_pages(map: &AddressMap, pages: usize) -> Option<(&'static mut [u8], PhysAddr)> {
    let layout = core::alloc::Layout::from_size_align(pages * PAGE, PAGE).ok()?;
    // SAFETY: the layout is non-zero-sized (pages >= 1 by every caller).
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    let pa = map.virt_to_phys(VirtAddr(ptr as u64)).ok()?;
    // SAFETY: a fresh allocation of this size, never freed, owned by the
    // caller alone.
    Some((
        unsafe { core::slice::from_raw_parts_mut(ptr, pages * PAGE) },
        pa,
    ))
}

/// A device's grant counters and their console line,
/// `blk: grants <disk> grants_made=N grants_reused=N`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrantStats {
    name: &'static str,
    /// Grants made (at setup).
    pub grants_made: u64,
    /// Segments sent on pages already granted (no new grant).
    pub grants_reused: u64,
}

impl core::fmt::Display for GrantStats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "blk: grants {} grants_made={} grants_reused={}",
            self.name, self.grants_made, self.grants_reused
        )
    }
}

/// What a slot's request is, for its completion.
#[derive(Clone, Copy, Debug)]
struct Sent {
    token: Token,
    op: Op,
    lba: u64,
    bytes: u32,
}

/// One PV block device.
pub struct PvDisk {
    name: &'static str,
    vbd: Vbd,
    info: DiskInfo,
    /// What the back end offered.
    features: BackendFeatures,
    /// The back end keeps our grants mapped (`feature-persistent`).
    persistent: bool,
    ring: BlkifFrontRing<'static>,
    port: EvtchnPort,
    signalled: &'static AtomicBool,
    /// The ring's pages and entries, and the request slots on it.
    layout: RingLayout,
    inflight: Inflight,
    /// What each taken slot holds.
    sent: Vec<Option<Sent>>,
    /// Each slot's data pages and their grants.
    pages: Vec<&'static mut [u8]>,
    grefs: Vec<Vec<GrantRef>>,
    /// Each slot's indirect page and its grant (with indirect requests).
    indirect: Vec<(&'static mut [u8], GrantRef)>,
    /// Every grant the disk made (ring, data and indirect pages), ended
    /// at close.
    grants: Vec<Grant>,
    /// Segments of one request: 11, or [`INDIRECT_SEGMENTS`] with indirect
    /// requests.
    segments: usize,
    /// Results of finished requests not yet collected, by slot.
    done: Vec<Option<Result<(), BlkfrontError>>>,
    /// The back end went away or broke the protocol: no more I/O.
    broken: Option<BlkfrontError>,
    token: String,
    stats: BlkStats,
    grant_stats: GrantStats,
}

/// Why a device could not be set up.
#[derive(Debug)]
pub enum PvSetupError {
    /// The protocol failed.
    Protocol(BlkfrontError),
    /// The heap has no room for the ring or a slot's pages.
    NoMemory {
        /// What was being allocated.
        what: &'static str,
        /// Its size in bytes.
        bytes: usize,
    },
    /// The ring's area does not make a ring.
    Ring(RingError),
    /// A grant failed.
    Grant(grants::GrantTableError),
    /// The event channel failed.
    Event(events::EventChannelError),
    /// The disk's sectors are not 512 bytes.
    SectorSize(u32),
}

impl core::fmt::Display for PvSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Protocol(e) => write!(f, "{e}"),
            Self::NoMemory { what, bytes } => write!(f, "no memory for the {what} ({bytes} bytes)"),
            Self::Ring(e) => write!(f, "ring: {e}"),
            Self::Grant(e) => write!(f, "grant: {e}"),
            Self::Event(e) => write!(f, "event channel: {e}"),
            Self::SectorSize(size) => write!(f, "sector-size {size} (512 only)"),
        }
    }
}

impl From<BlkfrontError> for PvSetupError {
    fn from(e: BlkfrontError) -> Self {
        Self::Protocol(e)
    }
}

/// How long a dom0less guest waits for its first disk (`xl block-attach`
/// in dom0 after `init-dom0less`).
const ATTACH_TIMEOUT_US: u64 = 120_000_000;

/// A dom0less guest's disks come after its xenstore: watches `device/vbd`
/// until one appears or [`ATTACH_TIMEOUT_US`] passes.
fn wait_for_attach() -> Result<Vec<u32>, BlkfrontError> {
    const TOKEN: &str = "blkfront-attach";
    store::with(|xs| xs.watch("device/vbd", TOKEN)).transpose()?;
    info!("blk: waiting for xl block-attach");
    let start = cpu::uptime_us();
    let result = loop {
        match store::with(blkfront::find_vbds) {
            Some(Ok(devids)) if !devids.is_empty() => break Ok(devids),
            Some(Err(err)) => break Err(err),
            _ => {}
        }
        if cpu::uptime_us() - start > ATTACH_TIMEOUT_US {
            break Ok(Vec::new());
        }
        // Each wait is bounded by the store's reply timeout; a timeout here
        // only means nothing changed yet.
        let _ = store::with(|xs| xs.wait_event());
    };
    let _ = store::with(|xs| xs.unwatch("device/vbd", TOKEN));
    result
}

/// Sets up every `device/vbd` of this domain; a device that fails is
/// reported and left out. `persistent_grants` is how many grants the back
/// end keeps mapped, which it does not say (`blk-pv-grants=`; Linux
/// blkback's default, [`BLKBACK_PERSISTENT_GRANTS`], if `None`).
pub fn probe(map: &AddressMap, persistent_grants: Option<usize>) -> Vec<PvDisk> {
    let persistent_grants = persistent_grants.unwrap_or(BLKBACK_PERSISTENT_GRANTS);
    let found = if store::came_late() {
        Some(wait_for_attach())
    } else {
        store::with(blkfront::find_vbds)
    };
    let devids = match found {
        None => return Vec::new(),
        Some(Ok(devids)) => devids,
        Some(Err(err)) => {
            error!("blk: device/vbd: {err}");
            return Vec::new();
        }
    };
    let mut disks = Vec::new();
    for devid in devids {
        let name = blkfront::disk_name(devid);
        match PvDisk::set_up(map, devid, name.clone(), persistent_grants) {
            Ok(disk) => {
                info!("{}", disk.info_line());
                disks.push(disk);
            }
            Err(err) => error!("blk: {name} devid={devid}: {err}"),
        }
    }
    disks
}

impl PvDisk {
    fn set_up(
        map: &AddressMap,
        devid: u32,
        name: String,
        persistent_grants: usize,
    ) -> Result<Self, PvSetupError> {
        let (vbd, features) = store::with(|xs| blkfront::probe(xs, devid)).ok_or(
            PvSetupError::Protocol(BlkfrontError::BadRequest("no xenstore")),
        )??;
        let backend = vbd.backend_id;
        let indirect_ok = features.max_indirect_segments as usize >= INDIRECT_SEGMENTS;
        let segments = if indirect_ok {
            INDIRECT_SEGMENTS
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST
        };
        // Each request slot keeps its data pages (and indirect page) granted.
        let layout = RingLayout::choose(
            features.max_ring_page_order,
            MAX_IN_FLIGHT,
            segments + usize::from(indirect_ok),
            persistent_grants,
        );
        let slots = layout.requests;
        // One allocation from the heap, which is linear RAM: the pages are
        // virtually contiguous, as the ring logic needs (one slice of
        // entries over them); that they are physically contiguous too is
        // not needed (each page is granted on its own) but costs nothing at
        // two pages.
        let (ring_area, ring_pa) =
            alloc_pages(map, layout.pages()).ok_or(PvSetupError::NoMemory {
                what: "ring",
                bytes: layout.pages() * PAGE,
            })?;
        let entries = core::ptr::slice_from_raw_parts(
            ring_area
                .as_ptr()
                .cast::<[core::sync::atomic::AtomicU64; BLKIF_SLOT_WORDS]>(),
            layout.entries,
        );
        // SAFETY: `ring_area` is `layout.pages()` page-aligned pages of
        // linear RAM, zeroed, never freed, this driver's alone; the ring's
        // 64-byte header and `layout.entries` slots fit in it (its entries
        // are `__CONST_RING_SIZE` over those pages: only slots that fit
        // after the header). `BlkifSharedRing` is atomics (8-byte aligned),
        // valid zeroed, so the back end writing it at any time is sound.
        let shared: &'static BlkifSharedRing = unsafe { &*(entries as *const BlkifSharedRing) };
        let ring = BlkifFrontRing::init(shared).map_err(PvSetupError::Ring)?;
        let name: &'static str = name.leak();
        let mut grant_stats = GrantStats {
            name,
            grants_made: 0,
            grants_reused: 0,
        };
        let mut held = Vec::new();
        let mut grant = |pa: u64, access| -> Result<GrantRef, PvSetupError> {
            grant_stats.grants_made += 1;
            // SAFETY: `pa` is a page from `alloc_pages`: fresh, never freed,
            // this driver's alone. The driver touches the ring page only
            // through `BlkifSharedRing`'s atomics, and a slot's data and
            // indirect pages only while no request of that slot is in flight:
            // `Inflight` hands out no slot whose request is in flight or
            // timed out (the back end may still write a timed-out one's).
            let frame = unsafe { GrantableFrame::new(pa >> 12) };
            let grant = grants::grant(backend, frame, access).map_err(PvSetupError::Grant)?;
            let gref = grant.gref();
            held.push(grant);
            Ok(gref)
        };
        let ring_refs = (0..layout.pages())
            .map(|i| grant(ring_pa.0 + (i * PAGE) as u64, GrantAccess::ReadWrite))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pages = Vec::with_capacity(slots);
        let mut grefs = Vec::with_capacity(slots);
        let mut indirect = Vec::new();
        for _ in 0..slots {
            let (buffer, pa) = alloc_pages(map, segments).ok_or(PvSetupError::NoMemory {
                what: "data pages of a request slot",
                bytes: segments * PAGE,
            })?;
            let refs = (0..segments)
                .map(|i| grant(pa.0 + (i * PAGE) as u64, GrantAccess::ReadWrite))
                .collect::<Result<Vec<_>, _>>()?;
            pages.push(buffer);
            grefs.push(refs);
            if indirect_ok {
                let (page, pa) = alloc_pages(map, 1).ok_or(PvSetupError::NoMemory {
                    what: "indirect page of a request slot",
                    bytes: PAGE,
                })?;
                // Read-write although the back end only reads it: with
                // persistent grants Linux's blkback maps every page
                // read-write, and a read-only grant fails that map.
                indirect.push((page, grant(pa.0, GrantAccess::ReadWrite)?));
            }
        }
        let signalled: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let handler: &'static dyn EventHandler = Box::leak(Box::new(move |_: EvtchnPort| {
            signalled.store(true, Ordering::Release)
        }));
        let port = events::alloc_unbound(backend, handler).map_err(PvSetupError::Event)?;
        // The data pages stay granted for the device's life, which is what
        // `feature-persistent` promises the back end (it may keep them
        // mapped); Linux's blkback advertises its side only when it connects.
        let setup = FrontendSetup {
            ring_refs: &ring_refs,
            port,
            persistent: true,
        };
        let info = store::with(|xs| blkfront::connect(xs, &vbd, &setup)).ok_or(
            PvSetupError::Protocol(BlkfrontError::BadRequest("no xenstore")),
        )??;
        if info.sector_size as usize != SECTOR {
            return Err(PvSetupError::SectorSize(info.sector_size));
        }
        let token = format!("blkfront-{devid}-state");
        let backend_state = format!("{}/state", vbd.backend);
        if let Some(Err(err)) = store::with(|xs| xs.watch(&backend_state, &token)) {
            warn!("blk: {name}: no state watch: {err}");
        }
        // Linux's blkback says whether it keeps grants mapped only when it
        // connects.
        let persistent = store::with(|xs| {
            xs.read(TxId::NONE, &format!("{}/feature-persistent", vbd.backend))
                .is_ok_and(|v| v == "1")
        })
        .unwrap_or(false);
        Ok(Self {
            name,
            vbd,
            info,
            features,
            persistent,
            ring,
            port,
            signalled,
            layout,
            inflight: Inflight::new(slots),
            sent: alloc::vec![None; slots],
            pages,
            grefs,
            indirect,
            grants: held,
            segments,
            done: alloc::vec![None; slots],
            broken: None,
            token,
            stats: BlkStats::default(),
            grant_stats,
        })
    }

    /// `blk: xvda pv devid=... backend=... sectors=... ...`, its setup line.
    pub fn info_line(&self) -> String {
        format!(
            "blk: {} pv devid={} backend={} sectors={} sector_size={} read_only={} flush={} \
             persistent={} max_ring_page_order={} indirect_segments={} request_bytes={} \
             ring_pages={} ring_entries={} slots={}",
            self.name,
            self.vbd.devid,
            self.vbd.backend,
            self.info.sectors,
            self.info.sector_size,
            u8::from(self.info.read_only),
            u8::from(self.info.flush),
            u8::from(self.persistent),
            self.features.max_ring_page_order,
            self.features.max_indirect_segments,
            self.request_bytes(),
            self.layout.pages(),
            self.layout.entries,
            self.inflight.slots()
        )
    }

    /// Bytes one request moves at most.
    pub fn request_bytes(&self) -> usize {
        self.segments * PAGE
    }

    fn notify(&self) {
        // A refused notification shows as a request timeout.
        let _ = Xen.evtchn_send(self.port);
    }

    /// Looks at xenstore's queued watch events: the back end leaving
    /// (Closing/Closed) ends all I/O.
    fn check_backend(&mut self) {
        let token = self.token.clone();
        let changed = store::with(|xs| {
            let mut changed = false;
            while let Ok(Some(event)) = xs.poll_event() {
                changed |= event.token == token;
            }
            changed.then(|| blkfront::backend_state(xs, &self.vbd))
        })
        .flatten();
        match changed {
            Some(Ok(state @ (XenbusState::Closing | XenbusState::Closed))) => {
                self.broken = Some(BlkfrontError::BackendClosed { state });
            }
            Some(Err(err)) => self.broken = Some(err),
            _ => {}
        }
    }

    /// Starts `op` in a free slot, due by `deadline`; returns its token.
    fn start(
        &mut self,
        op: u8,
        lba: u64,
        data: Option<&[u8]>,
        sectors: usize,
        deadline: Deadline,
    ) -> Result<Token, BlkfrontError> {
        if let Some(err) = &self.broken {
            return Err(err.clone());
        }
        if op != BLKIF_OP_READ && self.info.read_only {
            return Err(BlkfrontError::ReadOnly);
        }
        let (slot, id) = self.inflight.start(op, lba, deadline.0)?;
        let token = Token::new(slot as u16, (id >> 32) as u32);
        let (kind, bytes) = match op {
            BLKIF_OP_READ => (Op::Read, sectors * SECTOR),
            BLKIF_OP_WRITE => (Op::Write, sectors * SECTOR),
            _ => (Op::Flush, 0),
        };
        self.sent[slot] = Some(Sent {
            token,
            op: kind,
            lba,
            bytes: bytes as u32,
        });
        let handle = self.vbd.devid as u16;
        let request = if op == BLKIF_OP_FLUSH_DISKCACHE {
            if !self.info.flush {
                // No write cache to flush: done without asking the back end
                // (collected by `finish` like any other).
                self.finished(slot, Ok(()), &mut Completions::new());
                return Ok(token);
            }
            blkfront::flush_request(handle, id).to_words()
        } else {
            if let Some(data) = data {
                self.pages[slot][..data.len()].copy_from_slice(data);
            }
            let pages = sectors.div_ceil(SECTORS_PER_PAGE);
            let words = if pages > BLKIF_MAX_SEGMENTS_PER_REQUEST && !self.indirect.is_empty() {
                let (page, gref) = &mut self.indirect[slot];
                let request = blkfront::indirect_request(
                    op,
                    handle,
                    id,
                    lba,
                    sectors,
                    &self.grefs[slot],
                    &[*gref],
                    self.segments,
                );
                request.map(|r| {
                    for (bytes, seg) in page
                        .chunks_exact_mut(8)
                        .zip(blkfront::segments(sectors, &self.grefs[slot]))
                    {
                        bytes.copy_from_slice(&seg.to_word().to_le_bytes());
                    }
                    r.to_words()
                })
            } else {
                blkfront::rw_request(op, handle, id, lba, sectors, &self.grefs[slot])
                    .map(|r| r.to_words())
            };
            let words = match words {
                Ok(words) => words,
                Err(err) => {
                    self.forget(slot);
                    return Err(err);
                }
            };
            self.grant_stats.grants_reused += pages as u64;
            words
        };
        if let Err(err) = self.ring.put_request(&request) {
            self.forget(slot);
            return Err(BlkfrontError::BadRequest(match err {
                RingError::Full { .. } => "ring full",
                RingError::ResponseOverflow { .. } => "ring overrun",
                RingError::BadSize { .. } => "ring size",
            }));
        }
        if self.ring.push_requests() {
            self.notify();
        }
        Ok(token)
    }

    /// Drops a slot that never reached the ring.
    fn forget(&mut self, slot: usize) {
        self.sent[slot] = None;
        self.inflight.release(slot);
    }

    /// Records the outcome of the request in `slot` and counts it.
    fn finished(&mut self, slot: usize, result: Result<(), BlkfrontError>, done: &mut Completions) {
        let Some(sent) = self.sent[slot] else {
            return;
        };
        match (&result, sent.op) {
            (Err(BlkfrontError::Timeout { .. }), _) => self.stats.timeouts += 1,
            (Err(_), _) => self.stats.errors += 1,
            (Ok(()), Op::Read) => {
                self.stats.reads += 1;
                self.stats.bytes_read += u64::from(sent.bytes);
            }
            (Ok(()), Op::Write) => {
                self.stats.writes += 1;
                self.stats.bytes_written += u64::from(sent.bytes);
            }
            (Ok(()), Op::Flush) => self.stats.flushes += 1,
        }
        self.done[slot] = Some(result);
        done.push(sent.token);
    }

    /// Takes every response off the ring and checks it (a response that
    /// cannot be trusted breaks the device), re-arming the back end's
    /// notification; then looks at the back end's state. A broken device
    /// fails every request in flight.
    fn harvest(&mut self) -> Completions {
        let mut done = Completions::new();
        while self.broken.is_none() {
            let words = match self.ring.take_response::<BLKIF_RESPONSE_WORDS>() {
                Ok(Some(words)) => words,
                Ok(None) => match self.ring.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(err) => {
                        error!("blk: {}: {err}", self.name);
                        self.broken = Some(BlkfrontError::BadRequest("ring overrun"));
                        break;
                    }
                },
                Err(err) => {
                    error!("blk: {}: {err}", self.name);
                    self.broken = Some(BlkfrontError::BadRequest("ring overrun"));
                    break;
                }
            };
            let response = BlkifResponse::from_words(words);
            let described = self.inflight_sector(response.id);
            match self.inflight.complete(response) {
                Ok(completed) => {
                    let result = completed.result.map_err(|failure| {
                        blkfront::completion_error(completed.op, described, failure)
                    });
                    self.finished(completed.slot, result, &mut done);
                }
                Err(err) => {
                    error!("blk: {}: {err}", self.name);
                    self.broken = Some(err);
                }
            }
        }
        self.check_backend();
        if let Some(err) = self.broken.clone() {
            // Nothing more will come back: every request in flight fails.
            for (slot, _) in self.inflight.expire(u64::MAX) {
                self.finished(slot, Err(err.clone()), &mut done);
            }
        }
        done
    }

    fn inflight_sector(&self, id: u64) -> u64 {
        self.inflight
            .describe((id & 0xffff_ffff) as usize)
            .map_or(0, |(_, sector)| sector)
    }

    /// Disconnects: goes Closing, waits for the back end to close, goes
    /// Closed, revokes the grants and closes the event channel. Problems
    /// are reported, never fatal. The kernel's transfer loop collects every
    /// request it submits, so none is in flight here.
    pub fn close(&mut self) {
        if self.inflight.count() > 0 {
            warn!(
                "blk: {} close with {} requests in flight",
                self.name,
                self.inflight.count()
            );
        }
        let vbd = self.vbd.clone();
        let token = self.token.clone();
        // Linux's blkback answers Closing with Closing, and unmaps the
        // ring and disconnects only when the front end says Closed.
        let result = store::with(|xs| {
            let _ = xs.unwatch(&format!("{}/state", vbd.backend), &token);
            blkfront::set_state(xs, &vbd, XenbusState::Closing)?;
            blkfront::wait_for_backend(xs, &vbd, XenbusState::Closing).or_else(
                |err| match err {
                    BlkfrontError::BackendClosed { .. } => Ok(()),
                    err => Err(err),
                },
            )?;
            blkfront::set_state(xs, &vbd, XenbusState::Closed)?;
            blkfront::wait_for_backend(xs, &vbd, XenbusState::Closed)
        });
        if let Some(Err(err)) = result {
            warn!("blk: {} close: {err}", self.name);
        }
        let mut still_mapped = 0;
        // A grant the back end still maps stays (its page is never freed).
        for grant in self.grants.drain(..) {
            if grants::end(grant).is_err() {
                still_mapped += 1;
            }
        }
        if let Err(err) = events::close(self.port) {
            warn!("blk: {} close event channel: {err}", self.name);
        }
        info!(
            "blk: {} closed state={} grants_still_mapped={still_mapped}",
            self.name,
            store::with(|xs| xs.read(TxId::NONE, &format!("{}/state", vbd.backend)).ok())
                .flatten()
                .unwrap_or_default()
        );
    }
}

impl BlockDriver<'static> for PvDisk {
    type Error = BlkfrontError;

    fn name(&self) -> &'static str {
        self.name
    }

    fn capacity(&self) -> u64 {
        self.info.sectors
    }

    fn max_request_bytes(&self) -> u32 {
        self.request_bytes() as u32
    }

    fn slots(&self) -> usize {
        self.inflight.slots()
    }

    fn in_flight(&self) -> usize {
        self.inflight.count()
    }

    fn submit(
        &mut self,
        _env: &mut DmaEnv<'_, 'static>,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Token, BlkfrontError> {
        let check = |lba: u64, bytes: usize| {
            if bytes == 0 || !bytes.is_multiple_of(SECTOR) || bytes > self.request_bytes() {
                return Err(BlkfrontError::BadRequest(
                    "size not whole sectors within a request",
                ));
            }
            match lba.checked_add((bytes / SECTOR) as u64) {
                Some(end) if end <= self.info.sectors => Ok(bytes / SECTOR),
                _ => Err(BlkfrontError::BadRequest("sectors beyond the disk")),
            }
        };
        match request {
            Request::Read { lba, sectors } => {
                let sectors = check(lba, sectors as usize * SECTOR)?;
                self.start(BLKIF_OP_READ, lba, None, sectors, deadline)
            }
            Request::Write { lba, data } => {
                let sectors = check(lba, data.len())?;
                self.start(BLKIF_OP_WRITE, lba, Some(data), sectors, deadline)
            }
            Request::Flush => self.start(BLKIF_OP_FLUSH_DISKCACHE, 0, None, 0, deadline),
        }
    }

    fn is_busy(&self, error: &BlkfrontError) -> bool {
        matches!(error, BlkfrontError::Busy)
    }

    fn is_full(&self, error: &BlkfrontError) -> bool {
        // A finished request keeps its slot (and granted pages) until
        // `finish`: busy and full are the same refusal here.
        matches!(error, BlkfrontError::Busy)
    }

    fn no_free_slot(&self) -> BlkfrontError {
        BlkfrontError::Busy
    }

    fn interrupt_noted(&self) -> bool {
        self.signalled.load(Ordering::Acquire)
    }

    fn handle_interrupt(
        &mut self,
        _env: &mut DmaEnv<'_, 'static>,
        _notice: &mut dyn FnMut(Notice<'_>),
    ) -> Completions {
        self.signalled.store(false, Ordering::Release);
        self.harvest()
    }

    fn has_completions(&self) -> bool {
        // A ring the back end overran is news too: `poll` reports it.
        !matches!(self.ring.has_unconsumed_responses(), Ok(false))
    }

    fn poll(&mut self, _env: &mut DmaEnv<'_, 'static>) -> Completions {
        self.harvest()
    }

    fn expire(&mut self, now: u64) -> Completions {
        let mut done = Completions::new();
        for (slot, err) in self.inflight.expire(now) {
            self.finished(slot, Err(err), &mut done);
        }
        done
    }

    fn set_interrupts(&mut self, _enabled: bool) {
        // The hint is not taken: the ring asks the back end for an event
        // only when the front end runs dry of responses (`rsp_event`), and
        // a poller's upcall only sets `signalled`.
    }

    fn finish(
        &mut self,
        _env: &mut DmaEnv<'_, 'static>,
        token: Token,
        read_into: &mut [u8],
    ) -> Poll<Result<Completion, BlkfrontError>> {
        let slot = usize::from(token.slot());
        let Some(sent) = self.sent.get(slot).copied().flatten() else {
            return Poll::Ready(Err(BlkfrontError::BadRequest("no such request")));
        };
        if sent.token != token {
            return Poll::Ready(Err(BlkfrontError::BadRequest("no such request")));
        }
        let Some(result) = self.done[slot].take() else {
            return Poll::Pending;
        };
        let result = result.and_then(|()| {
            if sent.op == Op::Read {
                let Some(data) = self.pages[slot].get(..read_into.len()) else {
                    return Err(BlkfrontError::BadRequest(
                        "read buffer larger than the request",
                    ));
                };
                read_into.copy_from_slice(data);
            }
            Ok(Completion {
                op: sent.op,
                lba: sent.lba,
                bytes: sent.bytes,
            })
        });
        self.sent[slot] = None;
        self.inflight.release(slot);
        Poll::Ready(result)
    }

    fn stats(&self) -> &BlkStats {
        &self.stats
    }

    fn dma(&self) -> Option<&DmaDevice<'static>> {
        None
    }

    fn driver_stats(&self) -> Option<&dyn core::fmt::Display> {
        Some(&self.grant_stats)
    }
}
