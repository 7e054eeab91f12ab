//! Counters and gauges, exported in the Prometheus text format.

use std::fmt;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// Which operation a policy rejected.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// `publish` or `subscribe`.
    pub operation: &'static str,
}

/// The broker's metrics. Updating one is an atomic add; nothing here takes a lock on the hot path.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Open client connections.
    pub connections: Gauge,
    /// Active subscriptions, summed over connections.
    pub subscriptions: Gauge,
    /// Messages accepted for publishing on this node.
    pub published: Counter,
    /// Messages written to subscriber queues on this node.
    pub delivered: Counter,
    /// Publishes and subscribes refused by the filter policy.
    pub rejected: Family<OperationLabel, Counter>,
    /// Subscriptions ended by an administrator's invalidation.
    pub invalidations: Counter,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: Counter,
}

impl Metrics {
    /// Fresh metrics, registered under the `pubsub_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pubsub");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            published: Counter::default(),
            delivered: Counter::default(),
            rejected: Family::default(),
            invalidations: Counter::default(),
            slow_consumers: Counter::default(),
        };
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "subscriptions",
            "Active subscriptions",
            m.subscriptions.clone(),
        );
        registry.register(
            "messages_published",
            "Messages accepted for publishing",
            m.published.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages queued to subscribers on this node",
            m.delivered.clone(),
        );
        registry.register(
            "policy_rejections",
            "Publishes and subscribes refused by the filter policy",
            m.rejected.clone(),
        );
        registry.register(
            "invalidations",
            "Subscriptions ended by an administrator",
            m.invalidations.clone(),
        );
        registry.register(
            "slow_consumer_disconnects",
            "Connections closed because their outbound queue overflowed",
            m.slow_consumers.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }

    /// Registers another component's metric (replication lag, transport counters) so that it
    /// appears in [`Metrics::encode`]. `name` gets the `pubsub_` prefix.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// Everything in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding metrics into a String is infallible");
        out
    }

    pub(crate) fn rejected(&self, operation: &'static str) {
        self.rejected
            .get_or_create(&OperationLabel { operation })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("connections", &self.connections.get())
            .field("subscriptions", &self.subscriptions.get())
            .field("published", &self.published.get())
            .field("delivered", &self.delivered.get())
            .finish_non_exhaustive()
    }
}
