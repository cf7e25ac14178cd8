//! A grant device (a Xen PV back end: another domain's CPU, through its own
//! write-back mapping of the granted pages) on the model: the real DMA
//! layer's pool buffers, granted and mapped, with no cache maintenance at
//! all (the policy calls a grant device coherent), must still show each
//! side exactly what the other last wrote, whatever the adversary does.

use proptest::prelude::*;
use tidepool_dma::fake_grants::FakeGrantTable;
use tidepool_dma::{
    Addressing, DeviceSpec, DmaDevice, DmaDirection, PoolPlacement, PoolRole, PoolSpec,
};
use tidepool_dma_model::Device;
use tidepool_mm::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr};
use tidepool_xen_abi::{DomId, GrantRef};

use crate::world::{Case, LINEAR_OFFSET, PoolKind, Row, Step, World, Xen, compare};

/// The disk's private pool: linear RAM set aside (as `Dma::grant_device`
/// does from the heap).
const GRANT_POOL: &str = "tidepool:grants-xvda";
const GRANT_PHYS: PhysRange = PhysRange::new(0x40e0_0000, 0x4000);

/// One case on a grant device of the pool's first `len` bytes, in
/// direction `dir`, under `xen`: the CPU reaches the buffer through the
/// linear map, the back end by its guest-physical address, as a
/// [`Device::Domain`]. `SyncForCpu`/`SyncForDevice` are the DMA layer's
/// syncs (which do nothing here), `Remap` is unmap, a CPU read, and a map
/// again (a reuse of the grants). Ends with the counters a persistent
/// grant device must show.
fn run_grant(xen: Xen, dir: DmaDirection, case: &Case) -> Result<(), String> {
    let row = Row {
        coherent: false,
        pool: PoolKind::None,
        xen,
    };
    let (mut world, _) = World::new(row, case.chaos.clone(), case.non_cacheable_hits);
    world.kind = Device::Domain;
    world.grants = Some(FakeGrantTable::new(8));
    let spec = PoolSpec {
        name: GRANT_POOL,
        phys: GRANT_PHYS,
        placement: PoolPlacement::Linear,
        role: PoolRole::DevicePrivate,
    };
    let mut cache = world.machine.clone();
    // SAFETY: model RAM the address map lists as linear, used by nothing
    // but this pool.
    unsafe { world.pools.add(spec, &mut cache, None) }.map_err(|e| e.to_string())?;
    let spec = DeviceSpec {
        name: "xvda",
        coherent: false,
        pool: Some(GRANT_POOL),
        addressing: Addressing::Grant { domid: DomId(0) },
    };
    let mut device = DmaDevice::new(spec, &world.pools).map_err(|e| e.to_string())?;
    let len = u64::from(case.len.max(1));
    let buffer = device
        .alloc_in_pool(&mut world.env(), len)
        .map_err(|e| e.to_string())?;
    let (virt, pa) = (buffer.virt(), PhysAddr(buffer.dma_addr().0));
    assert_eq!(virt.0, LINEAR_OFFSET + pa.0, "a linear pool");
    let pages = len.div_ceil(PAGE_SIZE);
    let mut shadow = world.data(len as usize);
    world.machine.machine().cpu_write(virt, &shadow);
    let map = |device: &mut DmaDevice<'static>, world: &mut World, buffer| {
        device
            .map_in_pool(&mut world.env(), buffer, len, dir)
            .map_err(|(e, _)| e.to_string())
    };
    let mut mapping = map(&mut device, &mut world, buffer)?;
    let mut device_owns = true;
    let mut maps = 1;
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
            }
            Step::DeviceWrite { at: a, len: n } if device_owns && dir.device_writes() => {
                let (a, n) = at(a, n);
                let data = world.data(n as usize);
                let kind = world.kind;
                world
                    .machine
                    .machine()
                    .device_write(kind, PhysAddr(pa.0 + a), &data);
                shadow[a as usize..(a + n) as usize].copy_from_slice(&data);
            }
            Step::DeviceRead if device_owns && dir.device_reads() => {
                let kind = world.kind;
                let seen = world.machine.machine().device_read(kind, pa, len);
                compare("back end read", index, &seen, &shadow)?;
            }
            Step::SyncForCpu if device_owns => {
                device
                    .sync_for_cpu(&mut world.env(), &mapping)
                    .map_err(|e| e.to_string())?;
                device_owns = false;
            }
            Step::SyncForDevice if !device_owns => {
                device
                    .sync_for_device(&mut world.env(), &mapping)
                    .map_err(|e| e.to_string())?;
                device_owns = true;
            }
            Step::CpuRead if !device_owns => {
                let seen = world.machine.machine().cpu_read(virt, len);
                compare("CPU read", index, &seen, &shadow)?;
            }
            Step::Chaos(n) => world.machine.machine().chaos(usize::from(n)),
            Step::FillAll => world.machine.machine().fill_all(),
            Step::WriteBackAll => world.machine.machine().write_back_all(),
            Step::Remap => {
                let buffer = device
                    .unmap_in_pool(&mut world.env(), mapping)
                    .map_err(|e| e.to_string())?;
                let seen = world.machine.machine().cpu_read(virt, len);
                compare("CPU read after unmap", index, &seen, &shadow)?;
                mapping = map(&mut device, &mut world, buffer)?;
                maps += 1;
                device_owns = true;
            }
            _ => {}
        }
    }
    let refs: Vec<GrantRef> = mapping.grant_refs().collect();
    let buffer = device
        .unmap_in_pool(&mut world.env(), mapping)
        .map_err(|e| e.to_string())?;
    let seen = world.machine.machine().cpu_read(virt, len);
    compare(
        "CPU read after the last unmap",
        case.steps.len(),
        &seen,
        &shadow,
    )?;
    device
        .free_in_pool(&mut world.env(), buffer)
        .map_err(|e| e.to_string())?;
    let stats = *device.stats();
    let expected = (pages, (maps - 1) * pages, pages, 0, 0, 0);
    let got = (
        stats.grants_made,
        stats.grants_reused,
        stats.grants_ended,
        stats.grants_leaked,
        stats.va_ops,
        stats.hypercalls,
    );
    if got != expected {
        return Err(format!(
            "made, reused, ended, leaked, va_ops, hypercalls: {got:?}, not {expected:?}"
        ));
    }
    let table = world.grants.as_ref().expect("set above");
    if let Some(gref) = refs.iter().find(|gref| table.entry(**gref).0 != 0) {
        return Err(format!("{gref} still granted after the free"));
    }
    let faults = world.machine.machine().faults().to_vec();
    if let Some(fault) = faults.first() {
        return Err(format!("the machine faulted: {fault}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn a_grant_device_needs_no_maintenance(
        case in crate::rows::case(),
        xen in prop_oneof![Just(Xen::NotDirectMapped), Just(Xen::Accepted)],
        dir in prop_oneof![
            Just(DmaDirection::ToDevice),
            Just(DmaDirection::FromDevice),
            Just(DmaDirection::Bidirectional),
        ],
    ) {
        prop_assert_eq!(run_grant(xen, dir, &case), Ok(()));
    }
}
