//! The traffic engine behind `fanout`, `channels` and `replication`: open the subscribers,
//! publish at a fixed rate or as fast as the broker delivers, then count and time every
//! delivery.
//!
//! At maximum rate the publishers are closed-loop: each keeps at most `window` of its
//! messages in flight (published, not yet received by every subscriber of its channel), so the
//! broker is always busy but never overrun; a broker that drops slow consumers is then measured
//! at the rate it can sustain without losing anything. At a fixed rate they are open-loop:
//! they follow their schedule whatever the broker does.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LoadError;
use super::backend::{Backend, Publisher, Sink, Slot};
use super::payload::{self, Stamp, now_ns};
use super::stats::{GroupReport, LatencyHistogram, SharedHistogram, TrafficReport, cpu_seconds};

/// Latency samples a subscriber gathers before taking the shared histogram's lock.
const SAMPLE_BATCH: usize = 256;
/// Errors described in a report at most (the rest are only counted).
const MAX_PROBLEMS: usize = 10;

/// What to run.
#[derive(Clone, Debug)]
pub struct TrafficPlan {
    /// Channel names.
    pub channels: Vec<String>,
    /// Subscriber groups' names (at least one).
    pub groups: Vec<String>,
    /// Every subscriber connection.
    pub subscribers: Vec<SubscriberSpec>,
    /// Every publisher connection.
    pub publishers: Vec<PublisherSpec>,
    /// Messages per second per publisher; `None` for maximum rate.
    pub rate: Option<f64>,
    /// At maximum rate: messages each publisher may have in flight.
    pub window: u64,
    /// Most messages written in one go.
    pub batch: u64,
    /// Traffic before measuring.
    pub warmup: Duration,
    /// Measured traffic.
    pub duration: Duration,
    /// How long to wait for the last deliveries after publishing stops.
    pub drain: Duration,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    /// Source addresses to spread connections over (empty: the system's choice).
    pub sources: Vec<IpAddr>,
    /// Broker processes whose CPU time to measure over the window.
    pub broker_pids: Vec<u32>,
    /// Store processes (Redis) whose CPU time to measure over the window.
    pub store_pids: Vec<u32>,
}

/// One subscriber connection.
#[derive(Clone, Copy, Debug)]
pub struct SubscriberSpec {
    /// Index into the backends.
    pub backend: usize,
    /// Index into the channels.
    pub channel: usize,
    /// Index into the groups.
    pub group: usize,
}

/// One publisher connection.
#[derive(Clone, Copy, Debug)]
pub struct PublisherSpec {
    /// Index into the backends.
    pub backend: usize,
    /// Index into the channels.
    pub channel: usize,
}

/// The outcome: the report and why the run does not count, if it does not.
#[derive(Debug)]
pub struct TrafficOutcome {
    /// Throughput, loss, latency.
    pub report: TrafficReport,
    /// Problems: lost messages, errors. Empty for a valid run.
    pub problems: Vec<String>,
}

struct ChannelState {
    name: String,
    subscribers: u64,
    published: AtomicU64,
    received: AtomicU64,
    /// Deliveries that may be in flight on this channel at maximum rate.
    window: u64,
    /// A publisher waits for room in the window.
    waiting: AtomicBool,
    room: Notify,
}

impl ChannelState {
    fn in_flight(&self) -> u64 {
        let published = self.published.load(Ordering::Acquire);
        (published * self.subscribers).saturating_sub(self.received.load(Ordering::Acquire))
    }
}

struct GroupState {
    received: AtomicU64,
    histogram: SharedHistogram,
}

struct Shared {
    channels: Vec<ChannelState>,
    groups: Vec<GroupState>,
    /// Messages published from this time on are timed (nanoseconds since the epoch).
    measure_from_ns: AtomicU64,
    publishers: usize,
    /// Subscribers whose connection failed during the run.
    failed: AtomicUsize,
}

impl Shared {
    fn received(&self) -> u64 {
        self.channels
            .iter()
            .map(|c| c.received.load(Ordering::Acquire))
            .sum()
    }

    fn published(&self) -> u64 {
        self.channels
            .iter()
            .map(|c| c.published.load(Ordering::Acquire))
            .sum()
    }

    fn expected(&self) -> u64 {
        self.channels
            .iter()
            .map(|c| c.published.load(Ordering::Acquire) * c.subscribers)
            .sum()
    }
}

/// One subscriber's counters.
struct SubSink {
    shared: Arc<Shared>,
    channel: usize,
    group: usize,
    unpublished: u64,
    samples: Vec<u64>,
    /// Highest sequence number seen per publisher.
    last_seq: Vec<u64>,
    duplicates: u64,
    foreign: u64,
    measure_from_ns: u64,
}

impl SubSink {
    fn new(shared: Arc<Shared>, channel: usize, group: usize) -> Self {
        let publishers = shared.publishers;
        let measure_from_ns = shared.measure_from_ns.load(Ordering::Relaxed);
        Self {
            shared,
            channel,
            group,
            unpublished: 0,
            samples: Vec::with_capacity(SAMPLE_BATCH),
            last_seq: vec![0; publishers],
            duplicates: 0,
            foreign: 0,
            measure_from_ns,
        }
    }

    fn flush_samples(&mut self) {
        if !self.samples.is_empty() {
            self.shared.groups[self.group]
                .histogram
                .record_all(&self.samples);
            self.samples.clear();
        }
    }
}

impl Sink for SubSink {
    fn message(&mut self, payload: &[u8], recv_ns: u64) {
        self.unpublished += 1;
        let Some(Stamp {
            t_ns,
            seq,
            publisher,
        }) = payload::parse(payload)
        else {
            self.foreign += 1;
            return;
        };
        match self.last_seq.get_mut(publisher as usize) {
            Some(last) if seq > *last => *last = seq,
            Some(_) => self.duplicates += 1,
            None => self.foreign += 1,
        }
        if t_ns >= self.measure_from_ns {
            self.samples.push(recv_ns.saturating_sub(t_ns));
        }
    }

    fn batch_end(&mut self) {
        if self.unpublished > 0 {
            let ch = &self.shared.channels[self.channel];
            ch.received.fetch_add(self.unpublished, Ordering::AcqRel);
            self.shared.groups[self.group]
                .received
                .fetch_add(self.unpublished, Ordering::Relaxed);
            self.unpublished = 0;
            if ch.waiting.load(Ordering::Acquire)
                && ch.in_flight() <= ch.window / 2
                && ch.waiting.swap(false, Ordering::AcqRel)
            {
                ch.room.notify_waiters();
            }
        }
        if self.samples.len() >= SAMPLE_BATCH {
            self.flush_samples();
        }
        self.measure_from_ns = self.shared.measure_from_ns.load(Ordering::Relaxed);
    }
}

struct SubResult {
    duplicates: u64,
    foreign: u64,
    error: Option<LoadError>,
}

/// Runs `plan` against `backends` (indexed by the specs).
pub async fn run(
    plan: &TrafficPlan,
    backends: &[Arc<dyn Backend>],
) -> Result<TrafficOutcome, LoadError> {
    let mut subs_per_channel = vec![0u64; plan.channels.len()];
    for s in &plan.subscribers {
        subs_per_channel[s.channel] += 1;
    }
    let mut pubs_per_channel = vec![0u64; plan.channels.len()];
    for p in &plan.publishers {
        pubs_per_channel[p.channel] += 1;
    }
    let shared = Arc::new(Shared {
        channels: plan
            .channels
            .iter()
            .enumerate()
            .map(|(i, name)| ChannelState {
                name: name.clone(),
                subscribers: subs_per_channel[i],
                published: AtomicU64::new(0),
                received: AtomicU64::new(0),
                window: plan.window.max(1) * pubs_per_channel[i] * subs_per_channel[i],
                waiting: AtomicBool::new(false),
                room: Notify::new(),
            })
            .collect(),
        groups: plan
            .groups
            .iter()
            .map(|_| GroupState {
                received: AtomicU64::new(0),
                histogram: SharedHistogram::default(),
            })
            .collect(),
        measure_from_ns: AtomicU64::new(u64::MAX),
        publishers: plan.publishers.len(),
        failed: AtomicUsize::new(0),
    });
    let source =
        |i: usize| (!plan.sources.is_empty()).then(|| plan.sources[i % plan.sources.len()]);

    // Subscribers: connect (bounded concurrency), report ready, receive until stopped.
    let stop = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), LoadError>>(64);
    let mut subscriber_tasks = JoinSet::new();
    let connect_started = Instant::now();
    for (i, spec) in plan.subscribers.iter().copied().enumerate() {
        let backend = Arc::clone(&backends[spec.backend]);
        let channel = plan.channels[spec.channel].clone();
        let (limit, ready, stop, shared) = (
            Arc::clone(&limit),
            ready_tx.clone(),
            stop.clone(),
            Arc::clone(&shared),
        );
        let slot = Slot {
            index: i,
            source: source(i),
        };
        subscriber_tasks.spawn(async move {
            let permit = limit.acquire_owned().await;
            let opened = backend.subscriber(slot, &[channel]).await;
            drop(permit);
            let sub = match opened {
                Ok(s) => {
                    let _ = ready.send(Ok(())).await;
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return None;
                }
            };
            drop(ready);
            let mut sink = SubSink::new(shared, spec.channel, spec.group);
            let error = sub.run(&mut sink, stop).await.err();
            if error.is_some() {
                sink.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            sink.batch_end();
            sink.flush_samples();
            Some(SubResult {
                duplicates: sink.duplicates,
                foreign: sink.foreign,
                error,
            })
        });
    }
    drop(ready_tx);
    let mut problems = Vec::new();
    let mut connect_errors = 0u64;
    for _ in 0..plan.subscribers.len() {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                connect_errors += 1;
                if problems.len() < MAX_PROBLEMS {
                    problems.push(format!("subscriber failed to connect: {e}"));
                }
            }
            None => break,
        }
    }
    if connect_errors > 0 {
        stop.cancel();
        subscriber_tasks.shutdown().await;
        return Err(LoadError::Setup(format!(
            "{connect_errors} of {} subscribers failed to connect; first: {}",
            plan.subscribers.len(),
            problems.first().map_or("", String::as_str)
        )));
    }
    tracing::info!(
        subscribers = plan.subscribers.len(),
        seconds = connect_started.elapsed().as_secs_f64(),
        "subscribers ready"
    );

    let mut publishers: Vec<Box<dyn Publisher>> = Vec::with_capacity(plan.publishers.len());
    for (i, spec) in plan.publishers.iter().enumerate() {
        let slot = Slot {
            index: i,
            source: source(i + plan.subscribers.len()),
        };
        publishers.push(backends[spec.backend].publisher(slot).await?);
    }

    // Publish.
    let t0 = Instant::now();
    let measure_start = t0 + plan.warmup;
    let end = measure_start + plan.duration;
    shared
        .measure_from_ns
        .store(now_ns() + plan.warmup.as_nanos() as u64, Ordering::Relaxed);
    let mut publisher_tasks = JoinSet::new();
    for (i, (publisher, spec)) in publishers.into_iter().zip(&plan.publishers).enumerate() {
        let shared = Arc::clone(&shared);
        let cfg = PublishLoop {
            index: i as u32,
            channel: spec.channel,
            rate: plan.rate,
            batch: plan.batch.max(1),
            payload_size: plan.payload_size,
            t0,
            end,
            drain: plan.drain,
        };
        publisher_tasks.spawn(cfg.run(publisher, shared));
    }
    tokio::time::sleep_until(measure_start).await;
    let group_received = |s: &Shared| -> Vec<u64> {
        s.groups
            .iter()
            .map(|g| g.received.load(Ordering::Relaxed))
            .collect()
    };
    // None without processes to measure, or if one of them cannot be read.
    let cpu = |pids: &[u32]| -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter()
            .map(|p| cpu_seconds(*p).ok())
            .sum::<Option<f64>>()
    };
    let me = std::process::id();
    let (r0, p0, w0) = (shared.received(), shared.published(), Instant::now());
    let group_r0 = group_received(&shared);
    let (broker0, gen0) = (cpu(&plan.broker_pids), cpu_seconds(me).ok());
    let store0 = cpu(&plan.store_pids);
    tokio::time::sleep_until(end).await;
    let (r1, p1, w1) = (shared.received(), shared.published(), Instant::now());
    let group_r1 = group_received(&shared);
    let (broker1, gen1) = (cpu(&plan.broker_pids), cpu_seconds(me).ok());
    let store1 = cpu(&plan.store_pids);
    let window_s = (w1 - w0).as_secs_f64();
    let broker_cpu_s = broker0.zip(broker1).map(|(a, b)| b - a);
    let store_cpu_s = store0.zip(store1).map(|(a, b)| b - a);

    let mut errors = 0u64;
    let mut max_lag = Duration::ZERO;
    while let Some(joined) = publisher_tasks.join_next().await {
        match joined {
            Ok((lag, Ok(outcome))) => {
                max_lag = max_lag.max(lag);
                errors += outcome.errors;
                if outcome.errors > 0 && problems.len() < MAX_PROBLEMS {
                    problems.push(format!("the broker refused {} publishes", outcome.errors));
                }
            }
            Ok((lag, Err(e))) => {
                max_lag = max_lag.max(lag);
                errors += 1;
                if problems.len() < MAX_PROBLEMS {
                    problems.push(format!("publisher failed: {e}"));
                }
            }
            Err(e) => {
                errors += 1;
                problems.push(format!("publisher task failed: {e}"));
            }
        }
    }

    // Wait for the last deliveries.
    let drain_deadline = Instant::now() + plan.drain;
    while shared.received() < shared.expected() && Instant::now() < drain_deadline {
        if shared.failed.load(Ordering::Relaxed) > 0 {
            break; // a subscriber failed: do not wait for what will not come
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let (mut duplicates, mut foreign) = (0u64, 0u64);
    while let Some(joined) = subscriber_tasks.join_next().await {
        match joined {
            Ok(Some(r)) => {
                duplicates += r.duplicates;
                foreign += r.foreign;
                if let Some(e) = r.error {
                    errors += 1;
                    if problems.len() < MAX_PROBLEMS {
                        problems.push(format!("subscriber: {e}"));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                errors += 1;
                problems.push(format!("subscriber task failed: {e}"));
            }
        }
    }

    let (published, expected, received) =
        (shared.published(), shared.expected(), shared.received());
    let lost = expected.saturating_sub(received.saturating_sub(duplicates));
    if lost > 0 {
        problems.insert(0, format!("{lost} of {expected} deliveries lost"));
    }
    if duplicates > 0 {
        problems.push(format!(
            "{duplicates} deliveries duplicated or out of order"
        ));
    }
    if foreign > 0 {
        problems.push(format!("{foreign} deliveries without a readable stamp"));
    }
    if published == 0 {
        problems.push("nothing was published".into());
    }
    let mut all = LatencyHistogram::new();
    let groups = plan
        .groups
        .iter()
        .zip(&shared.groups)
        .enumerate()
        .map(|(i, (name, g))| {
            g.histogram.merge_into(&mut all);
            GroupReport {
                name: name.clone(),
                subscribers: plan.subscribers.iter().filter(|s| s.group == i).count(),
                received: g.received.load(Ordering::Relaxed),
                deliveries_per_s: (group_r1[i] - group_r0[i]) as f64 / window_s,
                latency: g.histogram.summary(),
            }
        })
        .collect::<Vec<_>>();
    let report = TrafficReport {
        subscribers: plan.subscribers.len(),
        publishers: plan.publishers.len(),
        channels: plan.channels.len(),
        payload_bytes: plan.payload_size,
        rate_per_publisher: plan.rate,
        published,
        expected,
        received,
        lost,
        duplicates,
        errors,
        window_s,
        deliveries_per_s: (r1 - r0) as f64 / window_s,
        messages_per_s: (p1 - p0) as f64 / window_s,
        max_publisher_lag_ms: max_lag.as_secs_f64() * 1000.0,
        broker_cpu_s,
        broker_cpu_us_per_delivery: broker_cpu_s
            .filter(|_| r1 > r0)
            .map(|c| c * 1e6 / (r1 - r0) as f64),
        store_cpu_s,
        store_cpu_us_per_message: store_cpu_s
            .filter(|_| p1 > p0)
            .map(|c| c * 1e6 / (p1 - p0) as f64),
        generator_cpu_fraction: match (gen0, gen1) {
            (Some(a), Some(b)) => (b - a) / window_s,
            _ => 0.0,
        },
        latency: all.summary(),
        groups,
    };
    Ok(TrafficOutcome { report, problems })
}

/// One publisher's schedule.
struct PublishLoop {
    index: u32,
    channel: usize,
    rate: Option<f64>,
    batch: u64,
    payload_size: usize,
    t0: Instant,
    end: Instant,
    drain: Duration,
}

impl PublishLoop {
    /// Publishes until `end`; returns the worst lag behind schedule and what the broker said.
    async fn run(
        self,
        mut publisher: Box<dyn Publisher>,
        shared: Arc<Shared>,
    ) -> (Duration, Result<super::backend::PublishOutcome, LoadError>) {
        let mut lag = Duration::ZERO;
        let result = self.publish(&mut *publisher, &shared, &mut lag).await;
        let outcome = match result {
            Ok(()) => publisher.finish(self.drain).await,
            Err(e) => Err(e),
        };
        (lag, outcome)
    }

    async fn publish(
        &self,
        publisher: &mut dyn Publisher,
        shared: &Shared,
        lag: &mut Duration,
    ) -> Result<(), LoadError> {
        let ch = &shared.channels[self.channel];
        let mut seq = 0u64;
        let mut buf = Vec::with_capacity(self.payload_size);
        loop {
            let now = Instant::now();
            if now >= self.end {
                return Ok(());
            }
            let n = match self.rate {
                Some(rate) => {
                    let due = ((now - self.t0).as_secs_f64() * rate) as u64 + 1;
                    if due <= seq {
                        let next = self.t0 + Duration::from_secs_f64(seq as f64 / rate);
                        tokio::time::sleep_until(next.min(self.end)).await;
                        continue;
                    }
                    let scheduled = self.t0 + Duration::from_secs_f64(seq as f64 / rate);
                    *lag = (*lag).max(now.saturating_duration_since(scheduled));
                    (due - seq).min(self.batch)
                }
                None => {
                    let room = ch.window.saturating_sub(ch.in_flight()) / ch.subscribers.max(1);
                    if room == 0 {
                        let notified = ch.room.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        ch.waiting.store(true, Ordering::Release);
                        if ch.in_flight() <= ch.window / 2 {
                            continue;
                        }
                        tokio::select! {
                            _ = notified => {}
                            // A safety net only: deliveries notify.
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                            _ = tokio::time::sleep_until(self.end) => {}
                        }
                        continue;
                    }
                    room.min(self.batch)
                }
            };
            let t_ns = now_ns();
            for _ in 0..n {
                seq += 1;
                buf.clear();
                let stamp = Stamp {
                    t_ns,
                    seq,
                    publisher: self.index,
                };
                payload::write(&mut buf, stamp, self.payload_size);
                publisher.publish(&ch.name, &buf).await?;
            }
            // Counted before the write, so that no delivery can be seen before its publish.
            ch.published.fetch_add(n, Ordering::AcqRel);
            publisher.flush().await?;
        }
    }
}
