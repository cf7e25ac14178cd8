//! How the kernel waits for a block device: the `wait=` bootarg's three
//! modes and the adaptive spin budget of the hybrid one. Pure logic, in
//! counter ticks; the kernel does the spinning and the WFI.

use core::fmt;
use core::str::FromStr;

/// How to wait for completions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WaitMode {
    /// Idle in WFI until the device's interrupt (under Xen, WFI traps and
    /// the vCPU is descheduled and woken: the cheapest in CPU, the slowest
    /// at queue depth 1).
    Wfi,
    /// Spin on the device (virtio: its used ring) with its interrupts
    /// suppressed where the driver can: the lowest latency, a whole CPU
    /// while anything is in flight.
    Poll,
    /// Spin for a budget that follows the device's recent completion times
    /// ([`SpinBudget`]), then idle in WFI with interrupts on.
    Hybrid,
}

impl WaitMode {
    /// Every mode, in the order benchmarks report them.
    pub const ALL: [Self; 3] = [Self::Wfi, Self::Poll, Self::Hybrid];

    /// The bootarg value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Wfi => "wfi",
            Self::Poll => "poll",
            Self::Hybrid => "hybrid",
        }
    }

    /// Ticks a waiter spins on the device before it idles in WFI, for a
    /// device whose requests may take `timeout` ticks (its driver's
    /// [`crate::BlockDriver::request_timeout`]): none for `wfi`, the
    /// hybrid's `budget`, and for `poll` the whole request timeout, so that
    /// a waiter gives up on a completion exactly when the request it waits
    /// for is due, whatever the device.
    pub const fn spin_ticks(self, timeout: u64, budget: &SpinBudget) -> u64 {
        match self {
            Self::Wfi => 0,
            Self::Poll => timeout,
            Self::Hybrid => budget.ticks(),
        }
    }
}

impl fmt::Display for WaitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `wait=` value that is not a mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnknownWaitMode;

impl FromStr for WaitMode {
    type Err = UnknownWaitMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or(UnknownWaitMode)
    }
}

/// The hybrid mode's spin budget: an exponentially weighted mean of the
/// last waits (weight 1/8), spun for 5/4 of it so that a typical completion
/// is caught while spinning; none when that mean is above `cap` (a device
/// that slow is not worth a CPU), so it falls back to WFI at once and keeps
/// learning from the waits WFI ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpinBudget {
    /// The mean wait, in ticks, scaled by 8 (0 until the first wait).
    mean_x8: u64,
    /// The longest budget, in ticks.
    cap: u64,
}

impl SpinBudget {
    /// A budget of at most `cap` ticks, starting at `cap` (the first waits
    /// spin and teach it the device).
    pub const fn new(cap: u64) -> Self {
        Self {
            mean_x8: cap.saturating_mul(8),
            cap,
        }
    }

    /// Ticks to spin before the next WFI.
    pub const fn ticks(&self) -> u64 {
        let mean = self.mean_x8 / 8;
        if mean > self.cap {
            0
        } else {
            let budget = mean + mean / 4;
            if budget > self.cap { self.cap } else { budget }
        }
    }

    /// Learns from a wait that took `ticks` until a completion was seen.
    pub fn record(&mut self, ticks: u64) {
        // mean += (sample - mean) / 8, in eighths.
        let mean = self.mean_x8 / 8;
        self.mean_x8 = self.mean_x8 - mean + ticks.min(u64::MAX / 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for mode in WaitMode::ALL {
            assert_eq!(mode.name().parse(), Ok(mode));
            assert_eq!(mode.to_string(), mode.name());
        }
        assert_eq!("spin".parse::<WaitMode>(), Err(UnknownWaitMode));
        assert_eq!("".parse::<WaitMode>(), Err(UnknownWaitMode));
    }

    /// A poller waits as long as the device's requests may take: a Xen PV
    /// disk's 30 s, not the 5 s of a device beside the CPU (it used to
    /// give up after 5 s whatever the device).
    #[test]
    fn a_poller_spins_for_the_drivers_request_timeout() {
        let frequency = 62_500_000;
        let pv = 30 * frequency;
        let mut budget = SpinBudget::new(frequency / 1000);
        assert_eq!(WaitMode::Poll.spin_ticks(pv, &budget), pv);
        assert_eq!(
            WaitMode::Poll.spin_ticks(5 * frequency, &budget),
            5 * frequency
        );
        assert_eq!(WaitMode::Wfi.spin_ticks(pv, &budget), 0);
        assert_eq!(WaitMode::Hybrid.spin_ticks(pv, &budget), budget.ticks());
        budget.record(u64::MAX);
        assert_eq!(WaitMode::Hybrid.spin_ticks(pv, &budget), 0);
    }

    #[test]
    fn the_budget_follows_completion_times_up_to_the_cap() {
        let mut budget = SpinBudget::new(1000);
        assert_eq!(budget.ticks(), 1000, "starts spinning up to the cap");
        for _ in 0..64 {
            budget.record(200);
        }
        assert_eq!(budget.ticks(), 250, "5/4 of a steady 200");
        // A slow device: the mean passes the cap and spinning stops.
        for _ in 0..64 {
            budget.record(5000);
        }
        assert_eq!(budget.ticks(), 0);
        // It comes back when completions are fast again.
        for _ in 0..128 {
            budget.record(100);
        }
        assert_eq!(budget.ticks(), 125);
        // One outlier moves it by an eighth, not all the way.
        budget.record(900);
        assert_eq!(budget.ticks(), 200 * 5 / 4);
        budget.record(u64::MAX);
        assert_eq!(budget.ticks(), 0);
    }
}
