//! The kernel heap on `linked_list_allocator`.
//!
//! Two regions: a small boot region inside the image's BSS, usable from the
//! first instruction (the device-tree plan needs a heap before the plan can
//! say where RAM is), and the main region in linear-mapped RAM that the
//! memory plan chooses, sized by the `heap=` bootarg. Allocation tries the
//! main region first. Nothing on an I/O path allocates.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use linked_list_allocator::Heap;

/// Size of the boot region in BSS.
const BOOT_HEAP_SIZE: usize = 256 * 1024;

#[repr(C, align(4096))]
struct BootArena([u8; BOOT_HEAP_SIZE]);

static mut BOOT_ARENA: BootArena = BootArena([0; BOOT_HEAP_SIZE]);

struct Regions {
    boot: Heap,
    main: Heap,
}

/// The global allocator.
pub struct KernelHeap(spin::Mutex<Option<Regions>>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(spin::Mutex::new(None));

/// Makes the boot region usable. Called once, after the MMU is on (the
/// allocator's lock needs cacheable memory for its exclusive accesses).
pub fn init_boot_region() {
    let mut regions = HEAP.0.lock();
    if regions.is_some() {
        return;
    }
    let mut boot = Heap::empty();
    // SAFETY: BOOT_ARENA is used by nothing but this heap, and this runs once
    // (guarded by the `is_some` check under the lock).
    unsafe { boot.init(ptr::addr_of_mut!(BOOT_ARENA).cast::<u8>(), BOOT_HEAP_SIZE) };
    *regions = Some(Regions {
        boot,
        main: Heap::empty(),
    });
}

/// Adds the main region `[start, start + size)`.
///
/// # Safety
/// The range must be mapped read-write, unused by anything else, and stay so
/// for the kernel's lifetime.
pub unsafe fn add_main_region(start: *mut u8, size: usize) {
    let mut regions = HEAP.0.lock();
    let regions = regions.as_mut().expect("heap: boot region first");
    // SAFETY: guaranteed by the caller.
    unsafe { regions.main.init(start, size) };
}

/// Bytes (used, total) over both regions.
pub fn usage() -> (usize, usize) {
    match HEAP.0.lock().as_ref() {
        Some(r) => (r.boot.used() + r.main.used(), r.boot.size() + r.main.size()),
        None => (0, 0),
    }
}

// SAFETY: allocations come from `Heap`s that own disjoint regions; each
// pointer is returned to the region whose bounds contain it.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut guard = self.0.lock();
        let Some(regions) = guard.as_mut() else {
            crate::console::write_line(format_args!(
                "heap: allocation of {} bytes before the heap exists",
                layout.size()
            ));
            return ptr::null_mut();
        };
        let found = regions
            .main
            .allocate_first_fit(layout)
            .or_else(|()| regions.boot.allocate_first_fit(layout));
        match found {
            Ok(p) => p.as_ptr(),
            Err(()) => {
                crate::console::write_line(format_args!(
                    "heap: out of memory: {} bytes (align {}) requested, {} of {} bytes in use; raise heap=",
                    layout.size(),
                    layout.align(),
                    regions.boot.used() + regions.main.used(),
                    regions.boot.size() + regions.main.size()
                ));
                ptr::null_mut()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut guard = self.0.lock();
        let regions = guard.as_mut().expect("dealloc implies an earlier alloc");
        let addr = ptr as usize;
        let region =
            if (regions.main.bottom() as usize..regions.main.top() as usize).contains(&addr) {
                &mut regions.main
            } else {
                &mut regions.boot
            };
        // SAFETY: `ptr` came from `alloc` of this allocator with `layout`, from
        // the region whose bounds contain it.
        unsafe { region.deallocate(NonNull::new_unchecked(ptr), layout) };
    }
}
