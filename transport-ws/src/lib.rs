//! WebSocket and HTTP front end for [`broker_core`]: the `pubsub.v1` protocol at `GET /ws`,
//! `POST /publish`, `POST /admin/unsubscribe`, `GET /healthz` and `GET /metrics` on one listener,
//! plus, when given [`StaticAssets`], static files such as a browser client.
//!
//! ```no_run
//! use std::sync::Arc;
//! use broker_core::{Broker, StaticKeys};
//! use transport_ws::{WsConfig, WsServer};
//!
//! # async fn run() -> std::io::Result<()> {
//! let keys = StaticKeys::new().with_api_key("app", "secret-key", None);
//! let broker = Broker::builder().authenticator(Arc::new(keys)).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! WsServer::new(broker, WsConfig::default())
//!     .serve(listener, async { tokio::signal::ctrl_c().await.ok(); })
//!     .await
//! # }
//! ```
#![warn(missing_docs)]

mod assets;
pub mod client;
mod config;
mod credential;
mod http;
mod io;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use broker_core::Broker;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::assets::StaticAssets;
pub use crate::client::{Client, ClientError, Event, Received};
pub use crate::config::WsConfig;

/// Serves one broker over WebSocket and HTTP.
#[derive(Debug)]
pub struct WsServer {
    broker: Arc<Broker>,
    config: WsConfig,
    assets: StaticAssets,
}

impl WsServer {
    /// A server for `broker`.
    pub fn new(broker: Arc<Broker>, config: WsConfig) -> Self {
        Self {
            broker,
            config,
            assets: StaticAssets::new(),
        }
    }

    /// Also serves `assets` (for example a web client) with `GET` and `HEAD` on the same
    /// listener. Without it, only the broker's routes answer.
    pub fn with_static(mut self, assets: StaticAssets) -> Self {
        self.assets = assets;
        self
    }

    /// Accepts connections on `listener` until `shutdown` completes, then closes every
    /// WebSocket with code 1001, lets in-flight HTTP requests finish, and returns once all
    /// connections are gone or [`WsConfig::shutdown_grace`] has passed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = http::Shared {
            broker: self.broker,
            config: Arc::new(self.config.clone()),
            assets: Arc::new(self.assets),
            shutdown: token.clone(),
            tasks: tasks.clone(),
        };
        let limit = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&limit).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break, // the semaphore is never closed
                },
                _ = &mut shutdown => break,
            };
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning, keep serving the others.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let token = token.clone();
            let header_timeout = self.config.header_read_timeout;
            tasks.spawn(async move {
                // Shared with the WebSocket task when the connection is upgraded (hyper's
                // connection future ends then), so the slot is held until the socket closes.
                let permit = http::ConnectionSlot::new(permit);
                let service = service_fn(move |mut req: hyper::Request<_>| {
                    let shared = shared.clone();
                    req.extensions_mut().insert(permit.clone());
                    async move { Ok::<_, std::convert::Infallible>(http::route(req, shared).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "http connection ended");
                        }
                    }
                    _ = token.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(listener);
        token.cancel();
        tasks.close();
        if tokio::time::timeout(self.config.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
        }
        Ok(())
    }
}
