//! The `idle` scenario: hold N subscribed connections and read the broker's RSS before and
//! after, so memory per idle connection = ΔRSS / N.
//!
//! A process here may hold at most 20,000 open files, so the connections are spread over
//! several worker processes (this same binary, `loadgen idle-worker`) and over several
//! loopback source addresses; the generator is never what limits the count.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LoadError;
use super::backend::{Backend, Sink, Slot};
use super::stats::{IdleReport, rss_kib};

/// What the parent asks for.
#[derive(Clone, Debug)]
pub struct IdlePlan {
    /// Connections in all.
    pub connections: usize,
    /// Worker processes.
    pub processes: usize,
    /// Channels the connections are spread over (one subscription each).
    pub channels: usize,
    /// Source addresses, as a comma-separated list for the workers.
    pub sources: Vec<IpAddr>,
    /// Wait after the last connection opened before reading memory.
    pub settle: Duration,
    /// The broker process.
    pub broker_pid: u32,
    /// Longest time allowed to open every connection.
    pub open_timeout: Duration,
}

/// The channel names of the idle scenario.
pub fn channel_name(i: usize) -> String {
    format!("idle.{i}")
}

struct Worker {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// Runs the parent side: spawns workers (`worker_args` select the backend), waits until every
/// connection is open, reads memory, then lets the workers close everything.
pub async fn run(
    plan: &IdlePlan,
    worker_args: &[String],
) -> Result<(IdleReport, Vec<String>), LoadError> {
    let exe = std::env::current_exe()?;
    let before = rss_kib(plan.broker_pid)?;
    let started = Instant::now();
    let processes = plan.processes.clamp(1, plan.connections.max(1));
    let per = plan.connections.div_ceil(processes);
    let sources: Vec<String> = plan.sources.iter().map(|s| s.to_string()).collect();
    let mut workers = Vec::new();
    let mut first = 0;
    for _ in 0..processes {
        let n = per.min(plan.connections - first);
        if n == 0 {
            break;
        }
        let mut cmd = Command::new(&exe);
        cmd.arg("idle-worker")
            .args(worker_args)
            .arg("--connections")
            .arg(n.to_string())
            .arg("--first")
            .arg(first.to_string())
            .arg("--channels")
            .arg(plan.channels.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if !sources.is_empty() {
            cmd.arg("--source-list").arg(sources.join(","));
        }
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LoadError::Setup("worker has no stdout".into()))?;
        workers.push(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
        });
        first += n;
    }

    let mut opened = 0usize;
    let mut failed = 0usize;
    let mut problems = Vec::new();
    let deadline = Instant::now() + plan.open_timeout;
    for w in &mut workers {
        let line = tokio::time::timeout_at(deadline, w.lines.next_line())
            .await
            .map_err(|_| LoadError::Timeout("workers opening their connections".into()))??;
        let Some(line) = line else {
            failed += per;
            problems.push("a worker exited before reporting".into());
            continue;
        };
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("ready"), Some(o), Some(f)) => {
                opened += o.parse::<usize>().unwrap_or(0);
                failed += f.parse::<usize>().unwrap_or(0);
                let first_error: Vec<&str> = words.collect();
                if !first_error.is_empty() && problems.len() < 5 {
                    problems.push(format!("worker: {}", first_error.join(" ")));
                }
            }
            _ => problems.push(format!("worker said {line:?}")),
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(plan.settle).await;
    let after = rss_kib(plan.broker_pid)?;

    // Let the workers go: closing their stdin tells them to close their connections.
    let mut closed_with_errors = 0u64;
    for mut w in workers {
        drop(w.child.stdin.take());
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(30), w.lines.next_line()).await
        {
            if let Some(n) = line.strip_prefix("done ") {
                closed_with_errors += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
    }
    if failed > 0 {
        problems.insert(
            0,
            format!(
                "{failed} of {} connections failed to open",
                plan.connections
            ),
        );
    }
    if closed_with_errors > 0 {
        problems.push(format!(
            "{closed_with_errors} connections ended with an error while held"
        ));
    }
    let report = IdleReport {
        requested: plan.connections,
        opened,
        failed,
        processes,
        source_addresses: plan.sources.len(),
        broker_pid: plan.broker_pid,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: if opened > 0 {
            (after.saturating_sub(before) * 1024) as f64 / opened as f64
        } else {
            0.0
        },
        connect_s,
    };
    Ok((report, problems))
}

/// Counts what an idle connection receives (nothing, normally).
struct CountSink(Arc<AtomicU64>);

impl Sink for CountSink {
    fn message(&mut self, _payload: &[u8], _recv_ns: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker side: opens `connections` subscribers (indexes from `first`), prints
/// `ready OPENED FAILED [first error]`, holds them until stdin closes, then prints
/// `done ERRORS`.
pub async fn worker(
    backend: Arc<dyn Backend>,
    connections: usize,
    first: usize,
    channels: usize,
    sources: Vec<IpAddr>,
    concurrency: usize,
) -> Result<(), LoadError> {
    let stop = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let received = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(), LoadError>>(256);
    let mut tasks = JoinSet::new();
    for i in first..first + connections {
        let (backend, limit, tx, stop, received) = (
            Arc::clone(&backend),
            Arc::clone(&limit),
            tx.clone(),
            stop.clone(),
            Arc::clone(&received),
        );
        let slot = Slot {
            index: i,
            source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
        };
        let channel = channel_name(i % channels.max(1));
        tasks.spawn(async move {
            let permit = limit.acquire_owned().await;
            let opened = backend.subscriber(slot, &[channel]).await;
            drop(permit);
            match opened {
                Ok(sub) => {
                    let _ = tx.send(Ok(())).await;
                    drop(tx);
                    sub.run(&mut CountSink(received), stop).await.is_err()
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    false
                }
            }
        });
    }
    drop(tx);
    let (mut opened, mut failed, mut first_error) = (0usize, 0usize, None);
    while let Some(r) = rx.recv().await {
        match r {
            Ok(()) => opened += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    println!(
        "ready {opened} {failed} {}",
        first_error.unwrap_or_default().replace('\n', " ")
    );
    // Hold until the parent closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    stop.cancel();
    let mut errors = 0u64;
    while let Some(r) = tasks.join_next().await {
        if matches!(r, Ok(true) | Err(_)) {
            errors += 1;
        }
    }
    println!("done {errors}");
    Ok(())
}
