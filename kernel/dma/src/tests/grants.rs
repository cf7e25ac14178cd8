//! Grant devices: persistent grants made, reused and ended through the
//! [`PageGrants`] boundary, on a real `tidepool_xen_abi::GrantTable` over
//! entries in host memory, with the back end's mappings played by setting
//! the entries' in-use flags as Xen does.

use tidepool_xen_abi::grant::{GTF_permit_access, GTF_readonly, GTF_writing};
use tidepool_xen_abi::{DomId, GrantError, GrantRef};

use super::*;
use crate::fake_grants::FakeGrantTable;

/// The back end's domain.
const BACK_END: DomId = DomId(0);
/// The PV disk's name and its private pool, in linear RAM.
const DISK: &str = "xvda";
const GRANT_POOL: &str = "tidepool:grants-xvda";
const GRANT_PHYS: PhysRange = PhysRange::new(0x4900_0000, 0x10_000);

/// A rig under Xen with a grant table of `usable` entries and the disk's
/// pool; the disk is declared non-coherent, which a grant device ignores.
fn grant_rig(usable: usize) -> (Rig, DmaDevice<'static>) {
    let mut rig = Rig::new(Platform::Xen);
    rig.grants = Some(FakeGrantTable::new(usable));
    rig.add_pool(PoolSpec {
        name: GRANT_POOL,
        phys: GRANT_PHYS,
        placement: PoolPlacement::Linear,
        role: PoolRole::DevicePrivate,
    })
    .unwrap();
    rig.forget_setup();
    let spec = DeviceSpec {
        name: DISK,
        coherent: false,
        pool: Some(GRANT_POOL),
        addressing: Addressing::Grant { domid: BACK_END },
    };
    let device = DmaDevice::new(spec, &rig.pools).unwrap();
    (rig, device)
}

fn table(rig: &Rig) -> &FakeGrantTable {
    rig.grants.as_ref().unwrap()
}

#[test]
fn pages_are_granted_at_their_first_map_and_reused_after() {
    let (mut rig, mut dev) = grant_rig(16);
    assert!(dev.is_coherent(), "another domain's CPU is coherent");
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x3000).unwrap();
    let first_gfn = (buffer.dma_addr().0 / PAGE_SIZE) as u32;
    assert_eq!((buffer.granted_pages(), table(&rig).granted()), (0, 0));
    // Two pages of three: two grants, read-write, for the back end.
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x1800, DmaDirection::ToDevice)
        .unwrap();
    let refs: Vec<GrantRef> = mapping.grant_refs().collect();
    assert_eq!(refs.len(), 2);
    for (i, gref) in refs.iter().enumerate() {
        assert_eq!(
            table(&rig).entry(*gref),
            (GTF_permit_access, BACK_END.0, first_gfn + i as u32)
        );
        assert_eq!(table(&rig).entry(*gref).0 & GTF_readonly, 0);
    }
    let buffer = dev.unmap_in_pool(&mut rig.env(), mapping).unwrap();
    assert_eq!(buffer.granted_pages(), 2, "the grants stay with the buffer");
    assert_eq!(table(&rig).granted(), 2);
    let s = *dev.stats();
    assert_eq!((s.grants_made, s.grants_reused), (2, 0));
    // All three pages: the first two are reused, one grant is made.
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x3000, DmaDirection::FromDevice)
        .unwrap();
    let again: Vec<GrantRef> = mapping.grant_refs().collect();
    assert_eq!(&again[..2], &refs[..]);
    assert_eq!(again.len(), 3);
    let buffer = dev.unmap_in_pool(&mut rig.env(), mapping).unwrap();
    let s = *dev.stats();
    assert_eq!((s.grants_made, s.grants_reused), (3, 2));
    assert_eq!((s.maps, s.unmaps, s.syncs), (2, 2, 4));
    // Coherent: no cache maintenance and no flush, whatever the direction.
    assert_eq!((s.va_ops, s.hypercalls, s.bounced), (0, 0, 0));
    assert!(rig.cache.ops.is_empty() && rig.hypercalls().is_empty());
    // Freeing ends every grant and gives the pages back.
    let used = rig.pool(GRANT_POOL).usage().used_pages;
    dev.free_in_pool(&mut rig.env(), buffer).unwrap();
    assert_eq!(table(&rig).granted(), 0);
    assert_eq!(rig.pool(GRANT_POOL).usage().used_pages, used - 3);
    for gref in again {
        assert_eq!(table(&rig).entry(gref).0, 0, "{gref} revoked");
    }
    assert_eq!(
        dev.stats_line().to_string(),
        "dma: stats xvda syncs=4 hypercalls=0 pages=0 refusals=0 fallbacks=0 va_ops=0 va_bytes=0 \
         bounced=0 maps=2 unmaps=2 allocs=0 frees=0 coherent_syncs=0 coherent_va_ops=0 \
         grants_made=3 grants_reused=2 grants_ended=3 grants_leaked=0"
    );
}

#[test]
fn giving_up_a_mapping_through_unmap_ends_its_grants() {
    let (mut rig, mut dev) = grant_rig(16);
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x2000).unwrap();
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x2000, DmaDirection::Bidirectional)
        .unwrap();
    assert_eq!(table(&rig).granted(), 2);
    dev.unmap(&mut rig.env(), mapping).unwrap();
    assert_eq!(table(&rig).granted(), 0);
    assert_eq!(rig.pool(GRANT_POOL).usage().used_pages, 0);
    assert_eq!(dev.stats().grants_ended, 2);
}

#[test]
fn a_grant_the_back_end_still_maps_is_reported_and_its_buffer_leaked() {
    let (mut rig, mut dev) = grant_rig(16);
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x3000).unwrap();
    let block = PhysRange::new(buffer.dma_addr().0, 0x3000);
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x3000, DmaDirection::FromDevice)
        .unwrap();
    let refs: Vec<GrantRef> = mapping.grant_refs().collect();
    let buffer = dev.unmap_in_pool(&mut rig.env(), mapping).unwrap();
    table(&rig).map_by_back_end(refs[1]);
    let err = dev.free_in_pool(&mut rig.env(), buffer).unwrap_err();
    assert_eq!(
        err,
        DmaError::GrantsStillMapped {
            device: DISK,
            domid: BACK_END,
            gref: refs[1],
            error: GrantError::InUse {
                gref: refs[1],
                flags: GTF_permit_access | GTF_writing,
            },
            count: 1,
            leaked: block,
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "grant device xvda: 1 grants still mapped by d0 (first gref {}: gref {} is still mapped \
             by the remote domain (flags 0x11)); [{:#x}..{:#x}) leaked, never freed",
            refs[1].0,
            refs[1].0,
            block.base.0,
            block.end()
        )
    );
    // The other grants ended; the still-mapped one stays granted, and the
    // whole buffer stays allocated: the back end may still write it.
    assert_eq!(table(&rig).granted(), 1);
    assert_ne!(table(&rig).entry(refs[1]).0, 0);
    assert!(rig.pool(GRANT_POOL).is_allocation(block));
    let s = *dev.stats();
    assert_eq!((s.grants_ended, s.grants_leaked), (2, 1));
    // Nothing else is ever handed that memory.
    let next = dev.alloc_in_pool(&mut rig.env(), 0x3000).unwrap();
    assert!(!block.contains(next.dma_addr().phys()));
}

#[test]
fn a_refused_grant_is_a_typed_error_and_gives_the_buffer_back() {
    let (mut rig, mut dev) = grant_rig(2);
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x3000).unwrap();
    let third = PhysAddr(buffer.dma_addr().0 + 0x2000);
    let (err, buffer) = dev
        .map_in_pool(&mut rig.env(), buffer, 0x3000, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(
        err,
        DmaError::GrantRefused {
            device: DISK,
            domid: BACK_END,
            phys: third,
            error: GrantError::Exhausted {
                usable: 2,
                frames: 1,
                limit: 1
            },
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "grant device xvda: page {third} not granted to d0: grant table exhausted: all 2 \
             usable entries are granted, frames=1 limit=1"
        )
    );
    // The two pages granted before stay the buffer's, and freeing ends them.
    assert_eq!(buffer.granted_pages(), 2);
    let s = *dev.stats();
    assert_eq!(
        (s.grants_made, s.grants_reused, s.maps, s.syncs),
        (2, 0, 0, 0)
    );
    dev.free_in_pool(&mut rig.env(), buffer).unwrap();
    assert_eq!(table(&rig).granted(), 0);
    // Without a grant table nothing is granted, and the buffer comes back.
    rig.grants = None;
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x1000).unwrap();
    let (err, buffer) = dev
        .map_in_pool(&mut rig.env(), buffer, 0x1000, DmaDirection::ToDevice)
        .unwrap_err();
    assert_eq!(err, DmaError::NoGrantTable { device: DISK });
    assert_eq!(err.to_string(), "grant device xvda: no grant table");
    dev.free_in_pool(&mut rig.env(), buffer).unwrap();
}

#[test]
fn grants_without_a_table_to_end_them_are_leaked_with_their_pages() {
    let (mut rig, mut dev) = grant_rig(4);
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x2000).unwrap();
    let block = PhysRange::new(buffer.dma_addr().0, 0x2000);
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x2000, DmaDirection::ToDevice)
        .unwrap();
    let buffer = dev.unmap_in_pool(&mut rig.env(), mapping).unwrap();
    let table = rig.grants.take();
    assert_eq!(
        dev.free_in_pool(&mut rig.env(), buffer),
        Err(DmaError::NoGrantTable { device: DISK })
    );
    assert!(rig.pool(GRANT_POOL).is_allocation(block));
    assert_eq!(dev.stats().grants_leaked, 2);
    assert_eq!(table.unwrap().granted(), 2);
}

#[test]
fn coherent_memory_is_granted_whole_when_allocated_and_its_grants_end_when_freed() {
    let (mut rig, mut dev) = grant_rig(16);
    let window = rig.pool(GRANT_POOL).window();
    rig.memory.write(window.0, &[0xaa; 0x2000]);
    let ring = dev
        .alloc_coherent(&mut rig.env(), 0x2000, PAGE_SIZE)
        .unwrap();
    assert_eq!(rig.memory.read(ring.virt().0, 0x2000), vec![0; 0x2000]);
    // Every page granted now, read-write, in order, to the back end.
    let first_gfn = (ring.dma_addr().0 / PAGE_SIZE) as u32;
    let refs: Vec<GrantRef> = ring.grant_refs().collect();
    assert_eq!(refs.len(), 2);
    for (i, gref) in refs.iter().enumerate() {
        assert_eq!(
            table(&rig).entry(*gref),
            (GTF_permit_access, BACK_END.0, first_gfn + i as u32)
        );
    }
    assert_eq!(table(&rig).granted(), 2);
    let s = *dev.stats();
    assert_eq!((s.allocs, s.grants_made, s.grants_reused), (1, 2, 0));
    // Shared with a CPU: its sync points need nothing.
    dev.sync_coherent(&mut rig.env(), &ring, 0, 0x2000, SyncPoint::ForCpu)
        .unwrap();
    assert!(rig.cache.ops.is_empty() && rig.hypercalls().is_empty());
    // Freeing ends every grant, as for a pool buffer, and frees the pages.
    dev.free_coherent(&mut rig.env(), ring).unwrap();
    assert_eq!(table(&rig).granted(), 0);
    for gref in refs {
        assert_eq!(table(&rig).entry(gref).0, 0, "{gref} revoked");
    }
    assert_eq!(rig.pool(GRANT_POOL).usage().used_pages, 0);
    assert_eq!(
        dev.stats_line().to_string(),
        "dma: stats xvda syncs=0 hypercalls=0 pages=0 refusals=0 fallbacks=0 va_ops=0 va_bytes=0 \
         bounced=0 maps=0 unmaps=0 allocs=1 frees=1 coherent_syncs=1 coherent_va_ops=0 \
         grants_made=2 grants_reused=0 grants_ended=2 grants_leaked=0"
    );
}

#[test]
fn coherent_memory_the_back_end_still_maps_at_its_free_is_leaked_not_freed() {
    let (mut rig, mut dev) = grant_rig(16);
    let ring = dev
        .alloc_coherent(&mut rig.env(), 0x2000, PAGE_SIZE)
        .unwrap();
    let block = PhysRange::new(ring.dma_addr().0, 0x2000);
    let refs: Vec<GrantRef> = ring.grant_refs().collect();
    table(&rig).map_by_back_end(refs[0]);
    let err = dev.free_coherent(&mut rig.env(), ring).unwrap_err();
    assert_eq!(
        err,
        DmaError::GrantsStillMapped {
            device: DISK,
            domid: BACK_END,
            gref: refs[0],
            error: GrantError::InUse {
                gref: refs[0],
                flags: GTF_permit_access | GTF_writing,
            },
            count: 1,
            leaked: block,
        }
    );
    // The other grant ended; the mapped one stays, and the whole buffer
    // stays allocated for good: the back end may still write it.
    assert_eq!(table(&rig).granted(), 1);
    assert_ne!(table(&rig).entry(refs[0]).0, 0);
    assert_eq!(table(&rig).entry(refs[1]).0, 0);
    assert!(rig.pool(GRANT_POOL).is_allocation(block));
    let s = *dev.stats();
    assert_eq!(
        (s.grants_made, s.grants_ended, s.grants_leaked, s.frees),
        (2, 1, 1, 0)
    );
    let next = dev
        .alloc_coherent(&mut rig.env(), 0x2000, PAGE_SIZE)
        .unwrap();
    assert!(!block.contains(next.dma_addr().phys()));
    let next = dev.alloc_in_pool(&mut rig.env(), 0x2000).unwrap();
    assert!(!block.contains(next.dma_addr().phys()));
}

#[test]
fn a_refused_grant_of_coherent_memory_ends_the_grants_made_and_frees_it() {
    let (mut rig, mut dev) = grant_rig(2);
    let err = dev
        .alloc_coherent(&mut rig.env(), 0x3000, PAGE_SIZE)
        .unwrap_err();
    let DmaError::GrantRefused { phys, error, .. } = err else {
        panic!("{err}");
    };
    assert_eq!(
        error,
        GrantError::Exhausted {
            usable: 2,
            frames: 1,
            limit: 1
        }
    );
    assert_eq!(phys.0, GRANT_PHYS.base.0 + 0x2000, "the third page");
    // The two grants made before it are ended and nothing stays allocated.
    assert_eq!(table(&rig).granted(), 0);
    assert_eq!(rig.pool(GRANT_POOL).usage().used_pages, 0);
    let s = *dev.stats();
    assert_eq!(
        (s.allocs, s.grants_made, s.grants_ended, s.grants_leaked),
        (0, 2, 2, 0)
    );
    // Without a grant table nothing is granted and nothing kept.
    rig.grants = None;
    assert_eq!(
        dev.alloc_coherent(&mut rig.env(), 0x1000, PAGE_SIZE),
        Err(DmaError::NoGrantTable { device: DISK })
    );
    assert_eq!(rig.pool(GRANT_POOL).usage().used_pages, 0);
}

#[test]
fn a_grant_device_takes_only_its_pool_buffers() {
    let (mut rig, mut dev) = grant_rig(4);
    let cpu = rig.cpu_buffer(0x4010_0000, 0x100, 1);
    assert_eq!(
        dev.map(&mut rig.env(), cpu, DmaDirection::ToDevice)
            .unwrap_err(),
        DmaError::GrantDeviceNeedsPoolBuffer { device: DISK }
    );
    assert_eq!(
        DmaError::GrantDeviceNeedsPoolBuffer { device: DISK }.to_string(),
        "grant device xvda: only its pool's memory is granted, not CPU buffers"
    );
    assert_eq!(rig.pool(GRANT_POOL).usage().used_pages, 0);
    assert_eq!(dev.addressing(), Addressing::Grant { domid: BACK_END });
    assert_eq!(dev.addressing().to_string(), "grant(d0)");
    assert_eq!(Addressing::Bus.to_string(), "phys");
    // Its memory is the pages it grants: a pool is not optional.
    let spec = DeviceSpec {
        name: DISK,
        coherent: true,
        pool: None,
        addressing: Addressing::Grant { domid: BACK_END },
    };
    let err = DmaDevice::new(spec, &rig.pools).err().unwrap();
    assert_eq!(err, SetupError::GrantDeviceWithoutPool { device: DISK });
    assert_eq!(
        err.to_string(),
        "grant device xvda has no pool to grant pages of"
    );
}

#[test]
fn a_bus_device_grants_nothing_and_keeps_its_stats_line() {
    let mut rig = Rig::new(Platform::Xen);
    rig.grants = Some(FakeGrantTable::new(4));
    let mut dev = rig.device(DEVICE, false, Some(DYNAMIC_POOL));
    let buffer = dev.alloc_in_pool(&mut rig.env(), 0x1000).unwrap();
    let mapping = dev
        .map_in_pool(&mut rig.env(), buffer, 0x1000, DmaDirection::ToDevice)
        .unwrap();
    assert_eq!(mapping.grant_refs().count(), 0);
    let buffer = dev.unmap_in_pool(&mut rig.env(), mapping).unwrap();
    dev.free_in_pool(&mut rig.env(), buffer).unwrap();
    assert_eq!(table(&rig).granted(), 0);
    assert!(!dev.stats_line().to_string().contains("grants_"));
}
