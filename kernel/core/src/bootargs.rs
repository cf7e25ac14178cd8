//! The kernel's command line: `key=value` words and bare flags.
//!
//! Recognised keys:
//! - `log=error|warn|info|debug|trace`: console log level (default `info`);
//! - `selftest=NAME[,NAME...]`: self-tests to run after boot (see `selftest`);
//! - `heap=SIZE`: heap size with an optional K/M suffix (default: an
//!   eighth of linear RAM, between 1 MiB and 16 MiB);
//! - `blk-verify=SEED[,SEED2@LBA+COUNT]`: read every block device whole and
//!   check it holds the disk pattern of `SEED` (sectors `LBA..LBA+COUNT`
//!   that of `SEED2`);
//! - `blk-write=SEED@LBA+COUNT`: write the pattern of `SEED` to those
//!   sectors of every block device, then flush;
//! - `bench=MIB`: the block benchmark over the first `MIB` MiB of the first
//!   block device; `bench-reads=N` random 4 KiB reads per queue depth
//!   (default 4096);
//! - `wait=wfi|poll|hybrid`: how block I/O waits for completions (default
//!   `poll`, see `block`);
//! - `blk-pv-grants=N`: grants the PV disks' back end keeps mapped (Linux
//!   blkback's `max_persistent_grants`, which it does not advertise; default
//!   1056, its own default), which bounds blkfront's requests in flight and
//!   so its ring (see `tidepool_xen_abi::blkfront::RingLayout`);
//! - `console-uart=PATH|ALIAS`: drive this UART (a node path or an
//!   `/aliases` name, as in `stdout-path`) as the console, also under Xen.
//!   Xen removes `stdout-path` from dom0's tree, so a dom0 whose UART Xen
//!   does not drive (the i.MX UART under Xen 4.17) is told this way;
//! - `monitor`: after the boot work, read commands from the console instead
//!   of powering off.
//!
//! Unknown words are reported once at boot, never fatal: a bootloader may
//! pass words meant for someone else.

use core::fmt;

pub use tidepool_block::pattern::{DiskPattern, SectorRange};
pub use tidepool_block::wait::WaitMode;

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
    /// Heap size in bytes, if `heap=` gives one.
    pub heap_size: Option<usize>,
    /// `blk-verify=`: the expected disk content.
    pub blk_verify: Option<DiskPattern>,
    /// `blk-write=`: a range to write.
    pub blk_write: Option<SectorRange>,
    /// `bench=`: MiB to benchmark over.
    pub bench_mib: Option<u64>,
    /// `bench-reads=`: random reads per queue depth (default 4096).
    pub bench_reads: Option<u64>,
    /// `wait=wfi|poll|hybrid`: how block I/O waits for completions.
    pub wait: Option<WaitMode>,
    /// `blk-pv-grants=`: grants the PV back end keeps mapped.
    pub blk_pv_grants: Option<usize>,
    /// `console-uart=`: the UART to drive as the console.
    pub console_uart: Option<&'a str>,
    /// `monitor`: run the console monitor after boot.
    pub monitor: bool,
    raw: &'a str,
}

/// Parses `SEED@LBA+COUNT`.
fn parse_range(text: &str) -> Option<SectorRange> {
    let (seed, rest) = text.split_once('@')?;
    let (lba, count) = rest.split_once('+')?;
    Some(SectorRange {
        seed: seed.parse().ok()?,
        lba: lba.parse().ok()?,
        count: count.parse().ok()?,
    })
}

/// Parses `SEED[,SEED2@LBA+COUNT]`.
fn parse_pattern(text: &str) -> Option<DiskPattern> {
    let (seed, written) = match text.split_once(',') {
        Some((seed, range)) => (seed, Some(parse_range(range)?)),
        None => (text, None),
    };
    Some(DiskPattern {
        seed: seed.parse().ok()?,
        written,
    })
}

impl<'a> Bootargs<'a> {
    /// Parses `line`; words that fail are skipped and reported by [`Bootargs::errors`].
    pub fn parse(line: &'a str) -> Self {
        let mut args = Self {
            log_level: LogLevel::Info,
            selftests: "",
            heap_size: None,
            blk_verify: None,
            blk_write: None,
            bench_mib: None,
            bench_reads: None,
            wait: None,
            blk_pv_grants: None,
            console_uart: None,
            monitor: false,
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
            "heap" => self.heap_size = Some(parse_size(value).ok_or_else(bad)?),
            "blk-verify" => self.blk_verify = Some(parse_pattern(value).ok_or_else(bad)?),
            "blk-write" => self.blk_write = Some(parse_range(value).ok_or_else(bad)?),
            "bench" => {
                self.bench_mib = Some(value.parse().ok().filter(|&m| m > 0).ok_or_else(bad)?)
            }
            "bench-reads" => {
                self.bench_reads = Some(value.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?)
            }
            "wait" => self.wait = Some(value.parse().map_err(|_| bad())?),
            "blk-pv-grants" => {
                self.blk_pv_grants = Some(value.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?)
            }
            "console-uart" if !value.is_empty() => self.console_uart = Some(value),
            "console-uart" => return Err(bad()),
            "monitor" if value.is_empty() && !word.contains('=') => self.monitor = true,
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
    fn console_uart_names_a_node_or_alias() {
        let a = Bootargs::parse("console-uart=serial1 log=debug");
        assert_eq!(a.console_uart, Some("serial1"));
        assert_eq!(a.errors().count(), 0);
        let a = Bootargs::parse("console-uart=/soc@0/bus@30800000/serial@30890000");
        assert_eq!(a.console_uart, Some("/soc@0/bus@30800000/serial@30890000"));
        let a = Bootargs::parse("console-uart=");
        assert_eq!(a.console_uart, None);
        assert_eq!(
            a.errors().collect::<Vec<_>>(),
            [BootargError::BadValue {
                key: "console-uart",
                value: ""
            }]
        );
    }

    #[test]
    fn block_words() {
        let a = Bootargs::parse(
            "blk-verify=7,8@2048+16 blk-write=8@2048+16 bench=64 bench-reads=32 wait=poll \
             blk-pv-grants=2048",
        );
        assert_eq!(a.errors().count(), 0);
        assert_eq!((a.bench_reads, a.wait), (Some(32), Some(WaitMode::Poll)));
        assert_eq!(a.blk_pv_grants, Some(2048));
        let bad = Bootargs::parse("wait=spin bench-reads=0 blk-pv-grants=0 blk-pv-grants=lots");
        assert_eq!((bad.wait, bad.bench_reads), (None, None));
        assert_eq!(bad.blk_pv_grants, None);
        assert_eq!(bad.errors().count(), 4);
        let written = SectorRange {
            seed: 8,
            lba: 2048,
            count: 16,
        };
        assert_eq!(
            a.blk_verify,
            Some(DiskPattern {
                seed: 7,
                written: Some(written)
            })
        );
        assert_eq!(a.blk_write, Some(written));
        assert_eq!(a.bench_mib, Some(64));
        let p = a.blk_verify.unwrap();
        assert_eq!(
            (
                p.seed_of(2047),
                p.seed_of(2048),
                p.seed_of(2063),
                p.seed_of(2064)
            ),
            (7, 8, 8, 7)
        );
        assert_eq!(
            Bootargs::parse("blk-verify=3").blk_verify,
            Some(DiskPattern {
                seed: 3,
                written: None
            })
        );
        for bad in [
            "blk-verify=x",
            "blk-verify=1,2@3",
            "blk-write=1@2",
            "bench=0",
            "bench=lots",
        ] {
            let a = Bootargs::parse(bad);
            assert!(
                matches!(a.errors().next(), Some(BootargError::BadValue { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults() {
        let a = Bootargs::parse("");
        assert_eq!(a.log_level, LogLevel::Info);
        assert_eq!(a.heap_size, None);
        assert!(!a.selftest("x"));
        assert_eq!(a.errors().count(), 0);
    }

    #[test]
    fn known_keys() {
        let a = Bootargs::parse("console=hvc0 log=debug selftest=fault,dma heap=2M");
        assert!(!a.monitor);
        assert!(Bootargs::parse("log=warn monitor").monitor);
        assert!(matches!(
            Bootargs::parse("monitor=yes").errors().next(),
            Some(BootargError::Unknown("monitor=yes"))
        ));
        assert_eq!(a.log_level, LogLevel::Debug);
        assert!(a.selftest("fault") && a.selftest("dma") && !a.selftest("fa"));
        assert_eq!(a.heap_size, Some(2 << 20));
        assert_eq!(a.errors().count(), 0);
    }

    #[test]
    fn bad_words_are_reported_and_skipped() {
        let a = Bootargs::parse("log=loud heap=12Q frobnicate log=warn");
        assert_eq!(a.log_level, LogLevel::Warn);
        assert_eq!(a.heap_size, None);
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
