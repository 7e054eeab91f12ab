//! Command-line interface of `loadgen`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator and benchmark driver for pubsub-broker and NATS.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Runtime worker threads; 1 runs everything on one thread, which is what a generator
    /// pinned to one core wants.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
}

/// The scenarios.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// P publishers, one channel, N subscribers: deliveries/s and latency.
    Fanout(FanoutArgs),
    /// C channels × K subscribers each, publishers spread over the channels.
    Channels(ChannelsArgs),
    /// N idle subscribed connections: the broker's RSS per connection.
    Idle(IdleArgs),
    /// Publish in region A, subscribe in A and B: replication throughput and added latency.
    Replication(ReplicationArgs),
    /// Writes the Markdown benchmark report from a directory of JSON results.
    Report(ReportArgs),
    /// One process of the idle scenario (started by `idle`).
    #[command(hide = true)]
    IdleWorker(IdleWorkerArgs),
}

/// Which protocol the broker speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Our `pubsub.v1` over WebSocket.
    Ws,
    /// NATS client protocol over WebSocket.
    Nats,
    /// Our `pubsub.v1` over QUIC.
    Quic,
}

/// The broker to drive.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Protocol.
    #[arg(long, value_enum, default_value = "ws")]
    pub backend: BackendKind,
    /// Where the broker is: `ws://127.0.0.1:8080/ws` for ours, `ws://127.0.0.1:PORT` for
    /// NATS, `quic://127.0.0.1:4433` for QUIC.
    #[arg(long)]
    pub url: String,
    /// API key (ours).
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Auth token (NATS).
    #[arg(long)]
    pub token: Option<String>,
    /// The broker's certificate, PEM (QUIC; `broker --tls-write-cert` writes it).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The name the certificate is valid for (QUIC).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

impl TargetArgs {
    /// The same flags, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--backend".into(),
            match self.backend {
                BackendKind::Ws => "ws".into(),
                BackendKind::Nats => "nats".into(),
                BackendKind::Quic => "quic".into(),
            },
            "--url".into(),
            self.url.clone(),
            "--api-key".into(),
            self.api_key.clone(),
        ];
        if let Some(t) = &self.token {
            v.push("--token".into());
            v.push(t.clone());
        }
        if let Some(c) = &self.cert {
            v.push("--cert".into());
            v.push(c.display().to_string());
        }
        v.push("--server-name".into());
        v.push(self.server_name.clone());
        v
    }
}

/// How traffic is offered and measured.
#[derive(Args, Debug, Clone)]
pub struct TrafficArgs {
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second per publisher; omit (or 0) for maximum rate, closed-loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// At maximum rate: messages each publisher may have in flight (published and not yet
    /// received by every subscriber). Keep it below the broker's per-connection queue (1024).
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Most messages written at once.
    #[arg(long, default_value_t = 64)]
    pub batch: u64,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Traffic before measuring starts (not timed, still checked for loss).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Longest wait for the last deliveries after publishing stops.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Payload size in bytes (at least 80, for the timestamp and sequence number).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Broker process id(s) whose CPU time to report per delivery (repeatable).
    #[arg(long = "broker-pid")]
    pub broker_pids: Vec<u32>,
    /// Process id(s) of the stores behind the brokers (the Redis servers of `replication`)
    /// whose CPU time to report per message (repeatable).
    #[arg(long = "store-pid")]
    pub store_pids: Vec<u32>,
}

/// Connection set-up.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Loopback source addresses to spread connections over: 127.0.0.2, 127.0.0.3, …
    /// (0: let the system choose).
    #[arg(long, default_value_t = 8)]
    pub sources: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
}

impl ConnectArgs {
    /// The source addresses.
    pub fn addresses(&self) -> Vec<IpAddr> {
        source_addresses(self.sources)
    }
}

/// `n` loopback addresses from 127.0.0.2.
pub fn source_addresses(n: usize) -> Vec<IpAddr> {
    (0..n.min(250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// Where results go.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Names this configuration in reports (default: derived from the scenario).
    #[arg(long)]
    pub label: Option<String>,
    /// Writes the JSON report here (default: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `loadgen fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// The broker.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Traffic.
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Connection set-up.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// The channel.
    #[arg(long, default_value = "bench.fanout")]
    pub channel: String,
}

/// `loadgen channels`.
#[derive(Args, Debug)]
pub struct ChannelsArgs {
    /// The broker.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Traffic.
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Connection set-up.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Channels.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 100)]
    pub subscribers_per_channel: usize,
}

/// `loadgen idle`.
#[derive(Args, Debug)]
pub struct IdleArgs {
    /// The broker.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connection set-up.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Generator processes to spread them over (each may hold at most 20,000 files here).
    #[arg(long, default_value_t = 4)]
    pub processes: usize,
    /// Channels to spread the subscriptions over.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// The broker's process id, whose RSS is read from /proc.
    #[arg(long)]
    pub broker_pid: u32,
    /// Wait after the last connection opened, before reading memory.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Longest time allowed to open every connection.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub open_timeout: Duration,
}

/// `loadgen idle-worker`.
#[derive(Args, Debug)]
pub struct IdleWorkerArgs {
    /// The broker.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open.
    #[arg(long)]
    pub connections: usize,
    /// Index of the first (for channel and source spreading).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Channels to spread over.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Source addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub source_list: Vec<IpAddr>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
}

/// `loadgen replication`.
#[derive(Args, Debug)]
pub struct ReplicationArgs {
    /// Region A's broker (publishers and same-region subscribers), `ws://…/ws`.
    #[arg(long)]
    pub url_a: String,
    /// Region B's broker (cross-region subscribers), `ws://…/ws`.
    #[arg(long)]
    pub url_b: String,
    /// API key, valid in both regions.
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Traffic.
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Connection set-up.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Subscribers in each region.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// The channel.
    #[arg(long, default_value = "bench.replication")]
    pub channel: String,
}

/// `loadgen report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Directory of JSON results and `meta.json`, as `bench/compare.sh` leaves it.
    #[arg(long)]
    pub results: PathBuf,
    /// Markdown file to write.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    pub out: PathBuf,
    /// Hand-written analysis appended to the report, if the file exists.
    #[arg(long, default_value = "bench/ANALYSIS.md")]
    pub analysis: PathBuf,
}
