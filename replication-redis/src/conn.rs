//! A Redis connection that re-establishes itself, with back-off, after failures.

use std::time::Duration;

use broker_core::ReplicationError;
use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A connection to one Redis server or to a Redis Cluster. Both multiplex: concurrent commands
/// share the socket(s), so blocking reads get a connection of their own.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Target {
    Single(Client, AsyncConnectionConfig),
    Cluster(ClusterClient),
}

/// Opens a connection target from a URL: one server, or a cluster given as a comma-separated
/// list of its nodes' URLs (any reachable subset will do; the rest is discovered).
fn target(url: &str, connect: Duration, response: Duration) -> Result<Target, RedisError> {
    if url.contains(',') {
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = ClusterClient::builder(nodes)
            .connection_timeout(connect)
            .response_timeout(response)
            .build()?;
        Ok(Target::Cluster(client))
    } else {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response));
        Ok(Target::Single(Client::open(url)?, config))
    }
}

/// A lazily (re)connected connection, to one server or a cluster.
pub(crate) struct Reconnecting {
    target_conn: Target,
    target: String,
    backoff: (Duration, Duration),
    reconnects: Counter,
    state: Mutex<State>,
}

struct State {
    conn: Option<(Conn, u64)>,
    generation: u64,
    next_attempt: Instant,
    delay: Duration,
    ever_connected: bool,
}

/// A connection and the generation it belongs to, for [`Reconnecting::failed`].
pub(crate) struct Lease {
    pub(crate) conn: Conn,
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
        let target_conn = self::target(url, connect_timeout, response_timeout).map_err(|e| {
            // The URL may hold a password: report the kind of error only.
            ReplicationError::Internal(format!("invalid Redis URL for {target}: {:?}", e.kind()))
        })?;
        Ok(Self {
            target_conn,
            target: target.to_owned(),
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
        let connected = match &self.target_conn {
            Target::Single(client, config) => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(Conn::Single),
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        };
        match connected {
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
