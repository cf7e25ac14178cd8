//! The Xen arm64 guest ABI for tidepool, as host-testable Rust.
//!
//! - [`Hypercall`] and [`Hypervisor`]: every hypercall the kernel makes, as a
//!   typed value the kernel turns into one `hvc` (hypercall and command
//!   numbers come from `xen-sys` where it has them and are arch-independent).
//! - `#[repr(C)]` argument structs with compile-time size, alignment and
//!   field-offset checks against the arm64 layouts of Xen's public headers.
//! - [`XenError`]: every failure names the operation and the errno (or the
//!   grant-table status).
//! - [`cache_flush_range`]: `GNTTABOP_cache_flush` over a physical range,
//!   batched, with exact reporting of which pages Xen refused.
//! - [`scan_pending_events`] and [`EventDispatcher`]: the 2-level event
//!   channel upcall over [`SharedInfo`].
//! - [`GrantTable`]: v1 grants with a free map, growing a frame at a time
//!   through [`GrantFrames`] up to its limit.
//! - [`ring`] and [`blkif`]: the shared-ring front end and the PV block
//!   messages, for a block front end.
//!
//! # Soundness: hypercalls that name memory
//!
//! Safe code must not be able to make Xen touch memory the caller does not
//! own. Most hypercalls pass Xen only buffers the [`Hypercall`] borrows for
//! the call, which Rust's borrow rules already make sound. Some name memory
//! by address instead, and Xen acts on that memory after checking only that
//! it belongs to the domain, which is the kernel as a whole, not the
//! caller. Each of those takes a token that only the memory's owner makes,
//! with an `unsafe` constructor whose `# Safety` is the promise:
//!
//! | call | names | token |
//! |---|---|---|
//! | `XENMEM_add_to_physmap` | the guest frame Xen's page replaces | [`VacantFrame`] (a growing [`GrantTable`] makes its frames' from its [`GrantRegion`]) |
//! | `GNTTABOP_map_grant_ref` | the guest frame the foreign page replaces | [`VacantFrame`] |
//! | `GNTTABOP_unmap_grant_ref` | the mapping to remove | [`GrantMapping`] (only a map makes one; unmap gives the [`VacantFrame`] back) |
//! | `GNTTABOP_cache_flush` | machine addresses to clean or invalidate | [`CacheFlushTarget`] |
//! | a grant-table entry ([`GrantTable::grant`]) | the frame another domain may then read or write | [`GrantableFrame`] |
//! | ending a grant ([`GrantTable::end`]) | the entry, free for reuse afterwards | [`Grant`] (only a grant makes one) |
//!
//! The argument structs of those calls have private fields and
//! crate-private constructors, so the typed methods of [`Hypervisor`] are
//! the only way to issue them, and [`Hypervisor::call`] stays safe: no
//! [`Hypercall`] safe code can build names memory. The kernel relies on what
//! the implementation answers (an unmap that succeeded, a flush that is
//! complete), so implementing [`Hypervisor`] is `unsafe`.
//!
//! The other calls stay safe: version and feature queries, console write
//! and read, `HVMOP_get_param` (reads a value), event channels (ports, not
//! memory), `SCHEDOP_shutdown`, grant-table size and setup (Xen writes
//! only the frame list the call borrows), `XEN_SYSCTL_readconsole` (Xen
//! writes only the buffer the call borrows; only the typed method builds
//! its argument, so no other sysctl command can ride in it), and the
//! cache-flush probe (length 0). `VCPUOP_register_vcpu_info`, which would
//! have Xen write a vCPU's state into a frame for good, is not offered:
//! the kernel keeps the `vcpu_info` in shared info.
//!
//! Tokens rather than `unsafe fn` methods keep this crate free of `unsafe`
//! blocks (it is `#![deny(unsafe_code)]`; only the contracts are declared),
//! and make each promise a value the caller must produce, as the DMA
//! layer's `OwnedPhysRange` does. Each door is shown closed by a
//! `compile_fail` test on the item.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
// ABI constants keep the C names of Xen's headers, so they can be grepped.
#![allow(non_upper_case_globals)]

extern crate alloc;

/// Checks a `#[repr(C)]` type's size, alignment and field offsets at compile
/// time.
macro_rules! assert_layout {
    ($ty:ty, size $size:literal, align $align:literal $(, $field:ident @ $offset:literal)* $(,)?) => {
        const _: () = {
            assert!(::core::mem::size_of::<$ty>() == $size);
            assert!(::core::mem::align_of::<$ty>() == $align);
            $(assert!(::core::mem::offset_of!($ty, $field) == $offset);)*
        };
    };
}
pub(crate) use assert_layout;

pub mod blkfront;
pub mod blkif;
pub mod cache_flush;
pub mod console;
pub mod domain;
pub mod error;
pub mod event;
pub mod grant;
pub mod hvm;
pub mod hypercall;
pub mod memory;
pub mod ring;
pub mod sched;
pub mod sysctl;
pub mod version;
pub mod xenstore;

pub use cache_flush::{
    CacheFlushBatch, CacheFlushDone, CacheFlushEntries, CacheFlushError, CacheFlushRefusal,
    CacheFlushTarget, GnttabCacheFlush, cache_flush_available, cache_flush_range,
    gnttab_cache_bits,
};
pub use domain::DomId;
pub use error::{GrantStatus, XenErrno, XenError, XenErrorCause, XenOp};
pub use event::{
    EventDispatcher, EventError, EventHandler, EvtchnPort, EvtchnPortStatus, EvtchnState,
    SharedInfo, UpcallSummary, VcpuInfo, Virq, scan_pending_events,
};
pub use grant::{
    Grant, GrantAccess, GrantEntryV1, GrantError, GrantFrames, GrantHandle, GrantMapping,
    GrantNotEnded, GrantRef, GrantRegion, GrantTable, GrantTableSize, GrantableFrame,
};
pub use hvm::HvmParam;
pub use hypercall::{GuestBuffer, Hypercall, HypercallRegisters, Hypervisor};
pub use memory::{VacantFrame, XenMapSpace};
pub use sched::ShutdownReason;
pub use sysctl::{ConsoleRingRead, ConsoleRingSummary, XenSysctl, read_console_lines};
pub use version::{XenExtraVersion, XenFeature, XenFeatures, XenVersion};
