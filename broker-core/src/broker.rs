//! The broker: authentication, policy, publishing and invalidation over the hub.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::auth::{Authenticator, Principal, StaticKeys};
use crate::config::BrokerConfig;
use crate::error::{AuthError, InvalidateError, PublishError, SubscribeError, UnsubscribeError};
use crate::hub::{CloseReason, Hub, InvalidationFilter};
use crate::ids::{ChannelName, MessageId, MessageIdGen};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::policy::{AllowList, FilterPolicy};
use crate::replicator::{Deferred, LocalReplicator, PublishDone, Replicator};
use crate::session::Session;

/// Called exactly once with the outcome of [`Broker::publish_then`].
pub type PublishCallback = Box<dyn FnOnce(Result<MessageId, PublishError>) + Send>;

/// A payload known to be exactly one JSON value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JsonPayload(Bytes);

impl JsonPayload {
    /// Checks that `bytes` hold one JSON value.
    pub fn parse(bytes: Bytes) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<&RawValue>(&bytes)?;
        Ok(Self(bytes))
    }

    /// From a value a JSON parser has already checked.
    pub fn from_raw(raw: &RawValue) -> Self {
        Self(Bytes::copy_from_slice(raw.get().as_bytes()))
    }

    /// Wraps bytes already validated elsewhere (by a codec). Not public: a wrong call would put
    /// broken JSON on every subscriber's wire.
    pub(crate) fn trusted(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether empty (never, for a parsed payload).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The transport-independent broker. Share it as `Arc<Broker>` between transports.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    auth: Arc<dyn Authenticator>,
    policy: Arc<dyn FilterPolicy>,
    replicator: Arc<dyn Replicator>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    ids: MessageIdGen,
}

/// Builds a [`Broker`]; every part has a default.
#[derive(Debug, Default)]
pub struct BrokerBuilder {
    config: BrokerConfig,
    auth: Option<Arc<dyn Authenticator>>,
    policy: Option<Arc<dyn FilterPolicy>>,
    replicator: Option<Arc<dyn Replicator>>,
    metrics: Option<Arc<Metrics>>,
}

impl BrokerBuilder {
    /// Region and limits. Default: [`BrokerConfig::default`].
    pub fn config(mut self, config: BrokerConfig) -> Self {
        self.config = config;
        self
    }

    /// Who may connect. Default: an empty [`StaticKeys`], which refuses everyone.
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Which channels are allowed. Default: [`AllowList::default`], the seed's five channels.
    pub fn policy(mut self, policy: Arc<dyn FilterPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Where publishes go. Default: [`LocalReplicator`].
    pub fn replicator(mut self, replicator: Arc<dyn Replicator>) -> Self {
        self.replicator = Some(replicator);
        self
    }

    /// Metrics to report to, when other components share them. Default: fresh metrics.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the broker and attaches the replicator to its hub.
    pub fn build(self) -> Arc<Broker> {
        let metrics = self.metrics.unwrap_or_default();
        let hub = Arc::new(Hub::new(Arc::clone(&metrics)));
        let replicator = self
            .replicator
            .unwrap_or_else(|| Arc::new(LocalReplicator::new()));
        replicator.attach(hub.clone());
        Arc::new(Broker {
            config: self.config,
            auth: self.auth.unwrap_or_else(|| Arc::new(StaticKeys::new())),
            policy: self
                .policy
                .unwrap_or_else(|| Arc::new(AllowList::default())),
            replicator,
            hub,
            metrics,
            ids: MessageIdGen::new(),
        })
    }
}

impl Broker {
    /// Starts building a broker.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The fan-out engine.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Resolves a presented credential; `None` means none was presented.
    pub async fn authenticate(&self, credential: Option<&str>) -> Result<Principal, AuthError> {
        match credential {
            None | Some("") => Err(AuthError::Missing),
            Some(c) => self.auth.authenticate(c, SystemTime::now()).await,
        }
    }

    /// Opens a session for an authenticated principal. Dropping the session disconnects it.
    pub fn connect(self: &Arc<Self>, principal: Principal) -> Session {
        let conn = self
            .hub
            .connect(principal, self.config.limits.outbound_queue);
        Session::new(Arc::clone(self), conn)
    }

    /// Validates a subscription request against the name rules and the policy.
    pub(crate) fn check_subscribe(
        &self,
        principal: &Principal,
        channel: &str,
    ) -> Result<ChannelName, SubscribeError> {
        let channel = ChannelName::parse(channel)?;
        if let Err(denied) = self.policy.check_subscribe(principal, &channel) {
            self.metrics.rejected("subscribe");
            return Err(denied.into());
        }
        Ok(channel)
    }

    pub(crate) fn check_unsubscribe(&self, channel: &str) -> Result<ChannelName, UnsubscribeError> {
        Ok(ChannelName::parse(channel)?)
    }

    /// Publishes one JSON value on `channel` as `principal`.
    ///
    /// Returns once the replicator has accepted the message. On any error nothing was
    /// delivered to anyone.
    pub async fn publish(
        &self,
        principal: &Principal,
        channel: &str,
        data: JsonPayload,
    ) -> Result<MessageId, PublishError> {
        let message = self.prepare(principal, channel, data)?;
        let id = message.id.clone();
        self.replicator.publish(message).await?;
        self.metrics.published.inc();
        Ok(id)
    }

    /// Publishes like [`Broker::publish`], but returns as soon as the message has its place in
    /// the order, and calls `done` with the outcome when the replicator acknowledges it (at
    /// once for the local replicator). Publishes started one after another by one caller are
    /// delivered in that order. When the replicator pushes back (a full queue), this waits for
    /// the acknowledgement itself before returning.
    pub async fn publish_then(
        &self,
        principal: &Principal,
        channel: &str,
        data: JsonPayload,
        done: PublishCallback,
    ) {
        let message = match self.prepare(principal, channel, data) {
            Ok(m) => m,
            Err(e) => return done(Err(e)),
        };
        let id = message.id.clone();
        let metrics = Arc::clone(&self.metrics);
        let finish: PublishDone = Box::new(move |result| match result {
            Ok(()) => {
                metrics.published.inc();
                done(Ok(id));
            }
            Err(e) => done(Err(e.into())),
        });
        if let Err(deferred) = self.replicator.enqueue(message, finish) {
            let Deferred { message, done } = *deferred;
            done(self.replicator.publish(message).await);
        }
    }

    /// Checks a publish and stamps it with an id and this region.
    fn prepare(
        &self,
        principal: &Principal,
        channel: &str,
        data: JsonPayload,
    ) -> Result<Message, PublishError> {
        let channel = ChannelName::parse(channel)?;
        let max = self.config.limits.max_payload;
        if data.len() > max {
            return Err(PublishError::PayloadTooLarge {
                size: data.len(),
                max,
            });
        }
        if let Err(denied) = self.policy.check_publish(principal, &channel) {
            self.metrics.rejected("publish");
            return Err(denied.into());
        }
        Ok(Message {
            channel,
            data: data.0,
            id: self.ids.next_id(SystemTime::now()),
            origin: self.config.region.clone(),
        })
    }

    /// Ends every subscription `filter` selects, on this node at once and, through the
    /// replicator, elsewhere. Only an administrator may. Returns how many ended on this node.
    pub async fn invalidate(
        &self,
        principal: &Principal,
        filter: InvalidationFilter,
    ) -> Result<usize, InvalidateError> {
        if !principal.is_admin() {
            return Err(InvalidateError::Forbidden);
        }
        let local = self.hub.invalidate(&filter);
        tracing::info!(
            admin = principal.id(),
            ?filter,
            local,
            "subscriptions invalidated"
        );
        self.replicator
            .invalidate(&filter)
            .await
            .map_err(|source| InvalidateError::Replication { local, source })?;
        Ok(local)
    }

    /// Whether the broker can serve publishes fully (its replicator is connected and ready).
    pub fn is_ready(&self) -> bool {
        self.replicator.is_ready()
    }

    /// Asks every connection to close (close code 1001). Transports finish writing and exit.
    pub fn shutdown(&self) {
        self.hub.close_all(CloseReason::Shutdown);
    }
}
