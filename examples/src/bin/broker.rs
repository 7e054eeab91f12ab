//! The standalone broker: WebSocket + HTTP front end over broker-core.
//!
//! `cargo run --release --bin broker` starts it on 127.0.0.1:8080 with the seed's five
//! channels and a generated API key and admin token, printed at start, and serves the web
//! client at `/` (the URL to open, key included, is printed too).

use std::process::ExitCode;
use std::sync::Arc;

use broker_core::{AllowAll, AllowList, Broker, BrokerConfig, FilterPolicy, Metrics};
use clap::Parser;
use examples::config::Cli;
use replication_redis::RedisReplicator;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use transport_ws::WsServer;

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
    let mut server = WsServer::new(broker, settings.websocket);
    if settings.web_client {
        server = server.with_static(examples::web::assets());
    }
    let result = server.serve(listener, shutdown_signal()).await;
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("broker: {e}");
            ExitCode::from(1)
        }
    }
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
