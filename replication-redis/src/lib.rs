//! Redis Streams replication for `broker-core`: every node of a region delivers every message
//! of its region's stream, and each region imports what originates in every other region.
//!
//! ```no_run
//! use std::sync::Arc;
//! use broker_core::{Broker, BrokerConfig, Metrics, RegionName};
//! use replication_redis::{RedisReplicationConfig, RedisReplicator};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let eu = RegionName::parse("eu")?;
//! let config = RedisReplicationConfig::new(eu.clone(), "redis://127.0.0.1:6379")
//!     .peer(RegionName::parse("us")?, "redis://redis.us.example:6379");
//! let metrics = Arc::new(Metrics::new());
//! let replicator = Arc::new(RedisReplicator::new(config, &metrics)?);
//! let broker = Broker::builder()
//!     .config(BrokerConfig::with_region(eu)) // the same region: it is stamped on messages
//!     .metrics(metrics)
//!     .replicator(replicator.clone())
//!     .build();
//! replicator.wait_ready(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod conn;
mod dedup;
mod entry;
mod metrics;
mod replicator;

pub use config::{InvalidationScope, Peer, RedisReplicationConfig, Retention};
pub use replicator::{RedisReplicator, SetupError};
