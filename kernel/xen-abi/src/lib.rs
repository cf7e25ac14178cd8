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
//! - [`GrantTable`]: v1 grants with a free list.
//! - [`ring`] and [`blkif`]: the shared-ring front end and the PV block
//!   messages, for a block front end.
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
pub mod vcpu;
pub mod version;
pub mod xenstore;

pub use cache_flush::{
    CacheFlushBatch, CacheFlushDone, CacheFlushError, CacheFlushRefusal, GnttabCacheFlush,
    cache_flush_available, cache_flush_range, gnttab_cache_bits,
};
pub use domain::DomId;
pub use error::{GrantStatus, XenErrno, XenError, XenErrorCause, XenOp};
pub use event::{
    EventDispatcher, EventError, EventHandler, EvtchnPort, EvtchnPortStatus, EvtchnState,
    SharedInfo, SharedInfoPage, UpcallSummary, VcpuInfo, Virq, scan_pending_events,
};
pub use grant::{
    GrantAccess, GrantEntryV1, GrantError, GrantHandle, GrantRef, GrantTable, GrantTableSize,
};
pub use hvm::HvmParam;
pub use hypercall::{GuestBuffer, Hypercall, HypercallRegisters, Hypervisor};
pub use memory::XenMapSpace;
pub use sched::ShutdownReason;
pub use sysctl::{ConsoleRingRead, ConsoleRingSummary, XenSysctl, read_console_lines};
pub use version::{XenExtraVersion, XenFeature, XenFeatures, XenVersion};
