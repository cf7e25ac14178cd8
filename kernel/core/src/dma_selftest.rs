//! DMA self-tests (`selftest=dma`, `selftest=dma-naive`): every device the
//! device tree makes interesting goes through a coherent allocation and a
//! streaming round trip in both directions, with the CPU playing the device;
//! the counters are printed for the boot tests to check. `dma-naive` then
//! shows what Linux's fast path does to a no-map pool.

use alloc::vec;
use alloc::vec::Vec;

use log::{error, info};
use tidepool_dma::{CpuBuffer, DmaAddr, DmaDevice, DmaDirection, DmaError};
use tidepool_dt::{DeviceTree, VirtioMmio};
use tidepool_mm::{AddressClass, AddressMap, CacheOp, LINEAR_OFFSET, VirtAddr};

use crate::arch::aarch64::cache::maintain_range;
use crate::arch::aarch64::mmu;
use crate::dma::Dma;
use crate::shutdown::shutdown;
use crate::xen::ShutdownReason;

/// Bytes of each streaming test buffer (two pages, so a bounce spans pages).
const BUFFER_BYTES: usize = 8192;

/// The devices worth testing: every non-coherent one and every one with a
/// pool, plus the first coherent one without a pool.
fn interesting(dt: &DeviceTree) -> impl Iterator<Item = &VirtioMmio> {
    let plain_coherent = dt
        .platform
        .virtio_mmio
        .iter()
        .find(|v| v.dma_coherent && v.memory_regions.is_empty());
    dt.platform.virtio_mmio.iter().filter(move |v| {
        !v.dma_coherent
            || !v.memory_regions.is_empty()
            || plain_coherent.is_some_and(|p| core::ptr::eq(p, *v))
    })
}

/// Where the device (played by the CPU) sees `dma`: its linear or window
/// address.
fn device_view(map: &AddressMap, dma: DmaAddr) -> Option<VirtAddr> {
    match map.classify(dma.phys()) {
        AddressClass::LinearRam { virt } | AddressClass::MappedPool { virt, .. } => Some(virt),
        AddressClass::NoMapPool { window, .. } => window,
        _ => None,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A CPU buffer over `buffer`, for one map that is unmapped before
/// `buffer` goes: the self-test's mappings reach no device, so even one whose
/// unmap failed leaves nothing that could write the freed memory.
fn cpu_buffer(buffer: &mut [u8]) -> CpuBuffer {
    // SAFETY: `buffer` is mapped heap memory this function borrows
    // exclusively; the callers map it once and unmap it before they return,
    // and no device is given the address (see above).
    unsafe { CpuBuffer::new(VirtAddr(buffer.as_mut_ptr() as u64), buffer.len() as u64) }
}

/// What went wrong in one device's round trip.
enum Failure {
    Dma(DmaError<'static>),
    Data(&'static str),
}

impl From<DmaError<'static>> for Failure {
    fn from(error: DmaError<'static>) -> Self {
        Self::Dma(error)
    }
}

fn round_trip(dma: &mut Dma, device: &mut DmaDevice<'static>) -> Result<bool, Failure> {
    let map = dma.address_map();

    let coherent = device.alloc_coherent(&mut dma.env(), 4096, 4096)?;
    let words = coherent.virt().0 as *mut u64;
    for i in 0..512 {
        // SAFETY: the coherent buffer is 4096 bytes, mapped read-write and
        // owned by this test until it is freed below.
        unsafe {
            words
                .add(i)
                .write_volatile(i as u64 ^ coherent.dma_addr().0)
        };
    }
    // SAFETY: as above.
    let intact = (0..512)
        .all(|i| unsafe { words.add(i).read_volatile() } == i as u64 ^ coherent.dma_addr().0);
    device.free_coherent(&mut dma.env(), coherent)?;
    if !intact {
        return Err(Failure::Data("coherent buffer did not read back"));
    }

    let mut outgoing = pattern(0x5a, BUFFER_BYTES);
    let mapping = device.map(
        &mut dma.env(),
        cpu_buffer(&mut outgoing),
        DmaDirection::ToDevice,
    )?;
    let bounced = mapping.is_bounced();
    let view = device_view(map, mapping.dma_addr())
        .ok_or(Failure::Data("DMA address not reachable by the CPU"))?;
    // SAFETY: the mapping's device-visible memory is BUFFER_BYTES long and
    // mapped (linear RAM or the pool's window) while the mapping lives.
    let seen = unsafe { core::slice::from_raw_parts(view.0 as *const u8, BUFFER_BYTES) }
        == outgoing.as_slice();
    device.unmap(&mut dma.env(), mapping)?;
    if !seen {
        return Err(Failure::Data("the device would not see what the CPU wrote"));
    }

    let mut incoming = vec![0u8; BUFFER_BYTES];
    let mapping = device.map(
        &mut dma.env(),
        cpu_buffer(&mut incoming),
        DmaDirection::FromDevice,
    )?;
    let view = device_view(map, mapping.dma_addr())
        .ok_or(Failure::Data("DMA address not reachable by the CPU"))?;
    let written = pattern(0xa5, BUFFER_BYTES);
    // SAFETY: as above; the "device" writes its whole buffer.
    unsafe { core::ptr::copy_nonoverlapping(written.as_ptr(), view.0 as *mut u8, BUFFER_BYTES) };
    device.unmap(&mut dma.env(), mapping)?;
    if incoming != written {
        return Err(Failure::Data("the CPU would not see what the device wrote"));
    }
    Ok(bounced)
}

/// `selftest=dma`: a round trip for every interesting device, then its
/// counters and the pools' usage.
pub fn run(dma: &mut Dma, dt: &'static DeviceTree) {
    for node in interesting(dt) {
        let mut device = match dma.device(dt, &node.path, node.dma_coherent, &node.memory_regions) {
            Ok(device) => device,
            Err(err) => {
                error!("{err}");
                shutdown(ShutdownReason::Crash);
            }
        };
        match round_trip(dma, &mut device) {
            Ok(bounced) => info!(
                "dma: selftest {} ok bounced={}",
                node.path,
                if bounced { "yes" } else { "no" }
            ),
            Err(Failure::Dma(err)) => {
                error!("dma: selftest {}: {err}", node.path);
                shutdown(ShutdownReason::Crash);
            }
            Err(Failure::Data(what)) => {
                error!("dma: selftest {}: {what}", node.path);
                shutdown(ShutdownReason::Crash);
            }
        }
        info!("{}", device.stats_line());
    }
    dma.print_usage("after the self-test");
}

/// `selftest=dma-naive`: the tidepool path on a buffer of the first device
/// with a no-map pool, then Linux's fast path on the same buffer
/// (`phys_to_virt`, then `DC CIVAC` by that address), which faults.
pub fn run_naive(dma: &mut Dma, dt: &'static DeviceTree) -> ! {
    let map = dma.address_map();
    // Any device the tree gives a no-map DMA pool (virtio on QEMU virt, the
    // uSDHC on the i.MX 8M Plus): no driver is needed to show the fault.
    let with_pool = dt.plan.reserved().iter().find_map(|region| {
        let user = region.users.first()?;
        (region.no_map && region.is_dma_pool()).then_some((region, user))
    });
    let Some((pool, node)) = with_pool else {
        error!("dma: naive: no device with a no-map pool in the device tree");
        shutdown(ShutdownReason::Crash);
    };
    let regions = core::slice::from_ref(&pool.path);
    let mut device = match dma.device(dt, &node.path, node.dma_coherent, regions) {
        Ok(device) => device,
        Err(err) => {
            error!("{err}");
            shutdown(ShutdownReason::Crash);
        }
    };
    let mut buffer = pattern(0x3c, BUFFER_BYTES);
    let result = device
        .map(
            &mut dma.env(),
            cpu_buffer(&mut buffer),
            DmaDirection::Bidirectional,
        )
        .and_then(|mapping| {
            let dma_addr = mapping.dma_addr();
            device.sync_for_cpu(&mut dma.env(), &mapping)?;
            device.sync_for_device(&mut dma.env(), &mapping)?;
            device.unmap(&mut dma.env(), mapping)?;
            Ok(dma_addr)
        });
    let dma_addr = match result {
        Ok(dma_addr) => dma_addr,
        Err(err) => {
            error!("dma: naive: the tidepool path failed: {err}");
            shutdown(ShutdownReason::Crash);
        }
    };
    info!(
        "dma: naive: tidepool path ok for {} buffer {dma_addr} ({})",
        node.path,
        device.stats_line()
    );
    match map.phys_to_virt(dma_addr.phys()) {
        Ok(va) => {
            error!("dma: naive: phys_to_virt({dma_addr}) gave {va}: the pool is in the linear map");
            shutdown(ShutdownReason::Crash);
        }
        Err(err) => info!("dma: naive: tidepool refuses phys_to_virt({dma_addr}): {err}"),
    }
    let alias = LINEAR_OFFSET + dma_addr.0;
    match tidepool_mm::verify::Par::decode(mmu::translate_read(alias)) {
        tidepool_mm::verify::Par::Fault => {
            info!("dma: naive: the MMU has no translation for the linear alias {alias:#x}")
        }
        found => {
            error!("dma: naive: the linear alias {alias:#x} translates to {found}");
            shutdown(ShutdownReason::Crash);
        }
    }
    info!("dma: naive: Linux's path: DC CIVAC by phys_to_virt({dma_addr}) = {alias:#x}");
    // SAFETY: clean+invalidate loses no data. The alias is unmapped: on
    // hardware this faults, which is what the self-test shows.
    unsafe { maintain_range(CacheOp::CleanInvalidate, alias as usize, 64) };
    // Real hardware has faulted by now. QEMU implements DC by VA as a no-op
    // without a translation; the swiotlb copy Linux makes through the same
    // address faults there too.
    info!(
        "dma: naive: DC CIVAC returned (QEMU does not translate DC by VA); the bounce copy through the alias:"
    );
    // SAFETY: deliberately reads an unmapped address; the fault handler
    // reports it and shuts down, so the read never returns.
    let value = unsafe { (alias as *const u64).read_volatile() };
    error!("dma: naive: the linear alias {alias:#x} is readable (read {value:#x})");
    shutdown(ShutdownReason::Crash)
}
