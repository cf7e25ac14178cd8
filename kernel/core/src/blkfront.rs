//! Xen PV block devices (`device/vbd` in xenstore), served by another
//! domain's back end (Linux's xen-blkback under `xl`), on the protocol
//! logic of `tidepool_xen_abi::blkfront`. A [`PvDisk`] is a
//! [`BlockDriver`], so the kernel's one transfer loop (`crate::block`)
//! drives it like virtio-blk and the SD card: `blk-write=`, `blk-verify=`,
//! `bench=` and the monitor's `blk` commands, with the same lines.
//!
//! All of a disk's shared memory is the DMA layer's: its DMA context is a
//! grant device (`tidepool_dma::Addressing::Grant`) whose own pool holds
//! the ring and every slot's pages, allocated at setup. The ring of
//! `2^order` pages ([`RingLayout::choose`]: as many requests in flight as
//! the block layer's 42 and the back end's persistent grants allow, on the
//! smallest ring that holds them: against Linux's blkback with indirect
//! requests, 32 on one page; with `blk-pv-grants=2048`, or direct requests,
//! 42 on two pages) is the device's coherent memory, every page granted
//! when it is allocated. Per request slot, its data pages (11, a direct
//! request's segments; or [`INDIRECT_SEGMENTS`] and one indirect page when
//! the back end takes indirect requests) are pool buffers of the device,
//! mapped for each request like virtio's, which gives the pages' grant
//! references. A page is granted at its first request and
//! stays granted (the front end's side of persistent grants, as Linux keeps
//! them): data is copied between the caller's buffer and a slot's pages, so
//! later requests grant nothing, and `dma: stats xvda ... grants_made=N
//! grants_reused=N` counts both (the ring's pages among the grants made);
//! closing frees the ring and the buffers, which ends their grants. Every
//! response is
//! checked (`Inflight::complete`) before its slot is reused; a request
//! without a response after [`REQUEST_TIMEOUT`] fails, and its slot is never
//! reused (the back end may still write its pages). A watch on the back
//! end's state notices a detach (`xl block-detach`): new requests then fail
//! with "back end went away", and once nothing of the disk is outstanding
//! it closes itself ([`PvDisk::close`]), as Linux's blkfront answers its
//! back end's Closing, so the toolstack's detach completes instead of
//! waiting out its timeout. Every device still open closes before the
//! kernel powers off.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::Poll;
use core::time::Duration;

use log::{error, info, warn};
use tidepool_block::wait::WaitMode;
use tidepool_block::{
    BlkStats, BlockDriver, Completion, Completions, Deadline, DiskLimits, ExtentError,
    MAX_IN_FLIGHT, Notice, Op, Request, SECTOR_SIZE, SharedMemory, Token,
};
use tidepool_dma::{
    CoherentBuffer, DmaDevice, DmaDirection, DmaEnv, DmaError, DmaMapping, PoolBuffer,
};
use tidepool_xen_abi::blkfront::{
    self, BLKBACK_PERSISTENT_GRANTS, BackendFeatures, BlkfrontError, DiskInfo, FrontendSetup,
    Inflight, RingLayout, SECTORS_PER_PAGE, Vbd, XenbusState,
};
use tidepool_xen_abi::blkif::{
    BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RESPONSE_WORDS, BLKIF_SLOT_WORDS, BlkifFrontRing, BlkifResponse, BlkifSharedRing,
};
use tidepool_xen_abi::ring::RingError;
use tidepool_xen_abi::xenstore::{TxId, XsErrno, XsError};
use tidepool_xen_abi::{EventHandler, EvtchnPort, GrantRef, Hypervisor};

use crate::dma::{Dma, DmaSetupError};
use crate::timer;
use crate::xen::{Xen, events, store};

/// Segments of an indirect request (128 KiB; Linux's blkfront default too).
/// Each request slot keeps its own: 32 slots (Linux's blkback's persistent
/// grants) are 4.1 MiB of pool and 1056 grants; the block interface's
/// [`MAX_IN_FLIGHT`] (42), 5.4 MiB and 1386 grants; the ring's 1 or 2
/// pages come on top (the grant table grows to hold them all).
pub const INDIRECT_SEGMENTS: usize = 32;
/// How long one request may take. Generous: under emulation on a busy host
/// dom0's blkback was seen taking over 5 s for one request of a batch; a
/// response after this time finds its slot expired and breaks the device.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PAGE: usize = tidepool_mm::PAGE_SIZE as usize;
const SECTOR: usize = blkfront::BLKIF_SECTOR_BYTES;

/// The ring's memory while a disk is set up: coherent memory of the disk's
/// DMA context, every page granted to the back end. Freed through the DMA
/// layer if the setup fails before the disk owns it, which ends its grants
/// as at close (one the back end still maps stays granted, its pages never
/// freed, and is counted in the device's `grants_leaked`).
struct RingGrants<'d> {
    dma: &'d mut Dma,
    device: &'d mut DmaDevice<'static>,
    memory: Option<CoherentBuffer<'static>>,
}

impl RingGrants<'_> {
    /// The ring's memory, from now on the disk's to free ([`PvDisk::close`]).
    fn keep(mut self) -> Option<CoherentBuffer<'static>> {
        self.memory.take()
    }
}

impl Drop for RingGrants<'_> {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take()
            && let Err(err) = self.device.free_coherent(&mut self.dma.env(), memory)
        {
            warn!(
                "blk: {}: setup failed and its ring stays: {err}",
                self.device.name()
            );
        }
    }
}

/// The event channel while a disk is set up: closed if the setup fails
/// before the disk owns it (the disk closes it at [`PvDisk::close`]).
struct SetupPort {
    port: EvtchnPort,
    kept: bool,
}

impl SetupPort {
    /// The port, from now on the disk's to close.
    fn keep(mut self) -> EvtchnPort {
        self.kept = true;
        self.port
    }
}

impl Drop for SetupPort {
    fn drop(&mut self) {
        if !self.kept
            && let Err(err) = events::close(self.port)
        {
            warn!(
                "blk: setup failed and its event channel {} stays open: {err}",
                self.port.0
            );
        }
    }
}

/// `slots` empty per-slot entries.
fn empty_slots<T>(slots: usize) -> Vec<Option<T>> {
    let mut entries = Vec::new();
    entries.resize_with(slots, || None);
    entries
}

/// What a slot's request is, for its completion.
#[derive(Clone, Copy, Debug)]
struct Sent {
    token: Token,
    op: Op,
    lba: u64,
    bytes: u32,
    /// It got no response in time, or the back end went away: its slot is
    /// never reused and its pages stay mapped (the back end may still
    /// write them).
    expired: bool,
}

/// A slot's pages: their pool buffer while the CPU owns them, its mapping
/// while a request of the slot is in flight.
enum SlotMemory {
    Idle(PoolBuffer<'static>),
    Mapped(DmaMapping<'static>),
}

/// The CPU's access to a slot's pool buffer.
fn window(buffer: &PoolBuffer<'static>) -> SharedMemory {
    // SAFETY: the buffer's window address: its pool is the disk's, set
    // aside from linear RAM for good by `Dma::grant_device` and vouched for
    // to `PoolSet::add`, so it is mapped read-write normal memory (not at
    // 0). The pool gave these pages to this buffer alone, and the caller
    // holds the buffer, not a mapping of it: no request naming its pages is
    // in flight, so the back end does not touch them while the value lives.
    unsafe { SharedMemory::window(buffer.virt(), buffer.size() as usize) }
}

/// Fills the idle buffer in `memory` (`fill`, while the CPU owns it), maps
/// its first `len` bytes for the back end and writes their grant
/// references to `grefs`; returns how many. The buffer stays idle if the
/// map fails.
fn map_slot_memory(
    dma: &mut DmaDevice<'static>,
    env: &mut DmaEnv<'_, 'static>,
    memory: &mut Option<SlotMemory>,
    len: usize,
    dir: DmaDirection,
    fill: impl FnOnce(&mut SharedMemory),
    grefs: &mut [GrantRef],
) -> Result<usize, PvError> {
    let buffer = match memory.take() {
        Some(SlotMemory::Idle(buffer)) => buffer,
        other => {
            *memory = other;
            return Err(PvError::NoSlotMemory);
        }
    };
    fill(&mut window(&buffer));
    match dma.map_in_pool(env, buffer, len as u64, dir) {
        Ok(mapping) => {
            let mut count = 0;
            for (slot, gref) in grefs.iter_mut().zip(mapping.grant_refs()) {
                *slot = gref;
                count += 1;
            }
            *memory = Some(SlotMemory::Mapped(mapping));
            Ok(count)
        }
        Err((error, buffer)) => {
            *memory = Some(SlotMemory::Idle(buffer));
            Err(PvError::Dma(error))
        }
    }
}

/// Gives a mapped slot memory back to the CPU; a failed unmap loses it.
fn unmap_slot_memory(
    dma: &mut DmaDevice<'static>,
    env: &mut DmaEnv<'_, 'static>,
    memory: &mut Option<SlotMemory>,
) -> Result<(), PvError> {
    match memory.take() {
        Some(SlotMemory::Mapped(mapping)) => {
            let buffer = dma.unmap_in_pool(env, mapping).map_err(PvError::Dma)?;
            *memory = Some(SlotMemory::Idle(buffer));
            Ok(())
        }
        other => {
            *memory = other;
            Ok(())
        }
    }
}

/// Why a request of a PV disk failed or was refused.
#[derive(Clone, Debug)]
pub enum PvError {
    /// The block protocol: the request, the back end or its response.
    Protocol(BlkfrontError),
    /// The DMA layer refused to hand a slot's pages to the back end (a
    /// grant the grant table refused) or to give them back.
    Dma(DmaError<'static>),
    /// The slot's pages were lost by an earlier failed unmap.
    NoSlotMemory,
    /// A read or write that does not fit the disk: empty, not whole
    /// sectors, larger than one request's pages, or beyond its capacity.
    /// (Its callers name the disk and the operation, as for every error
    /// here.)
    Extent(ExtentError),
}

impl core::fmt::Display for PvError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Protocol(e) => write!(f, "{e}"),
            Self::Dma(e) => write!(f, "{e}"),
            Self::NoSlotMemory => f.write_str("the request slot lost its pages"),
            Self::Extent(error) => error.fmt(f),
        }
    }
}

impl From<BlkfrontError> for PvError {
    fn from(e: BlkfrontError) -> Self {
        Self::Protocol(e)
    }
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
    /// The disk's DMA context: a grant device whose pool holds every
    /// slot's pages.
    dma: DmaDevice<'static>,
    /// Each slot's data pages.
    data: Vec<Option<SlotMemory>>,
    /// Each slot's indirect page (with indirect requests; empty otherwise).
    indirect: Vec<Option<SlotMemory>>,
    /// The ring's memory, coherent memory of `dma` granted whole; freed
    /// (its grants ended) at close, so `None` once [`PvDisk::close`] ran
    /// ([`PvDisk::is_closed`]).
    ring_memory: Option<CoherentBuffer<'static>>,
    /// Segments of one request: 11, or [`INDIRECT_SEGMENTS`] with indirect
    /// requests.
    segments: usize,
    /// Results of finished requests not yet collected, by slot.
    done: Vec<Option<Result<(), BlkfrontError>>>,
    /// The back end went away or broke the protocol: no more I/O.
    broken: Option<BlkfrontError>,
    /// The back end is leaving or gone (Closing, Closed, or its state
    /// node removed): the disk closes itself once nothing of it is
    /// outstanding ([`PvDisk::close_if_left`]).
    left: bool,
    token: String,
    stats: BlkStats,
}

/// Why a device could not be set up.
#[derive(Debug)]
pub enum PvSetupError {
    /// The protocol failed.
    Protocol(BlkfrontError),
    /// The ring's area does not make a ring.
    Ring(RingError),
    /// The disk's DMA context could not be set up.
    DmaSetup(DmaSetupError),
    /// The disk's pool could not give the ring or a slot its pages, or a
    /// ring page was not granted.
    Dma(DmaError<'static>),
    /// The event channel failed.
    Event(events::EventChannelError),
    /// The disk's sectors are not 512 bytes.
    SectorSize(u32),
}

impl core::fmt::Display for PvSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Protocol(e) => write!(f, "{e}"),
            Self::Ring(e) => write!(f, "ring: {e}"),
            Self::DmaSetup(e) => write!(f, "{e}"),
            Self::Dma(e) => write!(f, "{e}"),
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

/// A disk's slots' pages: data pages, and indirect pages with indirect
/// requests (none otherwise).
type SlotPages = (Vec<Option<SlotMemory>>, Vec<Option<SlotMemory>>);

/// Every slot's pages, from `device`'s pool: `segments` data pages per slot
/// and, with `indirect`, one indirect page. Nothing is granted yet: a page
/// is granted at its first request.
fn slot_memory(
    device: &mut DmaDevice<'static>,
    env: &mut DmaEnv<'_, 'static>,
    slots: usize,
    segments: usize,
    indirect: bool,
) -> Result<SlotPages, PvSetupError> {
    let mut alloc = |pages: usize| {
        device
            .alloc_in_pool(env, (pages * PAGE) as u64)
            .map(|buffer| Some(SlotMemory::Idle(buffer)))
            .map_err(PvSetupError::Dma)
    };
    let data = (0..slots)
        .map(|_| alloc(segments))
        .collect::<Result<Vec<_>, _>>()?;
    let indirect = match indirect {
        true => (0..slots)
            .map(|_| alloc(1))
            .collect::<Result<Vec<_>, _>>()?,
        false => Vec::new(),
    };
    Ok((data, indirect))
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
    let start = timer::uptime_us();
    let result = loop {
        match store::with(blkfront::find_vbds) {
            Some(Ok(devids)) if !devids.is_empty() => break Ok(devids),
            Some(Err(err)) => break Err(err),
            _ => {}
        }
        if timer::uptime_us() - start > ATTACH_TIMEOUT_US {
            break Ok(Vec::new());
        }
        // Each wait is bounded by the store's reply timeout; a timeout here
        // only means nothing changed yet.
        let _ = store::with(|xs| xs.wait_event(TOKEN));
    };
    let _ = store::with(|xs| xs.unwatch("device/vbd", TOKEN));
    result
}

/// Sets up every `device/vbd` of this domain; a device that fails is
/// reported and left out. `persistent_grants` is how many grants the back
/// end keeps mapped, which it does not say (`blk-pv-grants=`; Linux
/// blkback's default, [`BLKBACK_PERSISTENT_GRANTS`], if `None`).
pub fn probe(dma: &mut Dma, persistent_grants: Option<usize>) -> Vec<PvDisk> {
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
        match PvDisk::set_up(dma, devid, name.clone(), persistent_grants) {
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
        dma: &mut Dma,
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
        let name: &'static str = name.leak();
        // One pool for all the disk's shared memory: the ring, then every
        // slot's pages.
        let ring_bytes = layout.pages() * PAGE;
        let per_slot = segments + usize::from(indirect_ok);
        let mut device = dma
            .grant_device(name, backend, ring_bytes + slots * per_slot * PAGE)
            .map_err(PvSetupError::DmaSetup)?;
        // The ring is coherent memory of the device: zeroed, and each page
        // granted read-write to the back end now (it maps them all when it
        // connects). One block of the pool, whose window is linear RAM: the
        // pages are virtually contiguous, as the ring logic needs (one slice
        // of entries over them); that they are physically contiguous too is
        // not needed (each page is granted on its own). Its sync points
        // need nothing (`tidepool_dma::coherent_sync_action`: a coherent
        // device, here another domain's CPU, in cacheable memory), so none
        // is called: the ring logic's atomics and barriers are all it takes.
        let memory = device
            .alloc_coherent(&mut dma.env(), ring_bytes as u64, PAGE as u64)
            .map_err(PvSetupError::Dma)?;
        let ring_refs: Vec<GrantRef> = memory.grant_refs().collect();
        let ring_virt = memory.virt();
        let held = RingGrants {
            dma,
            device: &mut device,
            memory: Some(memory),
        };
        let entries = core::ptr::slice_from_raw_parts(
            ring_virt.0 as *const [core::sync::atomic::AtomicU64; BLKIF_SLOT_WORDS],
            layout.entries,
        );
        // SAFETY: `ring_virt` is where the CPU reaches the coherent
        // allocation just made for the disk's device: `layout.pages()`
        // page-aligned pages of its pool, which `Dma::grant_device` set
        // aside from linear RAM for good and vouched for to `PoolSet::add`,
        // so they are mapped read-write normal memory (not at 0), zeroed,
        // and the pool gave them to this allocation only. The ring's 64-byte
        // header and `layout.entries` slots fit in it (its entries are
        // `__CONST_RING_SIZE` over those pages: only slots that fit after
        // the header). The disk frees it at close, after which it starts no
        // request (`broken`), takes no response (`harvest`, `broken`) and
        // neither publishes nor looks (`kick`, `has_completions`: no
        // `ring_memory`), and the pool gives nothing more out (the device allocates
        // at setup only; the pool's memory never returns to the heap).
        // `BlkifSharedRing` is atomics (8-byte aligned), valid zeroed, so
        // the back end writing it at any time is sound.
        let shared: &'static BlkifSharedRing = unsafe { &*(entries as *const BlkifSharedRing) };
        // Granted already, but the back end learns the grant references
        // only from `connect` below.
        let ring = BlkifFrontRing::init(shared).map_err(PvSetupError::Ring)?;
        let (data, indirect) = slot_memory(
            held.device,
            &mut held.dma.env(),
            slots,
            segments,
            indirect_ok,
        )?;
        let signalled: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let handler: &'static dyn EventHandler = Box::leak(Box::new(move |_: EvtchnPort| {
            signalled.store(true, Ordering::Release)
        }));
        let port = events::alloc_unbound(backend, handler).map_err(PvSetupError::Event)?;
        let held_port = SetupPort { port, kept: false };
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
            port: held_port.keep(),
            signalled,
            layout,
            inflight: Inflight::new(slots),
            sent: empty_slots(slots),
            ring_memory: held.keep(),
            dma: device,
            data,
            indirect,
            segments,
            done: empty_slots(slots),
            broken: None,
            left: false,
            token,
            stats: BlkStats::default(),
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

    /// Takes this disk's own queued watch events (other disks' stay queued
    /// for them); after any, reads the back end's state: the back end
    /// leaving (Closing/Closed, or its state node gone) ends new I/O and
    /// has the disk close itself ([`Self::close_if_left`]).
    fn check_backend(&mut self) {
        let token = &self.token;
        let changed = store::with(|xs| {
            let mut changed = false;
            while let Ok(Some(_)) = xs.poll_event(token) {
                changed = true;
            }
            changed.then(|| blkfront::backend_state(xs, &self.vbd))
        })
        .flatten();
        match changed {
            Some(Ok(state @ (XenbusState::Closing | XenbusState::Closed))) => {
                self.left = true;
                self.break_with(BlkfrontError::BackendClosed { state });
            }
            Some(Err(err)) => {
                // The back end's directory gone (the toolstack removed the
                // device) is a back end that left; any other failure only
                // breaks the device.
                self.left |= matches!(
                    err,
                    BlkfrontError::Store(XsError::Errno {
                        errno: XsErrno::NoEnt,
                        ..
                    })
                );
                self.break_with(err);
            }
            _ => {}
        }
    }

    /// Ends new I/O with `error`. A back end's later state replaces an
    /// earlier one; any other error stands, whatever the back end does
    /// next: a ring judged untrustworthy (a bad response, an overrun) is
    /// not read again, even if the back end then goes Closing.
    fn break_with(&mut self, error: BlkfrontError) {
        if matches!(
            self.broken,
            None | Some(BlkfrontError::BackendClosed { .. })
        ) {
            self.broken = Some(error);
        }
    }

    /// Whether the back end may still answer the requests in flight: it is
    /// Closing. Linux's blkback serves its ring until the front end says
    /// Closed: `frontend_changed` (drivers/block/xen-blkback/xenbus.c)
    /// answers the front end's Closing with Closing only, and stops the
    /// ring's thread (`xen_blkif_disconnect`) on Closed; the toolstack's
    /// Closing (`xl block-detach` writes the back end's `state`) stops
    /// nothing. Closed, gone, or a broken protocol: nothing more comes back.
    fn answers_in_flight(&self) -> bool {
        matches!(
            self.broken,
            Some(BlkfrontError::BackendClosed {
                state: XenbusState::Closing
            })
        )
    }

    /// Closes the disk ([`Self::close`]) if its back end left and nothing
    /// of the disk is outstanding: no request in flight (each was answered,
    /// failed, or expired: an expired request's pages are the DMA layer's
    /// to end or leak at close) and no result its caller has not collected
    /// yet (a finished read's data stays in its slot's pages until
    /// `finish`). Linux's blkfront answers its back end's Closing by
    /// closing too (`blkback_changed` → `blkfront_closing`: it stops new
    /// requests and goes Closed, `xenbus_frontend_closed`); this one lets
    /// the requests already on the ring finish first. The toolstack's
    /// detach waits for the front end to close.
    fn close_if_left(&mut self, env: &mut DmaEnv<'_, 'static>) {
        if !self.left
            || self.is_closed()
            || self.inflight.count() > 0
            || self.done.iter().any(Option::is_some)
        {
            return;
        }
        if let Some(err) = &self.broken {
            info!("blk: {} closing: {err}", self.name);
        }
        self.close(env);
    }

    /// Looks at the disk while none of its requests is in flight (between
    /// the monitor's commands, while it waits for input): a disk whose
    /// back end left closes itself ([`Self::close_if_left`]). Whether the
    /// disk is still open.
    pub fn tend(&mut self, env: &mut DmaEnv<'_, 'static>) -> bool {
        if !self.is_closed() {
            self.check_backend();
            self.close_if_left(env);
        }
        !self.is_closed()
    }

    /// Starts `op` in a free slot, due by `deadline`; returns its token.
    fn start(
        &mut self,
        env: &mut DmaEnv<'_, 'static>,
        op: u8,
        lba: u64,
        data: Option<&[u8]>,
        sectors: usize,
        deadline: Deadline,
    ) -> Result<Token, PvError> {
        if let Some(err) = &self.broken {
            return Err(err.clone().into());
        }
        if op != BLKIF_OP_READ && self.info.read_only {
            return Err(BlkfrontError::ReadOnly.into());
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
            expired: false,
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
            match self.map_request(env, slot, op, handle, id, lba, sectors, data) {
                Ok(words) => words,
                Err(err) => {
                    self.forget(env, slot);
                    return Err(err);
                }
            }
        };
        if let Err(err) = self.ring.put_request(&request) {
            self.forget(env, slot);
            return Err(BlkfrontError::BadRequest(match err {
                RingError::Full { .. } => "ring full",
                RingError::ResponseOverflow { .. } => "ring overrun",
                RingError::BadSize { .. } => "ring size",
            })
            .into());
        }
        // Published to the back end, and notified, by `kick`.
        Ok(token)
    }

    /// Copies `data` (a write's) into the slot's data pages, maps them and,
    /// for an indirect request, the slot's indirect page with the segments,
    /// and builds the request on their grant references.
    #[allow(clippy::too_many_arguments)]
    fn map_request(
        &mut self,
        env: &mut DmaEnv<'_, 'static>,
        slot: usize,
        op: u8,
        handle: u16,
        id: u64,
        lba: u64,
        sectors: usize,
        data: Option<&[u8]>,
    ) -> Result<[u64; BLKIF_SLOT_WORDS], PvError> {
        let dir = match op {
            BLKIF_OP_READ => DmaDirection::FromDevice,
            _ => DmaDirection::ToDevice,
        };
        let mut grefs = [GrantRef::default(); INDIRECT_SEGMENTS];
        let count = map_slot_memory(
            &mut self.dma,
            env,
            &mut self.data[slot],
            sectors * SECTOR,
            dir,
            |memory| {
                if let Some(data) = data {
                    memory.write_bytes(0, data);
                }
            },
            &mut grefs,
        )?;
        let grefs = &grefs[..count];
        let pages = sectors.div_ceil(SECTORS_PER_PAGE);
        if pages <= BLKIF_MAX_SEGMENTS_PER_REQUEST || self.indirect.is_empty() {
            return Ok(blkfront::rw_request(op, handle, id, lba, sectors, grefs)?.to_words());
        }
        let mut indirect = [GrantRef::default()];
        map_slot_memory(
            &mut self.dma,
            env,
            &mut self.indirect[slot],
            PAGE,
            DmaDirection::ToDevice,
            |memory| {
                for (i, seg) in blkfront::segments(sectors, grefs).enumerate() {
                    memory.write_u64(i * 8, seg.to_word());
                }
            },
            &mut indirect,
        )?;
        let request = blkfront::indirect_request(
            op,
            handle,
            id,
            lba,
            sectors,
            grefs,
            &indirect,
            self.segments,
        )?;
        Ok(request.to_words())
    }

    /// Gives a slot's pages back to the CPU (those of a request in flight
    /// no more).
    fn unmap_slot(&mut self, env: &mut DmaEnv<'_, 'static>, slot: usize) -> Result<(), PvError> {
        let data = unmap_slot_memory(&mut self.dma, env, &mut self.data[slot]);
        let indirect = match self.indirect.get_mut(slot) {
            Some(memory) => unmap_slot_memory(&mut self.dma, env, memory),
            None => Ok(()),
        };
        data.and(indirect)
    }

    /// Drops a slot that never reached the ring, giving its pages back.
    fn forget(&mut self, env: &mut DmaEnv<'_, 'static>, slot: usize) {
        if let Err(err) = self.unmap_slot(env, slot) {
            error!("blk: {}: {err}", self.name);
        }
        self.sent[slot] = None;
        self.inflight.release(slot);
    }

    /// Fails the request in `slot` for good: it expired, or the back end
    /// went away. Its pages stay mapped: the back end may still write them.
    fn expired(&mut self, slot: usize, err: BlkfrontError, done: &mut Completions) {
        if let Some(sent) = &mut self.sent[slot] {
            sent.expired = true;
        }
        self.finished(slot, Err(err), done);
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
    /// fails every request in flight, unless its back end is Closing and so
    /// still answers them ([`Self::answers_in_flight`]). A closed disk's
    /// ring is freed: nothing is read.
    fn harvest(&mut self) -> Completions {
        let mut done = Completions::new();
        if self.is_closed() {
            return done;
        }
        while self.broken.is_none() || self.answers_in_flight() {
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
            match self.inflight.complete(response) {
                Ok(completed) => {
                    let result = completed.result.map_err(|failure| {
                        blkfront::completion_error(completed.op, completed.sector, failure)
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
        if let Some(err) = self.broken.clone()
            && !self.answers_in_flight()
        {
            // Nothing more will come back: every request in flight fails.
            for (slot, _) in self.inflight.expire(u64::MAX) {
                self.expired(slot, err.clone(), &mut done);
            }
        }
        done
    }

    /// [`Self::close`] ran: the ring and the slots' pages are freed, the
    /// event channel closed. Closing happens once, whoever asks first (the
    /// back end leaving, or the kernel powering off).
    fn is_closed(&self) -> bool {
        self.ring_memory.is_none()
    }

    /// Disconnects: goes Closing, waits for the back end to close, goes
    /// Closed, frees the ring and the slots' pages through the DMA layer
    /// (which ends their grants; a grant the back end still maps is leaked
    /// with its pages) and closes the event channel; the disk does no more
    /// I/O. Problems are reported, never fatal. The kernel's transfer loop
    /// collects every request it submits, so none is in flight here. Prints
    /// the closed line and the disk's `dma: stats` line. Once: a disk that
    /// closed itself when its back end left ([`Self::close_if_left`]) is
    /// not closed again at power-off.
    pub fn close(&mut self, env: &mut DmaEnv<'_, 'static>) {
        // Taken now, freed once the back end has let go of it.
        let Some(ring_memory) = self.ring_memory.take() else {
            return;
        };
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
            // The toolstack removed the device (front end's directory and
            // back end's together): writing `state` would only create it
            // again. Linux's `__xenbus_switch_state` checks it exists too.
            if let Err(XsError::Errno {
                errno: XsErrno::NoEnt,
                ..
            }) = xs.read(TxId::NONE, &format!("{}/state", vbd.frontend))
            {
                return Ok(());
            }
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
        // No request uses the ring or the slots' pages from now on.
        self.broken.get_or_insert(BlkfrontError::BackendClosed {
            state: XenbusState::Closed,
        });
        let mut still_mapped = 0;
        // Freeing ends the grants, the ring's as the slots'. That is safe
        // even for an expired request's pages: Xen ends no grant the back
        // end still maps, and then the DMA layer leaks the pages instead of
        // freeing them.
        let name = self.name;
        let mut count = |freed: Result<(), DmaError<'static>>| match freed {
            Ok(()) => {}
            Err(DmaError::GrantsStillMapped { count, .. }) => still_mapped += count,
            Err(err) => error!("blk: {name} close: {err}"),
        };
        count(self.dma.free_coherent(env, ring_memory));
        for memory in self.data.iter_mut().chain(self.indirect.iter_mut()) {
            count(match memory.take() {
                Some(SlotMemory::Idle(buffer)) => self.dma.free_in_pool(env, buffer),
                Some(SlotMemory::Mapped(mapping)) => self.dma.unmap(env, mapping),
                None => Ok(()),
            });
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
        info!("{}", self.dma.stats_line());
    }
}

impl BlockDriver<'static> for PvDisk {
    type Error = PvError;

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
        env: &mut DmaEnv<'_, 'static>,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Token, PvError> {
        // A disk whose back end left closes before it refuses the request.
        self.close_if_left(env);
        let limits = DiskLimits {
            block_sectors: 1,
            max_bytes: self.request_bytes() as u64,
            capacity: self.info.sectors,
        };
        let check = |lba, bytes| match limits.check(lba, bytes) {
            // At most `request_bytes` / 512.
            Ok(sectors) => Ok(sectors as usize),
            Err(error) => Err(PvError::Extent(error)),
        };
        match request {
            Request::Read { lba, sectors } => {
                let bytes = u64::from(sectors) * u64::from(SECTOR_SIZE);
                let sectors = check(lba, bytes)?;
                self.start(env, BLKIF_OP_READ, lba, None, sectors, deadline)
            }
            Request::Write { lba, data } => {
                let sectors = check(lba, data.len() as u64)?;
                self.start(env, BLKIF_OP_WRITE, lba, Some(data), sectors, deadline)
            }
            Request::Flush => self.start(env, BLKIF_OP_FLUSH_DISKCACHE, 0, None, 0, deadline),
        }
    }

    /// Publishes the requests written since the last kick and notifies the
    /// back end if it asked to be (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`):
    /// one event for a batch.
    fn kick(&mut self, _env: &mut DmaEnv<'_, 'static>) {
        // A closed disk's ring is freed: not even its index is written.
        if !self.is_closed() && self.ring.push_requests() {
            self.notify();
            self.stats.notifies += 1;
        }
    }

    fn is_busy(&self, error: &PvError) -> bool {
        matches!(error, PvError::Protocol(BlkfrontError::Busy))
    }

    fn is_full(&self, error: &PvError) -> bool {
        // A finished request keeps its slot (and mapped pages) until
        // `finish`: busy and full are the same refusal here.
        matches!(error, PvError::Protocol(BlkfrontError::Busy))
    }

    fn no_free_slot(&self) -> PvError {
        BlkfrontError::Busy.into()
    }

    fn interrupt_noted(&self) -> bool {
        self.signalled.load(Ordering::Acquire)
    }

    fn handle_interrupt(
        &mut self,
        env: &mut DmaEnv<'_, 'static>,
        _notice: &mut dyn FnMut(Notice<'_>),
    ) -> Completions {
        self.signalled.store(false, Ordering::Release);
        let done = self.harvest();
        self.close_if_left(env);
        done
    }

    fn has_completions(&self) -> bool {
        // A closed disk's ring is freed (and nothing is in flight). A ring
        // the back end overran is news: `poll` reports it.
        !self.is_closed() && !matches!(self.ring.has_unconsumed_responses(), Ok(false))
    }

    fn poll(&mut self, env: &mut DmaEnv<'_, 'static>) -> Completions {
        let done = self.harvest();
        self.close_if_left(env);
        done
    }

    fn expire(&mut self, now: u64) -> Completions {
        let mut done = Completions::new();
        for (slot, err) in self.inflight.expire(now) {
            self.expired(slot, err, &mut done);
        }
        done
    }

    fn set_interrupts(&mut self, _enabled: bool) {
        // The hint is not taken: the ring asks the back end for an event
        // only when the front end runs dry of responses (`rsp_event`), and
        // a poller's upcall only sets `signalled`.
    }

    /// WFI: the back end is dom0's blkback, which needs the physical CPU
    /// this guest would spin on where they share one (measured on the
    /// emulated one-CPU machine: polling made each QD1 read wait about
    /// 17 ms for dom0 to run, 41-57 reads/s; WFI gave 266).
    fn default_wait(&self) -> WaitMode {
        WaitMode::Wfi
    }

    /// [`REQUEST_TIMEOUT`]: the back end is dom0's blkback, software
    /// sharing the CPU, not a device beside it.
    fn request_timeout(&self) -> Duration {
        REQUEST_TIMEOUT
    }

    /// A read's data is lent in place in the slot's granted pages: the
    /// back end answered (its response was checked), the pages are unmapped
    /// from it, and the slot is released only after the borrow, so no
    /// request can reuse them while the caller reads them.
    fn finish(
        &mut self,
        env: &mut DmaEnv<'_, 'static>,
        token: Token,
        data: &mut dyn FnMut(&[u8]),
    ) -> Poll<Result<Completion, PvError>> {
        let slot = usize::from(token.slot());
        let Some(sent) = self.sent.get(slot).copied().flatten() else {
            return Poll::Ready(Err(BlkfrontError::BadRequest("no such request").into()));
        };
        if sent.token != token {
            return Poll::Ready(Err(BlkfrontError::BadRequest("no such request").into()));
        }
        let Some(result) = self.done[slot].take() else {
            return Poll::Pending;
        };
        // An expired request's pages stay the back end's.
        let unmapped = match sent.expired {
            true => Ok(()),
            false => self.unmap_slot(env, slot),
        };
        let result = result.map_err(PvError::from).and(unmapped).and_then(|()| {
            if sent.op == Op::Read {
                let Some(Some(SlotMemory::Idle(buffer))) = self.data.get(slot) else {
                    return Err(PvError::NoSlotMemory);
                };
                if u64::from(sent.bytes) > buffer.size() {
                    return Err(BlkfrontError::BadRequest("a read larger than its slot").into());
                }
                let memory = window(buffer);
                // SAFETY: the slot's buffer is idle (unmapped just above,
                // after the back end answered): no request names its pages
                // until the slot is released below, after the slice is
                // gone, and `&mut self` is held for the whole call.
                data(unsafe { memory.bytes(0, sent.bytes as usize) });
            }
            Ok(Completion {
                op: sent.op,
                lba: sent.lba,
                bytes: sent.bytes,
            })
        });
        self.sent[slot] = None;
        self.inflight.release(slot);
        // The last outstanding request of a disk whose back end left.
        self.close_if_left(env);
        Poll::Ready(result)
    }

    fn stats(&self) -> &BlkStats {
        &self.stats
    }

    fn dma(&self) -> &DmaDevice<'static> {
        &self.dma
    }
}
