//! Time on the generic virtual timer: a monotonic clock ([`now`]), sleeps
//! ([`sleep`]) and waits with a deadline ([`wait_until`], [`wait_for`]) for
//! drivers.
//!
//! Waiting never spins: the waiter arms the virtual timer for its deadline
//! and idles in WFI (Xen traps WFI and deschedules the vCPU; Xen on Arm has
//! no `SCHEDOP_block`). Every interrupt wakes it to recheck its condition.
//! The kernel has one thread, so one deadline is armed at a time; interrupt
//! handlers never wait. The timer interrupt only disarms the timer and
//! records when it fired.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;

use log::info;
use tidepool_dt::ArchTimer;
use tidepool_gic::IntId;

use crate::arch::aarch64::{cpu, timer};
use crate::irq::{self, IrqError};

const NANOS_PER_SECOND: u128 = 1_000_000_000;

static RUNNING: AtomicBool = AtomicBool::new(false);
static FIRED: AtomicU64 = AtomicU64::new(0);
static LAST_FIRED_TICKS: AtomicU64 = AtomicU64::new(0);

/// A point in time on the virtual counter (monotonic, from boot or domain
/// creation).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Instant {
    ticks: u64,
}

impl Instant {
    /// The instant `duration` after this one, or `None` past the counter's
    /// range.
    pub fn checked_add(self, duration: Duration) -> Option<Instant> {
        let ticks = duration_to_ticks(duration)?;
        Some(Instant {
            ticks: self.ticks.checked_add(ticks)?,
        })
    }

    /// Time from `earlier` to this instant (zero if `earlier` is later).
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        ticks_to_duration(self.ticks.saturating_sub(earlier.ticks))
    }

    /// Time since this instant.
    pub fn elapsed(self) -> Duration {
        now().saturating_duration_since(self)
    }
}

/// The current time.
pub fn now() -> Instant {
    Instant {
        ticks: timer::counter(),
    }
}

/// Counter ticks in `duration`, rounded up so that a wait is never short;
/// `None` past the counter's range.
pub fn duration_to_ticks(duration: Duration) -> Option<u64> {
    let ticks = (duration.as_nanos() * u128::from(timer::frequency())).div_ceil(NANOS_PER_SECOND);
    u64::try_from(ticks).ok()
}

/// The time `ticks` counter ticks take, rounded down to the nanosecond
/// (at most `u64::MAX` nanoseconds).
pub fn ticks_to_duration(ticks: u64) -> Duration {
    let nanos = u128::from(ticks) * NANOS_PER_SECOND / u128::from(timer::frequency());
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Microseconds on the virtual counter (since the domain or machine
/// started); needs no set-up, so it can time the boot from the kernel's
/// entry.
pub fn uptime_us() -> u64 {
    u64::try_from(ticks_to_duration(timer::counter()).as_micros()).unwrap_or(u64::MAX)
}

/// Why a wait ended without its condition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WaitError {
    /// The deadline passed first.
    TimedOut {
        /// How long the wait lasted.
        waited: Duration,
    },
    /// The timer is not running yet (before the platform is set up).
    NoTimer,
    /// IRQs are masked (in an interrupt handler, or in
    /// [`irq::without_interrupts`]): the wait could never be woken.
    InterruptsMasked,
    /// The deadline is beyond the counter's range.
    DeadlineOverflow,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { waited } => write!(f, "timed out after {} us", waited.as_micros()),
            Self::NoTimer => f.write_str("the timer is not running"),
            Self::InterruptsMasked => f.write_str("cannot wait with interrupts masked"),
            Self::DeadlineOverflow => f.write_str("deadline beyond the counter's range"),
        }
    }
}

/// Waits until `done()` returns `true` or `deadline` passes, idling in WFI
/// between interrupts. `done` is checked with IRQs masked, so an interrupt
/// that makes it true cannot slip in between the check and the WFI.
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> Result<(), WaitError> {
    if !RUNNING.load(Ordering::Acquire) {
        return Err(WaitError::NoTimer);
    }
    if cpu::irqs_masked() {
        return Err(WaitError::InterruptsMasked);
    }
    let start = now();
    let result = loop {
        cpu::mask_irqs();
        if done() {
            break Ok(());
        }
        let current = now();
        if current >= deadline {
            break Err(WaitError::TimedOut {
                waited: current.saturating_duration_since(start),
            });
        }
        timer::arm(deadline.ticks);
        // Returns once any interrupt is pending (the deadline's at the
        // latest); unmasking then takes it.
        cpu::wait_for_interrupt();
        cpu::unmask_irqs();
    };
    // Woken by another interrupt, the wait leaves no deadline behind.
    timer::disarm();
    cpu::unmask_irqs();
    result
}

/// [`wait_until`] with a deadline `timeout` from now.
pub fn wait_for(timeout: Duration, done: impl FnMut() -> bool) -> Result<(), WaitError> {
    let deadline = now()
        .checked_add(timeout)
        .ok_or(WaitError::DeadlineOverflow)?;
    wait_until(deadline, done)
}

/// Sleeps for at least `duration`.
pub fn sleep(duration: Duration) -> Result<(), WaitError> {
    match wait_for(duration, || false) {
        Err(WaitError::TimedOut { .. }) => Ok(()),
        other => other,
    }
}

/// How often the timer interrupt has fired, and when it last did.
pub fn fired() -> (u64, Instant) {
    let count = FIRED.load(Ordering::Acquire);
    let ticks = LAST_FIRED_TICKS.load(Ordering::Relaxed);
    (count, Instant { ticks })
}

fn on_timer_interrupt(_: IntId) {
    timer::disarm();
    LAST_FIRED_TICKS.store(timer::counter(), Ordering::Relaxed);
    FIRED.fetch_add(1, Ordering::Release);
}

/// Registers the virtual timer's interrupt (from the device tree's
/// architected timer node) and starts the clock.
pub fn init(node: &ArchTimer) -> Result<(), IrqError> {
    timer::disarm();
    let (intid, trigger) = irq::from_device_tree(&node.virtual_timer)?;
    irq::register(intid, trigger, &on_timer_interrupt)?;
    RUNNING.store(true, Ordering::Release);
    info!(
        "timer: virtual timer {} intid={} {trigger} freq={} Hz",
        node.path,
        intid.raw(),
        timer::frequency()
    );
    Ok(())
}
