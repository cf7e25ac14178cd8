//! What the UART drivers behind the kernel console share: terminal line
//! endings ([`for_each_terminal_byte`]) and the bounded wait for a status
//! flag ([`poll_until`]).

#![cfg_attr(not(any(test, feature = "fake-registers")), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "fake-registers")]
pub mod fake;

/// Feeds `bytes` to `emit` with each `\n` preceded by `\r` (terminals and
/// serial consoles expect CR LF), stopping at the first error.
pub fn for_each_terminal_byte<E>(
    bytes: &[u8],
    mut emit: impl FnMut(u8) -> Result<(), E>,
) -> Result<(), E> {
    for &byte in bytes {
        if byte == b'\n' {
            emit(b'\r')?;
        }
        emit(byte)?;
    }
    Ok(())
}

/// How many times a UART's status register is polled before a wait is
/// given up: about a second of device reads, far longer than a character
/// takes at any usual baud rate.
pub const POLL_LIMIT: u32 = 1 << 20;

/// Polls `done` (a status register's flag) until it holds, at most
/// [`POLL_LIMIT`] times with a spin-loop hint between polls, and returns
/// `timeout` if it never did: every UART wait is bounded, so a console on
/// a dead or stuck UART cannot hang the kernel.
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

    #[test]
    fn newlines_become_crlf() {
        let mut out = Vec::new();
        for_each_terminal_byte::<()>(b"a\nb\n\n", |byte| {
            out.push(byte);
            Ok(())
        })
        .unwrap();
        assert_eq!(out, b"a\r\nb\r\n\r\n");
    }

    #[test]
    fn emission_stops_at_first_error() {
        let mut out = Vec::new();
        let result = for_each_terminal_byte(b"ab\nc", |byte| {
            if byte == b'\r' {
                return Err(byte);
            }
            out.push(byte);
            Ok(())
        });
        assert_eq!(result, Err(b'\r'));
        assert_eq!(out, b"ab");
    }
}
