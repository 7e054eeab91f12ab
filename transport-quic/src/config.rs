//! Configuration of the QUIC front end.

use std::time::Duration;

/// Settings of [`QuicServer`](crate::QuicServer). The broker's own limits (payload, queue,
/// subscriptions) live in `broker_core::Limits` and apply here exactly as on WebSocket.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QuicConfig {
    /// Largest frame (the JSON object after its 4-byte length prefix) accepted on the control
    /// stream. A larger length prefix closes the connection with application error code 1009;
    /// payloads between the broker's `max_payload` and this get a `payload_too_large` error and
    /// the connection stays open. Default: 1 MiB. Cost: the read buffer grows to the largest
    /// frame received, and shrinks back after it.
    pub max_frame_size: usize,
    /// Most simultaneous QUIC connections; further connection attempts wait in quinn's
    /// incoming queue until one closes. Default: 100,000.
    pub max_connections: usize,
    /// How long a new connection may take to open its control stream and send its `auth`
    /// frame before it is closed with code 4401. Default: 10 s.
    pub auth_timeout: Duration,
    /// A connection silent for this long is dropped as dead (QUIC idle timeout; the effective
    /// value is the smaller of the server's and the client's). Default: 40 s, like WebSocket's
    /// 20 s ping interval plus 20 s pong timeout.
    pub idle_timeout: Duration,
    /// Idle time after which the server sends a QUIC PING, so that a live but quiet client is
    /// not taken for dead. Default: 20 s.
    pub keep_alive_interval: Duration,
    /// Bytes the server may have sent to one connection without acknowledgement, over all its
    /// streams. Default: 10 MB (quinn's default). Cost: up to this much memory per connection
    /// whose client is slow to acknowledge.
    pub send_window: u64,
    /// How long the server waits for a client to acknowledge the last frames it was sent (an
    /// `invalidated` notice, an authentication error, the frames queued at shutdown) before it
    /// closes the connection anyway. Also how long [`QuicServer::serve`](crate::QuicServer::serve)
    /// waits for connections to close at shutdown. Default: 5 s.
    pub shutdown_grace: Duration,
    /// Receive buffer asked for the server's UDP socket, in bytes (0 keeps the system's
    /// default). Every client's packets, acknowledgements included, arrive on this one socket,
    /// so a burst from many clients overflows the default (about 208 KiB on Linux) and its
    /// datagrams are dropped, to be retransmitted. Linux caps it at `net.core.rmem_max`.
    /// Default: 4 MiB.
    pub socket_recv_buffer: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            max_frame_size: 1024 * 1024,
            max_connections: 100_000,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(40),
            keep_alive_interval: Duration::from_secs(20),
            send_window: 10_000_000,
            shutdown_grace: Duration::from_secs(5),
            socket_recv_buffer: 4 << 20,
        }
    }
}
