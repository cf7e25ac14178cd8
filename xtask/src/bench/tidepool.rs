//! tidepool's side of the benchmark: reading its console.
//!
//! With `bench=MIB` the kernel reads the first virtio-blk disk and prints one
//! line, `blk: bench key=value ...` (keys in any order, unknown keys
//! ignored); every boot prints `boot: ready uptime_us=N`.

use std::time::Duration;

use super::{KeyValues, ParseError, Rate, Throughput};

/// The start of the kernel's benchmark line.
pub const BENCH_PREFIX: &str = "blk: bench ";
/// The start of the kernel's ready line.
pub const READY_PREFIX: &str = "boot: ready";

/// What the kernel's `blk: bench` line reports.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelBench {
    /// The device's node path, if given.
    pub device: Option<String>,
    /// Sequential reads of `seq_mib` MiB.
    pub seq: Throughput,
    /// 4 KiB random reads, one at a time.
    pub qd1: Rate,
    /// 4 KiB random reads, 16 in flight, if the kernel ran them.
    pub qd16: Option<Rate>,
    /// Requests over the whole benchmark.
    pub requests: u64,
    /// `GNTTABOP_cache_flush` hypercalls over the whole benchmark.
    pub flush_hypercalls: u64,
}

impl KernelBench {
    /// Reads the fields after [`BENCH_PREFIX`].
    pub fn parse(fields: &str) -> Result<Self, ParseError> {
        let kv = KeyValues::new(fields);
        let rate = |reqs, us| -> Result<Rate, ParseError> {
            Ok(Rate {
                requests: kv.u64(reqs)?,
                time: micros(&kv, us)?,
            })
        };
        let qd16 = match kv.get("qd16_reqs") {
            Ok(_) => Some(rate("qd16_reqs", "qd16_us")?),
            Err(_) => None,
        };
        Ok(Self {
            device: kv.get("device").ok().map(str::to_string),
            seq: Throughput {
                bytes: kv.u64("seq_mib")? << 20,
                time: micros(&kv, "seq_us")?,
            },
            qd1: rate("qd1_reqs", "qd1_us")?,
            qd16,
            requests: kv.u64("requests")?,
            flush_hypercalls: kv.u64("flush_hypercalls")?,
        })
    }

    /// The best of two runs: each timing from the faster run, the
    /// hypercall counts from the run with more per request.
    pub fn best(self, other: Self) -> Self {
        let worse = if other.hypercalls_per_request() > self.hypercalls_per_request() {
            &other
        } else {
            &self
        };
        let (requests, flush_hypercalls) = (worse.requests, worse.flush_hypercalls);
        let qd16 = match (self.qd16, other.qd16) {
            (Some(a), Some(b)) => Some(a.faster(b)),
            (a, b) => a.or(b),
        };
        Self {
            device: self.device.or(other.device),
            seq: self.seq.faster(other.seq),
            qd1: self.qd1.faster(other.qd1),
            qd16,
            requests,
            flush_hypercalls,
        }
    }

    /// Flush hypercalls per request, if there were requests.
    pub fn hypercalls_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.flush_hypercalls as f64 / self.requests as f64)
    }
}

/// A nonzero microsecond count under `key`.
fn micros(kv: &KeyValues<'_>, key: &'static str) -> Result<Duration, ParseError> {
    match kv.u64(key)? {
        0 => Err(ParseError::Invalid {
            key,
            value: "0".into(),
        }),
        us => Ok(Duration::from_micros(us)),
    }
}

/// The kernel's own uptime from the fields after [`READY_PREFIX`].
pub fn ready_uptime(fields: &str) -> Result<Duration, ParseError> {
    KeyValues::new(fields)
        .u64("uptime_us")
        .map(Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "device=/virtio_mmio@a003e00 seq_mib=64 seq_us=123456 seq_mib_s=518.3 \
        qd1_reqs=4096 qd1_us=1024000 qd1_iops=4000.0 qd16_reqs=4096 qd16_us=512000 \
        qd16_iops=8000.0 requests=8256 flush_hypercalls=8256 hypercalls_per_req=1.00 \
        syncs=16512 bounced=100663296";

    #[test]
    fn parses_the_bench_line() {
        let b = KernelBench::parse(LINE).unwrap();
        assert_eq!(b.device.as_deref(), Some("/virtio_mmio@a003e00"));
        assert_eq!(b.seq.bytes, 64 << 20);
        assert_eq!(b.seq.time, Duration::from_micros(123_456));
        assert!((b.seq.mib_per_s() - 64.0 / 0.123456).abs() < 1e-9);
        assert_eq!(b.qd1.requests, 4096);
        assert!((b.qd1.iops() - 4000.0).abs() < 1e-9);
        assert!((b.qd16.unwrap().iops() - 8000.0).abs() < 1e-9);
        assert_eq!((b.requests, b.flush_hypercalls), (8256, 8256));
        assert_eq!(b.hypercalls_per_request(), Some(1.0));
    }

    #[test]
    fn order_and_unknown_keys_do_not_matter() {
        let mut words: Vec<&str> = LINE.split(' ').rev().collect();
        words.push("future_key=7");
        words.push("flag");
        let b = KernelBench::parse(&words.join(" ")).unwrap();
        assert_eq!(b, KernelBench::parse(LINE).unwrap());
    }

    #[test]
    fn qd16_and_device_are_optional() {
        let line = "seq_mib=8 seq_us=1000 qd1_reqs=10 qd1_us=100 requests=0 flush_hypercalls=0";
        let b = KernelBench::parse(line).unwrap();
        assert_eq!((b.device.as_deref(), b.qd16), (None, None));
        assert_eq!(b.hypercalls_per_request(), None);
    }

    #[test]
    fn says_which_key_is_wrong() {
        let without = LINE.replace("flush_hypercalls=8256 ", "");
        assert_eq!(
            KernelBench::parse(&without),
            Err(ParseError::Missing("flush_hypercalls"))
        );
        let bad = LINE.replace("qd1_us=1024000", "qd1_us=1.5ms");
        assert_eq!(
            KernelBench::parse(&bad),
            Err(ParseError::Invalid {
                key: "qd1_us",
                value: "1.5ms".into()
            })
        );
        let zero = LINE.replace("seq_us=123456", "seq_us=0");
        assert!(matches!(
            KernelBench::parse(&zero),
            Err(ParseError::Invalid { key: "seq_us", .. })
        ));
    }

    #[test]
    fn best_of_two_runs() {
        let a = KernelBench::parse(LINE).unwrap();
        let faster = LINE
            .replace("seq_us=123456", "seq_us=100000")
            .replace("qd16_us=512000", "qd16_us=400000")
            .replace("flush_hypercalls=8256", "flush_hypercalls=4128");
        let b = KernelBench::parse(&faster).unwrap();
        let best = a.clone().best(b.clone());
        assert_eq!(best.seq, b.seq);
        assert_eq!(best.qd1, a.qd1, "a tie keeps the first");
        assert_eq!(best.qd16, b.qd16);
        assert_eq!(best.flush_hypercalls, 8256, "the worse count per request");
        assert_eq!(b.best(a.clone()).flush_hypercalls, 8256);
        let without_qd16 = KernelBench {
            qd16: None,
            ..a.clone()
        };
        assert_eq!(without_qd16.best(a.clone()).qd16, a.qd16);
    }

    #[test]
    fn ready_line() {
        assert_eq!(
            ready_uptime(" uptime_us=795933"),
            Ok(Duration::from_micros(795_933))
        );
        assert_eq!(ready_uptime(""), Err(ParseError::Missing("uptime_us")));
    }
}
