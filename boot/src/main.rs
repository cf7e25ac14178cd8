//! The tidepool kernel Image.
//!
//! This crate holds only what must exist before Rust code can run: the Linux
//! arm64 Image header, the entry code and the exception vectors (assembly,
//! below). Everything else is the `tidepool-kernel` crate; `tidepool_entry`
//! and `tidepool_exception`, which the assembly calls, are defined there.
#![no_std]
#![no_main]

// Linking the kernel crate provides `tidepool_entry`, `tidepool_exception`
// and the panic handler.
use tidepool_kernel as _;

core::arch::global_asm!(include_str!("entry.S"));
core::arch::global_asm!(include_str!("vectors.S"));
