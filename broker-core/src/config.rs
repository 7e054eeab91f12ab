//! Broker configuration.

use std::time::Duration;

use crate::ids::RegionName;

/// Configuration of a [`Broker`](crate::Broker).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// This broker's region, stamped as `origin` on every message published here.
    /// Default: `local`.
    pub region: RegionName,
    /// Per-connection and per-message limits.
    pub limits: Limits,
}

impl BrokerConfig {
    /// The default configuration with another region name.
    pub fn with_region(region: RegionName) -> Self {
        Self {
            region,
            ..Self::default()
        }
    }
}

/// Limits that protect the broker and its other clients from one client.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Largest payload (`data`, as JSON bytes) accepted in a publish.
    /// Default: 240 KiB, AppSync's limit. Each queued copy shares one buffer, so the cost is
    /// per publish, not per subscriber.
    pub max_payload: usize,
    /// Most channels one connection may be subscribed to at once. Default: 100.
    pub max_subscriptions: usize,
    /// Messages that may wait in one connection's outbound queue. When a message would exceed
    /// it, the connection is closed as a slow consumer (close code 4008) and the messages still
    /// queued for it are dropped; other subscribers never wait for it.
    /// Default: 1024. Cost: a pointer per queued message; payloads are shared.
    pub outbound_queue: usize,
    /// Per-connection publish rate; `None` (the default) means unlimited.
    pub publish_rate: Option<RateLimit>,
    /// Publishes one connection may have waiting for the replicator's acknowledgement. Beyond
    /// it the connection's next request waits (its socket is not read), which pushes back on
    /// the publisher; nothing is dropped. Default: 64, enough to keep a replicator behind a
    /// network round trip busy from one connection.
    pub max_inflight_publishes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 240 * 1024,
            max_subscriptions: 100,
            outbound_queue: 1024,
            publish_rate: None,
            max_inflight_publishes: 64,
        }
    }
}

/// A token-bucket rate: `burst` publishes at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained publishes per second.
    pub per_second: f64,
    /// Publishes allowed in a burst.
    pub burst: u32,
}

/// The state of one connection's [`RateLimit`]. Time is passed in, never read.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    rate: RateLimit,
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    pub(crate) fn new(rate: RateLimit) -> Self {
        Self {
            rate,
            tokens: rate.burst as f64,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`.
    pub(crate) fn try_take(&mut self, now: std::time::Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(3600));
            self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate.per_second)
                .min(self.rate.burst as f64);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_refills() {
        let mut b = TokenBucket::new(RateLimit {
            per_second: 10.0,
            burst: 3,
        });
        let t0 = Instant::now();
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(110)));
        assert!(!b.try_take(t0 + Duration::from_millis(110)));
    }
}
