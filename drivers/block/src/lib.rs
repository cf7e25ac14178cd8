//! What tidepool's block drivers share, so that the kernel has one block
//! interface and one transfer loop whatever the device (virtio-blk, the
//! i.MX uSDHC SD card): requests ([`Request`]), their handles ([`Token`])
//! and deadlines, how a transfer splits into requests
//! ([`sector_chunks`]), whether one fits its disk ([`DiskLimits`]), the
//! counters and their console line ([`BlkStats`]), the [`BlockDriver`]
//! trait, [`SharedMemory`] (bounds-checked access to memory a driver
//! shares with its device, the crate's one `unsafe` module), and
//! [`pattern`], the disk content the kernel and xtask share, [`workload`],
//! the benchmark's random reads and checksum the kernel and xtask share,
//! and [`wait`], how the kernel waits for a device.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod barrier;
mod extent;
#[allow(unsafe_code)]
mod memory;
pub mod pattern;
mod request;
mod stats;
pub mod wait;
pub mod workload;

use core::fmt;
use core::task::Poll;
use core::time::Duration;

use tidepool_dma::{DmaDevice, DmaEnv};

use wait::WaitMode;

pub use barrier::Barrier;
pub use extent::{DiskLimits, ExtentError};
pub use memory::SharedMemory;
pub use request::{
    Completion, Completions, Deadline, MAX_IN_FLIGHT, Op, Request, SECTOR_SIZE, Token,
    sector_chunks,
};
pub use stats::{BlkStats, StatsLine, write_names};

/// How long a request may take when its driver does not say otherwise
/// ([`BlockDriver::request_timeout`]): a device beside the CPU (virtio,
/// an SD card) answers in milliseconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A console line an interrupt brought besides completions (a capacity
/// change, a device that failed), for the kernel to print at its level.
pub enum Notice<'n> {
    /// Information.
    Info(&'n dyn fmt::Display),
    /// An error.
    Error(&'n dyn fmt::Display),
}

/// A block device as the kernel drives it: asynchronous requests with
/// deadlines, completed by the kernel calling [`Self::handle_interrupt`]
/// after the device's interrupt (or [`Self::poll`] instead of it) and
/// [`Self::expire`] from its clock, and collected with [`Self::finish`].
/// All DMA goes through the device's [`DmaDevice`], if it has one (a Xen
/// PV disk shares pages it granted to its back end instead).
pub trait BlockDriver<'a> {
    /// Why a request failed or was refused.
    type Error: fmt::Display;

    /// The device's name (its device-tree path).
    fn name(&self) -> &'a str;

    /// Capacity in 512-byte sectors.
    fn capacity(&self) -> u64;

    /// The largest request in bytes (larger transfers are split).
    fn max_request_bytes(&self) -> u32;

    /// How many requests can be in flight at once.
    fn slots(&self) -> usize;

    /// How many are in flight now.
    fn in_flight(&self) -> usize;

    /// Submits a request due by `deadline`: it is published to the device,
    /// which may not look at it before [`Self::kick`]. Refused without
    /// touching the device when it cannot be done (read-only, out of
    /// range, ...).
    fn submit(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Token, Self::Error>;

    /// Tells the device about the requests [`Self::submit`] published since
    /// the last kick, if there are any and the device asked to be told:
    /// one notification for a batch of requests rather than one per
    /// request. Whoever submits ends each batch with a kick, and must kick
    /// before it waits for a completion: a request published but never
    /// notified may never be seen (a virtio device looks at its queue when
    /// notified). [`Self::submit_waiting`] kicks before each of its waits.
    fn kick(&mut self, env: &mut DmaEnv<'_, 'a>);

    /// Whether `error` (from [`Self::submit`]) only means "not now": every
    /// slot, or the device's DMA pool, is taken by requests in flight, and
    /// the same request can be submitted again once one completes.
    fn is_busy(&self, error: &Self::Error) -> bool;

    /// Whether `error` (from [`Self::submit`]) means every slot, or the
    /// device's DMA pool, is taken: by requests in flight ([`Self::is_busy`])
    /// or by requests the device finished whose owner has not collected
    /// them with [`Self::finish`] yet (a pool device's finished request
    /// keeps its pool region until then). An owner holding such requests
    /// finishes one and submits again.
    fn is_full(&self, error: &Self::Error) -> bool;

    /// The error of [`Self::submit_waiting`] when the requests holding the
    /// slots stayed past the wait.
    fn no_free_slot(&self) -> Self::Error;

    /// Submits `request`, due `timeout` after its submission, waiting while
    /// the device is busy ([`Self::is_busy`]). `wait` lets time pass (the
    /// kernel sleeps until the device's interrupt or a timer) and takes what
    /// came back.
    ///
    /// It waits at most `timeout`, by `clock`: every request holding a slot
    /// was submitted before the call, so each is past its own deadline by
    /// then, and a device that returned none of them holds them for good.
    /// Then it gives up with [`Self::no_free_slot`] rather than wait
    /// forever. It kicks ([`Self::kick`]) before every wait, so the
    /// requests holding the slots have been notified; the request it
    /// submits is published, and the caller kicks when its batch ends.
    fn submit_waiting(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        request: Request<'_>,
        clock: &mut dyn FnMut() -> u64,
        timeout: u64,
        wait: &mut dyn FnMut(&mut Self, &mut DmaEnv<'_, 'a>),
    ) -> Result<Token, Self::Error>
    where
        Self: Sized,
    {
        let give_up = clock().saturating_add(timeout);
        loop {
            let now = clock();
            match self.submit(env, request, Deadline::after(now, timeout)) {
                Err(error) if self.is_busy(&error) => {
                    if now >= give_up {
                        return Err(self.no_free_slot());
                    }
                    self.kick(env);
                    wait(self, env);
                }
                other => return other,
            }
        }
    }

    /// Whether the kernel's interrupt handler noted an interrupt that
    /// [`Self::handle_interrupt`] has not handled yet: what a waiter waits
    /// for.
    fn interrupt_noted(&self) -> bool;

    /// Acts on the noted interrupt: takes what the device finished, and
    /// tells `notice` what else it brought. Returns the tokens that became
    /// ready to [`Self::finish`].
    fn handle_interrupt(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        notice: &mut dyn FnMut(Notice<'_>),
    ) -> Completions;

    /// Whether the device finished something [`Self::poll`] would take: a
    /// register or ring read with no side effect, for a waiter to check
    /// after every wake-up rather than trust that the interrupt arrived.
    fn has_completions(&self) -> bool;

    /// Takes what the device finished without an interrupt (polling);
    /// returns the tokens that became ready to [`Self::finish`].
    fn poll(&mut self, env: &mut DmaEnv<'_, 'a>) -> Completions;

    /// Marks requests whose deadline is at or before `now` as timed out.
    fn expire(&mut self, now: u64) -> Completions;

    /// Asks the device to interrupt when it completes requests (the
    /// default) or not, for a waiter that polls ([`Self::poll`]). A hint:
    /// a device may interrupt anyway.
    fn set_interrupts(&mut self, enabled: bool);

    /// How to wait for this device when `wait=` does not say: polling (the
    /// default) for a device that works beside the CPU, as hardware and
    /// QEMU's I/O thread do. A driver whose device is served by software
    /// needing this CPU's time (a Xen PV back end in another domain, where
    /// the domains share a physical CPU) says [`WaitMode::Wfi`]: a spinning
    /// guest would starve its own back end.
    fn default_wait(&self) -> WaitMode {
        WaitMode::Poll
    }

    /// How long one request may take before [`Self::expire`] fails it, and
    /// so the longest one wait for a completion lasts (a waiter that found
    /// nothing by then lets [`Self::expire`] report what is late):
    /// [`REQUEST_TIMEOUT`], or longer for a device served by software that
    /// shares the CPU (a Xen PV back end in another domain).
    fn request_timeout(&self) -> Duration {
        REQUEST_TIMEOUT
    }

    /// The outcome of a request, once; `Pending` while the device holds it.
    ///
    /// A successful read's data is lent to `data`, called once with exactly
    /// the request's bytes where the device put them (its staging buffer,
    /// pool region or granted pages), after the device returned them and
    /// the DMA layer synced them for the CPU: the caller reads them in
    /// place, no copy. The borrow ends before `finish` returns, and only
    /// then does the memory go back to the driver (a pool region to its
    /// pool through `env`), so the caller can never see it while the
    /// device may write it. `data` is not called for a write, a flush or a
    /// failed request. (A `dyn` callback, not a generic one: one copy of
    /// each driver's `finish` in the Image, whatever the callers.)
    fn finish(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        token: Token,
        data: &mut dyn FnMut(&[u8]),
    ) -> Poll<Result<Completion, Self::Error>>;

    /// Its request counters.
    fn stats(&self) -> &BlkStats;

    /// Its DMA context (for its counters).
    fn dma(&self) -> &DmaDevice<'a>;
}
