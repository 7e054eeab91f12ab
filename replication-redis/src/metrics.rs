//! Replication metrics, registered into the broker's registry.

use std::sync::atomic::AtomicU64;

use broker_core::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// A remote region, or `local` for this region's Redis.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RegionLabel {
    pub(crate) region: String,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ReplicationMetrics {
    pub(crate) lag_seconds: Family<RegionLabel, Gauge<f64, AtomicU64>>,
    pub(crate) lag_entries: Family<RegionLabel, Gauge>,
    pub(crate) imported: Family<RegionLabel, Counter>,
    pub(crate) exported: Counter,
    pub(crate) publish_failures: Counter,
    pub(crate) dedup_drops: Counter,
    pub(crate) reconnects: Family<RegionLabel, Counter>,
}

impl ReplicationMetrics {
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "replication_lag_seconds",
            "Age of the oldest remote entry not yet imported, per remote region",
            m.lag_seconds.clone(),
        );
        metrics.register(
            "replication_lag_entries",
            "Remote entries not yet imported (counted up to 10000), per remote region",
            m.lag_entries.clone(),
        );
        metrics.register(
            "replication_imported",
            "Entries imported from each remote region into this region's stream",
            m.imported.clone(),
        );
        metrics.register(
            "replication_exported",
            "Messages published here and appended to this region's stream for every node and region",
            m.exported.clone(),
        );
        metrics.register(
            "replication_publish_failures",
            "Publishes refused because this region's Redis was unreachable",
            m.publish_failures.clone(),
        );
        metrics.register(
            "replication_dedup_drops",
            "Entries not delivered because their message id was already delivered on this node",
            m.dedup_drops.clone(),
        );
        metrics.register(
            "replication_redis_reconnects",
            "Redis connections re-established, by region (local = this region)",
            m.reconnects.clone(),
        );
        m
    }

    pub(crate) fn label(region: &str) -> RegionLabel {
        RegionLabel {
            region: region.to_owned(),
        }
    }
}
