//! The standalone broker: WebSocket + HTTP front end over broker-core, and QUIC beside it
//! when `--quic-listen` is given.
//!
//! `cargo run --release --bin broker` starts it on 127.0.0.1:8080 with the seed's five
//! channels and a generated API key and admin token, printed at start, and serves the web
//! client at `/` (the URL to open, key included, is printed too).

use std::process::ExitCode;
use std::sync::Arc;

use broker_core::{AllowAll, AllowList, Broker, BrokerConfig, FilterPolicy, Metrics};
use clap::Parser;
use examples::config::{CertificateSource, Cli, QuicSettings};
use replication_redis::RedisReplicator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use transport_quic::{QuicServer, TlsIdentity};
use transport_ws::WsServer;

/// mimalloc (its v2 series) instead of the system allocator: the replication path allocates a
/// reply tree per Redis read (redis-rs), where glibc's malloc spent a quarter of the broker's
/// time; v2 also keeps an idle connection smaller than glibc does (v3 made it larger). Measured
/// with `bench/compare.sh` (docs/BENCHMARKS.md). The `mimalloc` feature (on by default) selects it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match Cli::parse().resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::from(2);
        }
    };

    let policy: Arc<dyn FilterPolicy> = match &settings.channels {
        Some(list) => Arc::new(AllowList::new(list.iter().cloned())),
        None => Arc::new(AllowAll),
    };
    let mut config = BrokerConfig::with_region(settings.region.clone());
    config.limits = settings.limits.clone();
    let metrics = Arc::new(Metrics::new());
    let mut builder = Broker::builder()
        .config(config)
        .authenticator(Arc::new(settings.keys.clone()))
        .policy(policy)
        .metrics(metrics.clone());
    let replicator = match settings.replication.clone() {
        Some(rc) => match RedisReplicator::new(rc, &metrics) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                eprintln!("broker: replication: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if let Some(r) = &replicator {
        builder = builder.replicator(r.clone());
    }
    let broker = builder.build();

    let listener = match TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("broker: cannot listen on {}: {e}", settings.listen);
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(settings.listen);
    let quic = match &settings.quic {
        Some(q) => match prepare_quic(q, Arc::clone(&broker)) {
            Ok(prepared) => Some(prepared),
            Err(e) => {
                eprintln!("broker: quic: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let channels = match &settings.channels {
        Some(list) => list
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        None => "any".into(),
    };
    // Printed to stdout, not logged: generated secrets must reach the operator but never a log
    // pipeline.
    println!(
        "broker listening on http://{addr} (region {}, channels: {channels})",
        settings.region
    );
    println!("  websocket: ws://{addr}/ws");
    if let Some(q) = &quic {
        println!("  quic:      {} (ALPN pubsub.v1)", q.addr);
        println!("  quic certificate SHA-256: {}", q.fingerprint);
        if let Some(path) = &q.written {
            println!("  quic certificate written to {}", path.display());
        }
    }
    if let (true, Some(key)) = (settings.web_client, &settings.page_key) {
        println!("  open: {}", examples::web::page_url(addr, key));
    }
    match &replicator {
        Some(r) => {
            let c = r.config();
            let peers: Vec<String> = c.peers.iter().map(|p| p.region.to_string()).collect();
            println!(
                "  replication: Redis {} (node {}), peers: {}",
                redact(&c.redis_url),
                c.node_id,
                if peers.is_empty() {
                    "none".into()
                } else {
                    peers.join(", ")
                }
            );
            let r = r.clone();
            tokio::spawn(async move {
                if r.wait_ready(std::time::Duration::from_secs(10)).await {
                    tracing::info!("replication ready");
                } else {
                    tracing::warn!("replication not ready after 10 s: is every Redis reachable?");
                }
            });
        }
        None => println!("  replication: none (in-process; pass --redis URL to replicate)"),
    }
    if let Some((key, token)) = &settings.generated {
        println!("  generated api key:     {key}");
        println!("  generated admin token: {token}");
        println!("  try: websocat 'ws://{addr}/ws?api_key={key}'");
    }

    tracing::info!(%addr, region = %settings.region, "serving");
    // Either server stopping (on the signal, or failing) stops the other.
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let mut server = WsServer::new(broker, settings.websocket);
    if settings.web_client {
        server = server.with_static(examples::web::assets());
    }
    let ws = async {
        let result = server.serve(listener, stop.clone().cancelled_owned()).await;
        stop.cancel();
        result
    };
    let quic = async {
        let Some(q) = quic else {
            return Ok(());
        };
        let result = q
            .server
            .serve(q.socket, stop.clone().cancelled_owned())
            .await;
        stop.cancel();
        result
    };
    let (ws, quic) = tokio::join!(ws, quic);
    let mut code = ExitCode::SUCCESS;
    for (name, result) in [("websocket", ws), ("quic", quic)] {
        if let Err(e) = result {
            eprintln!("broker: {name}: {e}");
            code = ExitCode::from(1);
        }
    }
    tracing::info!("stopped");
    code
}

/// A QUIC server ready to serve: certificate loaded or generated (and written if asked), UDP
/// socket bound.
struct PreparedQuic {
    server: QuicServer,
    socket: std::net::UdpSocket,
    addr: std::net::SocketAddr,
    fingerprint: String,
    written: Option<std::path::PathBuf>,
}

fn prepare_quic(
    q: &QuicSettings,
    broker: Arc<Broker>,
) -> Result<PreparedQuic, Box<dyn std::error::Error>> {
    let identity = match &q.certificate {
        CertificateSource::Files { cert, key } => TlsIdentity::from_pem_files(cert, key)?,
        CertificateSource::SelfSigned(names) => TlsIdentity::self_signed(names)?,
    };
    if let Some(path) = &q.write_cert {
        std::fs::write(path, identity.certificate_pem())
            .map_err(|e| format!("cannot write the certificate to {}: {e}", path.display()))?;
    }
    let socket = std::net::UdpSocket::bind(q.listen)
        .map_err(|e| format!("cannot listen on udp {}: {e}", q.listen))?;
    let addr = socket.local_addr()?;
    let server = QuicServer::new(broker, &identity, q.config.clone())?;
    Ok(PreparedQuic {
        server,
        socket,
        addr,
        fingerprint: identity.fingerprint(),
        written: q.write_cert.clone(),
    })
}

/// A Redis URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: closing connections");
}
