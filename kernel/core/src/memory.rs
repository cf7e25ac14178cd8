//! Memory bring-up (device-tree plan to page tables to MMU on, in one pass)
//! and what the kernel knows about an address, for fault reports.

use alloc::boxed::Box;
use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};

use log::info;
use tidepool_dt::DeviceTree;
use tidepool_mm::verify::{Mismatch, Verified, verify};
use tidepool_mm::{
    AddressClass, AddressMap, BuildError, MAIR_EL1_VALUE, MapError, Mapping, PageTable, PhysAddr,
    PhysRange, RegionKind, TableArena, TcrError, TranslationError, build_tables, tcr_el1,
};

use crate::arch::aarch64::linker::{Span, image_layout};
use crate::arch::aarch64::mmu;
use crate::memory_plan::{ImageSpans, MemoryError, MemorySetup, plan_memory};

/// Tables in the page-table arena (in BSS, identity-mapped as kernel data).
/// QEMU's `virt` dom0 layout with 32 virtio windows needs about a dozen.
const TABLE_ARENA_TABLES: usize = 32;

static mut TABLE_ARENA: [PageTable; TABLE_ARENA_TABLES] = [PageTable::EMPTY; TABLE_ARENA_TABLES];

/// The address map, published once the MMU is on (null before).
static ADDRESS_MAP: AtomicPtr<AddressMap> = AtomicPtr::new(core::ptr::null_mut());

/// The address map, once the MMU is on; fault reports use it to name the
/// memory class of a faulting address.
pub fn address_map() -> Option<&'static AddressMap> {
    // SAFETY: the pointer is null or was made from a `&'static AddressMap`
    // (a leaked allocation, never freed or written again).
    unsafe { ADDRESS_MAP.load(Ordering::Acquire).as_ref() }
}

/// Why the memory bring-up failed.
#[derive(Debug)]
pub enum BringUpError {
    /// The layout or the heap could not be planned.
    Plan(MemoryError),
    /// The page-table arena is unusable.
    Arena(MapError),
    /// The tables could not be built.
    Tables(BuildError<'static>),
    /// The CPU reports an unknown physical address size.
    Tcr(TcrError),
    /// The heap's linear address could not be computed.
    Heap(TranslationError),
    /// The MMU translates an address differently from the plan.
    Verify(Mismatch<'static>),
}

impl fmt::Display for BringUpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plan(e) => write!(f, "{e}"),
            Self::Arena(e) => write!(f, "page-table arena: {e}"),
            Self::Tables(e) => write!(f, "{e}"),
            Self::Tcr(e) => write!(f, "TCR_EL1: {e}"),
            Self::Heap(e) => write!(f, "heap: {e}"),
            Self::Verify(mismatch) => write!(f, "{mismatch}"),
        }
    }
}

fn phys(span: Span) -> PhysRange {
    PhysRange::new(span.start as u64, (span.end - span.start) as u64)
}

/// Plans memory from `dt`, builds the page tables, turns the MMU and caches
/// on, and adds the main heap. Runs once, with the MMU off, on the image's
/// identity addresses (which the lower-half tables keep). Returns the
/// memory setup, which lives for the kernel's lifetime.
pub fn bring_up(
    dt: &'static DeviceTree,
    dtb: PhysRange,
    heap_size: Option<u64>,
) -> Result<&'static MemorySetup<'static>, BringUpError> {
    let layout = image_layout();
    let image = ImageSpans {
        image: phys(layout.image),
        text: phys(layout.text),
        rodata: phys(layout.rodata),
        data: phys(layout.data),
        stack: phys(layout.stack),
        exception_stack: phys(layout.exception_stack),
    };
    let xen_pages = crate::xen::pv::windows(crate::xen::pv::discover(dt));
    let setup: &'static MemorySetup<'static> = Box::leak(Box::new(
        plan_memory(dt, &image, dtb, heap_size, &xen_pages).map_err(BringUpError::Plan)?,
    ));

    // SAFETY: the arena is used only here, once, before anything else can
    // reach it; afterwards the MMU walks it and nothing writes it.
    let tables = unsafe { &mut *core::ptr::addr_of_mut!(TABLE_ARENA) };
    let first_table = PhysAddr(tables.as_ptr() as u64);
    let mut arena = TableArena::new(tables, first_table).map_err(BringUpError::Arena)?;
    let roots = build_tables(&mut arena, &setup.layout.mappings).map_err(BringUpError::Tables)?;
    let tcr = tcr_el1(mmu::pa_range()).map_err(BringUpError::Tcr)?;
    let used = arena.tables_used();

    let written = layout.rodata.start..layout.image.end;
    // SAFETY: the tables map the whole image at its identity addresses with
    // its sections' permissions (text executable, everything the code
    // touches next writable where it must be), and MAIR_EL1_VALUE defines the
    // attribute indices they use. The image after its text is the kernel's
    // own and was written only with the caches off (relocations, BSS,
    // stacks, heap, tables): its lines may be, and are, invalidated. The
    // text is not written (xtask refuses a relocation into it) and the boot
    // protocol has the loader clean it to the point of coherency, so any
    // line of it a cache holds is what memory holds.
    unsafe {
        mmu::enable(
            MAIR_EL1_VALUE,
            tcr,
            roots.ttbr0.phys().0,
            roots.ttbr1.phys().0,
            &[(written.start, written.len())],
        );
    }
    let map = &setup.layout.address_map;
    crate::console::move_to_window(map);
    if let Some(page) = crate::xen::pv_console::init(map) {
        info!("console: xen-pv gpa={} evtchn={}", page.gpa, page.port.0);
    }
    ADDRESS_MAP.store(core::ptr::from_ref(map).cast_mut(), Ordering::Release);
    // Every boot: the MMU's own answer for every mapping (and for the linear
    // alias of every no-map region) against the plan, before anything uses
    // them.
    let verified = verify_mappings(&setup.layout.mappings, map).map_err(BringUpError::Verify)?;
    for class in verified {
        info!("{class}");
    }

    let heap = map
        .phys_to_virt(setup.heap.base)
        .map_err(BringUpError::Heap)?;
    // SAFETY: the heap range is linear RAM (so mapped read-write through the
    // linear map) that the memory plan keeps clear of everything else.
    unsafe { crate::heap::add_main_region(heap.0 as *mut u8, setup.heap.size as usize) };

    print_mappings(setup, false);
    info!(
        "mm: tables {used} of {TABLE_ARENA_TABLES}, ttbr0 {} ttbr1 {}",
        roots.ttbr0_counts, roots.ttbr1_counts
    );
    info!(
        "mm: heap {} at {heap} ({} KiB)",
        setup.heap,
        setup.heap.size / 1024
    );
    Ok(setup)
}

/// Has the MMU translate the pages of `mappings` and of the linear alias of
/// every no-map region of `map` (`AT S1E1R`) and compares its answers with
/// them ([`verify`]).
pub fn verify_mappings<'a>(
    mappings: &[Mapping<'a>],
    map: &'a AddressMap,
) -> Result<[Verified; 6], Mismatch<'a>> {
    verify(mappings, map, |va| mmu::translate_read(va.0))
}

/// Prints every mapping with its attributes and each no-map pool's window.
/// Device windows (one per virtio transport on QEMU) are printed at debug
/// level unless `devices` asks for them at info level.
pub fn print_mappings(setup: &MemorySetup<'_>, devices: bool) {
    for mapping in &setup.layout.mappings {
        if mapping.kind == tidepool_mm::MappingKind::MmioWindow && !devices {
            log::debug!("mm: map {mapping}");
        } else {
            info!("mm: map {mapping}");
        }
    }
    for region in setup.layout.address_map.regions() {
        if let (RegionKind::NoMapPool, Some(window)) = (region.kind, region.window) {
            info!(
                "mm: pool {} {} no-map: not in the linear map, window {window} non-cacheable",
                region.name, region.phys
            );
        }
    }
}

/// The device-tree blob through the linear map, once the MMU is on (its
/// identity mapping is gone); `None` if the loader put it outside linear
/// RAM.
pub fn dtb_in_linear_map(setup: &MemorySetup<'_>, dtb: PhysRange) -> Option<&'static [u8]> {
    let map = &setup.layout.address_map;
    let start = map.phys_to_virt(dtb.base).ok()?;
    let last = map
        .phys_to_virt(PhysAddr(dtb.base.0 + dtb.size.checked_sub(1)?))
        .ok()?;
    if last.0 - start.0 != dtb.size - 1 {
        return None;
    }
    // SAFETY: both ends of the range are linear RAM and the linear map is
    // contiguous between them, mapped read-write for the kernel's lifetime;
    // the memory plan keeps the blob clear of the heap and every pool, and
    // the loader handed it over, so nothing writes it.
    Some(unsafe { core::slice::from_raw_parts(start.0 as *const u8, dtb.size as usize) })
}

/// A description of a virtual address, printable without allocating.
pub enum VirtDescription {
    /// Inside the kernel image.
    Image(&'static str),
    /// A guard page.
    Guard(&'static str),
    /// In the linear map's span: the physical address behind it and its class.
    LinearAlias(PhysAddr, AddressClass<'static>),
    /// Nothing the kernel maps.
    Unknown,
}

impl fmt::Display for VirtDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(section) => write!(f, "kernel {section}"),
            Self::Guard(which) => write!(f, "the {which} guard page (stack overflow)"),
            Self::LinearAlias(pa, AddressClass::LinearRam { .. }) => {
                write!(f, "linear map of RAM {pa}")
            }
            Self::LinearAlias(pa, class) => write!(
                f,
                "the linear alias of {pa}: {class}, which is not in the linear map"
            ),
            Self::Unknown => f.write_str("not mapped by the kernel"),
        }
    }
}

/// Describes `va` for a fault report.
pub fn describe_virt(va: u64) -> VirtDescription {
    let layout = image_layout();
    let va_usize = va as usize;
    if layout.stack_guard.contains(va_usize) {
        return VirtDescription::Guard("kernel stack");
    }
    if layout.exception_stack_guard.contains(va_usize) {
        return VirtDescription::Guard("exception stack");
    }
    for (span, name) in [
        (layout.text, "text"),
        (layout.rodata, "rodata"),
        (layout.data, "data/bss"),
        (layout.stack, "stack"),
    ] {
        if span.contains(va_usize) {
            return VirtDescription::Image(name);
        }
    }
    if let Some(map) = address_map()
        && let Some(pa) = va.checked_sub(map.linear_offset())
    {
        let class = map.classify(PhysAddr(pa));
        if class != AddressClass::Unknown {
            return VirtDescription::LinearAlias(PhysAddr(pa), class);
        }
    }
    VirtDescription::Unknown
}
