//! A Redis connection that re-establishes itself, with back-off, after failures.

use std::time::Duration;

use broker_core::ReplicationError;
use prometheus_client::metrics::counter::Counter;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A lazily (re)connected multiplexed connection. Commands on it pipeline automatically, so
/// concurrent publishes share one socket; blocking reads get a `Reconnecting` of their own.
pub(crate) struct Reconnecting {
    client: Client,
    target: String,
    config: AsyncConnectionConfig,
    backoff: (Duration, Duration),
    reconnects: Counter,
    state: Mutex<State>,
}

struct State {
    conn: Option<(MultiplexedConnection, u64)>,
    generation: u64,
    next_attempt: Instant,
    delay: Duration,
    ever_connected: bool,
}

/// A connection and the generation it belongs to, for [`Reconnecting::failed`].
pub(crate) struct Lease {
    pub(crate) conn: MultiplexedConnection,
    generation: u64,
}

impl Reconnecting {
    pub(crate) fn new(
        url: &str,
        target: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
        backoff: (Duration, Duration),
        reconnects: Counter,
    ) -> Result<Self, ReplicationError> {
        let client = Client::open(url).map_err(|e| {
            // The URL may hold a password: report the kind of error only.
            ReplicationError::Internal(format!("invalid Redis URL for {target}: {:?}", e.kind()))
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Ok(Self {
            client,
            target: target.to_owned(),
            config,
            backoff,
            reconnects,
            state: Mutex::new(State {
                conn: None,
                generation: 0,
                next_attempt: Instant::now(),
                delay: backoff.0,
                ever_connected: false,
            }),
        })
    }

    /// The current connection, connecting first if needed. While Redis is down this fails
    /// fast (without a connection attempt) until the back-off delay has passed.
    pub(crate) async fn get(&self) -> Result<Lease, ReplicationError> {
        let mut st = self.state.lock().await;
        if let Some((conn, generation)) = &st.conn {
            return Ok(Lease {
                conn: conn.clone(),
                generation: *generation,
            });
        }
        let now = Instant::now();
        if now < st.next_attempt {
            return Err(ReplicationError::Unavailable(format!(
                "Redis of {} is down",
                self.target
            )));
        }
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(conn) => {
                st.generation += 1;
                let generation = st.generation;
                st.conn = Some((conn.clone(), generation));
                st.delay = self.backoff.0;
                if st.ever_connected {
                    self.reconnects.inc();
                    tracing::info!(target = %self.target, "reconnected to Redis");
                }
                st.ever_connected = true;
                Ok(Lease { conn, generation })
            }
            Err(e) => {
                st.next_attempt = now + st.delay;
                st.delay = (st.delay * 2).min(self.backoff.1);
                Err(unavailable(&self.target, &e))
            }
        }
    }

    /// Reports a failed command. A broken connection is dropped so that the next `get`
    /// reconnects; other errors (a script error, a wrong type) leave it in place.
    pub(crate) async fn failed(&self, lease: &Lease, error: &RedisError) {
        if !broken(error) {
            return;
        }
        let mut st = self.state.lock().await;
        if st
            .conn
            .as_ref()
            .is_some_and(|(_, g)| *g == lease.generation)
        {
            tracing::warn!(target = %self.target, error = %error, "Redis connection lost");
            st.conn = None;
        }
    }

    /// Waits out the back-off before a retry in a background loop.
    pub(crate) async fn pause(&self) {
        let wait = {
            let st = self.state.lock().await;
            st.next_attempt
                .saturating_duration_since(Instant::now())
                .max(self.backoff.0)
        };
        tokio::time::sleep(wait).await;
    }
}

/// Whether `e` means the connection can no longer be trusted.
pub(crate) fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

pub(crate) fn unavailable(target: &str, e: &RedisError) -> ReplicationError {
    ReplicationError::Unavailable(format!("Redis of {target}: {}", describe(e)))
}

/// An error description without the server's connection details.
pub(crate) fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_io_error() || e.is_connection_dropped() {
        "connection lost".into()
    } else {
        format!("{:?}", e.kind())
    }
}
