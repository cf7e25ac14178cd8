//! The kernel's Xen interface: the hypercalls it makes, with typed results.

use tidepool_xen_abi::{Hypercall, Hypervisor};

use crate::arch::aarch64::cache::{CacheOp, maintain_range};
use crate::arch::aarch64::hypercall::hypercall;

/// The running hypervisor: every typed hypercall of `tidepool-xen-abi` goes
/// through here.
pub struct Xen;

impl Hypervisor for Xen {
    fn call(&mut self, mut call: Hypercall<'_>) -> i64 {
        let buffers = call.guest_buffers();
        for buffer in buffers.iter().flatten() {
            prepare_range_for_xen(buffer.address as usize, buffer.len);
        }
        let registers = call.registers();
        // SAFETY: `Hypercall` borrows every buffer its registers point at,
        // with the size Xen accesses, for the whole call.
        let rc = unsafe { hypercall(registers.number, registers.args) };
        // What Xen wrote went through its cacheable mapping: drop stale lines
        // before uncached reads (nothing to do once the caches are on).
        for buffer in buffers.iter().flatten() {
            prepare_range_for_xen(buffer.address as usize, buffer.len);
        }
        rc
    }
}

/// Before the MMU is on the kernel's stores bypass the cache, while Xen reads
/// and writes guest memory through its own cacheable mapping. A buffer handed
/// to Xen is therefore cleaned and invalidated to the point of coherency
/// first, so Xen cannot read a stale line; QEMU models no caches, so this is
/// a real-hardware obligation no emulated test can see. Once the caches are
/// on, Xen and the kernel see memory through the same cacheable attributes
/// and buffers need no maintenance.
fn prepare_buffer_for_xen<T: ?Sized>(buf: &T) {
    prepare_range_for_xen(
        core::ptr::from_ref(buf).cast::<u8>() as usize,
        size_of_val(buf),
    );
}

fn prepare_range_for_xen(start: usize, len: usize) {
    if !crate::arch::aarch64::cpu::caches_enabled() {
        maintain_range(CacheOp::CleanInvalidate, start, len);
    }
}

/// Writes `bytes` to Xen's console (`CONSOLEIO_write`). Errors are ignored:
/// there is nowhere else to report them.
pub fn console_write(bytes: &[u8]) {
    prepare_buffer_for_xen(bytes);
    // SAFETY: CONSOLEIO_write reads `len` bytes from the guest address
    // `bytes.as_ptr()`, which is valid for that length for the whole call.
    unsafe {
        hypercall(
            xen_sys::__HYPERVISOR_console_io,
            [
                u64::from(xen_sys::CONSOLEIO_write),
                bytes.len() as u64,
                bytes.as_ptr() as u64,
                0,
                0,
            ],
        );
    }
}

/// Xen's version as `xen_version` reports it.
#[derive(Clone, Copy, Debug)]
pub struct XenVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// XENVER_extraversion, NUL-padded (e.g. ".7").
    pub extra: [u8; 16],
}

impl XenVersion {
    /// The extra version as text (up to the first NUL; lossy if not UTF-8).
    pub fn extra_str(&self) -> &str {
        let len = self
            .extra
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.extra.len());
        core::str::from_utf8(&self.extra[..len]).unwrap_or("?")
    }
}

const XENVER_VERSION: u64 = 0;
const XENVER_EXTRAVERSION: u64 = 1;

/// Queries `xen_version` (XENVER_version and XENVER_extraversion).
pub fn version() -> XenVersion {
    // SAFETY: XENVER_version takes no buffer.
    let packed = unsafe {
        hypercall(
            xen_sys::__HYPERVISOR_xen_version,
            [XENVER_VERSION, 0, 0, 0, 0],
        )
    };
    let mut extra = [0u8; 16];
    prepare_buffer_for_xen(&extra);
    // SAFETY: XENVER_extraversion writes exactly 16 bytes to the buffer.
    let rc = unsafe {
        hypercall(
            xen_sys::__HYPERVISOR_xen_version,
            [XENVER_EXTRAVERSION, extra.as_mut_ptr() as u64, 0, 0, 0],
        )
    };
    // Xen wrote through its cacheable mapping: drop any stale line before an
    // uncached read (no-op once caches are on).
    prepare_buffer_for_xen(&extra);
    if rc < 0 {
        extra = [0; 16];
    }
    XenVersion {
        major: (packed >> 16) as u16,
        minor: packed as u16,
        extra,
    }
}

/// Shutdown reasons for `SCHEDOP_shutdown`.
#[derive(Clone, Copy, Debug)]
pub enum ShutdownReason {
    /// SHUTDOWN_poweroff.
    PowerOff,
    /// SHUTDOWN_crash.
    Crash,
}

/// `SCHEDOP_shutdown`; returns only if Xen refused, with its error code.
pub fn shutdown(reason: ShutdownReason) -> i64 {
    let code: u32 = match reason {
        ShutdownReason::PowerOff => xen_sys::SHUTDOWN_poweroff,
        ShutdownReason::Crash => xen_sys::SHUTDOWN_crash,
    };
    // struct sched_shutdown { unsigned int reason; }
    let arg = [code];
    prepare_buffer_for_xen(&arg);
    // SAFETY: SCHEDOP_shutdown reads one u32 (struct sched_shutdown) at the pointer.
    unsafe {
        hypercall(
            xen_sys::__HYPERVISOR_sched_op,
            [
                u64::from(xen_sys::SCHEDOP_shutdown),
                arg.as_ptr() as u64,
                0,
                0,
                0,
            ],
        )
    }
}
