//! Counting and timing deliveries, and the JSON report of a run.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples (deliveries timed).
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// A latency histogram in nanoseconds, 1 ns to 10 minutes at 3 significant digits.
#[derive(Debug)]
pub struct LatencyHistogram(Histogram<u64>);

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts.
        Self(Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds"))
    }

    /// Records one latency; values outside the range are clamped into it.
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The percentiles.
    pub fn summary(&self) -> Latency {
        let h = &self.0;
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram many subscriber tasks record into, in batches.
#[derive(Debug, Default)]
pub struct SharedHistogram(Mutex<LatencyHistogram>);

impl SharedHistogram {
    /// Records a batch of latencies under one lock.
    pub fn record_all(&self, samples: &[u64]) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for &s in samples {
            h.record(s);
        }
    }

    /// The percentiles so far.
    pub fn summary(&self) -> Latency {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).summary()
    }

    /// Adds every sample so far to `into`.
    pub fn merge_into(&self, into: &mut LatencyHistogram) {
        into.merge(&self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The JSON report of one run of any scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// `fanout`, `channels`, `idle` or `replication`.
    pub scenario: String,
    /// A label naming this configuration across runs and backends, e.g. `fanout-1000`.
    pub label: String,
    /// `ws`, `nats` or `quic`.
    pub backend: String,
    /// Where the broker was.
    pub target: String,
    /// The command line.
    pub command: String,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Whether the run counts: nothing lost, no errors, every connection opened.
    pub valid: bool,
    /// Why it does not count, if it does not.
    pub problems: Vec<String>,
    /// Traffic scenarios: throughput, loss and latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficReport>,
    /// The idle scenario: memory per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleReport>,
}

/// Throughput, loss and latency of a traffic scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrafficReport {
    /// Subscriber connections.
    pub subscribers: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Channels.
    pub channels: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Offered rate per publisher in messages/s; `None` for maximum rate (closed loop).
    pub rate_per_publisher: Option<f64>,
    /// Messages sent by all publishers.
    pub published: u64,
    /// Deliveries expected: each message times its channel's subscribers.
    pub expected: u64,
    /// Deliveries received (duplicates included).
    pub received: u64,
    /// Deliveries expected and never received.
    pub lost: u64,
    /// Deliveries received twice or out of order.
    pub duplicates: u64,
    /// Errors: refused publishes, broker errors, connections closed or failed.
    pub errors: u64,
    /// Length of the measurement window (after warm-up), seconds.
    pub window_s: f64,
    /// Deliveries received per second in the measurement window.
    pub deliveries_per_s: f64,
    /// Messages published per second in the measurement window.
    pub messages_per_s: f64,
    /// How far behind its schedule a fixed-rate publisher fell at worst, milliseconds (a
    /// large value means the generator, not the broker, limited the run).
    pub max_publisher_lag_ms: f64,
    /// CPU seconds the broker process(es) used in the measurement window (with
    /// `--broker-pid`): robust to other load on a shared machine, unlike throughput.
    #[serde(default)]
    pub broker_cpu_s: Option<f64>,
    /// Broker CPU time per delivery in the window, microseconds.
    #[serde(default)]
    pub broker_cpu_us_per_delivery: Option<f64>,
    /// CPU seconds the store process(es) behind the brokers (Redis, with `--store-pid`) used
    /// in the measurement window.
    #[serde(default)]
    pub store_cpu_s: Option<f64>,
    /// Store CPU time per published message in the window, microseconds: with the stores on
    /// one core, a million divided by it bounds the message rate even for free brokers.
    #[serde(default)]
    pub store_cpu_us_per_message: Option<f64>,
    /// Share of one core this generator used in the window; near 1.0 means the generator,
    /// not the broker, may have limited the run.
    #[serde(default)]
    pub generator_cpu_fraction: f64,
    /// Latency of every delivery of a message published in the measurement window.
    pub latency: Latency,
    /// The same per subscriber group (replication: same region and cross region).
    pub groups: Vec<GroupReport>,
}

/// One group of subscribers (a region, in the replication scenario).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupReport {
    /// Its name.
    pub name: String,
    /// Subscriber connections in it.
    pub subscribers: usize,
    /// Deliveries received.
    pub received: u64,
    /// Deliveries per second in the measurement window.
    pub deliveries_per_s: f64,
    /// Latency of its deliveries.
    pub latency: Latency,
}

/// Broker memory per idle connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections open and subscribed when memory was read.
    pub opened: usize,
    /// Connections that failed to open.
    pub failed: usize,
    /// Generator processes used.
    pub processes: usize,
    /// Source addresses used.
    pub source_addresses: usize,
    /// The broker's process id.
    pub broker_pid: u32,
    /// Broker RSS before connecting, KiB.
    pub rss_before_kib: u64,
    /// Broker RSS with every connection open, KiB.
    pub rss_after_kib: u64,
    /// (after − before) / opened, bytes.
    pub bytes_per_connection: f64,
    /// Seconds to open every connection.
    pub connect_s: f64,
}

/// CPU time (user + system, all threads) a process has used so far, in seconds, from
/// `/proc/PID/stat`. Linux reports it in USER_HZ ticks, 100 per second on every architecture
/// Linux exports to user space.
pub fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; count fields after its closing paren.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("malformed stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name.
    let tick = |i: usize| -> std::io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|t| t as f64 / 100.0)
            .ok_or_else(|| std::io::Error::other("malformed stat"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// The broker's resident set size in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmRSS line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_microseconds() {
        let mut h = LatencyHistogram::new();
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn reads_this_process_rss_and_cpu() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        let t0 = cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(std::process::id()).unwrap() >= t0);
    }
}
