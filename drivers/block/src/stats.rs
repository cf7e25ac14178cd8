//! Per-device counters and their console line, and how the drivers' lines
//! name the flags set in a register ([`write_names`]).

use core::fmt;

use crate::{Completion, Op};

/// Writes ` (a,b,c)`, the `names` in order (the flags set in a register
/// or feature word, as the drivers' console lines show them); nothing when
/// there are none.
pub fn write_names<'n>(
    f: &mut fmt::Formatter<'_>,
    names: impl IntoIterator<Item = &'n str>,
) -> fmt::Result {
    let mut names = names.into_iter();
    let Some(first) = names.next() else {
        return Ok(());
    };
    write!(f, " ({first}")?;
    for name in names {
        write!(f, ",{name}")?;
    }
    f.write_str(")")
}

/// What a device has done, counted when requests complete (a timed-out
/// request counts once, as a timeout, whenever the device returns it).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlkStats {
    /// Reads completed successfully.
    pub reads: u64,
    /// Writes completed successfully.
    pub writes: u64,
    /// Flushes completed successfully.
    pub flushes: u64,
    /// Requests the device failed (error status) or the DMA layer refused
    /// to unmap.
    pub errors: u64,
    /// Requests whose deadline passed before they completed.
    pub timeouts: u64,
    /// Bytes read by successful reads.
    pub bytes_read: u64,
    /// Bytes written by successful writes.
    pub bytes_written: u64,
    /// Notifications of new requests sent to the device (a virtio
    /// `QueueNotify` write, a Xen event-channel send): at most one per
    /// batch of submissions ([`crate::BlockDriver::kick`]); none for a
    /// device that takes each request as it is submitted.
    pub notifies: u64,
}

impl BlkStats {
    /// Counts a request that completed successfully.
    pub fn count_success(&mut self, request: Completion) {
        match request.op {
            Op::Read => {
                self.reads += 1;
                self.bytes_read += u64::from(request.bytes);
            }
            Op::Write => {
                self.writes += 1;
                self.bytes_written += u64::from(request.bytes);
            }
            Op::Flush => self.flushes += 1,
        }
    }
}

/// The console line of a device's counters:
///
/// `blk: stats <device> reads=N writes=N flushes=N errors=N timeouts=N bytes_read=N bytes_written=N notifies=N`
///
/// Keys are the [`BlkStats`] fields, always all of them, in that order, in
/// decimal.
pub struct StatsLine<'s> {
    device: &'s str,
    stats: &'s BlkStats,
}

impl<'s> StatsLine<'s> {
    /// The line of `device`'s `stats`.
    pub const fn new(device: &'s str, stats: &'s BlkStats) -> Self {
        Self { device, stats }
    }
}

impl fmt::Display for StatsLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats;
        write!(
            f,
            "blk: stats {} reads={} writes={} flushes={} errors={} timeouts={} bytes_read={} bytes_written={} notifies={}",
            self.device,
            s.reads,
            s.writes,
            s.flushes,
            s.errors,
            s.timeouts,
            s.bytes_read,
            s.bytes_written,
            s.notifies
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flags(&'static [&'static str]);

    impl fmt::Display for Flags {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("0x5")?;
            write_names(f, self.0.iter().copied())
        }
    }

    #[test]
    fn names_are_listed_in_parentheses_or_not_at_all() {
        assert_eq!(Flags(&[]).to_string(), "0x5");
        assert_eq!(Flags(&["ro"]).to_string(), "0x5 (ro)");
        assert_eq!(
            Flags(&["blk-size", "flush", "version-1"]).to_string(),
            "0x5 (blk-size,flush,version-1)"
        );
    }
}
