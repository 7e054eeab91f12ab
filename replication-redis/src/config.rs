//! Configuration of Redis Streams replication.

use std::time::Duration;

use broker_core::RegionName;

/// How one region's Redis is reached, and what this node does with it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisReplicationConfig {
    /// This node's region. Default: `local`.
    pub region: RegionName,
    /// This node's id, unique within the region: marks the invalidations it already applied
    /// and the import leases it holds. Default: random.
    pub node_id: String,
    /// This region's Redis, e.g. `redis://127.0.0.1:6379` or `redis+unix:///run/redis.sock`.
    /// Default: `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Every remote region to import from. Default: none (a multi-node, single-region setup).
    pub peers: Vec<Peer>,
    /// How much of each region's stream Redis keeps. A region cut off for longer than this
    /// misses what was trimmed. Default: about 1,000,000 entries.
    pub retention: Retention,
    /// Whether `/admin/unsubscribe` reaches every region or only this one. Default: global.
    pub invalidation: InvalidationScope,
    /// Longest a blocking `XREAD` waits; also how quickly readers notice shutdown and how
    /// often import leases are checked. Default: 1 s.
    pub block: Duration,
    /// Most entries read, imported or appended per round trip. Default: 512.
    pub batch: usize,
    /// Publishes (and invalidations) waiting to be appended to this region's stream. The
    /// appender pipelines whatever is waiting when Redis answers its previous batch (up to
    /// `batch`), so that many publishes share one round trip. When full, publishing
    /// connections wait for room: back-pressure, nothing dropped. Default: 8,192 (about 3 MiB
    /// of 256-byte messages).
    pub export_queue: usize,
    /// After a stream read that returned more than one entry but less than a full batch, wait
    /// this long before the next read. Under load, reads then come back with larger batches,
    /// so that a message costs a fraction of a round trip instead of several; a lightly loaded
    /// region, whose reads return one entry at a time, is read without waiting. Default: 1 ms
    /// (at most that much added latency per read, and only under load). Zero disables it.
    pub read_linger: Duration,
    /// Time allowed for one Redis command (on top of `block` for blocking reads); past it the
    /// connection is considered broken and re-established. Default: 2 s.
    pub command_timeout: Duration,
    /// Time allowed to connect to Redis. Default: 1 s.
    pub connect_timeout: Duration,
    /// First and longest wait between reconnection attempts (doubling in between).
    /// Default: 100 ms and 5 s.
    pub reconnect_backoff: (Duration, Duration),
    /// Message ids remembered per node to drop duplicates (after an importer or Redis restart
    /// re-appends entries). Default: 262,144 (about 25 MiB).
    pub dedup_window: usize,
    /// How long an import lease lasts without renewal: one node per region imports each
    /// remote region at a time; another takes over within this time if it dies. Default: 10 s.
    pub lease: Duration,
    /// Prefix of every key. Default: `pubsub`.
    pub key_prefix: String,
}

impl Default for RedisReplicationConfig {
    fn default() -> Self {
        Self {
            region: RegionName::default(),
            node_id: format!("node-{:016x}", broker_core::ids::random_u64()),
            redis_url: "redis://127.0.0.1:6379".into(),
            peers: Vec::new(),
            retention: Retention::MaxLen(1_000_000),
            invalidation: InvalidationScope::Global,
            block: Duration::from_secs(1),
            batch: 512,
            export_queue: 8192,
            read_linger: Duration::from_millis(1),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            reconnect_backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            dedup_window: 262_144,
            lease: Duration::from_secs(10),
            key_prefix: "pubsub".into(),
        }
    }
}

impl RedisReplicationConfig {
    /// The defaults for `region` with its Redis at `redis_url`.
    pub fn new(region: RegionName, redis_url: impl Into<String>) -> Self {
        Self {
            region,
            redis_url: redis_url.into(),
            ..Self::default()
        }
    }

    /// Adds a remote region.
    pub fn peer(mut self, region: RegionName, redis_url: impl Into<String>) -> Self {
        self.peers.push(Peer {
            region,
            redis_url: redis_url.into(),
        });
        self
    }

    /// The key of `region`'s stream. The `{region}` hash tag keeps a region's keys in one
    /// cluster slot, so the import script may touch the stream and the cursor together.
    pub fn log_key(&self, region: &RegionName) -> String {
        format!("{}:{{{}}}:log", self.key_prefix, region)
    }

    pub(crate) fn cursor_key(&self, from: &RegionName) -> String {
        format!("{}:{{{}}}:cursor:{}", self.key_prefix, self.region, from)
    }

    pub(crate) fn lease_key(&self, from: &RegionName) -> String {
        format!("{}:{{{}}}:lease:{}", self.key_prefix, self.region, from)
    }
}

/// A remote region.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its name, as its brokers stamp it on messages.
    pub region: RegionName,
    /// Its Redis.
    pub redis_url: String,
}

/// How much of a stream Redis keeps (trimmed approximately, which is much cheaper).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Retention {
    /// About this many entries (`MAXLEN ~`).
    MaxLen(u64),
    /// About this long (`MINID ~`, by entry timestamp).
    MaxAge(Duration),
}

impl Retention {
    /// The XADD trimming arguments as of `now_ms`.
    pub(crate) fn args(self, now_ms: u64) -> (&'static str, String) {
        match self {
            Retention::MaxLen(n) => ("MAXLEN", n.to_string()),
            Retention::MaxAge(d) => (
                "MINID",
                format!("{}-0", now_ms.saturating_sub(d.as_millis() as u64)),
            ),
        }
    }
}

/// Where an administrator's invalidation applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidationScope {
    /// Every node of every region.
    Global,
    /// Every node of this region only.
    Regional,
}
