//! What the UART drivers behind the kernel console share.

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
}
