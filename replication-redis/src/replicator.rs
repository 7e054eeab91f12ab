//! The Redis Streams replicator: append on publish, one stream reader per node, one importer
//! per remote region.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use broker_core::{
    Deferred, DeliverySink, InvalidationFilter, Message, Metrics, PublishDone, RegionName,
    ReplicationError, Replicator,
};
use prometheus_client::metrics::gauge::Gauge;
use redis::{RedisError, Script, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{InvalidationScope, Peer, RedisReplicationConfig};
use crate::conn::{Conn, Reconnecting, describe, unavailable};
use crate::dedup::Dedup;
use crate::entry::{Entry, Invalidation, StreamId, parse_range, parse_xread};
use crate::metrics::ReplicationMetrics;

/// Copies a batch of remote entries into this region's stream and advances the cursor, in one
/// atomic step, only if the cursor is still where the importer read it: two importers (a lease
/// hand-over, a stalled node waking up) can never import the same entries twice.
///
/// KEYS: cursor, log. ARGV: expected cursor ('' if none), new cursor, trim kind, trim threshold,
/// then per entry its field count followed by its fields and values.
///
/// A one-field entry (every message) is appended without building an argument table: the
/// table and `unpack` were most of the script's cost per entry, and this script was the
/// importing region's Redis's largest cost under load.
const IMPORT_LUA: &str = r"
local call, key, kind, thr = redis.call, KEYS[2], ARGV[3], ARGV[4]
local cur = call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return {0, cur} end
local i, last = 5, #ARGV
while i <= last do
  local n = tonumber(ARGV[i])
  if n == 2 then
    call('XADD', key, kind, '~', thr, '*', ARGV[i + 1], ARGV[i + 2])
  else
    local args = {'XADD', key, kind, '~', thr, '*'}
    for j = 1, n do args[#args + 1] = ARGV[i + j] end
    call(unpack(args))
  end
  i = i + n + 1
end
call('SET', KEYS[1], ARGV[2])
return {1, ARGV[2]}
";

/// An entry to append and whom to tell when Redis has answered.
type Pending = (Entry, PublishDone);

/// Longest time an importer goes without storing its cursor while it only skips entries.
const CURSOR_STORE_INTERVAL: Duration = Duration::from_secs(1);

/// Counts a stream's entries after an id, up to a cap, on the server: the client gets one
/// number instead of every entry. KEYS: log. ARGV: exclusive start ('(' id), cap.
const COUNT_AFTER_LUA: &str = r"
return #redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
";

/// Most often an importer that is behind counts how far (the count costs Redis time in
/// proportion to the lag, up to [`LAG_COUNT_CAP`] entries).
const LAG_COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// Remote entries counted at most, for the lag gauge.
const LAG_COUNT_CAP: usize = 10_000;

/// Renews an import lease if this node still holds it. KEYS: lease. ARGV: node, ms.
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Replicates through Redis Streams. See `docs/REPLICATION.md` for the design.
///
/// Build it with [`RedisReplicator::new`] (no IO), pass it to the broker builder (which calls
/// [`Replicator::attach`], starting the background tasks: build the broker inside a Tokio
/// runtime), and drop it or call [`RedisReplicator::shutdown`] to stop them.
pub struct RedisReplicator {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    /// The exporter's end of `Inner::export`, until `attach` starts it.
    export_rx: std::sync::Mutex<Option<mpsc::Receiver<Pending>>>,
}

struct Inner {
    config: RedisReplicationConfig,
    log_key: String,
    local: Reconnecting,
    metrics: ReplicationMetrics,
    import: Script,
    renew: Script,
    count_after: Script,
    /// True once this node's stream reader knows where to start: a publish acknowledged
    /// before that could be missed by this node's own subscribers.
    reader_ready: watch::Sender<bool>,
    /// Remote regions whose importer has a cursor.
    importers_ready: watch::Sender<usize>,
    /// Appends, in order, to the exporter, which pipelines them to Redis in batches.
    export: mpsc::Sender<Pending>,
}

/// Why the replicator could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A Redis URL could not be parsed.
    #[error("{0}")]
    InvalidUrl(ReplicationError),
    /// Two peers share a name, or a peer has this region's name.
    #[error("duplicate region {0}")]
    DuplicateRegion(RegionName),
}

impl RedisReplicator {
    /// Checks the configuration and registers the replication metrics. Connects lazily: the
    /// broker starts even while Redis is down, and recovers when it comes back.
    pub fn new(config: RedisReplicationConfig, metrics: &Metrics) -> Result<Self, SetupError> {
        let mut names = vec![&config.region];
        for p in &config.peers {
            if names.contains(&&p.region) {
                return Err(SetupError::DuplicateRegion(p.region.clone()));
            }
            names.push(&p.region);
        }
        let metrics = ReplicationMetrics::register(metrics);
        let local = Reconnecting::new(
            &config.redis_url,
            "local",
            config.connect_timeout,
            config.command_timeout,
            config.reconnect_backoff,
            metrics
                .reconnects
                .get_or_create(&ReplicationMetrics::label("local"))
                .clone(),
        )
        .map_err(SetupError::InvalidUrl)?;
        for p in &config.peers {
            // Validate peer URLs now rather than in a background task's log.
            Reconnecting::new(
                &p.redis_url,
                p.region.as_str(),
                config.connect_timeout,
                config.command_timeout,
                config.reconnect_backoff,
                Default::default(),
            )
            .map_err(SetupError::InvalidUrl)?;
        }
        // Bounded by `export_queue`: when it is full, `enqueue` hands the publish back and the
        // publishing connection waits for room in `publish`; nothing is dropped.
        let (export, export_rx) = mpsc::channel(config.export_queue.max(1));
        let inner = Inner {
            export,
            log_key: config.log_key(&config.region),
            config,
            local,
            metrics,
            import: Script::new(IMPORT_LUA),
            renew: Script::new(RENEW_LUA),
            count_after: Script::new(COUNT_AFTER_LUA),
            reader_ready: watch::Sender::new(false),
            importers_ready: watch::Sender::new(0),
        };
        Ok(Self {
            inner: Arc::new(inner),
            cancel: CancellationToken::new(),
            export_rx: std::sync::Mutex::new(Some(export_rx)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisReplicationConfig {
        &self.inner.config
    }

    /// Waits until this node reads its region's stream and every importer has a cursor, or
    /// `timeout` passes; returns whether it is ready. Before that, a message published in a
    /// remote region for the first time may not be imported.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let peers = self.inner.config.peers.len();
        let mut reader = self.inner.reader_ready.subscribe();
        let mut importers = self.inner.importers_ready.subscribe();
        tokio::time::timeout(timeout, async {
            let _ = reader.wait_for(|r| *r).await;
            let _ = importers.wait_for(|n| *n >= peers).await;
        })
        .await
        .is_ok()
    }

    /// Stops the background tasks.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for RedisReplicator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for RedisReplicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplicator")
            .field("region", &self.inner.config.region)
            .field("node", &self.inner.config.node_id)
            .field(
                "peers",
                &self
                    .inner
                    .config
                    .peers
                    .iter()
                    .map(|p| &p.region)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[async_trait]
impl Replicator for RedisReplicator {
    fn attach(&self, sink: Arc<dyn DeliverySink>) {
        // Taken even when not started, so that publishes fail instead of waiting forever.
        let export_rx = self
            .export_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("RedisReplicator attached outside a Tokio runtime: not replicating");
            return;
        };
        if let Some(rx) = export_rx {
            rt.spawn(export(Arc::clone(&self.inner), rx, self.cancel.clone()));
        }
        rt.spawn(read_log(Arc::clone(&self.inner), sink, self.cancel.clone()));
        for peer in &self.inner.config.peers {
            rt.spawn(import(
                Arc::clone(&self.inner),
                peer.clone(),
                self.cancel.clone(),
            ));
        }
    }

    fn is_ready(&self) -> bool {
        *self.inner.reader_ready.borrow()
            && *self.inner.importers_ready.borrow() >= self.inner.config.peers.len()
    }

    async fn publish(&self, message: Message) -> Result<(), ReplicationError> {
        self.inner.check_origin(&message)?;
        self.inner.append(Entry::Message(message)).await
    }

    fn enqueue(&self, message: Message, done: PublishDone) -> Result<(), Box<Deferred>> {
        if let Err(e) = self.inner.check_origin(&message) {
            done(Err(e));
            return Ok(());
        }
        match self.inner.export.try_send((Entry::Message(message), done)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((Entry::Message(message), done))) => {
                Err(Box::new(Deferred { message, done }))
            }
            Err(TrySendError::Full((_, done)) | TrySendError::Closed((_, done))) => {
                done(Err(stopped()));
                Ok(())
            }
        }
    }

    async fn invalidate(&self, filter: &InvalidationFilter) -> Result<(), ReplicationError> {
        let inner = &self.inner;
        let entry = Entry::Invalidation(Invalidation {
            origin: inner.config.region.clone(),
            node: inner.config.node_id.clone(),
            global: inner.config.invalidation == InvalidationScope::Global,
            filter: filter.clone(),
        });
        inner.append(entry).await
    }
}

fn stopped() -> ReplicationError {
    ReplicationError::Unavailable("replication stopped".into())
}

impl Inner {
    fn check_origin(&self, message: &Message) -> Result<(), ReplicationError> {
        if message.origin != self.config.region {
            // Importers copy by origin: a mislabelled message would never leave this region.
            return Err(ReplicationError::Internal(format!(
                "broker region {} differs from replication region {}",
                message.origin, self.config.region
            )));
        }
        Ok(())
    }

    /// Appends one entry through the exporter, after everything enqueued before it; waits for
    /// room in its queue, then for Redis's answer.
    async fn append(&self, entry: Entry) -> Result<(), ReplicationError> {
        let (tx, rx) = oneshot::channel();
        let done: PublishDone = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.export
            .send((entry, done))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// The XADDs of a batch, as one pipeline.
    fn xadd_pipeline<'a>(&self, entries: impl Iterator<Item = &'a Entry>) -> redis::Pipeline {
        let (trim, threshold) = self.config.retention.args(now_ms());
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("XADD")
                .arg(&self.log_key)
                .arg(trim)
                .arg("~")
                .arg(&threshold)
                .arg("*");
            for (k, v) in entry.fields() {
                pipe.arg(k).arg(v.as_ref());
            }
        }
        pipe
    }

    /// Sends a batch's XADDs to this region's stream in one round trip; `Ok` only once Redis
    /// has answered. The batch fails or succeeds as a whole.
    async fn append_batch(&self, pipe: redis::Pipeline) -> Result<(), ReplicationError> {
        if !*self.reader_ready.borrow() {
            // A message acknowledged before this node reads its stream could be missed by this
            // node's own subscribers.
            let mut ready = self.reader_ready.subscribe();
            let wait = tokio::time::timeout(self.config.command_timeout, ready.wait_for(|r| *r));
            if wait.await.is_err() {
                return Err(ReplicationError::Unavailable(
                    "replication is starting".into(),
                ));
            }
        }
        let lease = self.local.get().await?;
        let mut conn = lease.conn.clone();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.local.failed(&lease, &e).await;
                Err(unavailable("local", &e))
            }
        }
    }

    fn connection(&self, url: &str, target: &str) -> Option<Reconnecting> {
        let label = ReplicationMetrics::label(target);
        // Blocking reads hold their connection for up to `block`: give them their own.
        Reconnecting::new(
            url,
            target,
            self.config.connect_timeout,
            self.config.command_timeout + self.config.block,
            self.config.reconnect_backoff,
            self.metrics.reconnects.get_or_create(&label).clone(),
        )
        .ok()
    }
}

/// Appends enqueued entries to this region's stream, in queue order: whatever is queued when
/// Redis answers the previous batch goes in the next one (group commit), so batches grow with
/// load and a lone publish goes out at once.
async fn export(inner: Arc<Inner>, mut rx: mpsc::Receiver<Pending>, cancel: CancellationToken) {
    let max = inner.config.batch.max(1);
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
        };
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let pipe = inner.xadd_pipeline(batch.iter().map(|(e, _)| e));
        let result = inner.append_batch(pipe).await;
        for (entry, done) in batch.drain(..) {
            if matches!(entry, Entry::Message(_)) {
                match &result {
                    Ok(()) => inner.metrics.exported.inc(),
                    Err(_) => inner.metrics.publish_failures.inc(),
                };
            }
            done(result.clone());
        }
        if batch.capacity() > max {
            batch = Vec::new();
        }
    }
    // Whoever waits on what is still queued gets an answer.
    rx.close();
    while let Ok((_, done)) = rx.try_recv() {
        done(Err(stopped()));
    }
}

/// Delivers this region's stream to this node's subscribers, in stream order, each message id
/// at most once.
async fn read_log(inner: Arc<Inner>, sink: Arc<dyn DeliverySink>, cancel: CancellationToken) {
    let Some(conn) = inner.connection(&inner.config.redis_url, "local") else {
        return;
    };
    let mut cursor: Option<StreamId> = None;
    let mut dedup = Dedup::new(inner.config.dedup_window);
    let node = inner.config.node_id.as_str();
    let mut linger = false;
    while !cancel.is_cancelled() {
        if std::mem::take(&mut linger) {
            tokio::time::sleep(inner.config.read_linger).await;
        }
        let lease = match conn.get().await {
            Ok(l) => l,
            Err(_) => {
                tokio::select! { _ = conn.pause() => continue, _ = cancel.cancelled() => break }
            }
        };
        let mut c = lease.conn.clone();
        let start = match cursor {
            Some(c) => c,
            None => match last_id(&mut c, &inner.log_key).await {
                Ok(id) => {
                    cursor = Some(id);
                    inner.reader_ready.send_replace(true);
                    tracing::debug!(%id, "stream reader starts");
                    id
                }
                Err(e) => {
                    conn.failed(&lease, &e).await;
                    continue;
                }
            },
        };
        let read = xread(
            &mut c,
            &inner.log_key,
            start,
            inner.config.batch,
            inner.config.block,
        );
        let entries = tokio::select! {
            r = read => r,
            _ = cancel.cancelled() => break,
        };
        let entries = match entries {
            Ok(e) => e,
            Err(ReadError::Redis(e)) => {
                tracing::warn!(error = %describe(&e), "reading this region's stream failed");
                conn.failed(&lease, &e).await;
                tokio::select! { _ = conn.pause() => continue, _ = cancel.cancelled() => break }
            }
            Err(ReadError::Format(e)) => {
                tracing::error!(error = %e, "unreadable stream reply");
                tokio::select! { _ = conn.pause() => continue, _ = cancel.cancelled() => break }
            }
        };
        linger = lingers(&inner.config, entries.len());
        for raw in entries {
            cursor = Some(raw.id);
            match Entry::parse(raw.fields) {
                Some(Entry::Message(m)) => {
                    if dedup.insert(&m.id) {
                        sink.deliver(m);
                    } else {
                        inner.metrics.dedup_drops.inc();
                    }
                }
                Some(Entry::Invalidation(i)) => {
                    // The node that took the request applied it already, and counted it.
                    if i.node != node || i.origin != inner.config.region {
                        let ended = sink.invalidate(&i.filter);
                        tracing::info!(filter = ?i.filter, from = %i.origin, ended, "replicated invalidation");
                    }
                }
                None => tracing::warn!(id = %raw.id, "skipping unreadable stream entry"),
            }
        }
    }
}

/// Copies the entries that originate in `peer` from its stream into this region's stream.
async fn import(inner: Arc<Inner>, peer: Peer, cancel: CancellationToken) {
    let target = peer.region.to_string();
    let Some(remote) = inner.connection(&peer.redis_url, &target) else {
        return;
    };
    let remote_log = inner.config.log_key(&peer.region);
    let cursor_key = inner.config.cursor_key(&peer.region);
    let lease_key = inner.config.lease_key(&peer.region);
    let label = ReplicationMetrics::label(&target);
    let lag_seconds = inner.metrics.lag_seconds.get_or_create(&label).clone();
    let lag_entries = inner.metrics.lag_entries.get_or_create(&label).clone();
    let imported = inner.metrics.imported.get_or_create(&label).clone();
    let mut counted_ready = false;
    let mut counted_at: Option<tokio::time::Instant> = None;
    let lease_ms = inner.config.lease.as_millis().max(1) as u64;
    // Remote time up to which this region has everything: now while caught up, the newest
    // imported entry's timestamp while behind. Lag is measured against it by a ticker, so it
    // keeps growing while a partition blocks the importer itself.
    let caught_up_to = Arc::new(AtomicU64::new(now_ms()));
    let mut behind = false;
    let mut linger = false;
    tokio::spawn(report_lag(
        Arc::clone(&caught_up_to),
        lag_seconds,
        cancel.clone(),
    ));

    'outer: while !cancel.is_cancelled() {
        // 1. Hold the import lease for this remote region (one importing node per region).
        let local = match inner.local.get().await {
            Ok(l) => l,
            Err(_) => {
                tokio::select! { _ = inner.local.pause() => continue, _ = cancel.cancelled() => break }
            }
        };
        let mut lc = local.conn.clone();
        match acquire_lease(&inner, &mut lc, &lease_key, lease_ms).await {
            Ok(true) => {}
            Ok(false) => {
                // Another node imports; be ready to take over when its lease lapses. The
                // cursor exists once it has started, which is what readiness means here.
                if !counted_ready && matches!(get_cursor(&mut lc, &cursor_key).await, Ok(Some(_))) {
                    counted_ready = true;
                    inner.importers_ready.send_modify(|n| *n += 1);
                }
                tokio::select! {
                    _ = tokio::time::sleep(inner.config.block) => continue,
                    _ = cancel.cancelled() => break,
                }
            }
            Err(e) => {
                inner.local.failed(&local, &e).await;
                continue;
            }
        }
        let mut renewed_at = tokio::time::Instant::now();

        // 2. Where the last import stopped, or the remote stream's end on a first start.
        let mut cursor = match get_cursor(&mut lc, &cursor_key).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                let rl = match remote.get().await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::select! { _ = remote.pause() => continue, _ = cancel.cancelled() => break }
                    }
                };
                let mut rc = rl.conn.clone();
                let start = match last_id(&mut rc, &remote_log).await {
                    Ok(id) => id,
                    Err(e) => {
                        remote.failed(&rl, &e).await;
                        continue;
                    }
                };
                let set: Result<Value, _> = redis::cmd("SET")
                    .arg(&cursor_key)
                    .arg(start.to_string())
                    .arg("NX")
                    .query_async(&mut lc)
                    .await;
                if let Err(e) = set {
                    inner.local.failed(&local, &e).await;
                }
                continue;
            }
            Err(e) => {
                inner.local.failed(&local, &e).await;
                continue;
            }
        };
        if !counted_ready {
            counted_ready = true;
            inner.importers_ready.send_modify(|n| *n += 1);
        }
        tracing::info!(from = %peer.region, %cursor, "importing");
        // The cursor as stored in this region's Redis: what the import script compares against.
        let mut stored = cursor;
        let mut stored_at = tokio::time::Instant::now();

        // 3. Copy batches until the lease is lost or a connection fails.
        loop {
            if cancel.is_cancelled() {
                break 'outer;
            }
            if renewed_at.elapsed() >= inner.config.lease / 3 {
                match renew_lease(&inner, &mut lc, &lease_key, lease_ms).await {
                    Ok(true) => renewed_at = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::warn!(from = %peer.region, "import lease lost");
                        continue 'outer;
                    }
                    Err(e) => {
                        inner.local.failed(&local, &e).await;
                        continue 'outer;
                    }
                }
            }
            let rl = match remote.get().await {
                Ok(l) => l,
                Err(_) => {
                    tokio::select! { _ = remote.pause() => continue, _ = cancel.cancelled() => break 'outer }
                }
            };
            let mut rc = rl.conn.clone();
            let block = inner.config.block.min(inner.config.lease / 3);
            if !behind {
                // A healthy blocking read returns within `block`: no lag until then.
                caught_up_to.store(now_ms() + block.as_millis() as u64, Ordering::Relaxed);
            }
            if std::mem::take(&mut linger) {
                tokio::time::sleep(inner.config.read_linger).await;
            }
            let read = xread(&mut rc, &remote_log, cursor, inner.config.batch, block);
            let entries = tokio::select! {
                r = read => r,
                _ = cancel.cancelled() => break 'outer,
            };
            let entries = match entries {
                Ok(e) => e,
                Err(ReadError::Redis(e)) => {
                    tracing::warn!(from = %peer.region, error = %describe(&e), "reading remote stream failed");
                    remote.failed(&rl, &e).await;
                    tokio::select! { _ = remote.pause() => continue, _ = cancel.cancelled() => break 'outer }
                }
                Err(ReadError::Format(e)) => {
                    tracing::error!(from = %peer.region, error = %e, "unreadable remote stream reply");
                    tokio::select! { _ = remote.pause() => continue, _ = cancel.cancelled() => break 'outer }
                }
            };
            let Some(last) = entries.last().map(|e| e.id) else {
                caught_up_to.store(now_ms(), Ordering::Relaxed);
                lag_entries.set(0);
                continue;
            };
            behind = entries.len() >= inner.config.batch;
            linger = lingers(&inner.config, entries.len());
            let copied: Vec<Entry> = entries
                .into_iter()
                .filter_map(|raw| Entry::parse(raw.fields))
                .filter(|e| e.origin() == &peer.region && e.exported())
                .collect();
            if copied.is_empty() && stored_at.elapsed() < CURSOR_STORE_INTERVAL {
                // Nothing originating in `peer` (typically this region's own messages, which
                // `peer` imported): skip the import script's round trip. The cursor is stored
                // with the next import, or within CURSOR_STORE_INTERVAL; an importer restarting
                // from an older cursor reads these entries again and skips them again.
                cursor = last;
            } else {
                match import_batch(&inner, &mut lc, &cursor_key, stored, last, &copied).await {
                    Ok(Imported::Done) => {
                        imported.inc_by(copied.len() as u64);
                        cursor = last;
                        stored = last;
                        stored_at = tokio::time::Instant::now();
                    }
                    Ok(Imported::Conflict(current)) => {
                        tracing::warn!(from = %peer.region, "another importer moved the cursor");
                        match current {
                            Some(c) => {
                                cursor = c;
                                stored = c;
                            }
                            None => continue 'outer,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(from = %peer.region, error = %describe(&e), "import into this region failed");
                        inner.local.failed(&local, &e).await;
                        tokio::select! { _ = inner.local.pause() => continue 'outer, _ = cancel.cancelled() => break 'outer }
                    }
                }
            }
            if behind {
                caught_up_to.store(last.ms, Ordering::Relaxed);
                if counted_at.is_none_or(|t| t.elapsed() >= LAG_COUNT_INTERVAL) {
                    counted_at = Some(tokio::time::Instant::now());
                    let mut count = inner.count_after.key(&remote_log);
                    count.arg(format!("({cursor}")).arg(LAG_COUNT_CAP);
                    if let Ok(n) = count.invoke_async::<usize>(&mut rc).await {
                        lag_entries.set(n as i64);
                    }
                }
            } else {
                caught_up_to.store(now_ms(), Ordering::Relaxed);
                lag_entries.set(0);
            }
        }
    }
}

/// Whether to wait [`RedisReplicationConfig::read_linger`] before the next read, after one that
/// returned `n` entries: only under load (more than one entry) and not when behind (a full
/// batch: read again at once).
fn lingers(config: &RedisReplicationConfig, n: usize) -> bool {
    n > 1 && n < config.batch && !config.read_linger.is_zero()
}

/// Publishes `now - caught_up_to` as the lag gauge four times a second.
async fn report_lag(
    caught_up_to: Arc<AtomicU64>,
    gauge: Gauge<f64, AtomicU64>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let behind = now_ms().saturating_sub(caught_up_to.load(Ordering::Relaxed));
        gauge.set(behind as f64 / 1000.0);
    }
}

enum Imported {
    Done,
    Conflict(Option<StreamId>),
}

async fn import_batch(
    inner: &Inner,
    conn: &mut Conn,
    cursor_key: &str,
    expected: StreamId,
    last: StreamId,
    entries: &[Entry],
) -> Result<Imported, RedisError> {
    let (trim, threshold) = inner.config.retention.args(now_ms());
    let mut inv = inner.import.key(cursor_key);
    inv.key(&inner.log_key)
        .arg(expected.to_string())
        .arg(last.to_string())
        .arg(trim)
        .arg(threshold);
    for e in entries {
        let fields = e.fields();
        inv.arg(fields.len() * 2);
        for (k, v) in fields {
            inv.arg(k).arg(v.as_ref());
        }
    }
    let (ok, current): (i64, String) = inv.invoke_async(conn).await?;
    Ok(if ok == 1 {
        Imported::Done
    } else {
        Imported::Conflict(StreamId::parse(&current))
    })
}

async fn acquire_lease(
    inner: &Inner,
    conn: &mut Conn,
    key: &str,
    ms: u64,
) -> Result<bool, RedisError> {
    let node = &inner.config.node_id;
    let set: Value = redis::cmd("SET")
        .arg(key)
        .arg(node)
        .arg("NX")
        .arg("PX")
        .arg(ms)
        .query_async(conn)
        .await?;
    if matches!(set, Value::Okay) {
        return Ok(true);
    }
    renew_lease(inner, conn, key, ms).await
}

async fn renew_lease(
    inner: &Inner,
    conn: &mut Conn,
    key: &str,
    ms: u64,
) -> Result<bool, RedisError> {
    let renewed: i64 = inner
        .renew
        .key(key)
        .arg(&inner.config.node_id)
        .arg(ms)
        .invoke_async(conn)
        .await?;
    Ok(renewed == 1)
}

async fn get_cursor(conn: &mut Conn, key: &str) -> Result<Option<StreamId>, RedisError> {
    let v: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
    Ok(v.as_deref().and_then(StreamId::parse))
}

/// The id of a stream's newest entry, or `0-0` for an empty or missing stream.
async fn last_id(conn: &mut Conn, key: &str) -> Result<StreamId, RedisError> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let entries = parse_range(reply).map_err(format_error)?;
    Ok(entries.first().map(|e| e.id).unwrap_or_default())
}

/// Why a stream read failed.
enum ReadError {
    Redis(RedisError),
    Format(String),
}

async fn xread(
    conn: &mut Conn,
    key: &str,
    after: StreamId,
    count: usize,
    block: Duration,
) -> Result<Vec<crate::entry::RawEntry>, ReadError> {
    let reply: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis().max(1) as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after.to_string())
        .query_async(conn)
        .await
        .map_err(ReadError::Redis)?;
    parse_xread(reply).map_err(ReadError::Format)
}

fn format_error(e: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "unexpected reply", e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
