//! Block devices: every virtio-mmio transport with a block device behind it
//! (`tidepool-virtio-blk`) and every i.MX uSDHC with an SD card
//! (`tidepool-usdhc`), both on the DMA layer, completing by interrupt, and
//! every Xen PV disk of the domain (`crate::blkfront`, on pages granted to
//! its back end, completing by event channel), all driven through the one
//! [`BlockDriver`] interface by the one transfer loop here ([`Disk`]):
//! `blk-write=`, `blk-verify=`, `bench=` and the monitor's `blk` commands
//! work the same on any, and print the same lines.
//!
//! A device's SPI handler only quietens the device and notes the interrupt
//! for its driver (virtio: the driver's `InterruptHandler` acknowledges it
//! through the interrupt registers the driver handed out and notes its
//! causes; uSDHC: the handler masks the controller's interrupt signals,
//! whose status the driver reads); after WFI the waiting code lets the
//! driver act on it (`handle_interrupt`: completions, and for virtio a
//! capacity change, reported, or a device that needs a reset, failed). So
//! a driver's state is never touched from interrupt context. Waiting for a
//! free request slot lasts at most one request timeout. The drivers' clock
//! is the virtual counter in ticks (no division on the I/O path); times
//! are converted to and from ticks by [`timer`] only.
//!
//! # Waiting (`wait=`)
//!
//! The one waiter of the transfer loop, for every driver:
//!
//! - `wfi`: idle in WFI until the device's interrupt. Under Xen, WFI traps:
//!   the vCPU is descheduled and woken for every completion.
//! - `poll`: spin on the device ([`BlockDriver::poll`]) with its interrupts
//!   suppressed where the driver can ([`BlockDriver::set_interrupts`]).
//! - `hybrid`: spin for a budget that follows recent completion times
//!   ([`SpinBudget`], at most [`SPIN_CAP`]), then WFI.
//!
//! Without `wait=`, each device waits as its driver says
//! ([`BlockDriver::default_wait`]: polling, but WFI for a Xen PV disk,
//! whose back end needs this CPU); `cargo xtask bench` measures all three
//! (rate and CPU time per request: the time not spent in WFI).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32};
use core::task::Poll;
use core::time::Duration;

use log::{error, info, warn};
use tidepool_block::pattern::{self, SECTOR_BYTES};
use tidepool_block::wait::{SpinBudget, WaitMode};
use tidepool_block::workload::{self, BLOCK_BYTES, Checksum};
use tidepool_block::{BlockDriver, Deadline, Notice, Request, StatsLine, Token, sector_chunks};
use tidepool_dma::DmaEnv;
use tidepool_dt::{DeviceTree, GicInterrupt, Usdhc as UsdhcNode, VirtioMmio};
use tidepool_mm::PhysAddr;
use tidepool_usdhc::{InitError, SdCard, SdError, Usdhc};
use tidepool_virtio_blk::transport::{ReadRegister, Transport};
use tidepool_virtio_blk::{BlockDevice, MmioTransport, Options};

use crate::arch::aarch64::timer as arch_timer;
use crate::blkfront::{self, PvDisk};
use crate::bootargs::{DiskPattern, SectorRange};
use crate::dma::Dma;
use crate::irq;
use crate::timer;

/// `MagicValue` of a virtio-mmio transport ("virt").
const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// `DeviceID` of a block device.
const BLOCK_DEVICE_ID: u32 = 2;
/// Bytes per request of the bulk paths, at most (or the driver's largest
/// request, if smaller).
const CHUNK_BYTES: usize = 256 * 1024;
/// Requests in flight per device (the benchmark's deepest queue, QD32).
const IN_FLIGHT: usize = 32;
/// The longest spin of `wait=hybrid` before WFI.
pub const SPIN_CAP: Duration = Duration::from_millis(1);
/// Random reads per queue depth of `bench=` when `bench-reads=` is not given.
pub const BENCH_READS: u64 = 4096;

/// The uSDHC's input clock when the device tree does not assign one: what
/// the i.MX 8M Plus tree assigns its `usdhc` clocks.
const USDHC_DEFAULT_CLOCK_HZ: u32 = 400_000_000;

/// A virtio block device.
pub type VirtioDisk = BlockDevice<'static, MmioTransport>;
/// An SD card on a uSDHC.
pub type SdDisk = SdCard<'static, Usdhc>;

/// Every block device the kernel found, whatever its driver.
#[allow(
    clippy::large_enum_variant,
    reason = "a few disks, set up once at boot and never moved"
)]
pub enum AnyDisk {
    /// virtio-blk.
    Virtio(Disk<VirtioDisk>),
    /// SD card.
    Sd(Disk<SdDisk>),
    /// Xen PV disk.
    Pv(Disk<PvDisk>),
}

/// Runs `$body` with `$disk` bound to the [`Disk`] inside an [`AnyDisk`],
/// whatever its driver (the body is generic code over [`BlockDriver`]).
macro_rules! with_disk {
    ($any:expr, $disk:ident => $body:expr) => {
        match $any {
            AnyDisk::Virtio($disk) => $body,
            AnyDisk::Sd($disk) => $body,
            AnyDisk::Pv($disk) => $body,
        }
    };
}
pub(crate) use with_disk;

impl AnyDisk {
    /// The device-tree path of the device.
    pub fn name(&self) -> &'static str {
        with_disk!(self, disk => disk.name())
    }

    /// Prints the device's setup line (`blk: <device> virtio-mmio ...`,
    /// `blk: <device> sd ...` or `blk: <device> pv ...`) and its counters
    /// (`blk: stats ...` and the driver's own, if any).
    pub fn print_info(&self) {
        with_disk!(self, disk => {
            info!("{}", disk.device.info_line());
            print_stats(&disk.device, false)
        });
    }

    /// Prints the device's DMA counters (`dma: stats ...`, with the grants
    /// of a PV disk).
    pub fn print_dma_stats(&self) {
        with_disk!(self, disk => info!("{}", BlockDriver::dma(&disk.device).stats_line()))
    }

    /// Disconnects the device before the kernel powers off or reboots (a PV
    /// disk tells its back end and ends its grants; the others need
    /// nothing).
    pub fn close(&mut self, dma: &mut Dma) {
        if let AnyDisk::Pv(disk) = self {
            disk.device.close(&mut dma.env());
        }
    }

    /// Lets the device act on what happened while none of its requests was
    /// in flight: a PV disk whose back end left (`xl block-detach`) closes
    /// itself, which the toolstack's detach waits for (`PvDisk::tend`).
    /// Whether it wants tending again (a PV disk still open).
    pub fn tend(&mut self, dma: &mut Dma) -> bool {
        match self {
            AnyDisk::Pv(disk) => disk.device.tend(&mut dma.env()),
            AnyDisk::Virtio(_) | AnyDisk::Sd(_) => false,
        }
    }
}

/// Prints a device's counters: `blk: stats ...`, and with `dma` its DMA
/// counters (`dma: stats ...`).
fn print_stats<D: BlockDriver<'static>>(device: &D, dma: bool) {
    info!("{}", StatsLine::new(device.name(), device.stats()));
    if dma {
        info!("{}", device.dma().stats_line());
    }
}

/// One block device and how it waits.
pub struct Disk<D> {
    device: D,
    waiter: Waiter,
}

/// How a device waits, and what waiting cost.
struct Waiter {
    /// The driver's [`BlockDriver::request_timeout`] in counter ticks: how
    /// long a request may take, and the longest one wait lasts.
    timeout_ticks: u64,
    mode: WaitMode,
    budget: SpinBudget,
    /// Ticks spent in WFI (interrupts on), for the CPU cost of a request.
    idle_ticks: u64,
    /// Requests submitted since the device was last kicked.
    unkicked: usize,
}

/// Finds and sets up every block device: virtio block devices and SD cards
/// of the device tree, then the domain's Xen PV disks, each waiting as
/// `wait` says (or, without `wait=`, as its driver says). Transports without a device, or with another kind, and
/// controllers without a card are skipped; a device that fails to set up is
/// reported and left out. `pv_grants` is what the PV disks' back end keeps
/// mapped (`blk-pv-grants=`; see `blkfront::probe`).
pub fn probe(
    dt: &'static DeviceTree,
    dma: &mut Dma,
    wait: Option<WaitMode>,
    pv_grants: Option<usize>,
) -> Vec<AnyDisk> {
    let mut disks: Vec<AnyDisk> = probe_virtio(dt, dma)
        .into_iter()
        .map(AnyDisk::Virtio)
        .collect();
    disks.extend(probe_sd(dt, dma).into_iter().map(AnyDisk::Sd));
    disks.extend(
        blkfront::probe(dma, pv_grants)
            .into_iter()
            .map(|disk| AnyDisk::Pv(Disk::new(disk))),
    );
    for any in &mut disks {
        with_disk!(any, disk => disk.set_wait(wait.unwrap_or(disk.device().default_wait())));
    }
    disks
}

fn probe_virtio(dt: &'static DeviceTree, dma: &mut Dma) -> Vec<Disk<VirtioDisk>> {
    let map = dma.address_map();
    let mut disks = Vec::new();
    for node in &dt.platform.virtio_mmio {
        let Some(window) = map.window_address(PhysAddr(node.reg.base())) else {
            warn!("blk: {} has no MMIO window", node.path);
            continue;
        };
        let base = window.0 as usize;
        // SAFETY: `base` is the transport's register block, mapped as
        // Device memory by the memory bring-up for the kernel's lifetime;
        // this is the one transport made for it (the interrupt handler
        // touches only the interrupt registers the driver hands out).
        let transport = unsafe { MmioTransport::new(base) };
        if transport.read(ReadRegister::MagicValue) != VIRTIO_MAGIC
            || transport.read(ReadRegister::DeviceId) != BLOCK_DEVICE_ID
        {
            continue;
        }
        match set_up(dt, dma, node, transport) {
            Ok(disk) => {
                info!("{}", disk.device.info_line());
                disks.push(disk);
            }
            Err(why) => error!("blk: {}: {why}", node.path),
        }
    }
    disks
}

fn set_up(
    dt: &'static DeviceTree,
    dma: &mut Dma,
    node: &'static VirtioMmio,
    transport: MmioTransport,
) -> Result<Disk<VirtioDisk>, alloc::string::String> {
    use alloc::string::ToString;
    let dma_device = dma
        .device(dt, &node.path, node.dma_coherent, &node.memory_regions)
        .map_err(|e| e.to_string())?;
    let options = Options {
        in_flight: IN_FLIGHT,
    };
    let mut device = BlockDevice::new(transport, dma_device, &mut dma.env(), options)
        .map_err(|e| e.to_string())?;
    let pending: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let Some(interrupt) = device.interrupt_handler(pending) else {
        return Err("the driver's interrupt registers are already handed out".into());
    };
    register_interrupt(&node.path, &node.interrupt, move || interrupt.handle())?;
    Ok(Disk::new(device))
}

/// Registers `handler` as the handler of a device's interrupt.
fn register_interrupt(
    path: &str,
    interrupt: &GicInterrupt,
    handler: impl Fn() + Sync + 'static,
) -> Result<(), alloc::string::String> {
    use alloc::string::ToString;
    let (intid, trigger) = irq::from_device_tree(interrupt).map_err(|e| e.to_string())?;
    let handler: irq::Handler = Box::leak(Box::new(move |_| handler()));
    irq::register(intid, trigger, handler).map_err(|e| e.to_string())?;
    info!("blk: {path} interrupt intid={} {trigger:?}", intid.raw());
    Ok(())
}

/// Finds and sets up the SD card of every uSDHC in the device tree. A
/// controller where no card answers is reported as empty.
fn probe_sd(dt: &'static DeviceTree, dma: &mut Dma) -> Vec<Disk<SdDisk>> {
    let mut disks = Vec::new();
    for node in &dt.platform.usdhc {
        let path = node.device.path.as_str();
        let Some(window) = dma
            .address_map()
            .window_address(PhysAddr(node.device.reg.base()))
        else {
            warn!("blk: {path} has no MMIO window");
            continue;
        };
        match set_up_sd(dt, dma, node, window.0 as usize) {
            Ok(disk) => {
                info!("{}", disk.device.info_line());
                disks.push(disk);
            }
            Err(SdSetupError::NoCard(why)) => info!("blk: {path} sd no card ({why})"),
            Err(SdSetupError::Failed(why)) => error!("blk: {path}: {why}"),
        }
    }
    disks
}

/// Why an SD card was not set up.
enum SdSetupError {
    /// No card answered the first commands (an empty slot).
    NoCard(alloc::string::String),
    /// Anything else.
    Failed(alloc::string::String),
}

fn set_up_sd(
    dt: &'static DeviceTree,
    dma: &mut Dma,
    node: &'static UsdhcNode,
    base: usize,
) -> Result<Disk<SdDisk>, SdSetupError> {
    use alloc::string::ToString;
    let failed = |e: &dyn core::fmt::Display| SdSetupError::Failed(e.to_string());
    let device = &node.device;
    let dma_device = dma
        .device(
            dt,
            &device.path,
            device.dma_coherent,
            &device.memory_regions,
        )
        .map_err(|e| failed(&e))?;
    let options = tidepool_usdhc::Options {
        base_clock_hz: node.clock_hz.unwrap_or(USDHC_DEFAULT_CLOCK_HZ),
        ignore_write_protect_pin: !node.write_protect_pin,
        ticks_per_ms: ticks(Duration::from_millis(1)),
        ..tidepool_usdhc::Options::default()
    };
    // SAFETY: `base` is the controller's register block, mapped as Device
    // memory by the memory bring-up for the kernel's lifetime; the only
    // other user is this card's interrupt handler, which only masks.
    let controller = unsafe { Usdhc::new(base) };
    let mut clock = arch_timer::counter;
    // SAFETY: the DMA layer's windows and linear addresses are mapped
    // read-write for the kernel's lifetime, and its pools hand each page to
    // one owner (the memory bring-up and `Dma::new` set them up).
    let mut card =
        unsafe { SdCard::new(controller, dma_device, &mut dma.env(), options, &mut clock) }
            .map_err(|e| match e {
                InitError::Command(SdError::Controller { registers, .. })
                    if registers.is_command_timeout() =>
                {
                    SdSetupError::NoCard(e.to_string())
                }
                other => failed(&other),
            })?;
    let noted: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    card.use_interrupt_flag(noted);
    register_interrupt(&device.path, &device.interrupt, move || {
        // SAFETY: the same register block as the driver's (see above); the
        // handler only clears the signal enables, which the driver sets
        // again while a request is in flight.
        unsafe { Usdhc::new(base) }.mask_interrupts();
        noted.store(true, core::sync::atomic::Ordering::Release);
    })
    .map_err(|e| failed(&e))?;
    Ok(Disk::new(card))
}

/// Counter ticks in `duration` ([`timer::duration_to_ticks`]), at most
/// the counter's range.
fn ticks(duration: Duration) -> u64 {
    timer::duration_to_ticks(duration).unwrap_or(u64::MAX)
}

impl<D: BlockDriver<'static>> Disk<D> {
    /// A disk whose requests may take what its driver says
    /// ([`BlockDriver::request_timeout`]).
    fn new(device: D) -> Self {
        let timeout_ticks = ticks(device.request_timeout());
        Self {
            device,
            waiter: Waiter {
                timeout_ticks,
                mode: WaitMode::Poll,
                budget: SpinBudget::new(ticks(SPIN_CAP)),
                idle_ticks: 0,
                unkicked: 0,
            },
        }
    }

    /// Bytes per request of the bulk paths: [`CHUNK_BYTES`], or the
    /// driver's largest request if smaller, in whole sectors.
    fn chunk_bytes(&self) -> usize {
        let max = self.device.max_request_bytes() as usize / SECTOR_BYTES * SECTOR_BYTES;
        CHUNK_BYTES.min(max.max(SECTOR_BYTES))
    }

    /// [`Self::chunk_bytes`] in sectors.
    fn chunk_sectors(&self) -> u32 {
        (self.chunk_bytes() / SECTOR_BYTES) as u32
    }

    /// The device-tree path of the device.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// The driver's device: capacity, counters.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Sets how the device waits; `poll` suppresses its interrupts.
    pub fn set_wait(&mut self, mode: WaitMode) {
        self.waiter.mode = mode;
        self.device.set_interrupts(mode != WaitMode::Poll);
    }

    /// Waits for a completion as the wait mode says (or a request
    /// timeout), then takes what the device returned and expires late
    /// requests.
    fn wait_and_harvest(&mut self, dma: &mut Dma) {
        self.waiter.wait(&mut self.device, &mut dma.env());
    }

    /// Submits a request, waiting while all slots are in use or the
    /// device's pool has no room for another bounce buffer (both free up as
    /// requests in flight complete), at most one request timeout: a device
    /// that keeps every slot past that is reported, not waited for forever.
    fn submit(&mut self, dma: &mut Dma, request: Request<'_>) -> Result<Token, D::Error> {
        let waiter = &mut self.waiter;
        self.device.submit_waiting(
            &mut dma.env(),
            request,
            &mut arch_timer::counter,
            waiter.timeout_ticks,
            &mut |device, env| waiter.wait(device, env),
        )
    }

    /// Submits `request` like [`Self::submit`], except when the caller
    /// holds requests of its own it has not finished yet (`holding`): then
    /// a device with no room (every slot, or its DMA pool, taken) gets one
    /// attempt and `None` comes back, for the caller to finish its oldest
    /// first, which frees room as soon as that one is back. Waiting here
    /// instead would wait for any completion, which frees nothing on a pool
    /// device: its finished requests keep their pool regions until
    /// `finish`, so each retry was a failed pool allocation and another
    /// wait (225 of them in `bench=64`'s sequential pass through a 4 MiB
    /// pool, whose time this took from about 120 ms to 105).
    fn submit_or_defer(
        &mut self,
        dma: &mut Dma,
        request: Request<'_>,
        holding: bool,
    ) -> Result<Option<Token>, D::Error> {
        if !holding {
            return self.submit(dma, request).map(Some);
        }
        let deadline = Deadline::after(arch_timer::counter(), self.waiter.timeout_ticks);
        match self.device.submit(&mut dma.env(), request, deadline) {
            // Busy implies full (`BlockDriver::is_full`).
            Err(error) if self.device.is_full(&error) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Waits for `token`; a read's data is lent to `data` in place
    /// ([`BlockDriver::finish`]).
    fn complete(
        &mut self,
        dma: &mut Dma,
        token: Token,
        data: &mut dyn FnMut(&[u8]),
    ) -> Result<(), D::Error> {
        loop {
            if let Poll::Ready(result) = self.device.finish(&mut dma.env(), token, data) {
                return result.map(|_| ());
            }
            self.wait_and_harvest(dma);
        }
    }

    /// The one transfer loop of reads: submits `requests` (first sector,
    /// sectors; each at most the driver's largest request) with up to
    /// `depth` in flight (at most the device's slots), finishes them in
    /// submission order, and lends each one's data to `each(lba, bytes)`
    /// where the device put it, synced for the CPU by the DMA layer: no
    /// copy ([`BlockDriver::finish`]; the borrow ends before the request's
    /// memory goes back to the driver). On an error the requests already
    /// submitted are still finished (their slots come back; the successful
    /// ones are still lent) before the first error is returned. Returns
    /// the number of requests read.
    ///
    /// Why lend rather than read into the caller's memory: for a pool
    /// device the caller's memory is not memory the device can reach, so
    /// the DMA layer would bounce it through the pool (a copy, the design
    /// issue 15 measured at 0.43x); and a virtio request's header, data and
    /// status are one region so that it costs one map and at most one
    /// flush hypercall, which a separate caller buffer would make three.
    /// Lending the region works the same on every device and DMA path.
    pub fn read_each(
        &mut self,
        dma: &mut Dma,
        depth: usize,
        requests: impl Iterator<Item = (u64, u32)>,
        each: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<u64, D::Error> {
        let depth = depth.clamp(1, self.device.slots().max(1));
        // A batch of submissions ends with one kick once it holds half the
        // depth, or when the loop waits (the waiter kicks): the device is
        // told of new work while it still has the other half to do, so it
        // does not idle behind requests published but not notified while
        // the CPU finishes completed ones, and a deep queue costs two
        // notifications per `depth` requests, not `depth`. Measured under
        // TCG (docs/benchmarks.md): kicking only before waits was best at
        // QD16 but slowest sequentially (the device idled while the CPU
        // checksummed), a quarter of the depth slower at QD16; half was
        // the fastest sequentially and near the best at QD16.
        let batch = depth.div_ceil(2);
        let mut requests = requests.peekable();
        // (token, first sector) in submission order; at most `depth`.
        let mut pending: VecDeque<(Token, u64)> = VecDeque::with_capacity(depth);
        let mut count = 0;
        let mut result = Ok(());
        while (result.is_ok() && requests.peek().is_some()) || !pending.is_empty() {
            while result.is_ok()
                && pending.len() < depth
                && let Some(&(lba, sectors)) = requests.peek()
            {
                let request = Request::Read { lba, sectors };
                match self.submit_or_defer(dma, request, !pending.is_empty()) {
                    Ok(Some(token)) => {
                        requests.next();
                        pending.push_back((token, lba));
                        count += 1;
                        self.waiter.unkicked += 1;
                    }
                    Ok(None) => break,
                    Err(err) => result = Err(err),
                }
            }
            if self.waiter.unkicked >= batch {
                self.device.kick(&mut dma.env());
                self.waiter.unkicked = 0;
            }
            let Some((token, lba)) = pending.pop_front() else {
                break;
            };
            let done = self.complete(dma, token, &mut |bytes| each(lba, bytes));
            if let Err(err) = done
                && result.is_ok()
            {
                result = Err(err);
            }
        }
        result.map(|()| count)
    }

    /// Reads `sectors` sectors from `lba` in requests of
    /// [`Self::chunk_bytes`], as many in flight as the device takes, and
    /// lends each request's data to `each(lba, bytes)` in order, in place
    /// ([`Self::read_each`]).
    pub fn read_with(
        &mut self,
        dma: &mut Dma,
        lba: u64,
        sectors: u64,
        each: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), D::Error> {
        let requests = sector_chunks(lba, sectors, self.chunk_sectors());
        let depth = self.device.slots();
        self.read_each(dma, depth, requests, each).map(|_| ())
    }

    /// Writes `data` at `lba`, one [`Self::chunk_bytes`] request at a time.
    pub fn write(&mut self, dma: &mut Dma, lba: u64, data: &[u8]) -> Result<(), D::Error> {
        let chunk_bytes = self.chunk_bytes();
        for (i, chunk) in data.chunks(chunk_bytes).enumerate() {
            let lba = lba + (i * chunk_bytes / SECTOR_BYTES) as u64;
            let token = self.submit(dma, Request::Write { lba, data: chunk })?;
            self.complete(dma, token, &mut |_| {})?;
        }
        Ok(())
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self, dma: &mut Dma) -> Result<(), D::Error> {
        let token = self.submit(dma, Request::Flush)?;
        self.complete(dma, token, &mut |_| {})
    }
}

impl Waiter {
    /// Waits for a completion as the mode says, or a request timeout; lets
    /// the driver act on an interrupt (printing what else it brought),
    /// otherwise polls; then expires late requests.
    ///
    /// It kicks the device first ([`BlockDriver::kick`]): every wait of the
    /// transfer loop comes here, so a batch of submissions ends, with one
    /// notification, exactly when the loop cannot go on without the device,
    /// and no request it waits for is left published but unnotified.
    fn wait<D: BlockDriver<'static>>(&mut self, device: &mut D, env: &mut DmaEnv<'_, 'static>) {
        device.kick(env);
        self.unkicked = 0;
        let start = arch_timer::counter();
        let spin = self.mode.spin_ticks(self.timeout_ticks, &self.budget);
        let mut done = spin_for(device, env, start, spin);
        if !done && self.mode != WaitMode::Poll {
            self.idle(device, env);
            done = true;
        }
        if done && self.mode == WaitMode::Hybrid {
            self.budget
                .record(arch_timer::counter().wrapping_sub(start));
        }
        for token in &device.expire(arch_timer::counter()) {
            warn!("blk: {} request {token:?} timed out", device.name());
        }
    }

    /// Idles (WFI) until the device's interrupt or a request timeout, then
    /// takes what the device returned.
    ///
    /// After every wake-up the device itself is asked too
    /// ([`BlockDriver::has_completions`]), so a lost interrupt costs a
    /// wake-up, not the whole wait. It happens: QEMU's imx8mp-evk model
    /// wires only the GIC's IRQ and FIQ outputs to the CPUs, not the
    /// virtual IRQ ones (hw/arm/fsl-imx8mp.c), so a guest of Xen there
    /// takes no interrupt at all; Xen still ends its WFI when it injects
    /// one, and the check then sees the completion.
    fn idle<D: BlockDriver<'static>>(&mut self, device: &mut D, env: &mut DmaEnv<'_, 'static>) {
        let deadline = device.request_timeout();
        let start = arch_timer::counter();
        // A timeout is not an error here: `expire` reports late requests.
        if let Err(err) = timer::wait_for(deadline, || {
            device.interrupt_noted() || device.has_completions()
        }) && !matches!(err, timer::WaitError::TimedOut { .. })
        {
            error!("blk: {}: cannot wait: {err}", device.name());
        }
        self.idle_ticks += arch_timer::counter().wrapping_sub(start);
        take(device, env);
    }
}

/// Takes what the device returned for up to `ticks` after `start`;
/// whether anything completed (or the device reported a failure).
fn spin_for<D: BlockDriver<'static>>(
    device: &mut D,
    env: &mut DmaEnv<'_, 'static>,
    start: u64,
    ticks: u64,
) -> bool {
    if ticks == 0 {
        return false;
    }
    loop {
        if take(device, env) {
            return true;
        }
        if arch_timer::counter().wrapping_sub(start) >= ticks {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// Lets the driver act on a noted interrupt (printing what else it
/// brought), otherwise polls the device; whether any request completed or
/// the device reported an error (a failed device fails its requests, so a
/// waiter stops spinning).
fn take<D: BlockDriver<'static>>(device: &mut D, env: &mut DmaEnv<'_, 'static>) -> bool {
    if device.interrupt_noted() {
        let mut failed = false;
        let completions = device.handle_interrupt(env, &mut |notice| match notice {
            Notice::Info(line) => info!("{line}"),
            Notice::Error(line) => {
                failed = true;
                error!("{line}");
            }
        });
        !completions.is_empty() || failed
    } else {
        !device.poll(env).is_empty()
    }
}

/// Reads the whole disk and checks every sector in place, as each request
/// completes ([`Disk::read_with`]); read errors are reported with their
/// sectors and the check goes on with the next pass of 16 requests.
/// Returns the number of bad sectors or failed reads.
pub fn verify<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    expected: DiskPattern,
) -> u64 {
    let capacity = disk.device.capacity();
    let name = disk.name();
    let per_pass = disk.chunk_sectors() * 16;
    let mut problems = 0;
    for (lba, sectors) in sector_chunks(0, capacity, per_pass) {
        let sectors = u64::from(sectors);
        let mut check = |at: u64, bytes: &[u8]| {
            let (whole, _) = bytes.as_chunks::<SECTOR_BYTES>();
            for (at, sector) in (at..).zip(whole) {
                if let Err(mismatch) = pattern::verify(expected.seed_of(at), at, sector) {
                    if problems < 8 {
                        error!("blk: {name} {mismatch}");
                    }
                    problems += 1;
                }
            }
        };
        if let Err(err) = disk.read_with(dma, lba, sectors, &mut check) {
            error!(
                "blk: {name} read of sectors {lba}..{} failed: {err}",
                lba + sectors
            );
            problems += 1;
        }
    }
    if problems == 0 {
        info!("blk: verify {name} sectors={capacity} ok");
    } else {
        error!("blk: verify {name} sectors={capacity} problems={problems}");
    }
    problems
}

/// Writes the pattern of `range.seed` to `range`, one 256 KiB request at a
/// time, then flushes.
pub fn write_pattern<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    range: SectorRange,
) -> Result<(), D::Error> {
    const PER_CHUNK: usize = CHUNK_BYTES / SECTOR_BYTES;
    let SectorRange { seed, lba, count } = range;
    let mut sectors = vec![[0u8; SECTOR_BYTES]; PER_CHUNK];
    for (at, n) in sector_chunks(lba, count, PER_CHUNK as u32) {
        let sectors = &mut sectors[..n as usize];
        pattern::fill_sectors(seed, at, sectors);
        disk.write(dma, at, sectors.as_flattened())?;
    }
    disk.flush(dma)?;
    info!(
        "blk: wrote {} lba={lba} sectors={count} seed={seed}, flushed",
        disk.name()
    );
    Ok(())
}

/// What one benchmark phase measured.
struct Phase {
    /// Requests in flight at most.
    depth: usize,
    requests: u64,
    elapsed_ticks: u64,
    /// Ticks spent in WFI.
    idle_ticks: u64,
    /// Ticks spent in `GNTTABOP_cache_flush` (a pool device's syncs).
    flush_ticks: u64,
    /// Notifications sent to the device ([`BlockDriver::kick`]).
    notifies: u64,
    checksum: Checksum,
}

impl Phase {
    fn us(&self) -> u64 {
        nanos(self.elapsed_ticks).div_ceil(1000).max(1)
    }

    /// CPU time per request: the time not spent in WFI, in nanoseconds.
    fn busy_ns_per_request(&self) -> u64 {
        nanos(self.elapsed_ticks.saturating_sub(self.idle_ticks)) / self.requests.max(1)
    }

    /// Time in `GNTTABOP_cache_flush` per request, in nanoseconds.
    fn flush_ns_per_request(&self) -> u64 {
        nanos(self.flush_ticks) / self.requests.max(1)
    }

    fn per_second(&self) -> u64 {
        self.requests * 1_000_000 / self.us()
    }
}

/// Nanoseconds in `ticks` counter ticks ([`timer::ticks_to_duration`]).
fn nanos(ticks: u64) -> u64 {
    u64::try_from(timer::ticks_to_duration(ticks).as_nanos()).unwrap_or(u64::MAX)
}

/// Reads `requests` (first sector, sectors) with up to `depth` in flight
/// through the one transfer loop ([`Disk::read_each`]), adding every byte
/// read to a checksum in place, inside the timing.
fn timed_reads<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    depth: usize,
    requests: impl Iterator<Item = (u64, u32)>,
) -> Result<Phase, D::Error> {
    let depth = depth.min(disk.device.slots());
    let mut checksum = Checksum::new();
    let idle_before = disk.waiter.idle_ticks;
    let flush_before = dma.flush_ticks();
    let notifies_before = disk.device.stats().notifies;
    let start = arch_timer::counter();
    // Whole sectors: a multiple of 8 bytes.
    let requests = disk.read_each(dma, depth, requests, &mut |_, bytes| {
        let _ = checksum.update(bytes);
    })?;
    Ok(Phase {
        depth,
        requests,
        elapsed_ticks: arch_timer::counter() - start,
        idle_ticks: disk.waiter.idle_ticks - idle_before,
        flush_ticks: dma.flush_ticks() - flush_before,
        notifies: disk.device.stats().notifies - notifies_before,
        checksum,
    })
}

/// `a / b` with two decimals, as text-ready integer parts.
fn ratio(a: u64, b: u64) -> (u64, u64) {
    if b == 0 {
        return (0, 0);
    }
    let hundredths = a.saturating_mul(100) / b;
    (hundredths / 100, hundredths % 100)
}

/// The block benchmark (`bench=MIB`): 256 KiB sequential reads of the
/// first `mib` MiB with the queue kept full, then `reads` random 4 KiB reads
/// ([`workload::random_blocks`], the list `cargo xtask bench` gives Linux's
/// fio) at queue depth 1, 16 and 32; every byte read goes into a checksum
/// per phase, computed inside the timing. Printed as `blk: bench seq ...`,
/// `blk: bench qdN ...` (each with the CPU time per request, `busy_ns`:
/// time not in WFI, and of it the time in `GNTTABOP_cache_flush`,
/// `flush_ns`, and the notifications the phase sent the device,
/// `notifies`) and `blk: bench dma ...` (the DMA counters) lines.
pub fn bench<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    mib: u64,
    reads: u64,
) -> Result<(), D::Error> {
    let span = (mib << 20).min(disk.device.capacity() * SECTOR_BYTES as u64) / SECTOR_BYTES as u64;
    let before_blk = *disk.device.stats();
    let dma_counters = |disk: &Disk<D>| *disk.device.dma().stats();
    let before_dma = dma_counters(disk);

    // The largest requests the driver takes, up to [`CHUNK_BYTES`].
    let chunks = sector_chunks(0, span, disk.chunk_sectors());
    let seq = timed_reads(disk, dma, disk.device.slots(), chunks)?;
    let block_sectors = BLOCK_BYTES / SECTOR_BYTES as u64;
    let span_blocks = span / block_sectors;
    let mut random = [1usize, 16, 32].map(|depth| (depth, None));
    for (depth, phase) in &mut random {
        let blocks = workload::random_blocks(workload::SEED, reads, span_blocks)
            .map(|block| (block * block_sectors, block_sectors as u32));
        *phase = Some(timed_reads(disk, dma, *depth, blocks)?);
    }

    let blk = disk.device.stats();
    let dma_stats = dma_counters(disk);
    let requests = (blk.reads + blk.writes + blk.flushes)
        - (before_blk.reads + before_blk.writes + before_blk.flushes);
    let hypercalls = dma_stats.hypercalls - before_dma.hypercalls;
    let seq_bytes = span * SECTOR_BYTES as u64;
    let (mib_s, mib_s_frac) = ratio(seq_bytes * 1_000_000 / (1 << 20), seq.us());
    let (per_req, per_req_frac) = ratio(hypercalls, requests);
    info!(
        "blk: bench seq device={} wait={} mib={} reqs={} us={} mib_s={mib_s}.{mib_s_frac:02} busy_ns={} flush_ns={} notifies={} sum={:016x}",
        disk.name(),
        disk.waiter.mode,
        seq_bytes >> 20,
        seq.requests,
        seq.us(),
        seq.busy_ns_per_request(),
        seq.flush_ns_per_request(),
        seq.notifies,
        seq.checksum.value(),
    );
    for (depth, phase) in random.iter().filter_map(|(d, p)| Some((d, p.as_ref()?))) {
        info!(
            "blk: bench qd{depth} reqs={} in_flight={} span_blocks={span_blocks} seed={:#x} us={} iops={} busy_ns={} flush_ns={} notifies={} sum={:016x}",
            phase.requests,
            phase.depth,
            workload::SEED,
            phase.us(),
            phase.per_second(),
            phase.busy_ns_per_request(),
            phase.flush_ns_per_request(),
            phase.notifies,
            phase.checksum.value()
        );
    }
    info!(
        "blk: bench dma requests={requests} flush_hypercalls={hypercalls} hypercalls_per_req={per_req}.{per_req_frac:02} flush_pages={} syncs={} bounced={}",
        dma_stats.pages - before_dma.pages,
        dma_stats.syncs - before_dma.syncs,
        dma_stats.bounced - before_dma.bounced,
    );
    Ok(())
}

/// What the bootargs ask of the block devices, in order: write, verify,
/// benchmark; then each device's counters and the pools' usage against
/// their baseline. Errors are reported and the next task still runs.
pub fn run_requested(args: &crate::bootargs::Bootargs<'_>, disks: &mut [AnyDisk], dma: &mut Dma) {
    // Nothing asked, nothing to report: a boot without disk work prints no
    // counters (each console line is a hypercall under Xen).
    let asked = args.blk_write.is_some() || args.blk_verify.is_some() || args.bench_mib.is_some();
    if disks.is_empty() || !asked {
        return;
    }
    dma.print_usage("baseline");
    for any in disks.iter_mut() {
        with_disk!(any, disk => run_on(args, disk, dma));
    }
    if let Some(mib) = args.bench_mib {
        let reads = args.bench_reads.unwrap_or(BENCH_READS);
        with_disk!(&mut disks[0], disk => {
            if let Err(err) = bench(disk, dma, mib, reads) {
                error!("blk: bench {}: {err}", disk.name());
            }
        });
    }
    for any in disks.iter() {
        with_disk!(any, disk => print_stats(&disk.device, true));
    }
    dma.print_usage("now");
}

/// Tends every disk between uses ([`AnyDisk::tend`]); how many want
/// tending again.
pub fn tend_all(disks: &mut [AnyDisk], dma: &mut Dma) -> usize {
    disks
        .iter_mut()
        .map(|disk| disk.tend(dma))
        .filter(|&again| again)
        .count()
}

/// Disconnects every disk before the kernel powers off or reboots (see
/// [`AnyDisk::close`]; a disk closes once).
pub fn close_all(disks: &mut [AnyDisk], dma: &mut Dma) {
    for disk in disks {
        disk.close(dma);
    }
}

/// The write and the verify the bootargs ask of one device.
fn run_on<D: BlockDriver<'static>>(
    args: &crate::bootargs::Bootargs<'_>,
    disk: &mut Disk<D>,
    dma: &mut Dma,
) {
    if let Some(range) = args.blk_write
        && let Err(err) = write_pattern(disk, dma, range)
    {
        error!(
            "blk: {} write of sectors {}..{}: {err}",
            disk.name(),
            range.lba,
            range.lba + range.count
        );
    }
    if let Some(expected) = args.blk_verify {
        verify(disk, dma, expected);
    }
}
