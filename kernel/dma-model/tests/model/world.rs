//! The test world: an address map, the model machine, the real pools and one
//! real device, and the driver of one random case against the invariant.

use tidepool_dma::{
    Addressing, CpuBuffer, DeviceSpec, DmaDevice, DmaDirection, DmaEnv, FlushErrno,
    FlushRefusedWarning, Host, PlatformFlush, PoolPlacement, PoolRole, PoolSet, PoolSpec,
    SyncPoint, WarningSink, WindowAttributes,
};
use tidepool_dma_model::{Alias, Attributes, Device, Handle, LINE, Machine};

use tidepool_mm::{AddressMap, PhysRange, Region, RegionKind, VirtAddr};

pub const LINEAR_OFFSET: u64 = 0xffff_0000_0000_0000;
const RAM: PhysRange = PhysRange::new(0x4000_0000, 0x100_0000);
/// The device's private pool (no-map, or mapped for [`PoolKind::Mapped`]).
const POOL: &str = "/reserved-memory/dma@50000000";
const POOL_PHYS: PhysRange = PhysRange::new(0x5000_0000, 0x4000);
const POOL_WINDOW: u64 = 0xffff_8000_0000_0000;
const MAPPED_POOL: &str = "/reserved-memory/dma@52000000";
const MAPPED_PHYS: PhysRange = PhysRange::new(0x5200_0000, 0x4000);
const NC_POOL: &str = "tidepool:nc-pool";
const NC_PHYS: PhysRange = PhysRange::new(0x5100_0000, 0x4000);
const NC_WINDOW: u64 = 0xffff_8000_1000_0000;
const LINEAR_POOL: &str = "tidepool:linear-pool";
const LINEAR_PHYS: PhysRange = PhysRange::new(0x40f0_0000, 0x4000);
/// Where CPU buffers live (linear RAM).
pub const CPU_PHYS: u64 = 0x4010_0000;
const DEVICE: &str = "/virtio_mmio@a003e00";

/// The device's private pool, if any.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PoolKind {
    /// None: streaming maps use the CPU buffer (linear RAM).
    None,
    /// A no-map pool behind a non-cacheable window.
    NoMapNc,
    /// A no-map pool behind a write-back window.
    NoMapWb,
    /// A pool in the linear map.
    Mapped,
}

/// The platform.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Xen {
    /// No hypervisor.
    Bare,
    /// Xen, which flushes the pool.
    Accepted,
    /// Xen, which refuses flushes of the pool (EPERM, a static host pool).
    Refused,
    /// Xen, which accepts the pool's probe and refuses every later flush
    /// (EINVAL): the fallback to the window during a sync.
    RefusedAfterProbe,
    /// Xen, but the domain is not direct-mapped: no flush can be asked.
    NotDirectMapped,
}

/// One row of the policy table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Row {
    pub coherent: bool,
    pub pool: PoolKind,
    pub xen: Xen,
}

/// One step of a case. Steps that are not allowed in the buffer's current
/// state (e.g. a CPU write while the device owns it) are skipped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// The CPU writes `len` bytes at `at` (both taken modulo the buffer).
    CpuWrite { at: u16, len: u16 },
    /// The device writes `len` bytes at `at`.
    DeviceWrite { at: u16, len: u16 },
    /// The device reads the whole buffer: must be what was last written.
    DeviceRead,
    /// `sync_for_cpu`.
    SyncForCpu,
    /// `sync_for_device`.
    SyncForDevice,
    /// The CPU reads the whole buffer: must be what was last written.
    CpuRead,
    /// The adversary moves this many times.
    Chaos(u8),
    /// Every reachable line is allocated ([`Machine::fill_all`]).
    FillAll,
    /// Every line is written back if dirty and dropped
    /// ([`Machine::write_back_all`]).
    WriteBackAll,
    /// Unmap (then the CPU reads), and map again.
    Remap,
}

/// One case: a CPU buffer, the steps, the adversary's choices.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Case {
    /// Offset of the CPU buffer in its page.
    pub offset: u16,
    /// Its length.
    pub len: u16,
    pub steps: Vec<Step>,
    pub chaos: Vec<u16>,
    /// Whether non-cacheable reads of a cached line hit it.
    pub non_cacheable_hits: bool,
}

struct Warnings;

impl WarningSink for Warnings {
    fn warn(&mut self, _: &FlushRefusedWarning<'_>) {}
}

/// Everything one case runs on.
pub struct World {
    pub machine: Handle,
    cache: Handle,
    memory: Handle,
    flush: Handle,
    platform: bool,
    pub pools: PoolSet<'static>,
    warnings: Warnings,
    pub kind: Device,
    generation: u8,
    /// The grant table, for a grant device.
    pub grants: Option<tidepool_dma::fake_grants::FakeGrantTable>,
}

fn region(name: &str, phys: PhysRange, kind: RegionKind, window: Option<u64>) -> Region {
    Region {
        name: name.into(),
        phys,
        kind,
        window: window.map(VirtAddr),
    }
}

impl World {
    /// The machine of `row`, the pools set up on it (pool memory starts out
    /// full of dirty lines, as RAM used before), and the device.
    pub fn new(row: Row, chaos: Vec<u16>, non_cacheable_hits: bool) -> (Self, DmaDevice<'static>) {
        let map: &'static AddressMap = Box::leak(Box::new(
            AddressMap::new(
                LINEAR_OFFSET,
                vec![
                    region("/memory@40000000", RAM, RegionKind::LinearRam, None),
                    region(POOL, POOL_PHYS, RegionKind::NoMapPool, Some(POOL_WINDOW)),
                    region(MAPPED_POOL, MAPPED_PHYS, RegionKind::MappedPool, None),
                    region(NC_POOL, NC_PHYS, RegionKind::NoMapPool, Some(NC_WINDOW)),
                ],
            )
            .expect("regions do not overlap"),
        ));
        let pool_attributes = if row.pool == PoolKind::NoMapWb {
            Attributes::WriteBack
        } else {
            Attributes::NonCacheable
        };
        let linear = |phys: PhysRange| Alias {
            virt: VirtAddr(LINEAR_OFFSET + phys.base.0),
            phys,
            attributes: Attributes::WriteBack,
        };
        let aliases = vec![
            linear(RAM),
            linear(MAPPED_PHYS),
            Alias {
                virt: VirtAddr(POOL_WINDOW),
                phys: POOL_PHYS,
                attributes: pool_attributes,
            },
            Alias {
                virt: VirtAddr(NC_WINDOW),
                phys: NC_PHYS,
                attributes: Attributes::NonCacheable,
            },
        ];
        let mut machine = Machine::new(aliases, row.xen != Xen::Bare, chaos);
        machine.set_non_cacheable_reads_hit(non_cacheable_hits);
        if row.xen == Xen::Refused {
            machine.refuse_flushes(POOL_PHYS, FlushErrno::Eperm);
        }
        for (seed, range) in [POOL_PHYS, MAPPED_PHYS, NC_PHYS].into_iter().enumerate() {
            machine.dirty_garbage(range, seed as u8);
        }
        let machine = Handle::new(machine);
        let host = if row.xen == Xen::Bare {
            Host::Bare
        } else {
            Host::Hypervisor
        };
        let platform = matches!(
            row.xen,
            Xen::Accepted | Xen::Refused | Xen::RefusedAfterProbe
        );
        let mut pools = PoolSet::new(map, host);
        let window = |window: u64, attributes| PoolPlacement::OwnWindow {
            window: VirtAddr(window),
            attributes,
        };
        let pool_window = if row.pool == PoolKind::NoMapWb {
            WindowAttributes::WriteBack
        } else {
            WindowAttributes::NonCacheable
        };
        let specs = [
            (
                POOL,
                POOL_PHYS,
                window(POOL_WINDOW, pool_window),
                PoolRole::DeviceTree,
            ),
            (
                MAPPED_POOL,
                MAPPED_PHYS,
                PoolPlacement::Linear,
                PoolRole::DeviceTree,
            ),
            (
                NC_POOL,
                NC_PHYS,
                window(NC_WINDOW, WindowAttributes::NonCacheable),
                PoolRole::KernelNonCacheable,
            ),
            (
                LINEAR_POOL,
                LINEAR_PHYS,
                PoolPlacement::Linear,
                PoolRole::KernelLinear,
            ),
        ];
        let mut cache = machine.clone();
        let mut flush = machine.clone();
        for (name, phys, placement, role) in specs {
            let spec = PoolSpec {
                name,
                phys,
                placement,
                role,
            };
            let platform = platform.then_some(&mut flush as &mut dyn PlatformFlush);
            // SAFETY: the address map describes the model's aliases, and the
            // pools' memory is the model's, used by nothing but the pools.
            unsafe { pools.add(spec, &mut cache, platform) }
                .expect("the pools fit the address map");
        }
        if row.xen == Xen::RefusedAfterProbe {
            machine
                .machine()
                .refuse_flushes(POOL_PHYS, FlushErrno::Einval);
        }
        let pool = match row.pool {
            PoolKind::None => None,
            PoolKind::NoMapNc | PoolKind::NoMapWb => Some(POOL),
            PoolKind::Mapped => Some(MAPPED_POOL),
        };
        let spec = DeviceSpec {
            name: DEVICE,
            coherent: row.coherent,
            pool,
            addressing: Addressing::Bus,
        };
        let device = DmaDevice::new(spec, &pools).expect("the device's pools exist");
        let world = Self {
            memory: machine.clone(),
            machine,
            cache,
            flush,
            platform,
            pools,
            warnings: Warnings,
            kind: if row.coherent {
                Device::Coherent
            } else {
                Device::NonCoherent
            },
            generation: 0,
            grants: None,
        };
        (world, device)
    }

    /// The DMA environment of the world's pools and boundaries.
    pub fn env(&mut self) -> DmaEnv<'_, 'static> {
        DmaEnv {
            pools: &mut self.pools,
            cache: &mut self.cache,
            memory: &mut self.memory,
            platform: self
                .platform
                .then_some(&mut self.flush as &mut dyn PlatformFlush),
            warnings: &mut self.warnings,
            grants: self
                .grants
                .as_mut()
                .map(|grants| grants as &mut dyn tidepool_dma::PageGrants),
        }
    }

    /// Fresh data: every write of a case is told apart from every other.
    pub fn data(&mut self, len: usize) -> Vec<u8> {
        self.generation = self.generation.wrapping_add(1);
        let g = self.generation;
        (0..len)
            .map(|i| g.wrapping_mul(97) ^ (i as u8).wrapping_mul(13) ^ 0x5a)
            .collect()
    }
}

/// The driver of one case, and the invariant: the device reads exactly what
/// the CPU last wrote, and the CPU reads exactly what the device last wrote
/// (byte by byte, whoever wrote it last). `Err` names the first violation.
pub fn run(row: Row, dir: DmaDirection, case: &Case) -> Result<(), String> {
    let (mut world, mut device) = World::new(row, case.chaos.clone(), case.non_cacheable_hits);
    let len = u64::from(case.len.max(1));
    let virt = VirtAddr(LINEAR_OFFSET + CPU_PHYS + u64::from(case.offset));
    // SAFETY: the buffer is the model's linear RAM, used by nothing but the
    // case's steps, which follow the DMA API's ownership rules.
    let buffer = || unsafe { CpuBuffer::new(virt, len) };
    let mut shadow = world.data(len as usize);
    world.machine.machine().cpu_write(virt, &shadow);
    let mut mapping = Some(
        device
            .map(&mut world.env(), buffer(), dir)
            .map_err(|e| e.to_string())?,
    );
    let mut device_owns = true;
    // CPU writes to a mapped buffer reach the device only through
    // sync_for_device, which the contract asks for before unmap.
    let mut cpu_wrote = false;
    for (index, step) in case.steps.iter().enumerate() {
        let at = |at: u16, n: u16| {
            let at = u64::from(at) % len;
            (at, u64::from(n.max(1)).min(len - at))
        };
        match *step {
            Step::CpuWrite { at: a, len: n } if !device_owns && dir != DmaDirection::FromDevice => {
                let (a, n) = at(a, n);
                let data = world.data(n as usize);
                world
                    .machine
                    .machine()
                    .cpu_write(VirtAddr(virt.0 + a), &data);
                shadow[a as usize..(a + n) as usize].copy_from_slice(&data);
                cpu_wrote = true;
            }
            Step::DeviceWrite { at: a, len: n } if device_owns && dir.device_writes() => {
                let (a, n) = at(a, n);
                let data = world.data(n as usize);
                let dma = mapping.as_ref().map_or(0, |m| m.dma_addr().0);
                let kind = world.kind;
                world
                    .machine
                    .machine()
                    .device_write(kind, tidepool_mm::PhysAddr(dma + a), &data);
                shadow[a as usize..(a + n) as usize].copy_from_slice(&data);
            }
            Step::DeviceRead if device_owns && dir.device_reads() => {
                let dma = mapping.as_ref().map_or(0, |m| m.dma_addr().0);
                let kind = world.kind;
                let seen =
                    world
                        .machine
                        .machine()
                        .device_read(kind, tidepool_mm::PhysAddr(dma), len);
                compare("device read", index, &seen, &shadow)?;
            }
            Step::SyncForCpu if device_owns => {
                if let Some(m) = &mapping {
                    device
                        .sync_for_cpu(&mut world.env(), m)
                        .map_err(|e| e.to_string())?;
                }
                device_owns = false;
            }
            Step::SyncForDevice if !device_owns => {
                if let Some(m) = &mapping {
                    device
                        .sync_for_device(&mut world.env(), m)
                        .map_err(|e| e.to_string())?;
                }
                device_owns = true;
                cpu_wrote = false;
            }
            Step::CpuRead if !device_owns => {
                let seen = world.machine.machine().cpu_read(virt, len);
                compare("CPU read", index, &seen, &shadow)?;
            }
            Step::Chaos(n) => world.machine.machine().chaos(usize::from(n)),
            Step::FillAll => world.machine.machine().fill_all(),
            Step::WriteBackAll => world.machine.machine().write_back_all(),
            Step::Remap => {
                if let Some(m) = mapping.take() {
                    if cpu_wrote {
                        device
                            .sync_for_device(&mut world.env(), &m)
                            .map_err(|e| e.to_string())?;
                    }
                    if cpu_wrote {
                        device
                            .sync_for_device(&mut world.env(), &m)
                            .map_err(|e| e.to_string())?;
                        cpu_wrote = false;
                    }
                    device
                        .unmap(&mut world.env(), m)
                        .map_err(|e| e.to_string())?;
                }
                let seen = world.machine.machine().cpu_read(virt, len);
                compare("CPU read after unmap", index, &seen, &shadow)?;
                mapping = Some(
                    device
                        .map(&mut world.env(), buffer(), dir)
                        .map_err(|e| e.to_string())?,
                );
                device_owns = true;
            }
            _ => {}
        }
    }
    if let Some(m) = mapping.take() {
        if cpu_wrote {
            device
                .sync_for_device(&mut world.env(), &m)
                .map_err(|e| e.to_string())?;
        }
        device
            .unmap(&mut world.env(), m)
            .map_err(|e| e.to_string())?;
    }
    let seen = world.machine.machine().cpu_read(virt, len);
    compare(
        "CPU read after the last unmap",
        case.steps.len(),
        &seen,
        &shadow,
    )?;
    let faults = world.machine.machine().faults().to_vec();
    if let Some(fault) = faults.first() {
        return Err(format!("the machine faulted: {fault}"));
    }
    Ok(())
}

pub fn compare(what: &str, step: usize, seen: &[u8], expected: &[u8]) -> Result<(), String> {
    match seen.iter().zip(expected).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(byte) => Err(format!(
            "{what} at step {step}: byte {byte:#x} is {:#04x}, last written {:#04x}",
            seen[byte], expected[byte]
        )),
    }
}

/// Flush hypercalls made by one request (map, the device reads and writes
/// the whole buffer, unmap) of `len` bytes, setup's probes not counted.
pub fn hypercalls_per_request(row: Row, dir: DmaDirection, len: u64) -> u64 {
    let (mut world, mut device) = World::new(row, Vec::new(), true);
    let before = world.machine.machine().hypercalls();
    // SAFETY: as in `run`.
    let cpu = unsafe { CpuBuffer::new(VirtAddr(LINEAR_OFFSET + CPU_PHYS), len) };
    let mapping = device
        .map(&mut world.env(), cpu, dir)
        .expect("the pool has room");
    let data = world.data(len as usize);
    let dma = tidepool_mm::PhysAddr(mapping.dma_addr().0);
    let kind = world.kind;
    world.machine.machine().device_read(kind, dma, len);
    world.machine.machine().device_write(kind, dma, &data);
    device
        .unmap(&mut world.env(), mapping)
        .expect("the mapping is live");
    world.machine.machine().hypercalls() - before
}

/// The driver of one case on a coherent allocation of `case.len` bytes:
/// the CPU reaches it at the address the DMA layer gives (a window or the
/// linear map), the device at its DMA address. Its sync points are those of
/// a ring: `SyncForCpu` is `sync_coherent(ForCpu)` after the device wrote,
/// before the CPU reads; `SyncForDevice` is `sync_coherent(ForDevice)` after
/// the CPU wrote, before the device reads; each hands the memory over, and
/// steps of the side that does not hold it are skipped (`Remap` too). What
/// the CPU wrote, it reads back only after a `SyncForDevice` (a driver never
/// reads back its own descriptors; the used ring it reads was zeroed by the
/// allocation, which counts as a CPU write: a driver syncs a new ring for
/// the device before it hands it over). The same invariant as [`run`].
pub fn run_coherent(row: Row, case: &Case) -> Result<(), String> {
    run_coherent_with(row, case, true)
}

/// [`run_coherent`], with the DMA layer's sync calls made (`syncs`) or left
/// out: what a driver that never calls `sync_coherent` gets.
pub fn run_coherent_with(row: Row, case: &Case, syncs: bool) -> Result<(), String> {
    let (mut world, mut device) = World::new(row, case.chaos.clone(), case.non_cacheable_hits);
    let len = u64::from(case.len.max(1));
    let buffer = device
        .alloc_coherent(&mut world.env(), len, LINE)
        .map_err(|e| e.to_string())?;
    let (virt, dma, kind) = (buffer.virt(), buffer.dma_addr(), world.kind);
    let mut shadow = vec![0; len as usize];
    let mut device_owns = false;
    let mut cpu_wrote = true;
    for (index, step) in case.steps.iter().enumerate() {
        let at = |at: u16, n: u16| {
            let at = u64::from(at) % len;
            (at, u64::from(n.max(1)).min(len - at))
        };
        match *step {
            Step::CpuWrite { at: a, len: n } if !device_owns => {
                let (a, n) = at(a, n);
                let data = world.data(n as usize);
                let mut machine = world.machine.machine();
                machine.cpu_write(VirtAddr(virt.0 + a), &data);
                shadow[a as usize..(a + n) as usize].copy_from_slice(&data);
                cpu_wrote = true;
            }
            Step::DeviceWrite { at: a, len: n } if device_owns => {
                let (a, n) = at(a, n);
                let data = world.data(n as usize);
                let pa = tidepool_mm::PhysAddr(dma.0 + a);
                world.machine.machine().device_write(kind, pa, &data);
                shadow[a as usize..(a + n) as usize].copy_from_slice(&data);
            }
            Step::DeviceRead if device_owns => {
                let pa = tidepool_mm::PhysAddr(dma.0);
                let seen = world.machine.machine().device_read(kind, pa, len);
                compare("device read", index, &seen, &shadow)?;
            }
            Step::CpuRead if !device_owns && !cpu_wrote => {
                let seen = world.machine.machine().cpu_read(virt, len);
                compare("CPU read", index, &seen, &shadow)?;
            }
            Step::SyncForCpu | Step::SyncForDevice => {
                let point = if *step == Step::SyncForCpu {
                    SyncPoint::ForCpu
                } else {
                    SyncPoint::ForDevice
                };
                if syncs {
                    device
                        .sync_coherent(&mut world.env(), &buffer, 0, len, point)
                        .map_err(|e| e.to_string())?;
                }
                device_owns = point == SyncPoint::ForDevice;
                cpu_wrote &= !device_owns;
            }
            Step::Chaos(n) => world.machine.machine().chaos(usize::from(n)),
            Step::FillAll => world.machine.machine().fill_all(),
            Step::WriteBackAll => world.machine.machine().write_back_all(),
            _ => {}
        }
    }
    let faults = world.machine.machine().faults().to_vec();
    if let Some(fault) = faults.first() {
        return Err(format!("the machine faulted: {fault}"));
    }
    device
        .free_coherent(&mut world.env(), buffer)
        .map_err(|e| e.to_string())
}
