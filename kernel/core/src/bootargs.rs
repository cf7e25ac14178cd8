//! The kernel's command line: `key=value` words and bare flags.
//!
//! Recognised keys:
//! - `log=error|warn|info|debug|trace`: console log level (default `info`);
//! - `selftest=NAME[,NAME...]`: self-tests to run after boot (see `selftest`);
//! - `heap=SIZE`: heap size with an optional K/M suffix (default 1M).
//!
//! Unknown words are reported once at boot, never fatal: a bootloader may
//! pass words meant for someone else.

use core::fmt;

/// Console log level selected by `log=`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: everything a user should see.
    Info,
    /// Developer detail.
    Debug,
    /// Everything.
    Trace,
}

/// A bootarg that could not be understood.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BootargError<'a> {
    /// A known key with a value it does not accept.
    BadValue {
        /// The key, e.g. `log`.
        key: &'a str,
        /// The refused value.
        value: &'a str,
    },
    /// A word the kernel does not know.
    Unknown(&'a str),
}

impl fmt::Display for BootargError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadValue { key, value } => write!(f, "bootarg {key}={value}: bad value"),
            Self::Unknown(word) => write!(f, "bootarg {word}: unknown, ignored"),
        }
    }
}

/// The parsed command line. Borrowed from the device tree's `bootargs`.
#[derive(Clone, Copy, Debug)]
pub struct Bootargs<'a> {
    /// Console log level.
    pub log_level: LogLevel,
    /// Comma-separated self-test names, if any.
    pub selftests: &'a str,
    /// Heap size in bytes.
    pub heap_size: usize,
    raw: &'a str,
}

/// Default heap size: enough for the device-tree plan, page-table bookkeeping
/// and driver state, small enough for an 8 MiB domU.
pub const DEFAULT_HEAP_SIZE: usize = 1 << 20;

impl<'a> Bootargs<'a> {
    /// Parses `line`; words that fail are skipped and reported by [`Bootargs::errors`].
    pub fn parse(line: &'a str) -> Self {
        let mut args = Self {
            log_level: LogLevel::Info,
            selftests: "",
            heap_size: DEFAULT_HEAP_SIZE,
            raw: line,
        };
        for word in line.split_ascii_whitespace() {
            // Errors are reported by `errors()`, which re-parses the same words.
            let _ = args.apply(word);
        }
        args
    }

    /// The words that were not understood, for a one-time report.
    pub fn errors(&self) -> impl Iterator<Item = BootargError<'a>> + 'a {
        let mut scratch = Self { raw: "", ..*self };
        self.raw
            .split_ascii_whitespace()
            .filter_map(move |w| scratch.apply(w).err())
    }

    /// Whether self-test `name` was requested.
    pub fn selftest(&self, name: &str) -> bool {
        self.selftests.split(',').any(|t| t == name)
    }

    fn apply(&mut self, word: &'a str) -> Result<(), BootargError<'a>> {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let bad = || BootargError::BadValue { key, value };
        match key {
            "log" => {
                self.log_level = match value {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    _ => return Err(bad()),
                }
            }
            "selftest" => self.selftests = value,
            "heap" => self.heap_size = parse_size(value).ok_or_else(bad)?,
            // Words Linux-style loaders commonly add, accepted silently.
            "console" | "earlycon" | "root" | "rw" | "ro" => {}
            _ => return Err(BootargError::Unknown(word)),
        }
        Ok(())
    }
}

/// Parses `123`, `64K`, `4M` (binary units) into bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<usize>().ok()?.checked_mul(1usize << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let a = Bootargs::parse("");
        assert_eq!(a.log_level, LogLevel::Info);
        assert_eq!(a.heap_size, DEFAULT_HEAP_SIZE);
        assert!(!a.selftest("x"));
        assert_eq!(a.errors().count(), 0);
    }

    #[test]
    fn known_keys() {
        let a = Bootargs::parse("console=hvc0 log=debug selftest=fault,dma heap=2M");
        assert_eq!(a.log_level, LogLevel::Debug);
        assert!(a.selftest("fault") && a.selftest("dma") && !a.selftest("fa"));
        assert_eq!(a.heap_size, 2 << 20);
        assert_eq!(a.errors().count(), 0);
    }

    #[test]
    fn bad_words_are_reported_and_skipped() {
        let a = Bootargs::parse("log=loud heap=12Q frobnicate log=warn");
        assert_eq!(a.log_level, LogLevel::Warn);
        assert_eq!(a.heap_size, DEFAULT_HEAP_SIZE);
        let errors: std::vec::Vec<_> = a.errors().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "bootarg log=loud: bad value",
                "bootarg heap=12Q: bad value",
                "bootarg frobnicate: unknown, ignored"
            ]
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }
}
