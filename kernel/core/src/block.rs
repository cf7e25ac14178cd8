//! Block devices: every virtio-mmio transport with a block device behind it,
//! driven by `tidepool-virtio-blk` on the DMA layer, completing by interrupt.
//!
//! The transport's SPI handler is the driver's `InterruptHandler`: it
//! acknowledges the device's interrupt through the interrupt registers the
//! driver handed out (no second transport) and notes its causes; the
//! waiting code, after WFI returns, lets the driver act on them
//! (`handle_interrupt`: completions, configuration changes). So the
//! driver's state is never touched from interrupt context. A capacity
//! change is reported; a device that needs a reset is failed: its requests
//! fail and new ones are refused. The driver's clock is the virtual counter in ticks
//! (no division on the I/O path); reports use microseconds
//! ([`cpu::uptime_us`]).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU32;
use core::task::Poll;
use core::time::Duration;

use log::{error, info, warn};
use tidepool_dma::DmaEnv;
use tidepool_dt::{DeviceTree, VirtioMmio};
use tidepool_mm::PhysAddr;
use tidepool_virtio_blk::pattern::{self, SECTOR_BYTES};
use tidepool_virtio_blk::transport::{ReadRegister, Transport};
use tidepool_virtio_blk::{BlkError, BlockDevice, MmioTransport, Options, Request, Token};

use crate::arch::aarch64::{cpu, timer as arch_timer};
use crate::bootargs::{DiskPattern, SectorRange};
use crate::dma::Dma;
use crate::irq;
use crate::timer;

/// `MagicValue` of a virtio-mmio transport ("virt").
const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// `DeviceID` of a block device.
const BLOCK_DEVICE_ID: u32 = 2;
/// How long one request may take before it is reported as timed out.
const REQUEST_TIMEOUT_US: u64 = 5_000_000;
/// Bytes per request of the bulk paths (the driver's largest request).
const CHUNK_BYTES: usize = 256 * 1024;

/// One block device.
pub struct Disk {
    device: BlockDevice<'static, MmioTransport>,
    /// [`REQUEST_TIMEOUT_US`] in counter ticks.
    timeout_ticks: u64,
}

/// Finds and sets up every virtio block device of the device tree.
/// Transports without a device, or with another kind, are skipped; a block
/// device that fails to set up is reported and left out.
pub fn probe(dt: &'static DeviceTree, dma: &mut Dma) -> Vec<Disk> {
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
        // touches only the GIC).
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
) -> Result<Disk, alloc::string::String> {
    use alloc::string::ToString;
    let dma_device = dma
        .device(dt, &node.path, node.dma_coherent, &node.memory_regions)
        .map_err(|e| e.to_string())?;
    let mut device = BlockDevice::new(transport, dma_device, &mut dma.env(), Options::default())
        .map_err(|e| e.to_string())?;
    let (intid, trigger) = irq::from_device_tree(&node.interrupt).map_err(|e| e.to_string())?;
    let pending: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let Some(interrupt) = device.interrupt_handler(pending) else {
        return Err("the driver's interrupt registers are already handed out".into());
    };
    let handler: irq::Handler = Box::leak(Box::new(move |_| interrupt.handle()));
    irq::register(intid, trigger, handler).map_err(|e| e.to_string())?;
    info!(
        "blk: {} interrupt intid={} {:?}",
        node.path,
        intid.raw(),
        trigger
    );
    let timeout_ticks = arch_timer::frequency() * (REQUEST_TIMEOUT_US / 1_000_000);
    Ok(Disk {
        device,
        timeout_ticks,
    })
}

impl Disk {
    /// The device-tree path of the transport.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// The driver's device: capacity, counters, info and stats lines.
    pub fn device(&self) -> &BlockDevice<'static, MmioTransport> {
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
    fn submit(&mut self, dma: &mut Dma, request: Request<'_>) -> Result<Token, BlkError<'static>> {
        self.device.submit_waiting(
            &mut dma.env(),
            request,
            &mut arch_timer::counter,
            self.timeout_ticks,
            &mut wait_and_take,
        )
    }

    /// Waits for `token` and copies a read's data into `buffer`.
    fn complete(
        &mut self,
        dma: &mut Dma,
        token: Token,
        buffer: &mut [u8],
    ) -> Result<(), BlkError<'static>> {
        loop {
            if let Poll::Ready(result) = self.device.finish(token, buffer) {
                return result.map(|_| ());
            }
            self.wait_and_harvest(dma);
        }
    }

    /// Reads `buffer.len()` bytes at `lba` with up to the driver's
    /// in-flight limit of 256 KiB requests outstanding.
    pub fn read(
        &mut self,
        dma: &mut Dma,
        lba: u64,
        buffer: &mut [u8],
    ) -> Result<(), BlkError<'static>> {
        let sectors_per_chunk = (CHUNK_BYTES / SECTOR_BYTES) as u64;
        let mut pending: Vec<(Token, usize)> = Vec::with_capacity(self.device.slots());
        let chunks = buffer.len().div_ceil(CHUNK_BYTES);
        let mut next = 0;
        let mut result = Ok(());
        while next < chunks || !pending.is_empty() {
            while next < chunks && pending.len() < self.device.slots() && result.is_ok() {
                let offset = next * CHUNK_BYTES;
                let len = CHUNK_BYTES.min(buffer.len() - offset);
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
            let len = CHUNK_BYTES.min(buffer.len() - offset);
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

    /// Writes `data` at `lba`, one 256 KiB request at a time.
    pub fn write(&mut self, dma: &mut Dma, lba: u64, data: &[u8]) -> Result<(), BlkError<'static>> {
        for (i, chunk) in data.chunks(CHUNK_BYTES).enumerate() {
            let lba = lba + (i * CHUNK_BYTES / SECTOR_BYTES) as u64;
            let token = self.submit(dma, Request::Write { lba, data: chunk })?;
            self.complete(dma, token, &mut [])?;
        }
        Ok(())
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self, dma: &mut Dma) -> Result<(), BlkError<'static>> {
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
/// driver act on an interrupt (reporting a capacity change or a failed
/// device), otherwise polls; then expires late requests.
fn wait_and_take(device: &mut BlockDevice<'static, MmioTransport>, env: &mut DmaEnv<'_, 'static>) {
    let deadline = Duration::from_micros(REQUEST_TIMEOUT_US);
    // A timeout is not an error here: `expire` below reports late requests.
    if let Err(err) = timer::wait_for(deadline, || device.interrupt_noted())
        && !matches!(err, timer::WaitError::TimedOut { .. })
    {
        error!("blk: {}: cannot wait: {err}", device.name());
    }
    if device.interrupt_noted() {
        let outcome = device.handle_interrupt(env);
        if let Some(change) = outcome.capacity {
            info!("{change}");
        }
        if let Some(fault) = outcome.fault {
            error!(
                "blk: {} failed: {fault}; its requests in flight fail, new ones are refused",
                device.name()
            );
        }
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
pub fn verify(disk: &mut Disk, dma: &mut Dma, expected: DiskPattern) -> u64 {
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
pub fn write_pattern(
    disk: &mut Disk,
    dma: &mut Dma,
    range: SectorRange,
) -> Result<(), BlkError<'static>> {
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
fn random_reads(
    disk: &mut Disk,
    dma: &mut Dma,
    count: u64,
    depth: usize,
    span: u64,
) -> Result<(), BlkError<'static>> {
    const SECTORS: u32 = 8;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_lba = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % (span / u64::from(SECTORS))) * u64::from(SECTORS)
    };
    let mut buffer = [0u8; SECTORS as usize * SECTOR_BYTES];
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
pub fn bench(disk: &mut Disk, dma: &mut Dma, mib: u64) -> Result<(), BlkError<'static>> {
    const RANDOM_READS: u64 = 4096;
    let span = (mib << 20).min(disk.device.capacity() * SECTOR_BYTES as u64) / SECTOR_BYTES as u64;
    let before_blk = *disk.device.stats();
    let before_dma = *disk.device.dma().stats();

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
    let dma_stats = disk.device.dma().stats();
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
/// their baseline. Errors are reported and the next task still runs.
pub fn run_requested(args: &crate::bootargs::Bootargs<'_>, disks: &mut [Disk], dma: &mut Dma) {
    if disks.is_empty() {
        return;
    }
    dma.print_usage("baseline");
    for disk in disks.iter_mut() {
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
    if let Some(mib) = args.bench_mib {
        let disk = &mut disks[0];
        if let Err(err) = bench(disk, dma, mib) {
            error!("blk: bench {}: {err}", disk.name());
        }
    }
    for disk in disks.iter() {
        info!("{}", disk.device.stats_line());
        info!("{}", disk.device.dma().stats_line());
    }
    dma.print_usage("now");
}
