//! What the load generator needs from a broker, whatever its protocol: connections that
//! subscribe and receive, connections that publish. Each backend (our `pubsub.v1` over
//! WebSocket, NATS over WebSocket, our `pubsub.v1` over QUIC) implements [`Backend`]; the scenarios
//! only see these traits, so every broker is driven and measured by the same code.

pub mod nats;
pub mod pubsub_ws;
pub mod quic;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::LoadError;

/// Which connection this is, and where it connects from.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// The connection's index within its kind (subscriber or publisher), from 0.
    pub index: usize,
    /// The local address to connect from (`127.0.0.2`, …), spreading connections over
    /// several source addresses; `None` lets the system choose.
    pub source: Option<IpAddr>,
}

/// A broker to drive.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short name for reports: `ws`, `nats`, `quic`.
    fn name(&self) -> &'static str;

    /// Where it is, for reports.
    fn target(&self) -> String;

    /// Opens a connection subscribed to `channels`; returns once the broker has confirmed
    /// every subscription, so that nothing published afterwards can be missed.
    async fn subscriber(
        &self,
        slot: Slot,
        channels: &[String],
    ) -> Result<Box<dyn Subscriber>, LoadError>;

    /// Opens a connection for publishing.
    async fn publisher(&self, slot: Slot) -> Result<Box<dyn Publisher>, LoadError>;
}

/// Receives what the broker delivers on one connection.
#[async_trait]
pub trait Subscriber: Send {
    /// Receives until `stop` is cancelled or the connection ends, handing every message's
    /// payload to `sink`. Returns an error if the connection failed or the broker reported
    /// one (an unexpected close is an error: nothing in a benchmark should close it).
    async fn run(
        self: Box<Self>,
        sink: &mut dyn Sink,
        stop: CancellationToken,
    ) -> Result<(), LoadError>;
}

/// Where a subscriber puts what it receives.
pub trait Sink: Send {
    /// One message's payload, received at `recv_ns` (nanoseconds since the Unix epoch, read
    /// once per batch of frames read together).
    fn message(&mut self, payload: &[u8], recv_ns: u64);

    /// Called after each batch of messages read together: the moment to publish counters.
    fn batch_end(&mut self) {}
}

/// Publishes on one connection. `publish` only buffers; `flush` writes the buffer.
#[async_trait]
pub trait Publisher: Send {
    /// Buffers one publish of `payload` on `channel`.
    async fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), LoadError>;

    /// Writes every buffered publish.
    async fn flush(&mut self) -> Result<(), LoadError>;

    /// Waits up to `timeout` for the broker to answer every publish (where the protocol has
    /// answers), then closes the connection.
    async fn finish(self: Box<Self>, timeout: Duration) -> Result<PublishOutcome, LoadError>;
}

/// What the broker said about one publisher's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Publishes the broker acknowledged (equal to those sent for protocols without
    /// acknowledgements, such as NATS core publish).
    pub acknowledged: u64,
    /// Publishes or other requests the broker refused.
    pub errors: u64,
}
