//! Per-connection protocol logic shared by every transport: decode a frame, act, queue the reply.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::broker::{Broker, JsonPayload, PublishCallback};
use crate::codec::{Codec, Request, RequestKind, ServerFrame};
use crate::config::TokenBucket;
use crate::error::{DecodeError, ErrorCode, PublishError, WireError};
use crate::hub::Connection;

/// One client connection's protocol state. Replies and messages go to the connection's queue
/// in order, for the transport to write; dropping the session removes the connection.
pub struct Session {
    broker: Arc<Broker>,
    conn: Arc<Connection>,
    bucket: Option<TokenBucket>,
    /// Permits for publishes awaiting acknowledgement; made on the first publish so that a
    /// connection that only subscribes does not carry it.
    inflight: Option<Arc<Semaphore>>,
}

impl Session {
    pub(crate) fn new(broker: Arc<Broker>, conn: Arc<Connection>) -> Self {
        let bucket = broker.config().limits.publish_rate.map(TokenBucket::new);
        Self {
            broker,
            conn,
            bucket,
            inflight: None,
        }
    }

    /// The connection whose queue the transport drains.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Decodes one frame with `codec` and handles it; a bad frame gets an error reply and the
    /// session stays usable.
    pub async fn handle_frame(&mut self, codec: &dyn Codec, frame: &[u8], now: Instant) {
        match codec.decode(frame) {
            Ok(request) => self.handle(request, now).await,
            Err(e) => self.reply_decode_error(e),
        }
    }

    /// Queues the error reply for a frame that could not be decoded.
    pub fn reply_decode_error(&self, e: DecodeError) {
        self.reply_error(e.id.clone(), &e);
    }

    /// Handles one decoded request.
    pub async fn handle(&mut self, request: Request, now: Instant) {
        let Request { id, kind } = request;
        let principal = self.conn.principal().clone();
        let reply = match kind {
            RequestKind::Subscribe { channel } => {
                match self
                    .broker
                    .check_subscribe(&principal, &channel)
                    .and_then(|c| {
                        let max = self.broker.config().limits.max_subscriptions;
                        self.broker.hub().subscribe(&self.conn, &c, max).map(|_| c)
                    }) {
                    Ok(channel) => ServerFrame::Subscribed { id, channel },
                    Err(e) => return self.reply_error(id, &e),
                }
            }
            RequestKind::Unsubscribe { channel } => match self.broker.check_unsubscribe(&channel) {
                Ok(channel) => {
                    self.broker.hub().unsubscribe(&self.conn, &channel);
                    ServerFrame::Unsubscribed { id, channel }
                }
                Err(e) => return self.reply_error(id, &e),
            },
            RequestKind::Publish { channel, data } => {
                if let Some(bucket) = &mut self.bucket {
                    if !bucket.try_take(now) {
                        return self.reply_error(id, &PublishError::RateLimited);
                    }
                }
                let payload = JsonPayload::trusted(data);
                let max = self.broker.config().limits.max_inflight_publishes.max(1);
                let inflight = self
                    .inflight
                    .get_or_insert_with(|| Arc::new(Semaphore::new(max)));
                // Never closed, so this only waits.
                let Ok(permit) = Arc::clone(inflight).acquire_owned().await else {
                    return;
                };
                let conn = Arc::clone(&self.conn);
                let done: PublishCallback = Box::new(move |result| {
                    drop(permit);
                    match result {
                        Ok(message_id) => conn.send(ServerFrame::Published { id, message_id }),
                        Err(e) => conn.send(ServerFrame::Error {
                            id,
                            code: e.code(),
                            message: e.to_string(),
                        }),
                    };
                });
                // The reply is queued when the replicator acknowledges, after any replies to
                // requests that follow; each carries its request's id.
                self.broker
                    .publish_then(&principal, &channel, payload, done)
                    .await;
                return;
            }
            RequestKind::Ping => ServerFrame::Pong { id },
            RequestKind::Auth { .. } => ServerFrame::Error {
                id,
                code: ErrorCode::BadRequest,
                message: "already authenticated".into(),
            },
        };
        self.conn.send(reply);
    }

    /// Queues an error reply.
    pub fn reply_error(&self, id: Option<String>, error: &dyn WireError) {
        self.conn.send(ServerFrame::Error {
            id,
            code: error.code(),
            message: error.to_string(),
        });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.broker.hub().disconnect(&self.conn);
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}
