//! What the UART drivers behind the kernel console share: terminal line
//! endings ([`for_each_terminal_byte`]) and a damaged received character
//! ([`ReceiveError`]). (Their bounded status waits are `tidepool_poll`'s,
//! shared with the GIC.)

#![cfg_attr(not(any(test, feature = "fake-registers")), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "fake-registers")]
pub mod fake;

use core::fmt;

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

/// A received character the UART flagged as damaged (it is dropped, not
/// delivered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveError {
    /// The UART's name in messages (`PL011`, `i.MX UART`).
    pub uart: &'static str,
    /// The character as received.
    pub byte: u8,
    /// Framing error (no valid stop bit).
    pub framing: bool,
    /// Parity error.
    pub parity: bool,
    /// Break: the line was held low longer than a character.
    pub break_condition: bool,
    /// Characters were lost before this one (receive FIFO overrun).
    pub overrun: bool,
}

impl ReceiveError {
    /// Whether any error is flagged (otherwise the character is good).
    pub fn any(&self) -> bool {
        self.framing || self.parity || self.break_condition || self.overrun
    }
}

impl fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: received {:#04x} with", self.uart, self.byte)?;
        for (set, name) in [
            (self.framing, " framing-error"),
            (self.parity, " parity-error"),
            (self.break_condition, " break"),
            (self.overrun, " overrun"),
        ] {
            if set {
                f.write_str(name)?;
            }
        }
        if !self.any() {
            // The i.MX UART's summary bit (URXD.ERR) without a detail bit.
            f.write_str(" an error of no known kind")?;
        }
        Ok(())
    }
}

impl core::error::Error for ReceiveError {}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn flagged(framing: bool, parity: bool, break_condition: bool, overrun: bool) -> ReceiveError {
        ReceiveError {
            uart: "UART",
            byte: 0x41,
            framing,
            parity,
            break_condition,
            overrun,
        }
    }

    #[test]
    fn a_receive_error_names_every_flag_it_has() {
        assert_eq!(
            flagged(true, false, true, false).to_string(),
            "UART: received 0x41 with framing-error break"
        );
        assert_eq!(
            flagged(false, true, false, true).to_string(),
            "UART: received 0x41 with parity-error overrun"
        );
        assert_eq!(
            flagged(false, false, false, false).to_string(),
            "UART: received 0x41 with an error of no known kind"
        );
    }

    #[test]
    fn any_flag_makes_an_error() {
        assert!(!flagged(false, false, false, false).any());
        for flags in [
            flagged(true, false, false, false),
            flagged(false, true, false, false),
            flagged(false, false, true, false),
            flagged(false, false, false, true),
        ] {
            assert!(flags.any(), "{flags:?}");
        }
    }
}
