//! The Markdown benchmark report (`docs/BENCHMARKS.md`), written from the directory of JSON
//! results that `bench/compare.sh` leaves: every figure in it comes from those files, and the
//! verdicts against the targets of issue 6 are computed, never typed.
//!
//! Files read: `*--ws--rN.json`, `*--nats--rN.json`, `*--quic--rN.json` ([`RunReport`]s),
//! `*.json.failed` (runs that crashed), `redis-benchmark--rN.txt` (requests per second),
//! `meta.txt` (`key: value` lines about the machine and versions), `commands.txt` (the exact
//! generator commands), `profile.md` (what `bench/profile.sh` printed), and the hand-written
//! analysis `bench/ANALYSIS.md` if present.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::stats::RunReport;

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Reading the results or writing the report failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A result file is not a run report.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Every run of one configuration on one backend.
#[derive(Debug, Default)]
struct Runs {
    runs: Vec<RunReport>,
    crashed: usize,
}

impl Runs {
    fn valid(&self) -> impl Iterator<Item = &RunReport> {
        self.runs.iter().filter(|r| r.valid)
    }

    fn total(&self) -> usize {
        self.runs.len() + self.crashed
    }

    fn count_valid(&self) -> usize {
        self.valid().count()
    }

    /// Median of `f` over the valid runs.
    fn median(&self, f: impl Fn(&RunReport) -> Option<f64>) -> Option<f64> {
        median(self.valid().filter_map(f).collect())
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

struct Results {
    /// (label, backend) → runs.
    runs: BTreeMap<(String, String), Runs>,
    xadd: Vec<f64>,
    meta: Vec<(String, String)>,
    commands: Vec<String>,
    analysis: Option<String>,
    profile: Option<String>,
}

impl Results {
    fn get(&self, label: &str, backend: &str) -> Option<&Runs> {
        self.runs.get(&(label.to_owned(), backend.to_owned()))
    }

    fn meta(&self, key: &str) -> &str {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map_or("?", |(_, v)| v.as_str())
    }

    fn labels(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .runs
            .keys()
            .map(|(l, _)| l.clone())
            .filter(|l| l.starts_with(prefix))
            .collect();
        v.dedup();
        v
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn load(dir: &Path, analysis: &Path) -> Result<Results, ReportError> {
    let mut results = Results {
        runs: BTreeMap::new(),
        xadd: Vec::new(),
        meta: Vec::new(),
        commands: Vec::new(),
        analysis: std::fs::read_to_string(analysis).ok(),
        profile: std::fs::read_to_string(dir.join("profile.md")).ok(),
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = || std::fs::read_to_string(&path).map_err(io_err(&path));
        if name.ends_with(".json") {
            let report: RunReport =
                serde_json::from_str(&text()?).map_err(|source| ReportError::Json {
                    path: path.display().to_string(),
                    source,
                })?;
            results
                .runs
                .entry((report.label.clone(), report.backend.clone()))
                .or_default()
                .runs
                .push(report);
        } else if name.ends_with(".json.failed") {
            // `LABEL--BACKEND--rN.json.failed`
            let mut parts = name.split("--");
            if let (Some(label), Some(backend)) = (parts.next(), parts.next()) {
                results
                    .runs
                    .entry((label.to_owned(), backend.to_owned()))
                    .or_default()
                    .crashed += 1;
            }
        } else if name.starts_with("redis-benchmark--") {
            if let Ok(v) = text()?.trim().parse::<f64>() {
                results.xadd.push(v);
            }
        } else if name == "meta.txt" {
            results.meta = text()?
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        } else if name == "commands.txt" {
            results.commands = text()?.lines().map(str::to_owned).collect();
        }
    }
    Ok(results)
}

/// Writes the report for the results in `dir` to `out`, with the analysis in `analysis`.
pub fn write(dir: &Path, out: &Path, analysis: &Path) -> Result<(), ReportError> {
    let results = load(dir, analysis)?;
    let text = render(&results);
    std::fs::write(out, text).map_err(io_err(out))
}

// ---------------------------------------------------------------- formatting helpers

fn rate(v: Option<f64>) -> String {
    match v {
        None => "invalid".into(),
        Some(v) if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.0} k/s", v / 1e3),
        Some(v) => format!("{v:.0} /s"),
    }
}

fn ms(us: Option<f64>) -> String {
    match us {
        None => "invalid".into(),
        Some(us) if us < 10_000.0 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{:.0} ms", us / 1000.0),
    }
}

fn kib(bytes: Option<f64>) -> String {
    bytes.map_or("invalid".into(), |b| format!("{:.2} KiB", b / 1024.0))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn times(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}×"))
}

/// A verdict for "higher is better, at least `min`".
fn at_least(value: Option<f64>, min: f64) -> String {
    match value {
        None => "not measured".into(),
        Some(v) if v >= min => "**met**".into(),
        Some(v) => format!("**missed** by {:.0}%", (1.0 - v / min) * 100.0),
    }
}

/// A verdict for "lower is better, at most `max`".
fn at_most(value: Option<f64>, max: f64) -> String {
    match value {
        None => "not measured".into(),
        Some(v) if v <= max => "**met**".into(),
        Some(v) => format!("**missed**: {:.0}% over", (v / max - 1.0) * 100.0),
    }
}

/// `value (valid/total)`, the share of rounds the median is taken over.
fn with_valid(value: String, runs: Option<&Runs>) -> String {
    match runs {
        None => "not run".into(),
        Some(r) => format!("{value} ({}/{} valid)", r.count_valid(), r.total()),
    }
}

fn traffic<T>(r: &RunReport, f: impl Fn(&super::stats::TrafficReport) -> T) -> Option<T> {
    r.traffic.as_ref().map(f)
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------- the document

fn render(r: &Results) -> String {
    let mut s = String::new();
    let nats = r.meta("nats-server");
    let _ = writeln!(s, "# Benchmarks: pubsub-broker and NATS, side by side\n");
    let _ = writeln!(
        s,
        "Generated by [`bench/compare.sh`](../bench/compare.sh) on {} (commit {}, {} mode, {} \
         round(s) per configuration). **Every figure below comes from that one run**, which \
         measured both brokers the same way, in alternation, with the same load generator \
         (`loadgen`, [`examples/src/loadgen`](../examples/src/loadgen)); re-run the script to \
         refresh this file rather than editing it. Medians over the valid rounds; the \
         per-round figures are further down.\n",
        r.meta("date"),
        r.meta("commit"),
        r.meta("mode"),
        r.meta("rounds"),
    );
    let _ = writeln!(
        s,
        "Machine: {} × {} ({}), {}, {}. Pinning: {}. Load average before / after: {} / {}; \
         busy processes before the run: {}. This machine is shared: absolute rates move with \
         other people's work, which is why the comparisons are ratios from one run, and why \
         broker CPU time per delivery (read from `/proc`, robust to time stolen by others) is \
         given beside every rate.\n",
        r.meta("cpus"),
        r.meta("cpu"),
        r.meta("kernel"),
        r.meta("memory"),
        r.meta("open files limit")
            .parse::<u64>()
            .map_or("?".into(), |n| format!("{n} open files per process")),
        r.meta("pinning"),
        r.meta("load before"),
        r.meta("load after"),
        r.meta("busy processes before"),
    );
    summary(&mut s, r, nats);
    fanout_details(&mut s, r);
    latency_details(&mut s, r);
    channels_details(&mut s, r);
    idle_details(&mut s, r);
    replication_details(&mut s, r);
    setup(&mut s, r, nats);
    if let Some(a) = &r.analysis {
        let _ = writeln!(s, "{}\n", a.trim_end());
    }
    if let Some(p) = &r.profile {
        let _ = writeln!(s, "{}", p.trim_end());
    }
    s
}

fn fanout_rate(r: &Results, label: &str, backend: &str) -> Option<f64> {
    r.get(label, backend)
        .and_then(|x| x.median(|run| traffic(run, |t| t.deliveries_per_s)))
}

fn fanout_cpu(r: &Results, label: &str, backend: &str) -> Option<f64> {
    r.get(label, backend).and_then(|x| {
        x.median(|run| {
            run.traffic
                .as_ref()
                .and_then(|t| t.broker_cpu_us_per_delivery)
        })
    })
}

fn latency_of(
    r: &Results,
    label: &str,
    backend: &str,
    f: impl Fn(&super::stats::Latency) -> f64,
) -> Option<f64> {
    r.get(label, backend)
        .and_then(|x| x.median(|run| traffic(run, |t| f(&t.latency))))
}

fn summary(s: &mut String, r: &Results, nats: &str) {
    let _ = writeln!(s, "## Summary against the targets of issue 6\n");
    let _ = writeln!(
        s,
        "| What | Target | pubsub-broker (WebSocket) | NATS (WebSocket) | Ratio | Verdict |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for label in r.labels("fanout-") {
        let n: usize = label["fanout-".len()..].parse().unwrap_or(0);
        let (ours, theirs) = (fanout_rate(r, &label, "ws"), fanout_rate(r, &label, "nats"));
        let ratio_v = ratio(ours, theirs);
        let (target, verdict) = if n >= 10_000 {
            let verdict = match ratio_v {
                Some(v) if v >= 10.0 => "**met** (and the 10× aim)".to_owned(),
                Some(v) if v >= 1.5 => {
                    format!(
                        "**met**; the 10× aim missed by {:.0}%",
                        (1.0 - v / 10.0) * 100.0
                    )
                }
                other => at_least(other, 1.5),
            };
            ("≥ 1.5× NATS (aim: 10×), nothing lost", verdict)
        } else {
            ("≥ 1.5× NATS, nothing lost", at_least(ratio_v, 1.5))
        };
        let _ = writeln!(
            s,
            "| Fan-out 1 → {} subscribers, deliveries/s at maximum rate | {target} | {} | {} | {} | {verdict} |",
            thousands(n),
            with_valid(rate(ours), r.get(&label, "ws")),
            with_valid(rate(theirs), r.get(&label, "nats")),
            times(ratio_v),
        );
        let (co, cn) = (fanout_cpu(r, &label, "ws"), fanout_cpu(r, &label, "nats"));
        let _ = writeln!(
            s,
            "| … broker CPU per delivery (same runs) | (lower is better) | {} | {} | NATS uses {} | – |",
            co.map_or("–".into(), |v| format!("{v:.3} µs")),
            cn.map_or("–".into(), |v| format!("{v:.3} µs")),
            times(ratio(cn, co))
        );
    }
    for label in r.labels("latency-") {
        let (ours, theirs) = (
            latency_of(r, &label, "ws", |l| l.p99_us),
            latency_of(r, &label, "nats", |l| l.p99_us),
        );
        let verdict = match (ours, theirs) {
            (Some(o), Some(t)) if o <= 10_000.0 && o <= t => "**met**".to_owned(),
            (Some(o), Some(t)) if o <= t => format!(
                "better than NATS; **missed** 10 ms by {:.1} ms",
                (o - 10_000.0) / 1000.0
            ),
            (Some(o), Some(_)) if o <= 10_000.0 => "**missed**: worse than NATS".to_owned(),
            (Some(o), _) => at_most(Some(o), 10_000.0),
            _ => "not measured".into(),
        };
        let _ = writeln!(
            s,
            "| Latency p99, {} | ≤ 10 ms and ≤ NATS | {} | {} | {} | {verdict} |",
            describe_latency_label(&label),
            with_valid(ms(ours), r.get(&label, "ws")),
            with_valid(ms(theirs), r.get(&label, "nats")),
            times(ratio(ours, theirs))
        );
    }
    if r.get("channels", "ws").is_some() {
        let (ours, theirs) = (
            fanout_rate(r, "channels", "ws"),
            fanout_rate(r, "channels", "nats"),
        );
        let shape = r
            .get("channels", "ws")
            .and_then(|x| x.runs.first())
            .and_then(|run| run.traffic.as_ref())
            .map_or(String::new(), |t| {
                format!(
                    "{} channels × {} subscribers, {} publishers",
                    t.channels,
                    t.subscribers / t.channels.max(1),
                    t.publishers
                )
            });
        let _ = writeln!(
            s,
            "| Channels: {shape}, deliveries/s | (no target) | {} | {} | {} | – |",
            with_valid(rate(ours), r.get("channels", "ws")),
            with_valid(rate(theirs), r.get("channels", "nats")),
            times(ratio(ours, theirs))
        );
    }
    if r.get("idle", "ws").is_some() {
        let per = |b: &str| {
            r.get("idle", b)
                .and_then(|x| x.median(|run| run.idle.as_ref().map(|i| i.bytes_per_connection)))
        };
        let (ours, theirs) = (per("ws"), per("nats"));
        let opened = r
            .get("idle", "ws")
            .and_then(|x| x.valid().next())
            .and_then(|run| run.idle.as_ref())
            .map_or(0, |i| i.opened);
        let _ = writeln!(
            s,
            "| Idle connections ({}): broker RSS per connection | ≤ 4 KiB | {} | {} | NATS uses {} | {} |",
            thousands(opened),
            with_valid(kib(ours), r.get("idle", "ws")),
            with_valid(kib(theirs), r.get("idle", "nats")),
            times(ratio(theirs, ours)),
            at_most(ours, 4096.0)
        );
    }
    if let Some(runs) = r.get("replication", "ws") {
        let thr = runs.median(|run| {
            run.traffic
                .as_ref()
                .and_then(|t| t.groups.get(1))
                .map(|g| g.deliveries_per_s / g.subscribers.max(1) as f64)
        });
        let xadd = median(r.xadd.clone());
        let ratio_v = ratio(thr, xadd);
        let _ = writeln!(
            s,
            "| Replication A → B through Redis Streams, messages/s at maximum rate | ≥ 0.5 × `redis-benchmark` pipelined XADD on the same Redis | {} | XADD -P 64: {} | {} | {} |",
            with_valid(rate(thr), Some(runs)),
            rate(xadd),
            times(ratio_v),
            at_least(ratio_v, 0.5)
        );
    }
    for label in r.labels("replication-rate") {
        if let Some(runs) = r.get(&label, "ws") {
            let added = |f: fn(&super::stats::Latency) -> f64| {
                runs.median(|run| {
                    let t = run.traffic.as_ref()?;
                    Some(f(&t.groups.get(1)?.latency) - f(&t.groups.first()?.latency))
                })
            };
            let p99 = added(|l| l.p99_us);
            let p50 = added(|l| l.p50_us);
            let _ = writeln!(
                s,
                "| Replication added latency (cross-region − same-region), {} msg/s | p99 < 5 ms | p50 {}, p99 {} | – | – | {} |",
                &label["replication-rate".len()..],
                ms(p50),
                ms(p99),
                at_most(p99, 5_000.0)
            );
        }
    }
    let quic = r.labels("quic-");
    if quic.is_empty() {
        let _ = writeln!(
            s,
            "| QUIC fan-out vs our WebSocket fan-out | within 2× | not measured: no QUIC backend in this build | – | – | not measured |"
        );
    } else {
        for label in quic {
            let base = label.trim_start_matches("quic-");
            let q = fanout_rate(r, &label, "quic");
            let w = fanout_rate(r, &format!("fanout-{base}"), "ws");
            let ratio_v = ratio(q, w);
            let _ = writeln!(
                s,
                "| QUIC fan-out 1 → {base} vs WebSocket (same run) | ≥ 0.5× WebSocket | QUIC {} / WS {} | – | {} | {} |",
                rate(q),
                rate(w),
                times(ratio_v),
                at_least(ratio_v, 0.5)
            );
        }
    }
    let _ = writeln!(
        s,
        "\nNATS: `{nats}`. Payloads of 128 bytes everywhere. A run counts only if nothing was \
         lost, duplicated or refused and every connection opened; invalid runs are listed \
         below and left out of the medians.\n"
    );
}

fn describe_latency_label(label: &str) -> String {
    // `latency-1000-x200`
    let mut parts = label.trim_start_matches("latency-").split("-x");
    match (parts.next(), parts.next()) {
        (Some(n), Some(rate)) => format!(
            "{} subscribers × {rate} msg/s",
            n.parse().map_or(n.to_owned(), thousands)
        ),
        _ => label.to_owned(),
    }
}

fn run_rows(s: &mut String, r: &Results, label: &str) {
    for backend in ["ws", "nats", "quic"] {
        let Some(runs) = r.get(label, backend) else {
            continue;
        };
        for run in &runs.runs {
            let Some(t) = &run.traffic else { continue };
            let l = &t.latency;
            let _ = writeln!(
                s,
                "| {label} | {backend} | {} | {} | {} | {:.0}% | {} | {} | {} | {} | {} | {} | {} |",
                rate(Some(t.deliveries_per_s)),
                t.broker_cpu_us_per_delivery
                    .map_or("–".into(), |c| format!("{c:.3} µs")),
                t.broker_cpu_s
                    .map_or("–".into(), |c| format!("{:.0}%", c / t.window_s * 100.0)),
                t.generator_cpu_fraction * 100.0,
                ms(Some(l.p50_us)),
                ms(Some(l.p90_us)),
                ms(Some(l.p99_us)),
                ms(Some(l.p999_us)),
                ms(Some(l.max_us)),
                t.lost,
                if run.valid {
                    "yes".to_owned()
                } else {
                    format!("**no**: {}", run.problems.join("; "))
                }
            );
        }
        if runs.crashed > 0 {
            let _ = writeln!(
                s,
                "| {label} | {backend} | {} run(s) crashed | | | | | | | | | | **no** |",
                runs.crashed
            );
        }
    }
}

const RUN_HEADER: &str = "| Run | Broker | Deliveries/s | Broker CPU / delivery | Broker CPU use | Generator CPU use | p50 | p90 | p99 | p99.9 | max | Lost | Valid |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

fn fanout_details(s: &mut String, r: &Results) {
    let labels = r.labels("fanout-");
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Fan-out at maximum rate\n");
    let _ = writeln!(
        s,
        "One publisher, one channel, N subscribers, closed loop: the publisher keeps at most \
         `--window` messages in flight (published and not yet received by every subscriber), so \
         the broker is never idle and never overrun. Latency at maximum rate is mostly queueing \
         inside that window; it is shown for completeness. \"Broker CPU use\" near 100% means \
         the broker was the bottleneck; \"generator CPU use\" near 100% means the load generator \
         may have been.\n"
    );
    let _ = writeln!(s, "{RUN_HEADER}");
    for label in labels {
        run_rows(s, r, &label);
    }
    // Our broker over QUIC, same scenario and sizes.
    for label in r.labels("quic-") {
        run_rows(s, r, &label);
    }
    s.push('\n');
}

fn latency_details(s: &mut String, r: &Results) {
    let labels = r.labels("latency-");
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Latency at a fixed offered load\n");
    let _ = writeln!(
        s,
        "One publisher at a fixed rate (open loop: it keeps its schedule whatever the broker \
         does), one channel. Latency is measured at the receiving client from the publish time \
         carried in the payload; every delivery is timed.\n"
    );
    let _ = writeln!(s, "{RUN_HEADER}");
    for label in labels {
        run_rows(s, r, &label);
    }
    s.push('\n');
}

fn channels_details(s: &mut String, r: &Results) {
    if r.get("channels", "ws").is_none() {
        return;
    }
    let _ = writeln!(s, "## Many channels\n");
    let _ = writeln!(
        s,
        "C channels × K subscribers each, one publisher per channel at maximum rate (closed \
         loop per channel).\n"
    );
    let _ = writeln!(s, "{RUN_HEADER}");
    run_rows(s, r, "channels");
    s.push('\n');
}

fn idle_details(s: &mut String, r: &Results) {
    if r.get("idle", "ws").is_none() {
        return;
    }
    let _ = writeln!(s, "## Memory per idle connection\n");
    let _ = writeln!(
        s,
        "N WebSocket connections, each subscribed to one channel, opened by several generator \
         processes from several loopback source addresses (127.0.0.2, …) and held; the \
         broker's RSS is read from `/proc/PID/status` before the first connection and a few \
         seconds after the last. Memory per connection = ΔRSS / N.\n"
    );
    let _ = writeln!(
        s,
        "| Broker | Round | Connections | Processes | RSS before | RSS after | Per connection | Valid |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for backend in ["ws", "nats"] {
        let Some(runs) = r.get("idle", backend) else {
            continue;
        };
        for (i, run) in runs.runs.iter().enumerate() {
            let Some(d) = &run.idle else { continue };
            let _ = writeln!(
                s,
                "| {backend} | {} | {} of {} | {} | {} KiB | {} KiB | {} | {} |",
                i + 1,
                thousands(d.opened),
                thousands(d.requested),
                d.processes,
                thousands(d.rss_before_kib as usize),
                thousands(d.rss_after_kib as usize),
                kib(Some(d.bytes_per_connection)),
                if run.valid {
                    "yes".into()
                } else {
                    format!("**no**: {}", run.problems.join("; "))
                }
            );
        }
    }
    s.push('\n');
}

fn replication_details(s: &mut String, r: &Results) {
    let labels = r.labels("replication");
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Replication between two regions\n");
    let _ = writeln!(
        s,
        "Two regions on this machine: two `redis-server` (Unix sockets) and two brokers \
         (`--region a --redis A --peer b=B` and the reverse). Publishers connect to region A; \
         subscribers of the same channel in A (same-region delivery, which also goes through \
         A's Redis stream) and in B (cross-region). Added latency = cross-region minus \
         same-region percentile. `redis-benchmark` runs pipelined XADD (`-P 64`) of an entry \
         shaped like ours against region A's Redis in the same run.\n"
    );
    let _ = writeln!(
        s,
        "| Run | Round | Messages/s reaching B | Broker CPU / message (both brokers) | Redis CPU / message (both servers) | Same-region p50 / p99 | Cross-region p50 / p99 | Lost | Valid |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for label in labels {
        let Some(runs) = r.get(&label, "ws") else {
            continue;
        };
        for (i, run) in runs.runs.iter().enumerate() {
            let Some(t) = &run.traffic else { continue };
            let (Some(a), Some(b)) = (t.groups.first(), t.groups.get(1)) else {
                continue;
            };
            let per_sub = b.deliveries_per_s / b.subscribers.max(1) as f64;
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} |",
                i + 1,
                rate(Some(per_sub)),
                per_message(t.broker_cpu_s, t.window_s, per_sub),
                per_message(t.store_cpu_s, t.window_s, per_sub),
                ms(Some(a.latency.p50_us)),
                ms(Some(a.latency.p99_us)),
                ms(Some(b.latency.p50_us)),
                ms(Some(b.latency.p99_us)),
                t.lost,
                if run.valid {
                    "yes".into()
                } else {
                    format!("**no**: {}", run.problems.join("; "))
                }
            );
        }
    }
    if !r.xadd.is_empty() {
        let list: Vec<String> = r.xadd.iter().map(|v| rate(Some(*v))).collect();
        let _ = writeln!(
            s,
            "\n`redis-benchmark` pipelined XADD on region A's Redis, per round: {}.",
            list.join(", ")
        );
    }
    s.push('\n');
}

/// CPU seconds over a window as microseconds per message at `per_s` messages a second.
fn per_message(cpu_s: Option<f64>, window_s: f64, per_s: f64) -> String {
    cpu_s
        .filter(|_| per_s > 0.0 && window_s > 0.0)
        .map_or("–".into(), |c| {
            format!("{:.1} µs", c / window_s / per_s * 1e6)
        })
}

fn setup(s: &mut String, r: &Results, nats: &str) {
    let _ = writeln!(s, "## Setup\n");
    let _ = writeln!(s, "| | |\n| --- | --- |");
    for key in [
        "date",
        "commit",
        "mode",
        "cpu",
        "cpus",
        "memory",
        "kernel",
        "open files limit",
        "pinning",
        "load before",
        "load after",
        "busy processes before",
        "rustc",
        "build",
        "nats-server",
        "redis-server",
        "invalid runs",
    ] {
        let _ = writeln!(s, "| {key} | {} |", r.meta(key).replace('|', "\\|"));
    }
    let _ = writeln!(
        s,
        "\nEquivalent settings. Both servers listen on loopback only, without TLS or \
         WebSocket compression, and authenticate every connection (our API key in a header, \
         NATS's token in `CONNECT`). Ours: `broker --allow-all-channels` with its defaults \
         (per-connection queue of 1,024 messages, then the client is closed as a slow \
         consumer), one Tokio worker (it follows the CPU affinity). NATS ({nats}): \
         `GOMAXPROCS=1` and its defaults (64 MiB pending per client). The generator speaks \
         each broker's own protocol over the same minimal WebSocket client, one text frame per \
         `pubsub.v1` message for ours, NATS's byte stream in binary frames for NATS (the way \
         `nats.ws` does), with the same payloads.\n"
    );
    let _ = writeln!(s, "### Commands\n");
    let _ = writeln!(
        s,
        "To reproduce everything: `bench/compare.sh` (add `--rounds N`; `BENCH_WAIT_QUIET=600` \
         waits for a quiet machine first). The generator commands it ran, in order (servers \
         started by the script on free loopback ports; `$WORK` is its temporary directory):\n"
    );
    let _ = writeln!(s, "```sh");
    let mut seen = std::collections::HashSet::new();
    for c in &r.commands {
        // Ports and pids differ per run; show each distinct command shape once.
        let shape = command_shape(c);
        let shape = strip_json(&shape);
        if seen.insert(shape.clone()) {
            let _ = writeln!(s, "{shape}");
        }
    }
    let _ = writeln!(s, "```\n");
}

/// A command with what differs between runs (addresses, process ids) replaced by placeholders.
fn command_shape(cmd: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut previous = "";
    for w in cmd.split_whitespace() {
        let shown = if previous == "--broker-pid" {
            "PID"
        } else if w.starts_with("ws://") {
            "ws://…"
        } else if w.starts_with("quic://") {
            "quic://…"
        } else {
            w
        };
        out.push(shown);
        previous = w;
    }
    out.join(" ")
}

/// Drops the `--json PATH` part, which only names the result file.
fn strip_json(cmd: &str) -> String {
    let mut out = Vec::new();
    let mut words = cmd.split(' ');
    while let Some(w) = words.next() {
        if w == "--json" {
            words.next();
        } else {
            out.push(w);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_verdicts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(at_least(Some(2.0), 1.5), "**met**");
        assert_eq!(at_least(Some(0.75), 1.5), "**missed** by 50%");
        assert_eq!(at_most(Some(6.0), 4.0), "**missed**: 50% over");
        assert_eq!(thousands(10000), "10,000");
        assert_eq!(thousands(100), "100");
        assert_eq!(
            strip_json("loadgen fanout --json /x/y.json --label a"),
            "loadgen fanout --label a"
        );
        assert_eq!(
            command_shape(
                "loadgen fanout --subscribers 1000 --url ws://127.0.0.1:5/ws --broker-pid 4242"
            ),
            "loadgen fanout --subscribers 1000 --url ws://… --broker-pid PID"
        );
        assert_eq!(
            describe_latency_label("latency-1000-x200"),
            "1,000 subscribers × 200 msg/s"
        );
    }
}
