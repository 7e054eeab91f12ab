//! The replication hook: where a publish goes after it is accepted.

use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use crate::error::ReplicationError;
use crate::hub::{Hub, InvalidationFilter};
use crate::message::Message;

/// Where replicated messages and invalidations land on this node: the fan-out engine.
pub trait DeliverySink: Send + Sync + fmt::Debug {
    /// Queues `message` to this node's subscribers; returns how many.
    fn deliver(&self, message: Message) -> usize;
    /// Ends this node's subscriptions selected by `filter`; returns how many.
    fn invalidate(&self, filter: &InvalidationFilter) -> usize;
}

impl DeliverySink for Hub {
    fn deliver(&self, message: Message) -> usize {
        Hub::deliver(self, message)
    }

    fn invalidate(&self, filter: &InvalidationFilter) -> usize {
        Hub::invalidate(self, filter)
    }
}

/// Called exactly once with the outcome of a publish started by [`Replicator::enqueue`].
pub type PublishDone = Box<dyn FnOnce(Result<(), ReplicationError>) + Send>;

/// A publish handed back by [`Replicator::enqueue`]: the caller awaits
/// [`Replicator::publish`] with it instead, and calls `done` with the outcome.
pub struct Deferred {
    /// The message, unpublished.
    pub message: Message,
    /// The completion, not yet called.
    pub done: PublishDone,
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("message", &self.message.id)
            .finish_non_exhaustive()
    }
}

/// Carries accepted publishes to every node and region that should deliver them.
///
/// Every publish goes through the replicator, and local delivery too comes back through the
/// [`DeliverySink`] it was attached to: so a replicated broker delivers in the order of its
/// shared log on every node, and adding a replicator changes no transport code.
#[async_trait]
pub trait Replicator: Send + Sync + fmt::Debug {
    /// Called once by the broker before any publish, with this node's fan-out engine.
    fn attach(&self, sink: Arc<dyn DeliverySink>);

    /// Makes `message` durable (as far as the backend goes) and arranges its delivery on every
    /// node, this one included. Returning `Ok` is the publisher's acknowledgement; on `Err`
    /// nothing may have been delivered anywhere.
    async fn publish(&self, message: Message) -> Result<(), ReplicationError>;

    /// Starts publishing `message` without waiting for the acknowledgement, so that one
    /// connection can have several publishes in flight (a replicator behind a network round
    /// trip needs that for throughput). The message's place in the order is fixed when this
    /// returns: messages enqueued one after another by one caller are delivered in that order.
    /// `done` is called exactly once, now or later, with what [`Replicator::publish`] would have
    /// returned.
    ///
    /// A replicator may hand the publish back (`Err`), for instance when its queue is full; the
    /// caller then awaits [`Replicator::publish`] itself before starting anything else, which
    /// keeps the order and pushes back on the publisher. The default hands every publish back.
    fn enqueue(&self, message: Message, done: PublishDone) -> Result<(), Box<Deferred>> {
        Err(Box::new(Deferred { message, done }))
    }

    /// Whether the replicator is ready to carry publishes everywhere it should (for readiness
    /// probes). By default, always.
    fn is_ready(&self) -> bool {
        true
    }

    /// Sends an invalidation, already applied on this node, to the other nodes and regions.
    /// By default invalidations stay on this node.
    async fn invalidate(&self, _filter: &InvalidationFilter) -> Result<(), ReplicationError> {
        Ok(())
    }
}

/// The default: no replication, every publish is delivered on this node at once.
#[derive(Default)]
pub struct LocalReplicator {
    sink: OnceLock<Arc<dyn DeliverySink>>,
}

impl LocalReplicator {
    /// A replicator that delivers locally.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for LocalReplicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalReplicator")
    }
}

#[async_trait]
impl Replicator for LocalReplicator {
    fn attach(&self, sink: Arc<dyn DeliverySink>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, message: Message) -> Result<(), ReplicationError> {
        let sink = self
            .sink
            .get()
            .ok_or_else(|| ReplicationError::Internal("replicator used before attach".into()))?;
        sink.deliver(message);
        Ok(())
    }

    fn enqueue(&self, message: Message, done: PublishDone) -> Result<(), Box<Deferred>> {
        // Delivery is immediate: nothing to wait for, so never hand it back.
        match self.sink.get() {
            Some(sink) => {
                sink.deliver(message);
                done(Ok(()));
            }
            None => done(Err(ReplicationError::Internal(
                "replicator used before attach".into(),
            ))),
        }
        Ok(())
    }
}
