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
//! is the virtual counter in ticks (no division on the I/O path); reports
//! use microseconds ([`cpu::uptime_us`]).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32};
use core::task::Poll;
use core::time::Duration;

use log::{error, info, warn};
use tidepool_block::pattern::{self, SECTOR_BYTES};
use tidepool_block::{BlockDriver, Notice, Request, StatsLine, Token};
use tidepool_dma::DmaEnv;
use tidepool_dt::{DeviceTree, GicInterrupt, Usdhc as UsdhcNode, VirtioMmio};
use tidepool_mm::PhysAddr;
use tidepool_usdhc::{InitError, SdCard, SdError, Usdhc};
use tidepool_virtio_blk::transport::{ReadRegister, Transport};
use tidepool_virtio_blk::{BlockDevice, MmioTransport, Options};

use crate::arch::aarch64::{cpu, timer as arch_timer};
use crate::blkfront::{self, PvDisk};
use crate::bootargs::{DiskPattern, SectorRange};
use crate::dma::Dma;
use crate::irq;
use crate::timer;

/// `MagicValue` of a virtio-mmio transport ("virt").
const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// `DeviceID` of a block device.
const BLOCK_DEVICE_ID: u32 = 2;
/// How long one request may take before it is reported as timed out (a
/// PV disk's requests get [`blkfront::REQUEST_TIMEOUT`]).
const REQUEST_TIMEOUT_US: u64 = 5_000_000;
/// Bytes per request of the bulk paths, at most (or the driver's largest
/// request, if smaller).
const CHUNK_BYTES: usize = 256 * 1024;

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
        match self {
            AnyDisk::Virtio(disk) => info!("{}", disk.device.info_line()),
            AnyDisk::Sd(disk) => info!("{}", disk.device.info_line()),
            AnyDisk::Pv(disk) => info!("{}", disk.device.info_line()),
        }
        with_disk!(self, disk => print_stats(&disk.device, false));
    }

    /// Prints the device's DMA counters (`dma: stats ...`); false for a
    /// device whose memory is not the DMA layer's (a PV disk).
    pub fn print_dma_stats(&self) -> bool {
        with_disk!(self, disk => BlockDriver::dma(&disk.device).map(|dma| info!("{}", dma.stats_line())).is_some())
    }

    /// Disconnects the device before the kernel powers off or reboots (a PV
    /// disk tells its back end; the others need nothing).
    pub fn close(&mut self) {
        if let AnyDisk::Pv(disk) = self {
            disk.device.close();
        }
    }
}

/// Prints a device's counters: `blk: stats ...`, the driver's own line if
/// it has one, and with `dma` its DMA counters (`dma: stats ...`) if its
/// memory goes through the DMA layer.
pub fn print_stats<D: BlockDriver<'static>>(device: &D, dma: bool) {
    info!("{}", StatsLine::new(device.name(), device.stats()));
    if let Some(line) = device.driver_stats() {
        info!("{line}");
    }
    if dma && let Some(dma) = device.dma() {
        info!("{}", dma.stats_line());
    }
}

/// One block device and how long its requests may take.
pub struct Disk<D> {
    device: D,
    /// [`REQUEST_TIMEOUT_US`] in counter ticks.
    timeout_ticks: u64,
}

/// Finds and sets up every block device: virtio block devices and SD cards
/// of the device tree, then the domain's Xen PV disks. Transports without a device, or with another
/// kind, and controllers without a card are skipped; a device that fails
/// to set up is reported and left out.
pub fn probe(dt: &'static DeviceTree, dma: &mut Dma) -> Vec<AnyDisk> {
    let mut disks: Vec<AnyDisk> = probe_virtio(dt, dma)
        .into_iter()
        .map(AnyDisk::Virtio)
        .collect();
    disks.extend(probe_sd(dt, dma).into_iter().map(AnyDisk::Sd));
    disks.extend(
        blkfront::probe(dma.address_map())
            .into_iter()
            .map(|disk| AnyDisk::Pv(Disk::with_timeout(disk, blkfront::REQUEST_TIMEOUT))),
    );
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
    let mut device = BlockDevice::new(transport, dma_device, &mut dma.env(), Options::default())
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
        ticks_per_ms: (arch_timer::frequency() / 1000).max(1),
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

impl<D: BlockDriver<'static>> Disk<D> {
    fn new(device: D) -> Self {
        Self::with_timeout(device, Duration::from_micros(REQUEST_TIMEOUT_US))
    }

    /// A disk whose requests may take `timeout` each.
    fn with_timeout(device: D, timeout: Duration) -> Self {
        Self {
            device,
            timeout_ticks: arch_timer::frequency() * timeout.as_secs(),
        }
    }

    /// Bytes per request of the bulk paths: [`CHUNK_BYTES`], or the
    /// driver's largest request if smaller, in whole sectors.
    fn chunk_bytes(&self) -> usize {
        let max = self.device.max_request_bytes() as usize / SECTOR_BYTES * SECTOR_BYTES;
        CHUNK_BYTES.min(max.max(SECTOR_BYTES))
    }

    /// The device-tree path of the device.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// The driver's device: capacity, counters.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Waits for this device's interrupt or a request timeout, then takes
    /// what the device returned and expires late requests.
    fn wait_and_harvest(&mut self, dma: &mut Dma) {
        wait_and_take(&mut self.device, &mut dma.env());
    }

    /// Submits a request, waiting while all slots are in use or the
    /// device's pool has no room for another bounce buffer (both free up as
    /// requests in flight complete), at most one request timeout: a device
    /// that keeps every slot past that is reported, not waited for forever.
    fn submit(&mut self, dma: &mut Dma, request: Request<'_>) -> Result<Token, D::Error> {
        self.device.submit_waiting(
            &mut dma.env(),
            request,
            &mut arch_timer::counter,
            self.timeout_ticks,
            &mut wait_and_take,
        )
    }

    /// Waits for `token` and copies a read's data into `buffer`.
    fn complete(&mut self, dma: &mut Dma, token: Token, buffer: &mut [u8]) -> Result<(), D::Error> {
        loop {
            if let Poll::Ready(result) = self.device.finish(token, buffer) {
                return result.map(|_| ());
            }
            self.wait_and_harvest(dma);
        }
    }

    /// Reads `buffer.len()` bytes at `lba` with up to the driver's
    /// in-flight limit of [`Self::chunk_bytes`] requests outstanding.
    pub fn read(&mut self, dma: &mut Dma, lba: u64, buffer: &mut [u8]) -> Result<(), D::Error> {
        let chunk_bytes = self.chunk_bytes();
        let sectors_per_chunk = (chunk_bytes / SECTOR_BYTES) as u64;
        let mut pending: Vec<(Token, usize)> = Vec::with_capacity(self.device.slots());
        let chunks = buffer.len().div_ceil(chunk_bytes);
        let mut next = 0;
        let mut result = Ok(());
        while next < chunks || !pending.is_empty() {
            while next < chunks && pending.len() < self.device.slots() && result.is_ok() {
                let offset = next * chunk_bytes;
                let len = chunk_bytes.min(buffer.len() - offset);
                let request = Request::Read {
                    lba: lba + next as u64 * sectors_per_chunk,
                    sectors: (len / SECTOR_BYTES) as u32,
                };
                match self.submit(dma, request) {
                    Ok(token) => pending.push((token, offset)),
                    Err(err) => result = Err(err),
                }
                next += 1;
            }
            if result.is_err() && pending.is_empty() {
                break;
            }
            let Some((token, offset)) = pending.first().copied() else {
                break;
            };
            pending.remove(0);
            let len = chunk_bytes.min(buffer.len() - offset);
            let done = self.complete(dma, token, &mut buffer[offset..offset + len]);
            if result.is_ok() {
                result = done;
            }
            if result.is_err() {
                next = chunks;
            }
        }
        result
    }

    /// Writes `data` at `lba`, one [`Self::chunk_bytes`] request at a time.
    pub fn write(&mut self, dma: &mut Dma, lba: u64, data: &[u8]) -> Result<(), D::Error> {
        let chunk_bytes = self.chunk_bytes();
        for (i, chunk) in data.chunks(chunk_bytes).enumerate() {
            let lba = lba + (i * chunk_bytes / SECTOR_BYTES) as u64;
            let token = self.submit(dma, Request::Write { lba, data: chunk })?;
            self.complete(dma, token, &mut [])?;
        }
        Ok(())
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self, dma: &mut Dma) -> Result<(), D::Error> {
        let token = self.submit(dma, Request::Flush)?;
        self.complete(dma, token, &mut [])
    }
}

/// `bytes` zeroed bytes from the heap, `None` where the heap has no room
/// (the monitor asks for these buffers on a running system).
pub fn zeroed(bytes: usize) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(bytes).ok()?;
    buffer.resize(bytes, 0);
    Some(buffer)
}

/// Waits (WFI) for the device's interrupt or a request timeout; lets the
/// driver act on an interrupt (printing what else it brought), otherwise
/// polls; then expires late requests.
///
/// After every wake-up the device itself is asked too
/// ([`BlockDriver::has_completions`]), so a lost interrupt costs a wake-up,
/// not the whole wait. It happens: QEMU's imx8mp-evk model wires only the
/// GIC's IRQ and FIQ outputs to the CPUs, not the virtual IRQ ones
/// (hw/arm/fsl-imx8mp.c), so a guest of Xen there takes no interrupt at
/// all; Xen still ends its WFI when it injects one, and the check then sees
/// the completion.
fn wait_and_take<D: BlockDriver<'static>>(device: &mut D, env: &mut DmaEnv<'_, 'static>) {
    let deadline = Duration::from_micros(REQUEST_TIMEOUT_US);
    // A timeout is not an error here: `expire` below reports late requests.
    if let Err(err) = timer::wait_for(deadline, || {
        device.interrupt_noted() || device.has_completions()
    }) && !matches!(err, timer::WaitError::TimedOut { .. })
    {
        error!("blk: {}: cannot wait: {err}", device.name());
    }
    if device.interrupt_noted() {
        device.handle_interrupt(env, &mut |notice| match notice {
            Notice::Info(line) => info!("{line}"),
            Notice::Error(line) => error!("{line}"),
        });
    } else {
        device.poll(env);
    }
    for token in &device.expire(arch_timer::counter()) {
        warn!("blk: {} request {token:?} timed out", device.name());
    }
}

/// Reads the whole disk and checks every sector; read errors are reported
/// with their sector and the check goes on. Returns the number of bad
/// sectors or failed reads.
pub fn verify<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    expected: DiskPattern,
) -> u64 {
    let capacity = disk.device.capacity();
    let Some(mut buffer) = zeroed(CHUNK_BYTES * 16) else {
        error!("blk: verify {}: no heap for its buffer", disk.name());
        return 1;
    };
    let per_pass = (buffer.len() / SECTOR_BYTES) as u64;
    let mut problems = 0;
    let mut lba = 0;
    while lba < capacity {
        let sectors = per_pass.min(capacity - lba);
        let bytes = &mut buffer[..sectors as usize * SECTOR_BYTES];
        if let Err(err) = disk.read(dma, lba, bytes) {
            error!(
                "blk: {} read of sectors {lba}..{} failed: {err}",
                disk.name(),
                lba + sectors
            );
            problems += 1;
            lba += sectors;
            continue;
        }
        for (i, sector) in bytes.chunks_exact(SECTOR_BYTES).enumerate() {
            let at = lba + i as u64;
            let sector: &[u8; SECTOR_BYTES] =
                sector.try_into().expect("chunks_exact gives whole sectors");
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

/// Writes the pattern of `range.seed` to `range`, one 256 KiB request at a
/// time, then flushes.
pub fn write_pattern<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    range: SectorRange,
) -> Result<(), D::Error> {
    let SectorRange { seed, lba, count } = range;
    let per_chunk = (CHUNK_BYTES / SECTOR_BYTES) as u64;
    let mut sectors = vec![[0u8; SECTOR_BYTES]; per_chunk as usize];
    let mut at = lba;
    while at < lba + count {
        let n = per_chunk.min(lba + count - at) as usize;
        pattern::fill_sectors(seed, at, &mut sectors[..n]);
        disk.write(dma, at, sectors[..n].as_flattened())?;
        at += n as u64;
    }
    disk.flush(dma)?;
    info!(
        "blk: wrote {} lba={lba} sectors={count} seed={seed}, flushed",
        disk.name()
    );
    Ok(())
}

/// Random 4 KiB reads of the first `span` sectors, `depth` in flight.
fn random_reads<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    count: u64,
    depth: usize,
    span: u64,
) -> Result<(), D::Error> {
    const SECTORS: u32 = 8;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_lba = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % (span / u64::from(SECTORS))) * u64::from(SECTORS)
    };
    let mut buffer = [0u8; SECTORS as usize * SECTOR_BYTES];
    // No more in flight than the device has slots (an SD card has one).
    let depth = depth.min(disk.device.slots());
    let mut pending: Vec<Token> = Vec::with_capacity(depth);
    let mut submitted = 0;
    while submitted < count || !pending.is_empty() {
        while submitted < count && pending.len() < depth {
            pending.push(disk.submit(
                dma,
                Request::Read {
                    lba: next_lba(),
                    sectors: SECTORS,
                },
            )?);
            submitted += 1;
        }
        let token = pending.remove(0);
        disk.complete(dma, token, &mut buffer)?;
    }
    Ok(())
}

/// `a / b` with two decimals, as text-ready integer parts.
fn ratio(a: u64, b: u64) -> (u64, u64) {
    if b == 0 {
        return (0, 0);
    }
    let hundredths = a.saturating_mul(100) / b;
    (hundredths / 100, hundredths % 100)
}

/// The block benchmark (`bench=MIB`): sequential reads of the first `mib`
/// MiB, then 4 KiB random reads at queue depth 1 and 16, and the DMA
/// counters per request, printed as one `key=value` line.
pub fn bench<D: BlockDriver<'static>>(
    disk: &mut Disk<D>,
    dma: &mut Dma,
    mib: u64,
) -> Result<(), D::Error> {
    const RANDOM_READS: u64 = 4096;
    let span = (mib << 20).min(disk.device.capacity() * SECTOR_BYTES as u64) / SECTOR_BYTES as u64;
    let before_blk = *disk.device.stats();
    let dma_counters = |disk: &Disk<D>| {
        disk.device
            .dma()
            .map(|dma| *dma.stats())
            .unwrap_or_default()
    };
    let before_dma = dma_counters(disk);

    // Large passes keep the queue full: it drains only between passes.
    let Some(mut buffer) = zeroed(8 << 20) else {
        error!("blk: bench {}: no heap for its buffer", disk.name());
        return Ok(());
    };
    let start = cpu::uptime_us();
    let mut lba = 0;
    while lba < span {
        let sectors = (span - lba).min((buffer.len() / SECTOR_BYTES) as u64);
        disk.read(dma, lba, &mut buffer[..sectors as usize * SECTOR_BYTES])?;
        lba += sectors;
    }
    let seq_us = (cpu::uptime_us() - start).max(1);

    let start = cpu::uptime_us();
    random_reads(disk, dma, RANDOM_READS, 1, span)?;
    let qd1_us = (cpu::uptime_us() - start).max(1);
    let start = cpu::uptime_us();
    random_reads(disk, dma, RANDOM_READS, 16, span)?;
    let qd16_us = (cpu::uptime_us() - start).max(1);

    let blk = disk.device.stats();
    let dma_stats = dma_counters(disk);
    let requests = (blk.reads + blk.writes + blk.flushes)
        - (before_blk.reads + before_blk.writes + before_blk.flushes);
    let hypercalls = dma_stats.hypercalls - before_dma.hypercalls;
    let seq_bytes = span * SECTOR_BYTES as u64;
    let (mib_s, mib_s_frac) = ratio(seq_bytes * 1_000_000 / (1 << 20), seq_us);
    let (per_req, per_req_frac) = ratio(hypercalls, requests);
    info!(
        "blk: bench device={} seq_mib={} seq_us={seq_us} seq_mib_s={mib_s}.{mib_s_frac:02} qd1_reqs={RANDOM_READS} \
         qd1_us={qd1_us} qd1_iops={} qd16_reqs={RANDOM_READS} qd16_us={qd16_us} qd16_iops={} requests={requests} \
         flush_hypercalls={hypercalls} hypercalls_per_req={per_req}.{per_req_frac:02} syncs={} bounced={}",
        disk.name(),
        seq_bytes >> 20,
        RANDOM_READS * 1_000_000 / qd1_us,
        RANDOM_READS * 1_000_000 / qd16_us,
        dma_stats.syncs - before_dma.syncs,
        dma_stats.bounced - before_dma.bounced,
    );
    Ok(())
}

/// What the bootargs ask of the block devices, in order: write, verify,
/// benchmark; then each device's counters and the pools' usage against
/// their baseline; then, without the monitor, the disks close. Errors are
/// reported and the next task still runs.
pub fn run_requested(args: &crate::bootargs::Bootargs<'_>, disks: &mut [AnyDisk], dma: &mut Dma) {
    if disks.is_empty() {
        return;
    }
    dma.print_usage("baseline");
    for any in disks.iter_mut() {
        with_disk!(any, disk => run_on(args, disk, dma));
    }
    if let Some(mib) = args.bench_mib {
        with_disk!(&mut disks[0], disk => {
            if let Err(err) = bench(disk, dma, mib) {
                error!("blk: bench {}: {err}", disk.name());
            }
        });
    }
    for any in disks.iter() {
        with_disk!(any, disk => print_stats(&disk.device, true));
    }
    dma.print_usage("now");
    // The monitor's `blk` commands use the disks until it powers off.
    if !args.monitor {
        for disk in disks.iter_mut() {
            disk.close();
        }
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
