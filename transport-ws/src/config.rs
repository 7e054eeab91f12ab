//! Configuration of the WebSocket and HTTP front end.

use std::time::Duration;

/// Settings of [`WsServer`](crate::WsServer). The broker's own limits (payload, queue,
/// subscriptions) live in `broker_core::Limits`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WsConfig {
    /// Idle time after which the server pings a connection. Default: 20 s.
    pub ping_interval: Duration,
    /// How long after a ping a connection may stay silent before it is dropped as dead.
    /// Default: 20 s.
    pub pong_timeout: Duration,
    /// Largest WebSocket message or HTTP body accepted at all. A bigger WebSocket frame closes
    /// the connection with code 1009; payloads between the broker's `max_payload` and this get
    /// a `payload_too_large` error and the connection stays open. Default: 1 MiB.
    pub max_frame_size: usize,
    /// Read buffer kept per connection by the WebSocket codec. Small keeps idle connections
    /// cheap (it grows for larger frames); reads from the socket still happen in 16 KiB chunks,
    /// held only while a burst is being read. Default: 512 bytes.
    pub read_buffer_size: usize,
    /// Bytes gathered before a socket write while draining a burst (frames are batched per
    /// write; a flush ends each batch). Default: 64 KiB. Cost: allocated only while busy.
    pub write_buffer_size: usize,
    /// Most simultaneous TCP connections; further accepts wait for one to close.
    /// Default: 100,000 (the process file limit usually binds first).
    pub max_connections: usize,
    /// How long shutdown waits for connections to write their close frames. Default: 5 s.
    pub shutdown_grace: Duration,
    /// How long a client may take to send its HTTP request head. Default: 10 s.
    pub header_read_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            max_frame_size: 1024 * 1024,
            read_buffer_size: 512,
            write_buffer_size: 64 * 1024,
            max_connections: 100_000,
            shutdown_grace: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}
