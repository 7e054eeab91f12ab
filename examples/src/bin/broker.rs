//! The standalone broker: WebSocket + HTTP front end over broker-core.
//!
//! `cargo run --release --bin broker` starts it on 127.0.0.1:8080 with the seed's five
//! channels and a generated API key and admin token, printed at start, and serves the web
//! client at `/` (the URL to open, key included, is printed too).

use std::process::ExitCode;
use std::sync::Arc;

use broker_core::{AllowAll, AllowList, Broker, BrokerConfig, FilterPolicy};
use clap::Parser;
use examples::config::Cli;
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
    let broker = Broker::builder()
        .config(config)
        .authenticator(Arc::new(settings.keys.clone()))
        .policy(policy)
        .build();

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
