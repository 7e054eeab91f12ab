//! The core of a multi-region pub/sub broker: channels, fan-out, filter policies, credentials
//! and subscription invalidation. No sockets: transports (`transport-ws`, `transport-quic`)
//! move bytes, replicators (`replication-redis`) move messages between nodes and regions.
//!
//! ```
//! use std::time::Instant;
//! use broker_core::{Broker, BrokerConfig, JsonCodec, Outbound, StaticKeys};
//! use std::sync::Arc;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let keys = StaticKeys::new().with_api_key("app", "secret-key", None);
//! let broker = Broker::builder().authenticator(Arc::new(keys)).build();
//!
//! let principal = broker.authenticate(Some("secret-key")).await.unwrap();
//! let mut session = broker.connect(principal);
//! let now = Instant::now();
//! session.handle_frame(&JsonCodec, br#"{"type":"subscribe","id":"1","channel":"tech"}"#, now).await;
//! session.handle_frame(&JsonCodec, br#"{"type":"publish","id":"2","channel":"tech","data":"hi"}"#, now).await;
//!
//! // A transport would now drain the queue and write each frame to the socket.
//! let mut queue = Default::default();
//! session.connection().drain(&mut queue);
//! assert_eq!(queue.len(), 3); // subscribed, the message, published
//! assert!(queue.iter().any(|o| matches!(o, Outbound::Message(_))));
//! # });
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod broker;
pub mod codec;
pub mod config;
pub mod error;
pub mod hub;
pub mod ids;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod replicator;
pub mod session;

pub use auth::{Authenticator, Principal, Role, StaticKeys};
pub use broker::{Broker, BrokerBuilder, JsonPayload, PublishCallback};
pub use codec::{Codec, JsonCodec, PROTOCOL_V1, Request, RequestKind, ServerFrame};
pub use config::{BrokerConfig, Limits, RateLimit};
pub use error::{
    AuthError, DecodeError, DecodeErrorKind, Denied, ErrorCode, InvalidName, InvalidateError,
    PublishError, ReplicationError, SubscribeError, UnsubscribeError, WireError,
};
pub use hub::{CloseReason, Connection, Hub, InvalidationFilter, Outbound};
pub use ids::{ChannelName, ConnectionId, MessageId, MessageIdGen, RegionName};
pub use message::{Envelope, Message};
pub use metrics::Metrics;
pub use policy::{AllowAll, AllowList, DEFAULT_CHANNELS, FilterPolicy};
pub use replicator::{Deferred, DeliverySink, LocalReplicator, PublishDone, Replicator};
pub use session::Session;

#[cfg(test)]
mod tests;
