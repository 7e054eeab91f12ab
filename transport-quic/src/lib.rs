//! QUIC front end for [`broker_core`]: the `pubsub.v1` protocol over quinn, with one stream per
//! subscription so that a stalled channel never holds up another, and [`Client`], a small async
//! client for tests, benchmarks and embedders.
//!
//! The wire mapping (TLS 1.3, ALPN `pubsub.v1`, length-prefixed JSON frames, a control stream
//! and one unidirectional stream per subscription, close codes) is specified in
//! `docs/PROTOCOL.md`.
//!
//! ```
//! use std::sync::Arc;
//! use broker_core::{Broker, StaticKeys};
//! use transport_quic::{Client, ClientConfig, QuicConfig, QuicServer, TlsIdentity};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = StaticKeys::new().with_api_key("app", "secret-key", None);
//! let broker = Broker::builder().authenticator(Arc::new(keys)).build();
//!
//! // A self-signed certificate; clients must trust it (or use a certificate from a CA).
//! let identity = TlsIdentity::self_signed(&["localhost".into()])?;
//! let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! let addr = socket.local_addr()?;
//! let server = QuicServer::new(broker, &identity, QuicConfig::default())?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let serving = tokio::spawn(server.serve(socket, async { stopped.await.ok(); }));
//!
//! let config = ClientConfig::trusting(identity.certificate().clone());
//! let client = Client::connect(addr, "secret-key", config).await?;
//! let mut tech = client.subscribe("tech").await?;
//! client.publish("tech", &serde_json::json!({"text": "hi"})).await?;
//! let message = tech.next().await?;
//! assert_eq!(message.data, serde_json::json!({"text": "hi"}));
//!
//! client.close().await;
//! stop.send(()).ok();
//! serving.await??;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod client;
mod config;
mod conn;
mod demux;
mod framing;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use broker_core::Broker;
use quinn::{EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::client::{Client, ClientConfig};
pub use crate::config::QuicConfig;
pub use crate::tls::{TlsError, TlsIdentity};

/// The application error codes with which the server closes a QUIC connection (the close
/// reason phrase says more). They mirror the WebSocket close codes where one exists.
pub mod close_code {
    /// The client closed the connection (clients should use this code).
    pub const NO_ERROR: u32 = 0;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 1001;
    /// The control stream ended inside a length prefix or a frame.
    pub const PROTOCOL_ERROR: u32 = 1002;
    /// A length prefix announced a frame over the server's `max_frame_size`.
    pub const FRAME_TOO_LARGE: u32 = 1009;
    /// An administrator invalidated the connection's last subscription.
    pub const INVALIDATED: u32 = 4001;
    /// The client did not keep up with its messages or replies; its backlog was dropped.
    pub const SLOW_CONSUMER: u32 = 4008;
    /// Authentication failed or did not happen in time (the `error` frame, when one was sent,
    /// says why).
    pub const UNAUTHORIZED: u32 = 4401;
}

/// Why a [`QuicServer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The certificate, key or TLS settings were refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A setting is out of range.
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidConfig {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Room for a message frame's fields other than the payload (channel name, ids, origin).
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Largest UDP payload path MTU discovery probes for. quinn's default (1452) suits Ethernet;
/// loopback and jumbo-frame paths carry much more, and fewer, larger packets cut the per-packet
/// work (encryption, headers, acknowledgements) that dominates small-message fan-out. Probing is
/// safe on any path (a lost probe only ends the search), and the bound keeps a GSO batch of
/// ten segments within one 64 KiB UDP send.
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

/// Path MTU discovery up to [`MAX_UDP_PAYLOAD`].
pub(crate) fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    mtu
}

/// An endpoint accepting datagrams up to [`MAX_UDP_PAYLOAD`] (the bound is announced to peers,
/// which size their packets by it).
pub(crate) fn endpoint_config() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    // In quinn's range (1200..=65527) by construction.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD);
    config
}

/// A client endpoint bound to `bind` that accepts datagrams up to [`MAX_UDP_PAYLOAD`], so that
/// a server's path MTU discovery can raise its packets past Ethernet size where the path
/// allows. [`Client`] uses it; other quinn clients of a broker (the load generator) may too.
pub fn client_endpoint(bind: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    quinn::Endpoint::new(
        endpoint_config(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Asks clients that support the ACK frequency extension (quinn's do) to acknowledge every
/// fourth ack-eliciting packet, and any packet after at most 2 ms, rather than every second
/// packet (and after 25 ms): in fan-out most of the datagrams a client sends are
/// acknowledgements, each a send for the client and a receive for the server. The 2 ms bound
/// keeps loss detection at least as prompt as the default, and acknowledgements frequent enough
/// for the congestion window to follow a closed-loop sender (a threshold of 9 with 5 ms was
/// slower).
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(3))
        .max_ack_delay(Some(Duration::from_millis(2)));
    ack
}

/// Serves one broker over QUIC.
#[derive(Debug)]
pub struct QuicServer {
    broker: Arc<Broker>,
    config: QuicConfig,
    server_config: quinn::ServerConfig,
}

impl QuicServer {
    /// A server for `broker` presenting `identity`.
    pub fn new(
        broker: Arc<Broker>,
        identity: &TlsIdentity,
        config: QuicConfig,
    ) -> Result<Self, SetupError> {
        let frame_limit = u32::MAX as usize;
        if config.max_frame_size > frame_limit {
            return Err(SetupError::InvalidConfig {
                setting: "max_frame_size",
                reason: "a frame length must fit in 4 bytes".into(),
            });
        }
        if broker.config().limits.max_payload > frame_limit - MESSAGE_OVERHEAD {
            return Err(SetupError::InvalidConfig {
                setting: "limits.max_payload",
                reason: "a message frame's length must fit in 4 bytes".into(),
            });
        }
        let idle =
            IdleTimeout::try_from(config.idle_timeout).map_err(|_| SetupError::InvalidConfig {
                setting: "idle_timeout",
                reason: "too long".into(),
            })?;
        let mut transport = TransportConfig::default();
        transport
            // The control stream is the client's only stream; every other stream is the
            // server's, so the client may open no unidirectional stream at all.
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(
                (!config.keep_alive_interval.is_zero()).then_some(config.keep_alive_interval),
            )
            .send_window(config.send_window)
            .datagram_receive_buffer_size(None)
            .mtu_discovery_config(Some(mtu_discovery()))
            .ack_frequency_config(Some(ack_frequency()));
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(identity.server_crypto()?));
        server_config.transport_config(Arc::new(transport));
        Ok(Self {
            broker,
            config,
            server_config,
        })
    }

    /// Accepts connections on `socket` until `shutdown` completes, then closes every connection
    /// with code 1001 (after writing what is queued for it) and returns once all are gone or
    /// [`QuicConfig::shutdown_grace`] has passed.
    ///
    /// Must be called within a tokio runtime.
    pub async fn serve(
        self,
        socket: std::net::UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        if self.config.socket_recv_buffer > 0 {
            // Best effort: the kernel caps it (net.core.rmem_max) and a smaller buffer still works.
            let _ = socket2::SockRef::from(&socket)
                .set_recv_buffer_size(self.config.socket_recv_buffer);
        }
        let endpoint = quinn::Endpoint::new(
            endpoint_config(),
            Some(self.server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        let grace = self.config.shutdown_grace;
        let limit = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        let shared = Arc::new(conn::Shared {
            broker: self.broker,
            config: self.config,
            shutdown: token.clone(),
        });
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&limit).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break, // the semaphore is never closed
                },
                _ = &mut shutdown => break,
            };
            let incoming = tokio::select! {
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break, // the endpoint was closed
                },
                _ = &mut shutdown => break,
            };
            let shared = Arc::clone(&shared);
            tasks.spawn(async move {
                let _permit = permit;
                conn::run(incoming, shared).await;
            });
        }
        // Refuse new connections while the open ones close.
        endpoint.set_server_config(None);
        token.cancel();
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("shutdown grace period over; closing remaining QUIC connections");
        }
        endpoint.close(
            VarInt::from_u32(close_code::SHUTDOWN),
            broker_core::CloseReason::Shutdown.text().as_bytes(),
        );
        // Give the close frames a moment to leave before the socket goes.
        let _ = tokio::time::timeout(grace.min(Duration::from_secs(1)), endpoint.wait_idle()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use broker_core::CloseReason;

    use super::*;

    #[test]
    fn close_codes_mirror_the_core_close_reasons() {
        assert_eq!(
            u32::from(CloseReason::Invalidated.code()),
            close_code::INVALIDATED
        );
        assert_eq!(
            u32::from(CloseReason::SlowConsumer.code()),
            close_code::SLOW_CONSUMER
        );
        assert_eq!(
            u32::from(CloseReason::Shutdown.code()),
            close_code::SHUTDOWN
        );
    }
}
