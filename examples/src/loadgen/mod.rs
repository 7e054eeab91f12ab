//! `loadgen`: drives a broker from many connections and measures it, the same way for our
//! broker and for NATS (see `docs/BENCHMARKS.md` and `bench/compare.sh`).
//!
//! Scenarios: `fanout`, `channels`, `idle`, `replication`; backends behind
//! [`backend::Backend`]. Every run prints a readable summary on stderr and a JSON
//! [`stats::RunReport`] on stdout (or to `--json FILE`), and exits non-zero when the run does
//! not count: anything lost, any error.

pub mod backend;
pub mod cli;
pub mod idle;
pub mod payload;
pub mod report;
pub mod stats;
pub mod traffic;
pub mod wsframe;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use self::backend::Backend;
use self::backend::nats::NatsWs;
use self::backend::pubsub_ws::PubsubWs;
use self::backend::quic::QuicBackend;
use self::cli::{BackendKind, Cli, Command, TargetArgs, TrafficArgs};
use self::stats::RunReport;
use self::traffic::{PublisherSpec, SubscriberSpec, TrafficPlan};

/// Why a connection or a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A socket or process error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket upgrade failed.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused a request.
    #[error("refused: {0}")]
    Refused(String),
    /// The connection ended unexpectedly.
    #[error("connection closed {0}")]
    Closed(String),
    /// Bad flags.
    #[error("configuration: {0}")]
    Config(String),
    /// The run could not be set up (e.g. connections failed to open).
    #[error("setup: {0}")]
    Setup(String),
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Runs the command line; the exit code says whether the run counts.
pub async fn main(cli: Cli) -> ExitCode {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let result = match cli.command {
        Command::Fanout(a) => {
            let label = a
                .output
                .label
                .clone()
                .unwrap_or_else(|| match a.traffic.rate {
                    Some(r) if r > 0.0 => format!("fanout-{}-rate{}", a.subscribers, r),
                    _ => format!("fanout-{}", a.subscribers),
                });
            let plan = plan(
                &a.traffic,
                &a.connect,
                vec![a.channel.clone()],
                vec!["all".into()],
                (0..a.subscribers)
                    .map(|_| SubscriberSpec {
                        backend: 0,
                        channel: 0,
                        group: 0,
                    })
                    .collect(),
                (0..a.traffic.publishers)
                    .map(|_| PublisherSpec {
                        backend: 0,
                        channel: 0,
                    })
                    .collect(),
            );
            traffic_run("fanout", label, &a.target, plan, &a.traffic, command)
                .await
                .map(|r| (r, a.output.json))
        }
        Command::Channels(a) => {
            let label = a.output.label.clone().unwrap_or_else(|| {
                format!("channels-{}x{}", a.channels, a.subscribers_per_channel)
            });
            let channels: Vec<String> = (0..a.channels).map(|i| format!("bench.ch.{i}")).collect();
            let subscribers = (0..a.channels * a.subscribers_per_channel)
                .map(|i| SubscriberSpec {
                    backend: 0,
                    channel: i % a.channels,
                    group: 0,
                })
                .collect();
            let publishers = (0..a.traffic.publishers)
                .map(|i| PublisherSpec {
                    backend: 0,
                    channel: i % a.channels.max(1),
                })
                .collect();
            let plan = plan(
                &a.traffic,
                &a.connect,
                channels,
                vec!["all".into()],
                subscribers,
                publishers,
            );
            traffic_run("channels", label, &a.target, plan, &a.traffic, command)
                .await
                .map(|r| (r, a.output.json))
        }
        Command::Replication(a) => replication(a, command).await,
        Command::Idle(a) => idle(a, command).await,
        Command::IdleWorker(a) => {
            let backend = match make_backend(&a.target, 128) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    return ExitCode::from(2);
                }
            };
            let r = idle::worker(
                backend,
                a.connections,
                a.first,
                a.channels,
                a.source_list,
                a.connect_concurrency,
            )
            .await;
            return match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen idle-worker: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Report(a) => {
            return match report::write(&a.results, &a.out, &a.analysis) {
                Ok(()) => {
                    eprintln!("wrote {}", a.out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen report: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let (report, json_path) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprint!("{}", summary(&report));
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match json_path {
        Some(path) => {
            if let Err(e) = std::fs::write(&path, json + "\n") {
                eprintln!("loadgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        None => println!("{json}"),
    }
    if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn make_backend(t: &TargetArgs, payload: usize) -> Result<Arc<dyn Backend>, LoadError> {
    Ok(match t.backend {
        BackendKind::Ws => Arc::new(PubsubWs::new(&t.url, &t.api_key, payload)?),
        BackendKind::Nats => Arc::new(NatsWs::new(&t.url, t.token.as_deref())?),
        BackendKind::Quic => {
            let addr = t
                .url
                .strip_prefix("quic://")
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| LoadError::Config(format!("{}: expected quic://IP:PORT", t.url)))?;
            let cert = t
                .cert
                .as_deref()
                .ok_or_else(|| LoadError::Config("--cert is required for QUIC".into()))?;
            Arc::new(QuicBackend::new(
                addr,
                cert,
                &t.server_name,
                &t.api_key,
                payload,
            )?)
        }
    })
}

fn plan(
    t: &TrafficArgs,
    c: &cli::ConnectArgs,
    channels: Vec<String>,
    groups: Vec<String>,
    subscribers: Vec<SubscriberSpec>,
    publishers: Vec<PublisherSpec>,
) -> TrafficPlan {
    TrafficPlan {
        channels,
        groups,
        subscribers,
        publishers,
        rate: t.rate.filter(|r| *r > 0.0),
        window: t.window,
        batch: t.batch,
        warmup: t.warmup,
        duration: t.duration,
        drain: t.drain,
        payload_size: t.payload,
        connect_concurrency: c.connect_concurrency,
        sources: c.addresses(),
        broker_pids: t.broker_pids.clone(),
        store_pids: t.store_pids.clone(),
    }
}

fn check(plan: &TrafficPlan) -> Result<(), LoadError> {
    if plan.payload_size < payload::MIN_SIZE {
        return Err(LoadError::Config(format!(
            "--payload must be at least {}",
            payload::MIN_SIZE
        )));
    }
    if plan.subscribers.is_empty() || plan.publishers.is_empty() {
        return Err(LoadError::Config("need subscribers and publishers".into()));
    }
    for c in &plan.channels {
        // Names go into JSON and NATS subjects unescaped.
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(LoadError::Config(format!(
                "channel {c:?}: use letters, digits, '.', '_', '-'"
            )));
        }
    }
    Ok(())
}

async fn traffic_run(
    scenario: &str,
    label: String,
    target: &TargetArgs,
    plan: TrafficPlan,
    traffic: &TrafficArgs,
    command: String,
) -> Result<RunReport, LoadError> {
    check(&plan)?;
    let backend = make_backend(target, traffic.payload)?;
    let outcome = traffic::run(&plan, &[Arc::clone(&backend)]).await?;
    Ok(RunReport {
        scenario: scenario.into(),
        label,
        backend: backend.name().into(),
        target: backend.target(),
        command,
        started_unix: unix_now(),
        valid: outcome.problems.is_empty(),
        problems: outcome.problems,
        traffic: Some(outcome.report),
        idle: None,
    })
}

async fn replication(
    a: cli::ReplicationArgs,
    command: String,
) -> Result<(RunReport, Option<std::path::PathBuf>), LoadError> {
    let label = a
        .output
        .label
        .clone()
        .unwrap_or_else(|| match a.traffic.rate {
            Some(r) if r > 0.0 => format!("replication-rate{r}"),
            _ => "replication".into(),
        });
    let region_a: Arc<dyn Backend> =
        Arc::new(PubsubWs::new(&a.url_a, &a.api_key, a.traffic.payload)?);
    let region_b: Arc<dyn Backend> =
        Arc::new(PubsubWs::new(&a.url_b, &a.api_key, a.traffic.payload)?);
    let subscribers = (0..2 * a.subscribers)
        .map(|i| SubscriberSpec {
            backend: i % 2,
            channel: 0,
            group: i % 2,
        })
        .collect();
    let publishers = (0..a.traffic.publishers)
        .map(|_| PublisherSpec {
            backend: 0,
            channel: 0,
        })
        .collect();
    let plan = plan(
        &a.traffic,
        &a.connect,
        vec![a.channel.clone()],
        vec!["same-region".into(), "cross-region".into()],
        subscribers,
        publishers,
    );
    check(&plan)?;
    let outcome = traffic::run(&plan, &[region_a, region_b]).await?;
    let report = RunReport {
        scenario: "replication".into(),
        label,
        backend: "ws".into(),
        target: format!("{} -> {}", a.url_a, a.url_b),
        command,
        started_unix: unix_now(),
        valid: outcome.problems.is_empty(),
        problems: outcome.problems,
        traffic: Some(outcome.report),
        idle: None,
    };
    Ok((report, a.output.json))
}

async fn idle(
    a: cli::IdleArgs,
    command: String,
) -> Result<(RunReport, Option<std::path::PathBuf>), LoadError> {
    let label = a
        .output
        .label
        .clone()
        .unwrap_or_else(|| format!("idle-{}", a.connections));
    let backend = make_backend(&a.target, 128)?;
    let mut worker_args = a.target.to_args();
    worker_args.extend([
        "--connect-concurrency".into(),
        a.connect.connect_concurrency.to_string(),
    ]);
    let plan = idle::IdlePlan {
        connections: a.connections,
        processes: a.processes,
        channels: a.channels,
        sources: a.connect.addresses(),
        settle: a.settle,
        broker_pid: a.broker_pid,
        open_timeout: a.open_timeout,
    };
    let (report, problems) = idle::run(&plan, &worker_args).await?;
    let run = RunReport {
        scenario: "idle".into(),
        label,
        backend: backend.name().into(),
        target: backend.target(),
        command,
        started_unix: unix_now(),
        valid: problems.is_empty(),
        problems,
        traffic: None,
        idle: Some(report),
    };
    Ok((run, a.output.json))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A readable summary of a run.
pub fn summary(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== {} [{}] against {} ({}): {}",
        r.label,
        r.scenario,
        r.backend,
        r.target,
        if r.valid { "valid" } else { "INVALID" }
    );
    for p in &r.problems {
        let _ = writeln!(s, "   problem: {p}");
    }
    if let Some(t) = &r.traffic {
        let rate = match t.rate_per_publisher {
            Some(r) => format!("{r} msg/s per publisher"),
            None => "maximum rate".into(),
        };
        let _ = writeln!(
            s,
            "   {} publishers, {} channels, {} subscribers, {} B payloads, {rate}",
            t.publishers, t.channels, t.subscribers, t.payload_bytes
        );
        let _ = writeln!(
            s,
            "   deliveries/s {:.0}  messages/s {:.0}  (window {:.1} s)",
            t.deliveries_per_s, t.messages_per_s, t.window_s
        );
        if let Some(c) = t.broker_cpu_us_per_delivery {
            let _ = writeln!(
                s,
                "   broker CPU {:.2} s = {:.3} µs per delivery; generator used {:.0}% of a core",
                t.broker_cpu_s.unwrap_or(0.0),
                c,
                t.generator_cpu_fraction * 100.0
            );
        }
        if let Some(c) = t.store_cpu_us_per_message {
            let _ = writeln!(
                s,
                "   store CPU {:.2} s = {:.3} µs per message",
                t.store_cpu_s.unwrap_or(0.0),
                c
            );
        }
        let _ = writeln!(
            s,
            "   published {}  expected {}  received {}  lost {}  duplicates {}  errors {}",
            t.published, t.expected, t.received, t.lost, t.duplicates, t.errors
        );
        for g in &t.groups {
            let l = &g.latency;
            let _ = writeln!(
                s,
                "   latency [{}] p50 {:.0} µs  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  (n={})",
                g.name, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
            );
        }
        if t.groups.len() == 2 {
            let (a, b) = (&t.groups[0].latency, &t.groups[1].latency);
            let _ = writeln!(
                s,
                "   added by replication: p50 {:.0} µs  p99 {:.0} µs",
                b.p50_us - a.p50_us,
                b.p99_us - a.p99_us
            );
        }
        if t.max_publisher_lag_ms > 5.0 {
            let _ = writeln!(
                s,
                "   note: publishers fell {:.1} ms behind schedule",
                t.max_publisher_lag_ms
            );
        }
    }
    if let Some(i) = &r.idle {
        let _ = writeln!(
            s,
            "   {} of {} connections open ({} processes, {} source addresses, {:.1} s to open)",
            i.opened, i.requested, i.processes, i.source_addresses, i.connect_s
        );
        let _ = writeln!(
            s,
            "   broker RSS {} KiB -> {} KiB: {:.0} bytes ({:.2} KiB) per connection",
            i.rss_before_kib,
            i.rss_after_kib,
            i.bytes_per_connection,
            i.bytes_per_connection / 1024.0
        );
    }
    s
}
