//! tidepool's side of the benchmark: reading its console.
//!
//! With `bench=MIB` the kernel reads the first virtio-blk disk and prints
//! `blk: bench seq ...`, one `blk: bench qdN ...` per queue depth and
//! `blk: bench dma ...` (keys in any order, unknown keys ignored); every
//! boot prints `boot: ready uptime_us=N since_entry_us=N`.

use std::time::Duration;

use super::{KeyValues, ParseError, Rate, Throughput, tagged};

/// The start of the kernel's benchmark lines.
pub const BENCH_PREFIX: &str = "blk: bench ";
/// The start of the kernel's ready line.
pub const READY_PREFIX: &str = "boot: ready";

/// One timed phase of random reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomPhase {
    /// Requests over time.
    pub rate: Rate,
    /// CPU time per request: the time not spent in WFI.
    pub busy: Duration,
    /// The checksum of the bytes read, in list order.
    pub sum: u64,
}

/// What the kernel's `blk: bench` lines report.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelBench {
    /// The device's node path.
    pub device: String,
    /// The wait mode (`wfi`, `poll`, `hybrid`).
    pub wait: String,
    /// Sequential reads of the whole span.
    pub seq: Throughput,
    /// CPU time per sequential request.
    pub seq_busy: Duration,
    /// Of it, the time in `GNTTABOP_cache_flush` per sequential request.
    pub seq_flush: Duration,
    /// The checksum of the sequential reads.
    pub seq_sum: u64,
    /// Random 4 KiB reads per queue depth, in the order printed.
    pub random: Vec<(u64, RandomPhase)>,
    /// Requests over the whole benchmark.
    pub requests: u64,
    /// `GNTTABOP_cache_flush` hypercalls over the whole benchmark.
    pub flush_hypercalls: u64,
    /// Pages those hypercalls flushed.
    pub flush_pages: u64,
    /// Bytes the DMA layer bounced over the whole benchmark.
    pub bounced: u64,
}

/// Why the kernel's lines did not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchLinesError {
    /// No line of this kind.
    Missing(&'static str),
    /// A line did not parse.
    Bad {
        /// The line.
        line: String,
        /// What was wrong.
        err: ParseError,
    },
}

impl std::fmt::Display for BenchLinesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(kind) => write!(f, "no '{BENCH_PREFIX}{kind}' line"),
            Self::Bad { line, err } => write!(f, "{err} in {line:?}"),
        }
    }
}

impl KernelBench {
    /// Reads the `blk: bench` lines among `lines` (text after the prefix
    /// may follow console noise).
    pub fn parse<'l>(lines: impl IntoIterator<Item = &'l str>) -> Result<Self, BenchLinesError> {
        let mut seq = None;
        let mut dma = None;
        let mut random = Vec::new();
        for line in lines {
            let Some((kind, fields)) = tagged(line, BENCH_PREFIX) else {
                continue;
            };
            let bad = |err| BenchLinesError::Bad {
                line: line.trim().to_string(),
                err,
            };
            let kv = KeyValues::new(fields);
            match kind {
                "seq" if seq.is_none() => seq = Some(read_seq(&kv).map_err(bad)?),
                "dma" if dma.is_none() => dma = Some(read_dma(&kv).map_err(bad)?),
                _ => {
                    if let Some(depth) = kind.strip_prefix("qd").and_then(|d| d.parse().ok())
                        && !random.iter().any(|(d, _)| *d == depth)
                    {
                        random.push((depth, read_random(&kv).map_err(bad)?));
                    }
                }
            }
        }
        let (device, wait, seq, (seq_busy, seq_flush), seq_sum) =
            seq.ok_or(BenchLinesError::Missing("seq"))?;
        let (requests, flush_hypercalls, flush_pages, bounced) =
            dma.ok_or(BenchLinesError::Missing("dma"))?;
        if random.is_empty() {
            return Err(BenchLinesError::Missing("qd1"));
        }
        Ok(Self {
            device,
            wait,
            seq,
            seq_busy,
            seq_flush,
            seq_sum,
            random,
            requests,
            flush_hypercalls,
            flush_pages,
            bounced,
        })
    }

    /// The random phase at `depth`, if the kernel ran it.
    pub fn at_depth(&self, depth: u64) -> Option<&RandomPhase> {
        self.random
            .iter()
            .find_map(|(d, phase)| (*d == depth).then_some(phase))
    }

    /// The best of two runs: each timing (and its CPU time) from the
    /// faster run, the hypercall counts from the run with more per request.
    pub fn best(self, other: Self) -> Self {
        let worse = if other.hypercalls_per_request() > self.hypercalls_per_request() {
            &other
        } else {
            &self
        };
        let (requests, flush_hypercalls) = (worse.requests, worse.flush_hypercalls);
        let (seq, seq_busy, seq_flush) = if other.seq.mib_per_s() > self.seq.mib_per_s() {
            (other.seq, other.seq_busy, other.seq_flush)
        } else {
            (self.seq, self.seq_busy, self.seq_flush)
        };
        let random = self
            .random
            .iter()
            .map(|&(depth, phase)| match other.at_depth(depth) {
                Some(o) if o.rate.iops() > phase.rate.iops() => (depth, *o),
                _ => (depth, phase),
            })
            .collect();
        Self {
            seq,
            seq_busy,
            seq_flush,
            random,
            requests,
            flush_hypercalls,
            ..self
        }
    }

    /// Flush hypercalls per request, if there were requests.
    pub fn hypercalls_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.flush_hypercalls as f64 / self.requests as f64)
    }
}

type Seq = (String, String, Throughput, (Duration, Duration), u64);

fn read_seq(kv: &KeyValues<'_>) -> Result<Seq, ParseError> {
    Ok((
        kv.get("device")?.to_string(),
        kv.get("wait")?.to_string(),
        Throughput {
            bytes: kv.u64("mib")? << 20,
            time: micros(kv, "us")?,
        },
        (
            Duration::from_nanos(kv.u64("busy_ns")?),
            Duration::from_nanos(kv.u64("flush_ns")?),
        ),
        hex(kv, "sum")?,
    ))
}

fn read_random(kv: &KeyValues<'_>) -> Result<RandomPhase, ParseError> {
    Ok(RandomPhase {
        rate: Rate {
            requests: kv.u64("reqs")?,
            time: micros(kv, "us")?,
        },
        busy: Duration::from_nanos(kv.u64("busy_ns")?),
        sum: hex(kv, "sum")?,
    })
}

fn read_dma(kv: &KeyValues<'_>) -> Result<(u64, u64, u64, u64), ParseError> {
    Ok((
        kv.u64("requests")?,
        kv.u64("flush_hypercalls")?,
        kv.u64("flush_pages")?,
        kv.u64("bounced")?,
    ))
}

fn hex(kv: &KeyValues<'_>, key: &'static str) -> Result<u64, ParseError> {
    let value = kv.get(key)?;
    u64::from_str_radix(value, 16).map_err(|_| ParseError::Invalid {
        key,
        value: value.into(),
    })
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

/// The kernel's uptime and its time since entry, from the fields after
/// [`READY_PREFIX`].
pub fn ready_times(fields: &str) -> Result<(Duration, Duration), ParseError> {
    let kv = KeyValues::new(fields);
    Ok((
        Duration::from_micros(kv.u64("uptime_us")?),
        Duration::from_micros(kv.u64("since_entry_us")?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = "\
blk: bench seq device=/virtio_mmio@a003e00 wait=poll mib=64 reqs=256 us=123456 mib_s=518.3 busy_ns=400000 flush_ns=150000 sum=6a800000c03fefd5
blk: bench qd1 reqs=4096 span_blocks=16384 seed=0x9e3779b97f4a7c15 us=1024000 iops=4000 busy_ns=250000 sum=60885000c31226f5
blk: bench qd16 reqs=4096 span_blocks=16384 seed=0x9e3779b97f4a7c15 us=512000 iops=8000 busy_ns=120000 sum=60885000c31226f5
blk: bench qd32 reqs=4096 span_blocks=16384 seed=0x9e3779b97f4a7c15 us=500000 iops=8192 busy_ns=110000 sum=60885000c31226f5
blk: bench dma requests=12544 flush_hypercalls=12544 hypercalls_per_req=1.00 flush_pages=50000 syncs=25088 bounced=0";

    fn parse(text: &str) -> Result<KernelBench, BenchLinesError> {
        KernelBench::parse(text.lines())
    }

    #[test]
    fn parses_the_bench_lines() {
        let b = parse(LINES).unwrap();
        assert_eq!(
            (b.device.as_str(), b.wait.as_str()),
            ("/virtio_mmio@a003e00", "poll")
        );
        assert_eq!(b.seq.bytes, 64 << 20);
        assert_eq!(b.seq.time, Duration::from_micros(123_456));
        assert_eq!(b.seq_busy, Duration::from_micros(400));
        assert_eq!(b.seq_flush, Duration::from_micros(150));
        assert_eq!(b.seq_sum, 0x6a80_0000_c03f_efd5);
        let depths: Vec<u64> = b.random.iter().map(|(d, _)| *d).collect();
        assert_eq!(depths, [1, 16, 32]);
        let qd1 = b.at_depth(1).unwrap();
        assert!((qd1.rate.iops() - 4000.0).abs() < 1e-9);
        assert_eq!(qd1.busy, Duration::from_micros(250));
        assert!((b.at_depth(16).unwrap().rate.iops() - 8000.0).abs() < 1e-9);
        assert_eq!(
            (b.requests, b.flush_hypercalls, b.bounced),
            (12544, 12544, 0)
        );
        assert_eq!(b.hypercalls_per_request(), Some(1.0));
        assert!(b.at_depth(64).is_none());
    }

    #[test]
    fn noise_order_and_unknown_keys_do_not_matter() {
        let mut lines: Vec<String> = LINES
            .lines()
            .rev()
            .map(|l| format!("(d0) {l} future=7"))
            .collect();
        lines.push("blk: bench qd1 reqs=1 us=1 busy_ns=1 sum=0".into());
        let b = KernelBench::parse(lines.iter().map(String::as_str)).unwrap();
        assert_eq!(
            b.at_depth(1).unwrap().rate.requests,
            4096,
            "the first line wins"
        );
        let mut expected = parse(LINES).unwrap();
        expected.random.reverse();
        assert_eq!(b, expected);
    }

    #[test]
    fn says_what_is_wrong() {
        let without = LINES.replace("blk: bench dma", "blk: other dma");
        assert_eq!(parse(&without), Err(BenchLinesError::Missing("dma")));
        let bad = LINES.replace("us=1024000", "us=1.5ms");
        let err = parse(&bad).unwrap_err();
        assert!(
            matches!(&err, BenchLinesError::Bad { err: ParseError::Invalid { key: "us", .. }, line } if line.starts_with("blk: bench qd1")),
            "{err}"
        );
        let zero = LINES.replace("us=123456", "us=0");
        assert!(parse(&zero).is_err());
        let not_hex = LINES.replace("sum=6a800000c03fefd5", "sum=xyz");
        assert!(parse(&not_hex).is_err());
        let only_seq = LINES
            .lines()
            .filter(|l| !l.contains(" qd"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse(&only_seq), Err(BenchLinesError::Missing("qd1")));
    }

    #[test]
    fn best_of_two_runs() {
        let a = parse(LINES).unwrap();
        let faster = LINES
            .replace("us=123456", "us=100000")
            .replace(
                "us=512000 iops=8000 busy_ns=120000",
                "us=400000 iops=10240 busy_ns=90000",
            )
            .replace("flush_hypercalls=12544", "flush_hypercalls=6272");
        let b = parse(&faster).unwrap();
        let best = a.clone().best(b.clone());
        assert_eq!(best.seq, b.seq);
        assert_eq!(best.at_depth(1), a.at_depth(1), "a tie keeps the first");
        assert_eq!(best.at_depth(16), b.at_depth(16));
        assert_eq!(best.at_depth(16).unwrap().busy, Duration::from_micros(90));
        assert_eq!(best.flush_hypercalls, 12544, "the worse count per request");
        assert_eq!(b.best(a).flush_hypercalls, 12544);
    }

    #[test]
    fn ready_line() {
        assert_eq!(
            ready_times(" uptime_us=795933 since_entry_us=1800 heap_used=1"),
            Ok((Duration::from_micros(795_933), Duration::from_micros(1800)))
        );
        assert_eq!(ready_times(""), Err(ParseError::Missing("uptime_us")));
    }
}
