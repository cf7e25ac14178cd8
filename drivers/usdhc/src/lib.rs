//! tidepool's i.MX uSDHC driver (`fsl,imx8mp-usdhc`): an SD card,
//! initialised at setup and then read and written with ADMA2, one request
//! at a time, completed by interrupt (or polling), all of whose DMA goes
//! through the device's [`DmaDevice`](tidepool_dma::DmaDevice).
//!
//! # DMA
//!
//! The controller is not DMA-coherent. Its ADMA2 descriptor table is one
//! page of coherent memory from the DMA layer (the device's own pool when
//! the device tree gives it one, else the kernel's non-cacheable pool), so
//! it is written and never synced. A request's data lives in the driver's
//! staging buffer (linear RAM, allocated once) and is mapped once per
//! request (`ToDevice` for a write, `FromDevice` for a read): one
//! `ForDevice` sync at submission and one `ForCpu` sync at completion,
//! whose cost the DMA layer's policy decides. Through a pool (whose
//! non-cacheable window the bounce copies go through) a write needs no
//! maintenance and a read one invalidate at completion: where Xen flushes
//! the pool, one `GNTTABOP_cache_flush` hypercall per read and none per
//! write; where Xen refuses, one maintenance through the window per read
//! and no hypercall. ADMA2 here is
//! 32-bit: a region above 4 GiB is refused with an error.
//!
//! # Requests
//!
//! CMD17/CMD24 for one sector, CMD18/CMD25 with auto-CMD12 for more,
//! addressed by sector (high capacity) or byte (standard capacity). A
//! flush completes at once: no card cache is enabled. Writes are refused
//! before the card sees them when the card is write-protected, by its CSD
//! or by the write-protect switch (unless [`Options::ignore_write_protect_pin`]).
//! A controller error (command or data CRC, timeout, end bit, index,
//! auto-CMD12, ADMA) or a card status error is reported with the command,
//! its argument and the status registers ([`SdError`]); the CMD and DAT
//! lines are reset and a multi-block transfer is stopped. A request past
//! its deadline has its lines reset too, which stops its DMA before its
//! region is unmapped.
//!
//! # Interrupts
//!
//! The kernel's handler only masks the controller's interrupt signals
//! ([`Usdhc::mask_interrupts`]) and sets the flag the driver was given
//! ([`SdCard::use_interrupt_flag`]); the driver reads and clears the status
//! in [`SdCard::poll`] (through `BlockDriver::handle_interrupt`) and
//! enables the signals again while a request is in flight, so its state is
//! never touched from interrupt context. `BlockDriver::has_completions`
//! reads the status without side effect, for a waiter whose interrupt did
//! not arrive.
//!
//! # `unsafe`
//!
//! `#![deny(unsafe_code)]` except `mmio` (the one constructor of the
//! register block, [`Usdhc::new`]) and [`SdCard::new`], which turns the
//! DMA layer's window address of the descriptor table into shared memory
//! and carries that obligation to the kernel; in `device`, a request's
//! staging bytes become the `CpuBuffer` it maps, and [`SdCard::finish`]
//! lends a finished read's staging bytes to its caller in place (unmapped
//! by then, and free for the next request only after the borrow).
//!
//! # Console lines
//!
//! - [`SdCard::info_line`]:
//!   `blk: /soc@0/bus@30800000/mmc@30b50000 sd capacity=131072 block_size=512 max_request=262144 slots=1 read_only=no card=sdsc csd=1 rca=0x4567 product=QEMU! bus_width=4 clock_hz=25000000 dma=adma2 table=0x55400000`
//! - `blk: stats ...`: the shared line (`tidepool_block::StatsLine`).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

mod adma;
mod card;
mod command;
mod device;
mod error;
#[allow(unsafe_code)]
mod mmio;
mod regs;

pub use adma::{AdmaError, MAX_SEGMENT};
pub use card::CsdError;
pub use command::CardStatus;
pub use device::{CardInfo, InfoLine, Options, SdCard};
pub use error::{InitError, Registers, SdError, WriteProtect};
pub use mmio::Usdhc;
pub use regs::{Controller, Reg};
