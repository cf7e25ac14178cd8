//! The bounded wait for a device register's status flag, shared by every
//! driver that polls one (the UARTs, the GIC, the uSDHC's line wait): a
//! device that never sets the flag is an error the driver reports, never
//! a hang.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

/// How many times a status register is polled before a wait is given up:
/// about a second of device (or trapped, emulated) register reads, far
/// longer than a UART character, a GIC register write or an SD card's
/// busy line takes.
pub const POLL_LIMIT: u32 = 1 << 20;

/// Polls `done` (a status register's flag) until it holds, at most
/// [`POLL_LIMIT`] times with a spin-loop hint between polls, and returns
/// `timeout` if it never did.
pub fn poll_until<E>(mut done: impl FnMut() -> bool, timeout: E) -> Result<(), E> {
    for _ in 0..POLL_LIMIT {
        if done() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for a flag that holds from poll `holds_from` on (never if
    /// `None`): the result and the number of polls.
    fn wait(holds_from: Option<u32>) -> (Result<(), &'static str>, u32) {
        let mut polls = 0;
        let result = poll_until(
            || {
                polls += 1;
                holds_from.is_some_and(|n| polls >= n)
            },
            "stuck",
        );
        (result, polls)
    }

    #[test]
    fn a_wait_ends_at_the_first_poll_that_holds() {
        assert_eq!(wait(Some(1)), (Ok(()), 1));
        assert_eq!(wait(Some(3)), (Ok(()), 3));
        assert_eq!(
            wait(Some(POLL_LIMIT)),
            (Ok(()), POLL_LIMIT),
            "the last poll counts"
        );
    }

    #[test]
    fn a_wait_gives_up_after_the_limit() {
        assert_eq!(wait(None), (Err("stuck"), POLL_LIMIT));
        assert_eq!(wait(Some(POLL_LIMIT + 1)), (Err("stuck"), POLL_LIMIT));
    }
}
