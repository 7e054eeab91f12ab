//! The fan-out engine: who is subscribed to what, and each connection's bounded outbound queue.
//!
//! Mechanism only: the hub never decides whether a channel is allowed (that is the
//! [`FilterPolicy`](crate::FilterPolicy)) and never touches a socket. Transports drain each
//! [`Connection`]'s queue and write the frames.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::auth::Principal;
use crate::codec::ServerFrame;
use crate::error::SubscribeError;
use crate::ids::{ChannelName, ConnectionId, ConnectionIdGen};
use crate::message::{Envelope, Message};
use crate::metrics::Metrics;

/// Control frames (replies, notices) that may queue beyond the message bound. A client that
/// sends requests without reading replies is cut off as a slow consumer past this.
pub const CONTROL_SLACK: usize = 64;

/// Why the server is closing a connection. Transports map it to their close codes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// An administrator invalidated the connection's last subscription.
    Invalidated,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    /// The WebSocket close code (and QUIC application error code) for this reason.
    pub fn code(self) -> u16 {
        match self {
            Self::Invalidated => 4001,
            Self::SlowConsumer => 4008,
            Self::Shutdown => 1001,
        }
    }

    /// The close reason text.
    pub fn text(self) -> &'static str {
        match self {
            Self::Invalidated => "subscription invalidated",
            Self::SlowConsumer => "slow consumer",
            Self::Shutdown => "server shutting down",
        }
    }

    /// Whether frames still queued should be written before closing. A slow consumer's backlog
    /// is dropped: writing it is what it cannot keep up with.
    pub fn flush_first(self) -> bool {
        !matches!(self, Self::SlowConsumer)
    }
}

/// One item of a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A reply or notice (boxed so that queued messages stay two words wide).
    Frame(Box<ServerFrame>),
    /// A channel message, shared with every other subscriber.
    Message(Arc<Envelope>),
}

/// Which subscriptions an invalidation ends.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum InvalidationFilter {
    /// Every subscription to this channel.
    Channel(ChannelName),
    /// Every subscription held by connections of this principal (by its id).
    Principal(String),
}

/// One client connection as the hub sees it: its identity, subscriptions and outbound queue.
pub struct Connection {
    id: ConnectionId,
    principal: Principal,
    max_messages: usize,
    state: Mutex<ConnState>,
    wake: Notify,
}

#[derive(Default)]
struct ConnState {
    /// Bounded: `queued_messages <= max_messages`, and control frames by [`CONTROL_SLACK`];
    /// overflow closes the connection as a slow consumer.
    queue: VecDeque<Outbound>,
    queued_messages: usize,
    subscriptions: HashSet<ChannelName>,
    closing: Option<CloseReason>,
}

enum Push {
    Queued,
    Overflow,
    Closed,
}

impl Connection {
    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Who is connected.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Waits until the queue may hold something new or the connection is closing. A wake-up can
    /// be spurious; call [`Connection::drain`] after it.
    pub async fn ready(&self) {
        self.wake.notified().await
    }

    /// Moves every queued item into `out` (which should be empty) and says whether to close
    /// after writing them.
    pub fn drain(&self, out: &mut VecDeque<Outbound>) -> Option<CloseReason> {
        let mut st = self.lock();
        std::mem::swap(&mut st.queue, out);
        st.queued_messages = 0;
        st.closing
    }

    /// Frees queue space left from a past burst (beyond `keep` slots) if nothing is queued now.
    /// Transports call it now and then (at each ping interval), so that a connection keeps no
    /// burst-sized memory once the burst is over.
    pub fn shrink_queue(&self, keep: usize) {
        let mut st = self.lock();
        if st.queue.is_empty() && st.queue.capacity() > keep {
            st.queue = VecDeque::new();
        }
    }

    /// Whether the connection is closing, and why.
    pub fn closing(&self) -> Option<CloseReason> {
        self.lock().closing
    }

    /// Asks the transport to close this connection. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.closing.is_none() {
            st.closing = Some(reason);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Channels this connection is subscribed to, sorted.
    pub fn subscriptions(&self) -> Vec<ChannelName> {
        let mut v: Vec<_> = self.lock().subscriptions.iter().cloned().collect();
        v.sort();
        v
    }

    /// Queues a reply or notice. Returns false if the connection is closing (the frame is
    /// dropped) or has just been closed for not reading its replies.
    pub fn send(&self, frame: ServerFrame) -> bool {
        let mut st = self.lock();
        if st.closing.is_some() {
            return false;
        }
        if st.queue.len() >= self.max_messages + CONTROL_SLACK {
            st.closing = Some(CloseReason::SlowConsumer);
            drop(st);
            self.wake.notify_one();
            return false;
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Outbound::Frame(Box::new(frame)));
        drop(st);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    fn push_message(&self, env: &Arc<Envelope>) -> Push {
        let mut st = self.lock();
        if st.closing.is_some() {
            return Push::Closed;
        }
        if st.queued_messages >= self.max_messages {
            st.closing = Some(CloseReason::SlowConsumer);
            drop(st);
            self.wake.notify_one();
            return Push::Overflow;
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Outbound::Message(Arc::clone(env)));
        st.queued_messages += 1;
        drop(st);
        // One wake-up per batch: the writer drains everything queued since it last looked.
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    /// Ends the subscription to `channel` after an invalidation; closes the connection if it was
    /// the last. Returns whether a subscription was ended.
    fn end_subscription(&self, channel: &ChannelName) -> bool {
        let mut st = self.lock();
        if !st.subscriptions.remove(channel) {
            return false;
        }
        if st.closing.is_none() {
            // Notices bypass the bound: at most one per subscription, and the connection is
            // about to be closed if it has no subscription left.
            st.queue
                .push_back(Outbound::Frame(Box::new(ServerFrame::Invalidated {
                    channel: channel.clone(),
                })));
            if st.subscriptions.is_empty() {
                st.closing = Some(CloseReason::Invalidated);
            }
        }
        drop(st);
        self.wake.notify_one();
        true
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        // A panic while holding this lock cannot leave the state inconsistent (every update
        // is a single field write), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

type Subscribers = Arc<Vec<Arc<Connection>>>;

/// The subscriber registry and fan-out.
///
/// Each channel's subscribers are an `Arc<Vec<_>>` snapshot: a publish clones the `Arc` under
/// a short lock and fans out with no lock held, while subscribe and unsubscribe copy the list
/// only if a fan-out is reading it at that moment (`Arc::make_mut`).
pub struct Hub {
    channels: Mutex<HashMap<ChannelName, Subscribers>>,
    connections: Mutex<HashMap<ConnectionId, Arc<Connection>>>,
    ids: ConnectionIdGen,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            channels: Mutex::default(),
            connections: Mutex::default(),
            ids: ConnectionIdGen::default(),
            metrics,
        }
    }

    /// Registers a new connection whose queue holds at most `max_messages` messages.
    pub fn connect(&self, principal: Principal, max_messages: usize) -> Arc<Connection> {
        let conn = Arc::new(Connection {
            id: self.ids.next_id(),
            principal,
            max_messages: max_messages.max(1),
            state: Mutex::default(),
            wake: Notify::new(),
        });
        lock(&self.connections).insert(conn.id, Arc::clone(&conn));
        self.metrics.connections.inc();
        conn
    }

    /// Removes a connection and all its subscriptions. Idempotent.
    pub fn disconnect(&self, conn: &Connection) {
        if lock(&self.connections).remove(&conn.id).is_none() {
            return;
        }
        self.metrics.connections.dec();
        let subs = std::mem::take(&mut conn.lock().subscriptions);
        conn.close(CloseReason::Shutdown);
        let mut channels = lock(&self.channels);
        for channel in &subs {
            remove_subscriber(&mut channels, channel, conn.id);
        }
        self.metrics.subscriptions.dec_by(subs.len() as i64);
    }

    /// Subscribes `conn` to `channel`. Returns false if it already was (subscribing is
    /// idempotent, and a connection never receives a message twice).
    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        channel: &ChannelName,
        max_subscriptions: usize,
    ) -> Result<bool, SubscribeError> {
        {
            let mut st = conn.lock();
            if st.closing.is_some() {
                return Err(SubscribeError::Closed);
            }
            if st.subscriptions.contains(channel) {
                return Ok(false);
            }
            if st.subscriptions.len() >= max_subscriptions {
                return Err(SubscribeError::TooManySubscriptions {
                    max: max_subscriptions,
                });
            }
            st.subscriptions.insert(channel.clone());
        }
        let mut channels = lock(&self.channels);
        Arc::make_mut(channels.entry(channel.clone()).or_default()).push(Arc::clone(conn));
        drop(channels);
        self.metrics.subscriptions.inc();
        Ok(true)
    }

    /// Unsubscribes `conn` from `channel`. Returns false if it was not subscribed.
    pub fn unsubscribe(&self, conn: &Connection, channel: &ChannelName) -> bool {
        if !conn.lock().subscriptions.remove(channel) {
            return false;
        }
        remove_subscriber(&mut lock(&self.channels), channel, conn.id);
        self.metrics.subscriptions.dec();
        true
    }

    /// Queues `message` to every subscriber of its channel on this node; returns how many.
    ///
    /// Never waits: a subscriber whose queue is full is closed as a slow consumer instead.
    pub fn deliver(&self, message: Message) -> usize {
        let Some(subscribers) = lock(&self.channels).get(&message.channel).cloned() else {
            return 0;
        };
        let env = Arc::new(Envelope::new(message));
        let mut delivered = 0u64;
        for conn in subscribers.iter() {
            match conn.push_message(&env) {
                Push::Queued => delivered += 1,
                Push::Overflow => {
                    self.metrics.slow_consumers.inc();
                    tracing::debug!(conn = %conn.id, principal = conn.principal.id(), "slow consumer");
                }
                Push::Closed => {}
            }
        }
        self.metrics.delivered.inc_by(delivered);
        delivered as usize
    }

    /// Ends the subscriptions `filter` selects on this node; returns how many ended.
    pub fn invalidate(&self, filter: &InvalidationFilter) -> usize {
        let ended = match filter {
            InvalidationFilter::Channel(channel) => {
                let Some(subscribers) = lock(&self.channels).remove(channel) else {
                    return 0;
                };
                subscribers
                    .iter()
                    .filter(|c| c.end_subscription(channel))
                    .count()
            }
            InvalidationFilter::Principal(id) => {
                let conns: Vec<_> = lock(&self.connections)
                    .values()
                    .filter(|c| c.principal.id() == id)
                    .cloned()
                    .collect();
                let mut ended = 0;
                for conn in conns {
                    for channel in conn.subscriptions() {
                        if conn.end_subscription(&channel) {
                            remove_subscriber(&mut lock(&self.channels), &channel, conn.id);
                            ended += 1;
                        }
                    }
                }
                ended
            }
        };
        self.metrics.subscriptions.dec_by(ended as i64);
        self.metrics.invalidations.inc_by(ended as u64);
        ended
    }

    /// Asks every connection to close with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        let conns: Vec<_> = lock(&self.connections).values().cloned().collect();
        for conn in conns {
            conn.close(reason);
        }
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.connections).len()
    }

    /// Subscribers of `channel` on this node.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        lock(&self.channels).get(channel).map_or(0, |s| s.len())
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connection_count())
            .field("channels", &lock(&self.channels).len())
            .finish()
    }
}

fn remove_subscriber(
    channels: &mut HashMap<ChannelName, Subscribers>,
    channel: &ChannelName,
    id: ConnectionId,
) {
    if let Some(subs) = channels.get_mut(channel) {
        if let Some(pos) = subs.iter().position(|c| c.id == id) {
            Arc::make_mut(subs).swap_remove(pos);
        }
        if subs.is_empty() {
            channels.remove(channel);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Registry updates are single inserts and removals; a panic elsewhere cannot leave them
    // half-done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
