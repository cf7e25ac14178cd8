//! The kernel heap on `linked_list_allocator`.
//!
//! Two regions: a small boot region inside the image's BSS, usable from the
//! first instruction (the device-tree plan needs a heap before the plan can
//! say where RAM is), and the main region in linear-mapped RAM that the
//! memory plan chooses, sized by the `heap=` bootarg. Allocation tries the
//! main region first. Nothing on an I/O path allocates.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};

use linked_list_allocator::Heap;

use crate::arch::aarch64::cpu;

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
///
/// Before the MMU is on, only the boot CPU runs, with interrupts masked,
/// and memory is Device memory, on which the lock's exclusive accesses are
/// not allowed: the regions are then used without the lock. Afterwards every
/// access takes the lock.
pub struct KernelHeap {
    lock: spin::Mutex<()>,
    regions: UnsafeCell<Option<Regions>>,
}

// SAFETY: `regions` is only reached through `with_regions`, which serialises
// access (the lock, or the single-CPU boot phase before the MMU is on).
unsafe impl Sync for KernelHeap {}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    lock: spin::Mutex::new(()),
    regions: UnsafeCell::new(None),
};

impl KernelHeap {
    fn with_regions<R>(&self, f: impl FnOnce(&mut Option<Regions>) -> R) -> R {
        if cpu::caches_enabled() {
            let _guard = self.lock.lock();
            // SAFETY: the lock is held for the whole use of the reference.
            f(unsafe { &mut *self.regions.get() })
        } else {
            // SAFETY: before the MMU is on only the boot CPU runs, with
            // interrupts masked, and no caller re-enters: the reference is
            // unique for the call.
            f(unsafe { &mut *self.regions.get() })
        }
    }
}

/// Makes the boot region usable. Called once, first thing after the early
/// console, with the MMU still off.
pub fn init_boot_region() {
    HEAP.with_regions(|regions| {
        if regions.is_some() {
            return;
        }
        let mut boot = Heap::empty();
        // SAFETY: BOOT_ARENA is used by nothing but this heap, and this runs
        // once (guarded by the `is_some` check).
        unsafe { boot.init(ptr::addr_of_mut!(BOOT_ARENA).cast::<u8>(), BOOT_HEAP_SIZE) };
        *regions = Some(Regions {
            boot,
            main: Heap::empty(),
        });
    });
}

/// Adds the main region `[start, start + size)`.
///
/// # Safety
/// The range must be mapped read-write, unused by anything else, and stay so
/// for the kernel's lifetime.
pub unsafe fn add_main_region(start: *mut u8, size: usize) {
    HEAP.with_regions(|regions| {
        let regions = regions.as_mut().expect("heap: boot region first");
        // SAFETY: guaranteed by the caller.
        unsafe { regions.main.init(start, size) };
    });
}

/// Bytes (used, total) over both regions.
pub fn usage() -> (usize, usize) {
    HEAP.with_regions(|regions| match regions {
        Some(r) => (r.boot.used() + r.main.used(), r.boot.size() + r.main.size()),
        None => (0, 0),
    })
}

// SAFETY: allocations come from `Heap`s that own disjoint regions; each
// pointer is returned to the region whose bounds contain it.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with_regions(|regions| {
            let Some(regions) = regions.as_mut() else {
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
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.with_regions(|regions| {
            let regions = regions.as_mut().expect("dealloc implies an earlier alloc");
            let addr = ptr as usize;
            let region =
                if (regions.main.bottom() as usize..regions.main.top() as usize).contains(&addr) {
                    &mut regions.main
                } else {
                    &mut regions.boot
                };
            // SAFETY: `ptr` came from `alloc` of this allocator with `layout`,
            // from the region whose bounds contain it.
            unsafe { region.deallocate(NonNull::new_unchecked(ptr), layout) };
        });
    }
}
