//! Xen PV block devices (`device/vbd` in xenstore), served by another
//! domain's back end (Linux's xen-blkback under `xl`), on the protocol
//! logic of `tidepool_xen_abi::blkfront`.
//!
//! One ring page and, per ring slot, its data pages (11, a direct
//! request's segments; or [`INDIRECT_SEGMENTS`] and one indirect page when
//! the back end takes indirect requests), all granted to the back end once
//! at setup and kept granted (the front end's side of persistent grants, as
//! Linux keeps them): data is copied between the caller's buffer and a
//! slot's pages, so no request grants or revokes anything. Every response is checked (`Inflight::complete`) before its
//! slot is reused; a request without a response after
//! [`REQUEST_TIMEOUT`] fails, and its slot is never reused (the back end
//! may still write the slot's pages). A watch on the back end's state notices a
//! detach (`xl block-detach`): I/O then fails with "back end went away" and
//! the device closes; at shutdown every device closes cleanly.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use log::{error, info, warn};
use tidepool_mm::{AddressMap, PhysAddr, VirtAddr};
use tidepool_xen_abi::blkfront::{
    self, BackendFeatures, BlkfrontError, DiskInfo, FrontendSetup, Inflight, SECTORS_PER_PAGE, Vbd,
    XenbusState,
};
use tidepool_xen_abi::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RESPONSE_WORDS, BLKIF_RING_SLOTS, BlkifFrontRing, BlkifResponse, BlkifSharedRing,
};
use tidepool_xen_abi::xenstore::TxId;
use tidepool_xen_abi::{
    EventHandler, EvtchnPort, Grant, GrantAccess, GrantRef, GrantableFrame, Hypervisor,
};

use crate::arch::aarch64::cpu;
use crate::timer;
use crate::xen::{Xen, events, grants, store};

/// Segments of an indirect request (128 KiB; Linux's blkfront default too):
/// 32 slots of them are 4 MiB of granted pages, about a thousand grants.
pub const INDIRECT_SEGMENTS: usize = 32;
/// Bytes a pass of the pattern writer and the verifier moves: requests
/// enough to keep the ring busy.
const PASS_BYTES: usize = 2 << 20;
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

/// Counters of one device.
#[derive(Clone, Copy, Debug, Default)]
pub struct PvStats {
    /// Read requests completed.
    pub reads: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Failed requests.
    pub errors: u64,
    /// Grants made (at setup).
    pub grants_made: u64,
    /// Segments sent on pages already granted (no new grant).
    pub grants_reused: u64,
}

/// One PV block device.
pub struct PvDisk {
    name: String,
    vbd: Vbd,
    info: DiskInfo,
    /// What the back end offered.
    features: BackendFeatures,
    /// The back end keeps our grants mapped (`feature-persistent`).
    persistent: bool,
    ring: BlkifFrontRing<'static>,
    port: EvtchnPort,
    signalled: &'static AtomicBool,
    inflight: Inflight<BLKIF_RING_SLOTS>,
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
    done: [Option<Result<(), BlkfrontError>>; BLKIF_RING_SLOTS],
    /// The back end went away or broke the protocol: no more I/O.
    broken: Option<BlkfrontError>,
    /// Requests finished (answered or timed out) so far: what a wait waits
    /// to see grow.
    finished: u64,
    token: String,
    stats: PvStats,
    timeout_ticks: u64,
}

/// Why a device could not be set up.
#[derive(Debug)]
pub enum PvSetupError {
    /// The protocol failed.
    Protocol(BlkfrontError),
    /// No memory for the ring or data pages.
    NoMemory,
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
            Self::NoMemory => f.write_str("no memory for the rings"),
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
/// reported and left out.
pub fn probe(map: &'static AddressMap) -> Vec<PvDisk> {
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
        match PvDisk::set_up(map, devid, name.clone()) {
            Ok(disk) => {
                disk.log_info();
                disks.push(disk);
            }
            Err(err) => error!("blk: {name} devid={devid}: {err}"),
        }
    }
    disks
}

impl PvDisk {
    fn set_up(map: &'static AddressMap, devid: u32, name: String) -> Result<Self, PvSetupError> {
        let (vbd, features) = store::with(|xs| blkfront::probe(xs, devid)).ok_or(
            PvSetupError::Protocol(BlkfrontError::BadRequest("no xenstore")),
        )??;
        let backend = vbd.backend_id;
        let (ring_page, ring_pa) = alloc_pages(map, 1).ok_or(PvSetupError::NoMemory)?;
        // SAFETY: a page-aligned page of linear RAM this driver alone owns
        // for the kernel's lifetime; `BlkifSharedRing` (3648 bytes, 8-byte
        // aligned) is made of atomics, so the back end writing it is sound.
        let shared: &'static BlkifSharedRing =
            unsafe { &*(ring_page.as_ptr() as *const BlkifSharedRing) };
        let ring = BlkifFrontRing::init(shared);
        let mut stats = PvStats::default();
        let mut held = Vec::new();
        let mut grant = |pa: u64, access| -> Result<GrantRef, PvSetupError> {
            stats.grants_made += 1;
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
        let ring_ref = grant(ring_pa.0, GrantAccess::ReadWrite)?;
        let indirect_ok = features.max_indirect_segments as usize >= INDIRECT_SEGMENTS;
        let segments = if indirect_ok {
            INDIRECT_SEGMENTS
        } else {
            BLKIF_MAX_SEGMENTS_PER_REQUEST
        };
        let mut pages = Vec::with_capacity(BLKIF_RING_SLOTS);
        let mut grefs = Vec::with_capacity(BLKIF_RING_SLOTS);
        let mut indirect = Vec::new();
        for _ in 0..BLKIF_RING_SLOTS {
            let (buffer, pa) = alloc_pages(map, segments).ok_or(PvSetupError::NoMemory)?;
            let refs = (0..segments)
                .map(|i| grant(pa.0 + (i * PAGE) as u64, GrantAccess::ReadWrite))
                .collect::<Result<Vec<_>, _>>()?;
            pages.push(buffer);
            grefs.push(refs);
            if indirect_ok {
                let (page, pa) = alloc_pages(map, 1).ok_or(PvSetupError::NoMemory)?;
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
            ring_refs: &[ring_ref],
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
        let timeout_ticks = crate::arch::aarch64::timer::frequency() * REQUEST_TIMEOUT.as_secs();
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
            inflight: Inflight::new(),
            pages,
            grefs,
            indirect,
            grants: held,
            segments,
            done: [const { None }; BLKIF_RING_SLOTS],
            broken: None,
            finished: 0,
            token,
            stats,
            timeout_ticks,
        })
    }

    /// Prints `blk: xvda pv devid=... backend=... sectors=... ...`.
    pub fn log_info(&self) {
        info!(
            "blk: {} pv devid={} backend={} sectors={} sector_size={} read_only={} flush={} \
             persistent={} max_ring_page_order={} indirect_segments={} request_bytes={}",
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
            self.request_bytes()
        );
    }

    /// Prints `blk: stats xvda ...` with the grant counters.
    pub fn log_stats(&self) {
        let s = &self.stats;
        info!(
            "blk: stats {} reads={} writes={} flushes={} errors={} grants_made={} grants_reused={}",
            self.name, s.reads, s.writes, s.flushes, s.errors, s.grants_made, s.grants_reused
        );
    }

    /// Bytes one request moves at most.
    pub fn request_bytes(&self) -> usize {
        self.segments * PAGE
    }

    /// The disk's name (`xvda`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.info.sectors
    }

    /// The counters.
    pub fn stats(&self) -> &PvStats {
        &self.stats
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

    /// Starts a request in a free slot: returns the slot.
    fn submit(
        &mut self,
        op: u8,
        lba: u64,
        data: Option<&[u8]>,
        sectors: usize,
    ) -> Result<usize, BlkfrontError> {
        if let Some(err) = &self.broken {
            return Err(err.clone());
        }
        if op != BLKIF_OP_READ && self.info.read_only {
            return Err(BlkfrontError::ReadOnly);
        }
        // Every slot taken: requests in flight (wait for one) or results
        // the caller has not collected (a caller's error: it holds them).
        while !self.inflight.has_free() {
            if self.inflight.count() == 0 {
                return Err(BlkfrontError::Busy);
            }
            self.wait_any()?;
        }
        let deadline = crate::arch::aarch64::timer::counter() + self.timeout_ticks;
        let (slot, id) = self.inflight.start(op, lba, deadline)?;
        let handle = self.vbd.devid as u16;
        let request = if op == BLKIF_OP_FLUSH_DISKCACHE {
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
            self.stats.grants_reused += pages as u64;
            words
        };
        if let Err(err) = self.ring.put_request(&request) {
            self.forget(slot);
            return Err(BlkfrontError::BadRequest(match err {
                tidepool_xen_abi::ring::RingError::Full { .. } => "ring full",
                tidepool_xen_abi::ring::RingError::ResponseOverflow { .. } => "ring overrun",
            }));
        }
        if self.ring.push_requests() {
            self.notify();
        }
        Ok(slot)
    }

    /// Drops a slot that never reached the ring.
    fn forget(&mut self, slot: usize) {
        self.inflight.release(slot);
    }

    /// Takes every response off the ring and checks it; a response that
    /// cannot be trusted breaks the device.
    fn harvest(&mut self) {
        loop {
            let words = match self.ring.take_response::<BLKIF_RESPONSE_WORDS>() {
                Ok(Some(words)) => words,
                Ok(None) => break,
                Err(err) => {
                    error!("blk: {}: {err}", self.name);
                    self.broken = Some(BlkfrontError::BadRequest("ring overrun"));
                    break;
                }
            };
            let response = BlkifResponse::from_words(words);
            let described = self.inflight_sector(response.id);
            match self.inflight.complete(response) {
                Ok(done) => {
                    let result = done
                        .result
                        .map_err(|failure| blkfront::completion_error(done.op, described, failure));
                    match (done.op, &result) {
                        (_, Err(_)) => self.stats.errors += 1,
                        (BLKIF_OP_READ, _) => self.stats.reads += 1,
                        (BLKIF_OP_WRITE, _) => self.stats.writes += 1,
                        _ => self.stats.flushes += 1,
                    }
                    self.done[done.slot] = Some(result);
                    self.finished += 1;
                }
                Err(err) => {
                    error!("blk: {}: {err}", self.name);
                    self.broken = Some(err);
                }
            }
        }
    }

    fn inflight_sector(&self, id: u64) -> u64 {
        self.inflight
            .describe((id & 0xffff_ffff) as usize)
            .map_or(0, |(_, sector)| sector)
    }

    /// Waits until another request finishes (answered or timed out), or the
    /// device breaks.
    fn wait_any(&mut self) -> Result<(), BlkfrontError> {
        let before = self.finished;
        loop {
            self.harvest();
            if self.finished != before {
                return Ok(());
            }
            if let Some(err) = &self.broken {
                return Err(err.clone());
            }
            if !matches!(self.ring.final_check_for_responses(), Ok(false)) {
                continue;
            }
            let signalled = self.signalled;
            // Waking at least every 100 ms to look at the back end's state.
            let _ = timer::wait_for(Duration::from_millis(100), || {
                signalled.swap(false, Ordering::AcqRel)
            });
            for (slot, err) in self.inflight.expire(crate::arch::aarch64::timer::counter()) {
                self.stats.errors += 1;
                self.done[slot] = Some(Err(err));
                self.finished += 1;
            }
            self.check_backend();
        }
    }

    /// Waits for the request in `slot` and copies a read's data out.
    fn finish(&mut self, slot: usize, out: Option<&mut [u8]>) -> Result<(), BlkfrontError> {
        loop {
            if let Some(result) = self.done[slot].take() {
                if let (Ok(()), Some(out)) = (&result, out) {
                    out.copy_from_slice(&self.pages[slot][..out.len()]);
                }
                self.inflight.release(slot);
                return result;
            }
            self.wait_any()?;
        }
    }

    /// Reads `buffer.len()` bytes (whole sectors) at `lba`, keeping up to
    /// `depth` requests in flight.
    pub fn read_depth(
        &mut self,
        lba: u64,
        buffer: &mut [u8],
        depth: usize,
    ) -> Result<(), BlkfrontError> {
        let request_bytes = self.request_bytes();
        let chunks: Vec<(u64, usize, usize)> = buffer
            .chunks(request_bytes)
            .enumerate()
            .scan(0usize, |offset, (_, chunk)| {
                let at = *offset;
                *offset += chunk.len();
                Some((lba + (at / SECTOR) as u64, at, chunk.len()))
            })
            .collect();
        let mut pending: alloc::collections::VecDeque<(usize, usize, usize)> =
            alloc::collections::VecDeque::new();
        let mut next = 0;
        let mut result = Ok(());
        while next < chunks.len() || !pending.is_empty() {
            while result.is_ok() && next < chunks.len() && pending.len() < depth.max(1) {
                let (at_lba, offset, len) = chunks[next];
                match self.submit(BLKIF_OP_READ, at_lba, None, len / SECTOR) {
                    Ok(slot) => pending.push_back((slot, offset, len)),
                    Err(err) => result = Err(err),
                }
                next += 1;
            }
            let Some((slot, offset, len)) = pending.pop_front() else {
                break;
            };
            let done = self.finish(slot, Some(&mut buffer[offset..offset + len]));
            if result.is_ok() {
                result = done;
            }
        }
        result
    }

    /// Reads `buffer.len()` bytes at `lba` with the ring full.
    pub fn read(&mut self, lba: u64, buffer: &mut [u8]) -> Result<(), BlkfrontError> {
        self.read_depth(lba, buffer, BLKIF_RING_SLOTS)
    }

    /// Writes `data` (whole sectors) at `lba`, up to the ring's depth in
    /// flight.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), BlkfrontError> {
        let mut pending = alloc::collections::VecDeque::new();
        let mut result = Ok(());
        let request_bytes = self.request_bytes();
        for (i, chunk) in data.chunks(request_bytes).enumerate() {
            if pending.len() == BLKIF_RING_SLOTS {
                let slot = pending.pop_front().expect("non-empty");
                result = result.and(self.finish(slot, None));
            }
            if result.is_err() {
                break;
            }
            let at = lba + (i * request_bytes / SECTOR) as u64;
            match self.submit(BLKIF_OP_WRITE, at, Some(chunk), chunk.len() / SECTOR) {
                Ok(slot) => pending.push_back(slot),
                Err(err) => result = Err(err),
            }
        }
        for slot in pending {
            let done = self.finish(slot, None);
            if result.is_ok() {
                result = done;
            }
        }
        result
    }

    /// Flushes the back end's write cache (nothing to do if it has none).
    pub fn flush(&mut self) -> Result<(), BlkfrontError> {
        if !self.info.flush {
            return Ok(());
        }
        let slot = self.submit(BLKIF_OP_FLUSH_DISKCACHE, 0, None, 0)?;
        self.finish(slot, None)
    }

    /// Disconnects: waits for requests in flight, goes Closing, waits for
    /// the back end to close, goes Closed, revokes the grants and closes
    /// the event channel. Problems are reported, never fatal.
    pub fn close(&mut self) {
        while self.inflight.count() > 0 && self.broken.is_none() {
            if self.wait_any().is_err() {
                break;
            }
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

/// What the bootargs ask of the PV disks: write, verify, benchmark on the
/// first; then each one's counters; then every disk closes.
pub fn run_requested(args: &crate::bootargs::Bootargs<'_>, disks: &mut [PvDisk]) {
    for disk in disks.iter_mut() {
        if let Some(range) = args.blk_write {
            match write_pattern(disk, range) {
                Ok(()) => info!(
                    "blk: wrote {} lba={} sectors={} seed={}, flushed",
                    disk.name(),
                    range.lba,
                    range.count,
                    range.seed
                ),
                Err(err) => error!(
                    "blk: {} write of sectors {}..{}: {err}",
                    disk.name(),
                    range.lba,
                    range.lba + range.count
                ),
            }
        }
        if let Some(expected) = args.blk_verify {
            verify(disk, expected);
        }
    }
    if let (Some(mib), Some(disk)) = (args.bench_mib, disks.first_mut())
        && let Err(err) = bench(disk, mib)
    {
        error!("blk: bench {}: {err}", disk.name);
    }
    for disk in disks.iter_mut() {
        disk.log_stats();
        disk.close();
    }
}

fn write_pattern(
    disk: &mut PvDisk,
    range: crate::bootargs::SectorRange,
) -> Result<(), BlkfrontError> {
    use tidepool_virtio_blk::pattern;
    let per_pass = (PASS_BYTES / SECTOR) as u64;
    let mut sectors = alloc::vec![[0u8; SECTOR]; per_pass as usize];
    let mut at = range.lba;
    let end = range.lba + range.count;
    while at < end {
        let n = per_pass.min(end - at) as usize;
        pattern::fill_sectors(range.seed, at, &mut sectors[..n]);
        disk.write(at, sectors[..n].as_flattened())?;
        at += n as u64;
    }
    disk.flush()
}

fn verify(disk: &mut PvDisk, expected: crate::bootargs::DiskPattern) -> u64 {
    use tidepool_virtio_blk::pattern;
    let capacity = disk.capacity();
    let mut buffer = alloc::vec![0u8; PASS_BYTES];
    let per_pass = (buffer.len() / SECTOR) as u64;
    let mut problems = 0;
    let mut lba = 0;
    while lba < capacity {
        let sectors = per_pass.min(capacity - lba);
        let bytes = &mut buffer[..sectors as usize * SECTOR];
        if let Err(err) = disk.read(lba, bytes) {
            error!(
                "blk: {} read of sectors {lba}..{} failed: {err}",
                disk.name(),
                lba + sectors
            );
            problems += 1;
            if disk.broken.is_some() {
                break;
            }
            lba += sectors;
            continue;
        }
        for (i, sector) in bytes.chunks_exact(SECTOR).enumerate() {
            let at = lba + i as u64;
            let sector: &[u8; SECTOR] = sector.try_into().expect("whole sectors");
            if let Err(mismatch) = pattern::verify(expected.seed_of(at), at, sector) {
                if problems < 8 {
                    error!("blk: {} {mismatch}", disk.name());
                }
                problems += 1;
            }
        }
        lba += sectors;
    }
    if problems == 0 {
        info!("blk: verify {} sectors={capacity} ok", disk.name());
    } else {
        error!(
            "blk: verify {} sectors={capacity} problems={problems}",
            disk.name()
        );
    }
    problems
}

/// Random 4 KiB reads of the first `span` sectors, `depth` in flight.
fn random_reads(
    disk: &mut PvDisk,
    count: u64,
    depth: usize,
    span: u64,
) -> Result<(), BlkfrontError> {
    const SECTORS: u64 = SECTORS_PER_PAGE as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_lba = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % (span / SECTORS)) * SECTORS
    };
    let mut buffer = [0u8; PAGE];
    let mut pending = alloc::collections::VecDeque::with_capacity(depth);
    let mut submitted = 0;
    while submitted < count || !pending.is_empty() {
        while submitted < count && pending.len() < depth {
            pending.push_back(disk.submit(BLKIF_OP_READ, next_lba(), None, SECTORS as usize)?);
            submitted += 1;
        }
        let slot = pending.pop_front().expect("non-empty");
        disk.finish(slot, Some(&mut buffer))?;
    }
    Ok(())
}

/// `bench=MIB` on a PV disk: sequential reads of the first `mib` MiB
/// (the largest requests, 4 MiB passes), then 4 KiB random reads at queue
/// depth 1 and 16; one `blk: bench` line, as for virtio.
fn bench(disk: &mut PvDisk, mib: u64) -> Result<(), BlkfrontError> {
    const RANDOM_READS: u64 = 4096;
    let span = (mib << 20).min(disk.capacity() * SECTOR as u64) / SECTOR as u64;
    let before = *disk.stats();
    let mut buffer = alloc::vec![0u8; 2 * PASS_BYTES];
    let start = cpu::uptime_us();
    let mut lba = 0;
    while lba < span {
        let sectors = (span - lba).min((buffer.len() / SECTOR) as u64);
        disk.read(lba, &mut buffer[..sectors as usize * SECTOR])?;
        lba += sectors;
    }
    let seq_us = (cpu::uptime_us() - start).max(1);
    let start = cpu::uptime_us();
    random_reads(disk, RANDOM_READS, 1, span)?;
    let qd1_us = (cpu::uptime_us() - start).max(1);
    let start = cpu::uptime_us();
    random_reads(disk, RANDOM_READS, 16, span)?;
    let qd16_us = (cpu::uptime_us() - start).max(1);
    let after = disk.stats();
    let seq_bytes = span * SECTOR as u64;
    let hundredths = seq_bytes * 1_000_000 / (1 << 20) * 100 / seq_us;
    info!(
        "blk: bench device={} seq_mib={} seq_us={seq_us} seq_mib_s={}.{:02} qd1_reqs={RANDOM_READS} \
         qd1_us={qd1_us} qd1_iops={} qd16_reqs={RANDOM_READS} qd16_us={qd16_us} qd16_iops={} requests={} \
         flush_hypercalls=0",
        disk.name(),
        seq_bytes >> 20,
        hundredths / 100,
        hundredths % 100,
        RANDOM_READS * 1_000_000 / qd1_us,
        RANDOM_READS * 1_000_000 / qd16_us,
        (after.reads + after.writes + after.flushes)
            - (before.reads + before.writes + before.flushes),
    );
    Ok(())
}
