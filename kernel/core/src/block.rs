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
//! (no division on the I/O path); reports convert.
//!
//! # Waiting (`wait=`)
//!
//! - `wfi`: idle in WFI until the device's interrupt. Under Xen, WFI traps:
//!   the vCPU is descheduled and woken for every completion.
//! - `poll`: spin on the used ring with the device's interrupts suppressed.
//! - `hybrid`: spin for a budget that follows recent completion times
//!   ([`SpinBudget`], at most [`SPIN_CAP_US`]), then WFI.
//!
//! The default is [`DEFAULT_WAIT`]; `cargo xtask bench` measures all three
//! (rate and CPU time per request: the time not spent in WFI).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU32;
use core::task::Poll;
use core::time::Duration;

use log::{error, info, warn};
use tidepool_dma::{DmaEnv, DmaError, PoolError};
use tidepool_dt::{DeviceTree, VirtioMmio};
use tidepool_mm::PhysAddr;
use tidepool_virtio_blk::pattern::{self, SECTOR_BYTES};
use tidepool_virtio_blk::transport::{ReadRegister, Transport};
use tidepool_virtio_blk::wait::{SpinBudget, WaitMode};
use tidepool_virtio_blk::workload::{self, BLOCK_BYTES, Checksum};
use tidepool_virtio_blk::{BlkError, BlockDevice, MmioTransport, Options, Request, Token};

use crate::arch::aarch64::timer as arch_timer;
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
/// Requests in flight per device (the benchmark's deepest queue, QD32).
const IN_FLIGHT: usize = 32;
/// The longest spin of `wait=hybrid` before WFI.
pub const SPIN_CAP_US: u64 = 1000;
/// Random reads per queue depth of `bench=` when `bench-reads=` is not given.
pub const BENCH_READS: u64 = 4096;
/// How block I/O waits when `wait=` is not given.
pub const DEFAULT_WAIT: WaitMode = WaitMode::Poll;

/// One block device.
pub struct Disk {
    device: BlockDevice<'static, MmioTransport>,
    /// [`REQUEST_TIMEOUT_US`] in counter ticks.
    timeout_ticks: u64,
    waiter: Waiter,
}

/// How a device waits, and what waiting cost.
struct Waiter {
    mode: WaitMode,
    budget: SpinBudget,
    /// Ticks spent in WFI (interrupts on), for the CPU cost of a request.
    idle_ticks: u64,
}

/// Finds and sets up every virtio block device of the device tree.
/// Transports without a device, or with another kind, are skipped; a block
/// device that fails to set up is reported and left out.
pub fn probe(dt: &'static DeviceTree, dma: &mut Dma, wait: WaitMode) -> Vec<Disk> {
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
            Ok(mut disk) => {
                disk.set_wait(wait);
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
    let options = Options {
        in_flight: IN_FLIGHT,
    };
    let mut device = BlockDevice::new(transport, dma_device, &mut dma.env(), options)
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
    let spin_cap = arch_timer::frequency() * SPIN_CAP_US / 1_000_000;
    Ok(Disk {
        device,
        timeout_ticks,
        waiter: Waiter {
            mode: DEFAULT_WAIT,
            budget: SpinBudget::new(spin_cap),
            idle_ticks: 0,
        },
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
    fn submit(&mut self, dma: &mut Dma, request: Request<'_>) -> Result<Token, BlkError<'static>> {
        let waiter = &mut self.waiter;
        self.device.submit_waiting(
            &mut dma.env(),
            request,
            &mut arch_timer::counter,
            self.timeout_ticks,
            &mut |device, env| waiter.wait(device, env),
        )
    }

    /// Submits `request` like [`Self::submit`], except that when the pool
    /// is held by requests the device has returned but the caller has not
    /// finished yet (`holding`: the caller has some), it returns `None`
    /// for the caller to finish its oldest first. A pool device's finished
    /// request keeps its region until `finish` copies the data out.
    fn submit_or_defer(
        &mut self,
        dma: &mut Dma,
        request: Request<'_>,
        holding: bool,
    ) -> Result<Option<Token>, BlkError<'static>> {
        match self.submit(dma, request) {
            Err(BlkError::Dma {
                error:
                    DmaError::Pool {
                        error: PoolError::Exhausted { .. },
                        ..
                    },
                ..
            }) if holding => Ok(None),
            other => other.map(Some),
        }
    }

    /// Waits for `token` and copies a read's data into `buffer`.
    fn complete(
        &mut self,
        dma: &mut Dma,
        token: Token,
        buffer: &mut [u8],
    ) -> Result<(), BlkError<'static>> {
        loop {
            if let Poll::Ready(result) = self.device.finish(&mut dma.env(), token, buffer) {
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
                match self.submit_or_defer(dma, request, !pending.is_empty()) {
                    Ok(Some(token)) => pending.push((token, offset)),
                    Ok(None) => break,
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

impl Waiter {
    /// Waits for a completion as the mode says, or a request timeout; lets
    /// the driver act on an interrupt (reporting a capacity change or a
    /// failed device), otherwise polls; then expires late requests.
    fn wait(
        &mut self,
        device: &mut BlockDevice<'static, MmioTransport>,
        env: &mut DmaEnv<'_, 'static>,
    ) {
        let start = arch_timer::counter();
        let spin = match self.mode {
            WaitMode::Wfi => 0,
            WaitMode::Poll => arch_timer::frequency() * (REQUEST_TIMEOUT_US / 1_000_000),
            WaitMode::Hybrid => self.budget.ticks(),
        };
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
    fn idle(
        &mut self,
        device: &mut BlockDevice<'static, MmioTransport>,
        env: &mut DmaEnv<'_, 'static>,
    ) {
        let deadline = Duration::from_micros(REQUEST_TIMEOUT_US);
        let start = arch_timer::counter();
        // A timeout is not an error here: `expire` reports late requests.
        if let Err(err) = timer::wait_for(deadline, || device.interrupt_noted())
            && !matches!(err, timer::WaitError::TimedOut { .. })
        {
            error!("blk: {}: cannot wait: {err}", device.name());
        }
        self.idle_ticks += arch_timer::counter().wrapping_sub(start);
        take(device, env);
    }
}

/// Takes what the device returned for up to `ticks` after `start`;
/// whether anything completed.
fn spin_for(
    device: &mut BlockDevice<'static, MmioTransport>,
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

/// Lets the driver act on a noted interrupt (reporting a capacity change or
/// a failed device), otherwise polls the used ring; whether any request
/// completed.
fn take(device: &mut BlockDevice<'static, MmioTransport>, env: &mut DmaEnv<'_, 'static>) -> bool {
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
        !outcome.completions.is_empty() || outcome.fault.is_some()
    } else {
        !device.poll(env).is_empty() || device.fault().is_some()
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

/// What one benchmark phase measured.
struct Phase {
    /// Requests in flight at most.
    depth: usize,
    requests: u64,
    elapsed_ticks: u64,
    /// Ticks spent in WFI.
    idle_ticks: u64,
    checksum: Checksum,
}

impl Phase {
    fn us(&self) -> u64 {
        ticks_to_ns(self.elapsed_ticks).div_ceil(1000).max(1)
    }

    /// CPU time per request: the time not spent in WFI, in nanoseconds.
    fn busy_ns_per_request(&self) -> u64 {
        ticks_to_ns(self.elapsed_ticks.saturating_sub(self.idle_ticks)) / self.requests.max(1)
    }

    fn per_second(&self) -> u64 {
        self.requests * 1_000_000 / self.us()
    }
}

fn ticks_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000 / u128::from(arch_timer::frequency())) as u64
}

/// Reads `requests` (first sector, sectors) with up to `depth` in flight
/// (at most the device's slots), finishing them in submission order and
/// adding every byte read to a checksum; times it all. On an error the
/// requests already submitted are still finished (their slots come back)
/// before the first error is returned.
fn timed_reads(
    disk: &mut Disk,
    dma: &mut Dma,
    depth: usize,
    requests: impl Iterator<Item = (u64, u32)>,
    buffer: &mut [u8],
) -> Result<Phase, BlkError<'static>> {
    let depth = depth.min(disk.device.slots());
    let mut requests = requests.peekable();
    let mut pending: Vec<(Token, usize)> = Vec::with_capacity(depth);
    let mut checksum = Checksum::new();
    let mut count = 0;
    let mut result = Ok(());
    let idle_before = disk.waiter.idle_ticks;
    let start = arch_timer::counter();
    while (result.is_ok() && requests.peek().is_some()) || !pending.is_empty() {
        while result.is_ok()
            && pending.len() < depth
            && let Some(&(lba, sectors)) = requests.peek()
        {
            let request = Request::Read { lba, sectors };
            match disk.submit_or_defer(dma, request, !pending.is_empty()) {
                Ok(Some(token)) => {
                    requests.next();
                    pending.push((token, sectors as usize * SECTOR_BYTES));
                    count += 1;
                }
                Ok(None) => break,
                Err(err) => result = Err(err),
            }
        }
        if pending.is_empty() {
            break;
        }
        let (token, len) = pending.remove(0);
        let bytes = &mut buffer[..len];
        match disk.complete(dma, token, bytes) {
            // Whole sectors: a multiple of 8 bytes.
            Ok(()) => {
                let _ = checksum.update(bytes);
            }
            Err(err) => {
                if result.is_ok() {
                    result = Err(err);
                }
            }
        }
    }
    result?;
    Ok(Phase {
        depth,
        requests: count,
        elapsed_ticks: arch_timer::counter() - start,
        idle_ticks: disk.waiter.idle_ticks - idle_before,
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
/// `blk: bench qdN ...` (each with the CPU time per request: time not in
/// WFI) and `blk: bench dma ...` (the DMA counters) lines.
pub fn bench(
    disk: &mut Disk,
    dma: &mut Dma,
    mib: u64,
    reads: u64,
) -> Result<(), BlkError<'static>> {
    let span = (mib << 20).min(disk.device.capacity() * SECTOR_BYTES as u64) / SECTOR_BYTES as u64;
    let before_blk = *disk.device.stats();
    let before_dma = *disk.device.dma().stats();
    let Some(mut buffer) = zeroed(CHUNK_BYTES) else {
        error!("blk: bench {}: no heap for its buffer", disk.name());
        return Ok(());
    };

    let chunk = (CHUNK_BYTES / SECTOR_BYTES) as u64;
    let chunks = (0..span.div_ceil(chunk)).map(|i| {
        let lba = i * chunk;
        (lba, (span - lba).min(chunk) as u32)
    });
    let seq = timed_reads(disk, dma, disk.device.slots(), chunks, &mut buffer)?;
    let block_sectors = BLOCK_BYTES / SECTOR_BYTES as u64;
    let span_blocks = span / block_sectors;
    let mut random = [1usize, 16, 32].map(|depth| (depth, None));
    for (depth, phase) in &mut random {
        let blocks = workload::random_blocks(workload::SEED, reads, span_blocks)
            .map(|block| (block * block_sectors, block_sectors as u32));
        *phase = Some(timed_reads(disk, dma, *depth, blocks, &mut buffer)?);
    }

    let blk = disk.device.stats();
    let dma_stats = disk.device.dma().stats();
    let requests = (blk.reads + blk.writes + blk.flushes)
        - (before_blk.reads + before_blk.writes + before_blk.flushes);
    let hypercalls = dma_stats.hypercalls - before_dma.hypercalls;
    let seq_bytes = span * SECTOR_BYTES as u64;
    let (mib_s, mib_s_frac) = ratio(seq_bytes * 1_000_000 / (1 << 20), seq.us());
    let (per_req, per_req_frac) = ratio(hypercalls, requests);
    info!(
        "blk: bench seq device={} wait={} mib={} reqs={} us={} mib_s={mib_s}.{mib_s_frac:02} busy_ns={} sum={:016x}",
        disk.name(),
        disk.waiter.mode,
        seq_bytes >> 20,
        seq.requests,
        seq.us(),
        seq.busy_ns_per_request(),
        seq.checksum.value(),
    );
    for (depth, phase) in random.iter().filter_map(|(d, p)| Some((d, p.as_ref()?))) {
        info!(
            "blk: bench qd{depth} reqs={} in_flight={} span_blocks={span_blocks} seed={:#x} us={} iops={} busy_ns={} sum={:016x}",
            phase.requests,
            phase.depth,
            workload::SEED,
            phase.us(),
            phase.per_second(),
            phase.busy_ns_per_request(),
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
pub fn run_requested(args: &crate::bootargs::Bootargs<'_>, disks: &mut [Disk], dma: &mut Dma) {
    // Nothing asked, nothing to report: a boot without disk work prints no
    // counters (each console line is a hypercall under Xen).
    let asked = args.blk_write.is_some() || args.blk_verify.is_some() || args.bench_mib.is_some();
    if disks.is_empty() || !asked {
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
        let reads = args.bench_reads.unwrap_or(BENCH_READS);
        if let Err(err) = bench(disk, dma, mib, reads) {
            error!("blk: bench {}: {err}", disk.name());
        }
    }
    for disk in disks.iter() {
        info!("{}", disk.device.stats_line());
        info!("{}", disk.device.dma().stats_line());
    }
    dma.print_usage("now");
}
