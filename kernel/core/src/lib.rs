//! The tidepool kernel.
//!
//! Generic, host-testable logic (bootargs, console line formatting, exception
//! syndrome decoding) builds everywhere; everything that touches the machine
//! builds only for `aarch64-unknown-none` and lives under `arch/` or behind
//! small safe wrappers.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bootargs;
pub mod console;
pub mod fault;
pub mod memory_plan;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod arch;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod blkfront;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod block;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod console_input;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod dma;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod dma_selftest;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod early_dt;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod entry;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod heap;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod irq;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod logger;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod memory;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod monitor;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod platform;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod report;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod selftest;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod shutdown;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod timer;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod xen;
