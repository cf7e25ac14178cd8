//! Memory the CPU shares with a device: a driver's coherent allocations
//! (reached through their pool window: a virtqueue, an ADMA2 descriptor
//! table) and its staging buffers (its own allocation in linear RAM).
//!
//! Both are reached only through [`SharedMemory`], which checks every access
//! against its length. The device may write the memory at any time it owns
//! part of it, so the driver holds no Rust reference into it while the
//! device may: shared fields are read and written with volatile accesses,
//! staging bytes are copied in before `map`, and a finished read's bytes
//! are lent as a slice after `unmap` ([`SharedMemory::bytes`], `unsafe`:
//! the driver vouches that the device is done with them for as long as the
//! slice lives).

use core::alloc::Layout;
use core::ptr::NonNull;

use tidepool_mm::VirtAddr;

/// A range of memory shared with a device.
pub struct SharedMemory {
    base: NonNull<u8>,
    len: usize,
    /// The layout to free it with, when the driver allocated it.
    owned: Option<Layout>,
}

// SAFETY: the memory is used by nothing but this value (and the device), so
// moving it to another CPU moves every access with it.
unsafe impl Send for SharedMemory {}

impl SharedMemory {
    /// `len` zeroed bytes aligned to `align`, from the heap (linear RAM in
    /// the kernel); freed when dropped. `None` if the heap cannot give them.
    pub fn allocate(len: usize, align: usize) -> Option<Self> {
        let mut memory = Self::allocate_unzeroed(len, align)?;
        memory.zero(0, len);
        Some(memory)
    }

    /// `len` bytes aligned to `align` from the heap (linear RAM in the
    /// kernel), freed when dropped, **not** initialized:
    /// the caller writes or [`zero`](Self::zero)es each part before it
    /// reads it (a device's writes count). For large buffers used a part
    /// at a time, so that setup does not pay for zeroing what may never be
    /// used.
    pub fn allocate_unzeroed(len: usize, align: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len, align).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: `layout` has a non-zero size.
        let base = NonNull::new(unsafe { alloc::alloc::alloc(layout) })?;
        Some(Self {
            base,
            len,
            owned: Some(layout),
        })
    }

    /// The `len` bytes at `virt`, which the driver does not own.
    ///
    /// # Safety
    ///
    /// `[virt, virt + len)` is mapped, readable and writable normal memory
    /// that nothing but this value and the device accesses for as long as
    /// the value lives; `virt` is not 0.
    pub unsafe fn window(virt: VirtAddr, len: usize) -> Self {
        let pointer = core::ptr::with_exposed_provenance_mut::<u8>(virt.0 as usize);
        // SAFETY: the caller guarantees `virt` is not 0.
        let base = unsafe { NonNull::new_unchecked(pointer) };
        Self {
            base,
            len,
            owned: None,
        }
    }

    /// The virtual address of the first byte.
    pub fn virt(&self) -> VirtAddr {
        VirtAddr(self.base.as_ptr().expose_provenance() as u64)
    }

    /// The byte at `offset` as a `T` pointer, after checking that a `T` there
    /// lies inside the memory and is aligned.
    fn at<T>(&self, offset: usize) -> *mut T {
        let end = offset.checked_add(size_of::<T>());
        assert!(
            end.is_some_and(|end| end <= self.len),
            "shared memory access at {offset:#x} of {} bytes past {:#x}",
            size_of::<T>(),
            self.len
        );
        // SAFETY: `offset + size_of::<T>() <= len`, so the result stays inside
        // the memory (checked just above).
        let pointer = unsafe { self.base.as_ptr().add(offset) };
        assert!(
            pointer.cast::<T>().is_aligned(),
            "misaligned shared memory access at {offset:#x}"
        );
        pointer.cast()
    }

    /// Reads the little-endian `u16` at `offset`.
    pub fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: `at` checked bounds and alignment; the memory is valid for
        // reads (constructor contracts).
        u16::from_le(unsafe { self.at::<u16>(offset).read_volatile() })
    }

    /// Writes the little-endian `u16` at `offset`.
    pub fn write_u16(&mut self, offset: usize, value: u16) {
        // SAFETY: as for `read_u16`; the memory is valid for writes.
        unsafe { self.at::<u16>(offset).write_volatile(value.to_le()) }
    }

    /// Reads the little-endian `u32` at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: as for `read_u16`.
        u32::from_le(unsafe { self.at::<u32>(offset).read_volatile() })
    }

    /// Writes the little-endian `u32` at `offset`.
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        // SAFETY: as for `write_u16`.
        unsafe { self.at::<u32>(offset).write_volatile(value.to_le()) }
    }

    /// Writes the little-endian `u64` at `offset`.
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        // SAFETY: as for `write_u16`.
        unsafe { self.at::<u64>(offset).write_volatile(value.to_le()) }
    }

    /// Reads the byte at `offset`.
    pub fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: as for `read_u16`.
        unsafe { self.at::<u8>(offset).read_volatile() }
    }

    /// Writes the byte at `offset`.
    pub fn write_u8(&mut self, offset: usize, value: u8) {
        // SAFETY: as for `write_u16`.
        unsafe { self.at::<u8>(offset).write_volatile(value) }
    }

    /// Zeroes `len` bytes at `offset`. Only while the CPU owns that part.
    pub fn zero(&mut self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let destination = self.at::<u8>(offset);
        self.at::<u8>(offset + len - 1);
        // SAFETY: both ends were checked to lie inside the memory, which is
        // valid for writes.
        unsafe { core::ptr::write_bytes(destination, 0, len) }
    }

    /// Copies `bytes` to `offset`. Only while the CPU owns that part.
    pub fn write_bytes(&mut self, offset: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let destination = self.at::<u8>(offset);
        // Bounds of the last byte as well.
        self.at::<u8>(offset + bytes.len() - 1);
        // SAFETY: both ends were checked to lie inside the memory, which is
        // valid for writes; `bytes` is a Rust slice, which never overlaps
        // memory shared with a device.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), destination, bytes.len()) }
    }

    /// The `len` bytes at `offset`, to read in place (a finished read's
    /// data lent to its caller, without a copy).
    ///
    /// # Safety
    ///
    /// Nothing writes those bytes, the device included, while the slice
    /// lives: the CPU owns that part (its mapping was unmapped, and it is
    /// not mapped again until the slice is gone).
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        if len == 0 {
            return &[];
        }
        let first = self.at::<u8>(offset);
        self.at::<u8>(offset + len - 1);
        // SAFETY: both ends were checked to lie inside the memory, which is
        // valid for reads (constructor contracts; an unzeroed allocation's
        // parts are written, by the CPU or the device, before they are
        // read); the caller guarantees nothing writes it while the slice,
        // which borrows `self`, lives.
        unsafe { core::slice::from_raw_parts(first, len) }
    }

    /// Copies the bytes at `offset` into `bytes`. Only while the CPU owns
    /// that part.
    pub fn read_bytes(&self, offset: usize, bytes: &mut [u8]) {
        if bytes.is_empty() {
            return;
        }
        let source = self.at::<u8>(offset);
        self.at::<u8>(offset + bytes.len() - 1);
        // SAFETY: as for `write_bytes`, for reads.
        unsafe { core::ptr::copy_nonoverlapping(source, bytes.as_mut_ptr(), bytes.len()) }
    }
}

impl SharedMemory {
    /// Gives up the memory for good: it is never freed (a device that may
    /// still write it keeps it). Returns the bytes leaked (0 for a window,
    /// which the driver does not own).
    pub fn leak(&mut self) -> usize {
        self.owned.take().map_or(0, |_| self.len)
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if let Some(layout) = self.owned {
            // SAFETY: `base` was allocated by `allocate_unzeroed` with this
            // layout and is freed only here.
            unsafe { alloc::alloc::dealloc(self.base.as_ptr(), layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_little_endian_and_bounded() {
        let mut memory = SharedMemory::allocate(64, 4096).unwrap();
        assert!(memory.virt().0.is_multiple_of(4096));
        memory.write_u64(8, 0x0102_0304_0506_0708);
        let mut bytes = [0; 8];
        memory.read_bytes(8, &mut bytes);
        assert_eq!(bytes, [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(memory.read_u32(8), 0x0506_0708);
        assert_eq!(memory.read_u16(12), 0x0304);
        memory.write_bytes(60, &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(memory.read_u8(63), 0xdd);
        memory.write_u16(0, 0xbeef);
        memory.write_u32(4, 0xdead_beef);
        memory.write_u8(2, 0x11);
        assert_eq!(memory.read_u32(0), 0x0011_beef);
    }

    #[test]
    #[should_panic(expected = "past")]
    fn an_access_past_the_end_is_refused() {
        let memory = SharedMemory::allocate(64, 8).unwrap();
        let mut bytes = [0; 8];
        memory.read_bytes(60, &mut bytes);
    }

    #[test]
    fn bytes_are_lent_in_place_and_bounded() {
        let mut memory = SharedMemory::allocate(64, 8).unwrap();
        memory.write_bytes(8, &[1, 2, 3, 4]);
        // SAFETY: nothing else writes the memory.
        let bytes = unsafe { memory.bytes(8, 4) };
        assert_eq!(bytes, [1, 2, 3, 4]);
        assert_eq!(bytes.as_ptr() as u64, memory.virt().0 + 8);
        // SAFETY: as above.
        assert!(unsafe { memory.bytes(64, 0) }.is_empty());
    }

    #[test]
    #[should_panic(expected = "past")]
    fn lending_past_the_end_is_refused() {
        let memory = SharedMemory::allocate(64, 8).unwrap();
        // SAFETY: nothing else writes the memory.
        let _ = unsafe { memory.bytes(60, 8) };
    }

    #[test]
    fn zeroing_is_bounded() {
        let mut memory = SharedMemory::allocate_unzeroed(64, 8).unwrap();
        memory.zero(0, 64);
        memory.write_u8(10, 7);
        memory.zero(8, 8);
        assert_eq!(memory.read_u8(10), 0);
        memory.zero(64, 0);
    }

    #[test]
    #[should_panic(expected = "past")]
    fn zeroing_past_the_end_is_refused() {
        SharedMemory::allocate(64, 8).unwrap().zero(60, 8);
    }

    #[test]
    fn empty_allocations_are_refused() {
        assert!(SharedMemory::allocate(0, 8).is_none());
        assert!(SharedMemory::allocate(8, 3).is_none());
    }
}
