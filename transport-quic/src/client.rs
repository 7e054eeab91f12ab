//! A small async client for the QUIC front end, for tests, benchmarks and embedders.
//!
//! One [`Client`] is one QUIC connection: requests and their replies travel on its control
//! stream, and each [`Subscription`] owns its channel's stream, so a subscription that is not
//! read stalls only itself (after [`ClientConfig::stream_receive_window`] bytes).

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use broker_core::PROTOCOL_V1;
use bytes::Bytes;
use quinn::{ConnectionError, IdleTimeout, SendStream, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::close_code;
use crate::framing::{self, FrameError, FrameReader};
use crate::tls::{self, TlsError};

/// Requests waiting to be written on the control stream; callers wait for room. An unsubscribe
/// sent by a dropped [`Subscription`] is skipped when the queue is full.
const OUTGOING_QUEUE: usize = 64;

/// Frames handed to quinn per write call.
const WRITE_BATCH: usize = 32;

/// How long to wait for the server's close after it ended the control stream, to report its
/// close code.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The name the server's certificate must be valid for (a DNS name or an IP address).
    /// Default: `localhost`.
    pub server_name: String,
    /// Certificates to trust: the server's certificate must be one of them or be issued by one.
    /// Default: none, so every server is refused; see [`ClientConfig::trusting`].
    pub trusted_certificates: Vec<CertificateDer<'static>>,
    /// The ALPN protocol offered. Default: `pubsub.v1`, the only one the server accepts.
    pub alpn: Vec<u8>,
    /// Largest frame accepted from the server. Default: 16 MiB. Cost: each stream's read
    /// buffer grows to its largest frame.
    pub max_frame_size: usize,
    /// Bytes the server may send on one stream beyond what this client has read (the QUIC
    /// stream receive window). A subscription not read stalls after this much while the others
    /// go on. Default: 1.25 MB (quinn's default). Cost: up to this much buffered per stream.
    pub stream_receive_window: u32,
    /// Streams the server may have open towards this client at once: one per subscription,
    /// plus ended streams not yet read to their end. Default: 256.
    pub max_incoming_streams: u32,
    /// A connection silent for this long is dropped. Default: 40 s.
    pub idle_timeout: Duration,
    /// Idle time after which the client sends a QUIC PING; zero disables. Default: 20 s.
    pub keep_alive_interval: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            trusted_certificates: Vec::new(),
            alpn: PROTOCOL_V1.as_bytes().to_vec(),
            max_frame_size: 16 * 1024 * 1024,
            stream_receive_window: 1_250_000,
            max_incoming_streams: 256,
            idle_timeout: Duration::from_secs(40),
            keep_alive_interval: Duration::from_secs(20),
        }
    }
}

impl ClientConfig {
    /// The default settings, trusting `certificate` (for example the broker's self-signed
    /// certificate, read with [`tls::certificates_from_pem_file`]).
    pub fn trusting(certificate: CertificateDer<'static>) -> Self {
        Self {
            trusted_certificates: vec![certificate],
            ..Self::default()
        }
    }

    fn quinn(&self) -> Result<quinn::ClientConfig, ConnectError> {
        let crypto = tls::client_crypto(&self.trusted_certificates, &self.alpn)?;
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| ConnectError::Protocol("idle_timeout is too long".into()))?;
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_incoming_streams))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(
                (!self.keep_alive_interval.is_zero()).then_some(self.keep_alive_interval),
            )
            .datagram_receive_buffer_size(None);
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// How a connection ended, as far as the client can tell.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CloseInfo {
    /// The application error code the peer closed with (see [`close_code`]); `None` when the
    /// connection ended otherwise (idle timeout, transport error, closed locally).
    pub code: Option<u64>,
    /// The close reason phrase, or a description of what ended the connection.
    pub reason: String,
}

impl From<&ConnectionError> for CloseInfo {
    fn from(e: &ConnectionError) -> Self {
        match e {
            ConnectionError::ApplicationClosed(close) => Self {
                code: Some(close.error_code.into_inner()),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => Self {
                code: None,
                reason: other.to_string(),
            },
        }
    }
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "connection closed with code {code}: {}", self.reason),
            None => write!(f, "connection lost: {}", self.reason),
        }
    }
}

/// Why [`Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TLS settings were refused (for example a malformed trusted certificate).
    #[error("client TLS configuration: {0}")]
    Tls(#[from] TlsError),
    /// No local UDP socket could be bound.
    #[error("cannot bind a local UDP socket: {0}")]
    Bind(std::io::Error),
    /// The connection could not be started (for example an invalid server name).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed: unreachable server, untrusted certificate, ALPN refused, …
    #[error("connection failed: {0}")]
    Connection(#[from] ConnectionError),
    /// The server answered `auth` with an error frame (code `unauthorized`, or `unavailable`
    /// when its authentication backend is down).
    #[error("authentication refused ({code}): {message}")]
    Refused {
        /// The wire error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The connection closed before the server answered `auth`.
    #[error("{0}")]
    Closed(CloseInfo),
    /// The server answered something unexpected.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// Why a request ([`Client::publish`], [`Client::ping`], [`Client::unsubscribe`]) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error frame.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The wire error code, e.g. `channel_not_allowed`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The connection is closed.
    #[error("{0}")]
    Closed(CloseInfo),
    /// The data to publish cannot be represented as JSON.
    #[error("cannot encode the data as JSON: {0}")]
    Encode(String),
    /// The server answered something unexpected.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// Why [`Client::subscribe`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// This client already holds a [`Subscription`] to the channel (one stream per channel).
    #[error("already subscribed to {0}")]
    AlreadySubscribed(String),
    /// The request failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why a [`Subscription`] delivers no more messages. Every later call returns the same.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The subscription was ended by [`Client::unsubscribe`].
    #[error("unsubscribed")]
    Unsubscribed,
    /// An administrator invalidated the subscription.
    #[error("subscription invalidated by an administrator")]
    Invalidated,
    /// The connection is closed.
    #[error("{0}")]
    Closed(CloseInfo),
    /// The server sent something that is not a valid frame for a channel stream.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One message received on a channel.
#[derive(Clone, PartialEq, Debug)]
pub struct ChannelMessage {
    /// The channel it was published on.
    pub channel: String,
    /// Unique across every node and region.
    pub message_id: String,
    /// The region where it was published.
    pub origin: String,
    /// The publisher's JSON value.
    pub data: Value,
}

/// A connection to a broker's QUIC front end.
///
/// Dropping it closes the connection (code 0); [`Client::close`] also waits for the close to
/// reach the server.
pub struct Client {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    inner: Arc<Inner>,
    /// The control-stream reader, the stream acceptor and the request writer; aborted when the
    /// client is dropped.
    _tasks: JoinSet<()>,
}

struct Inner {
    conn: quinn::Connection,
    state: Mutex<State>,
    /// Bounded by [`OUTGOING_QUEUE`].
    outgoing: mpsc::Sender<Bytes>,
    next_id: AtomicU64,
    max_frame: usize,
}

#[derive(Default)]
struct State {
    /// Requests waiting for their reply, by id.
    pending: HashMap<String, oneshot::Sender<Value>>,
    /// Subscribes waiting for their channel's stream, by channel.
    waiters: HashMap<String, oneshot::Sender<FrameReader>>,
    /// Channels with a live [`Subscription`] (or one being made), with its generation.
    active: HashMap<String, u64>,
    generation: u64,
    /// The control stream is gone: no reply will come.
    ended: bool,
}

impl Client {
    /// Connects to `addr`, checks the server's certificate against `config`, and authenticates
    /// with `api_key`.
    pub async fn connect(
        addr: SocketAddr,
        api_key: &str,
        config: ClientConfig,
    ) -> Result<Self, ConnectError> {
        let quinn_config = config.quinn()?;
        let bind: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = crate::client_endpoint(bind).map_err(ConnectError::Bind)?;
        let conn = endpoint
            .connect_with(quinn_config, addr, &config.server_name)?
            .await?;
        let (mut send, recv) = conn.open_bi().await?;
        let mut control = FrameReader::new(recv);
        let auth = json!({"type": "auth", "id": "auth", "api_key": api_key});
        if send.write_all(&encode(&auth)).await.is_err() {
            return Err(closed_during_auth(&conn).await);
        }
        let reply: Value = match control.next(config.max_frame_size).await {
            Ok(Some(frame)) => serde_json::from_slice(frame)
                .map_err(|e| ConnectError::Protocol(format!("reply to auth: {e}")))?,
            Ok(None) | Err(_) => return Err(closed_during_auth(&conn).await),
        };
        match reply["type"].as_str() {
            Some("authed") => {}
            Some("error") => {
                let (code, message) = error_fields(&reply);
                return Err(ConnectError::Refused { code, message });
            }
            _ => return Err(ConnectError::Protocol(format!("reply to auth: {reply}"))),
        }

        let (outgoing, requests) = mpsc::channel(OUTGOING_QUEUE);
        let inner = Arc::new(Inner {
            conn: conn.clone(),
            state: Mutex::default(),
            outgoing,
            next_id: AtomicU64::new(1),
            max_frame: config.max_frame_size,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(write_requests(send, requests));
        tasks.spawn(read_replies(control, Arc::clone(&inner)));
        tasks.spawn(accept_streams(conn.clone(), Arc::clone(&inner)));
        Ok(Self {
            conn,
            endpoint,
            inner,
            _tasks: tasks,
        })
    }

    /// Subscribes to `channel`. The returned [`Subscription`] yields the channel's messages in
    /// order; dropping it unsubscribes.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, SubscribeError> {
        let (tx, rx) = oneshot::channel();
        let generation = {
            let mut st = self.inner.lock();
            if st.active.contains_key(channel) {
                return Err(SubscribeError::AlreadySubscribed(channel.into()));
            }
            st.generation += 1;
            let generation = st.generation;
            st.active.insert(channel.into(), generation);
            st.waiters.insert(channel.into(), tx);
            generation
        };
        // Undoes the registration if the subscribe fails or this future is dropped.
        let mut pending = PendingSubscribe {
            inner: &self.inner,
            channel,
            generation,
            done: false,
        };
        self.request(object(json!({"type": "subscribe", "channel": channel})))
            .await?;
        // The server opens the channel's stream around the time it replies; it may come first.
        let Ok(reader) = rx.await else {
            return Err(RequestError::Closed(self.inner.close_info().await).into());
        };
        pending.done = true;
        Ok(Subscription {
            channel: channel.into(),
            reader,
            inner: Arc::clone(&self.inner),
            generation,
            end: None,
        })
    }

    /// Unsubscribes from `channel`. Its [`Subscription`] then yields what was already sent,
    /// and ends with [`RecvError::Unsubscribed`].
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), RequestError> {
        self.request(object(json!({"type": "unsubscribe", "channel": channel})))
            .await?;
        self.inner.lock().active.remove(channel);
        Ok(())
    }

    /// Publishes `data` (any value that serialises to JSON) on `channel`; returns the message
    /// id once the broker has accepted it.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<String, RequestError> {
        let data = serde_json::to_value(data).map_err(|e| RequestError::Encode(e.to_string()))?;
        let reply = self
            .request(object(
                json!({"type": "publish", "channel": channel, "data": data}),
            ))
            .await?;
        match reply["message_id"].as_str() {
            Some(id) if reply["type"] == "published" => Ok(id.to_owned()),
            _ => Err(RequestError::Protocol(reply.to_string())),
        }
    }

    /// A round trip on the control stream.
    pub async fn ping(&self) -> Result<(), RequestError> {
        let reply = self.request(object(json!({"type": "ping"}))).await?;
        if reply["type"] == "pong" {
            Ok(())
        } else {
            Err(RequestError::Protocol(reply.to_string()))
        }
    }

    /// Waits until the connection is closed, and says how.
    pub async fn closed(&self) -> CloseInfo {
        CloseInfo::from(&self.conn.closed().await)
    }

    /// Closes the connection (code 0) and waits, briefly, for the server to be told.
    pub async fn close(self) {
        self.conn
            .close(VarInt::from_u32(close_code::NO_ERROR), b"client closed");
        let _ = tokio::time::timeout(CLOSE_WAIT, self.endpoint.wait_idle()).await;
    }

    /// Sends one request with a fresh id and waits for its reply; an `error` reply is an `Err`.
    async fn request(&self, mut body: Map<String, Value>) -> Result<Value, RequestError> {
        let id = format!("r{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        body.insert("id".into(), Value::String(id.clone()));
        let (tx, rx) = oneshot::channel();
        let ended = {
            let mut st = self.inner.lock();
            if !st.ended {
                st.pending.insert(id.clone(), tx);
            }
            st.ended
        };
        if ended {
            return Err(RequestError::Closed(self.inner.close_info().await));
        }
        if self
            .inner
            .outgoing
            .send(encode(&Value::Object(body)))
            .await
            .is_err()
        {
            self.inner.lock().pending.remove(&id);
            return Err(RequestError::Closed(self.inner.close_info().await));
        }
        let Ok(reply) = rx.await else {
            return Err(RequestError::Closed(self.inner.close_info().await));
        };
        if reply["type"] == "error" {
            let (code, message) = error_fields(&reply);
            return Err(RequestError::Refused { code, message });
        }
        Ok(reply)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn
            .close(VarInt::from_u32(close_code::NO_ERROR), b"client closed");
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single map operation; a panic elsewhere cannot leave it half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the connection ended, once the control stream is gone.
    async fn close_info(&self) -> CloseInfo {
        match tokio::time::timeout(CLOSE_WAIT, self.conn.closed()).await {
            Ok(e) => CloseInfo::from(&e),
            Err(_) => CloseInfo {
                code: None,
                reason: "the server ended the control stream".into(),
            },
        }
    }

    /// Removes `channel` from the live subscriptions if `generation` still holds it; says
    /// whether it did.
    fn forget(&self, channel: &str, generation: u64) -> bool {
        let mut st = self.lock();
        if st.active.get(channel) == Some(&generation) {
            st.active.remove(channel);
            true
        } else {
            false
        }
    }
}

struct PendingSubscribe<'a> {
    inner: &'a Inner,
    channel: &'a str,
    generation: u64,
    done: bool,
}

impl Drop for PendingSubscribe<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.lock().waiters.remove(self.channel);
            self.inner.forget(self.channel, self.generation);
        }
    }
}

/// The messages of one channel, in order, on the channel's own stream.
pub struct Subscription {
    channel: String,
    reader: FrameReader,
    inner: Arc<Inner>,
    generation: u64,
    end: Option<RecvError>,
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next message; after an error, every call returns the same error. Cancel-safe: it
    /// may be used as a `select!` branch.
    pub async fn next(&mut self) -> Result<ChannelMessage, RecvError> {
        if let Some(end) = &self.end {
            return Err(end.clone());
        }
        let result = self.read().await;
        if let Err(e) = &result {
            self.end = Some(e.clone());
            self.inner.forget(&self.channel, self.generation);
        }
        result
    }

    async fn read(&mut self) -> Result<ChannelMessage, RecvError> {
        let frame = match self.reader.next(self.inner.max_frame).await {
            Ok(Some(frame)) => frame,
            // A stream finished without an end frame: the connection is closing.
            Ok(None) => return Err(RecvError::Closed(self.inner.close_info().await)),
            Err(FrameError::Lost(e)) => return Err(RecvError::Closed(CloseInfo::from(&e))),
            Err(e) => return Err(RecvError::Protocol(format!("{e:?}"))),
        };
        let wire: WireFrame =
            serde_json::from_slice(frame).map_err(|e| RecvError::Protocol(e.to_string()))?;
        match wire.ty.as_str() {
            "message" => Ok(ChannelMessage {
                channel: wire.channel.unwrap_or_default(),
                message_id: wire.message_id.unwrap_or_default(),
                origin: wire.origin.unwrap_or_default(),
                data: wire.data.unwrap_or(Value::Null),
            }),
            "unsubscribed" => Err(RecvError::Unsubscribed),
            "invalidated" => Err(RecvError::Invalidated),
            other => Err(RecvError::Protocol(format!(
                "unexpected {other:?} frame on a channel stream"
            ))),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Still subscribed on the server: unsubscribe, after any request already queued. The
        // reply has no id and is ignored. Dropping the stream stops it, so the server discards
        // the channel's messages meanwhile.
        if self.end.is_none() && self.inner.forget(&self.channel, self.generation) {
            let bye = json!({"type": "unsubscribe", "channel": self.channel});
            let _ = self.inner.outgoing.try_send(encode(&bye));
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// The fields of a server frame the client looks at.
#[derive(Deserialize)]
struct WireFrame {
    #[serde(rename = "type")]
    ty: String,
    channel: Option<String>,
    message_id: Option<String>,
    origin: Option<String>,
    data: Option<Value>,
}

async fn closed_during_auth(conn: &quinn::Connection) -> ConnectError {
    ConnectError::Closed(CloseInfo::from(&conn.closed().await))
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn encode(v: &Value) -> Bytes {
    framing::frame(v.to_string().as_bytes())
}

fn error_fields(reply: &Value) -> (String, String) {
    let field = |k: &str| reply[k].as_str().unwrap_or_default().to_owned();
    (field("code"), field("message"))
}

/// Writes queued requests on the control stream; finishes it when every sender is gone.
async fn write_requests(mut send: SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}

/// Hands each reply to the request with its id, until the control stream ends.
async fn read_replies(mut control: FrameReader, inner: Arc<Inner>) {
    while let Ok(Some(frame)) = control.next(inner.max_frame).await {
        let Ok(reply) = serde_json::from_slice::<Value>(frame) else {
            tracing::debug!("unreadable frame on the control stream");
            continue;
        };
        // Replies without an id answer the unsubscribes of dropped subscriptions.
        if let Some(id) = reply["id"].as_str() {
            let waiter = inner.lock().pending.remove(id);
            if let Some(tx) = waiter {
                let _ = tx.send(reply);
            }
        }
    }
    let mut st = inner.lock();
    st.ended = true;
    st.pending.clear();
    st.waiters.clear();
}

/// Accepts the server's channel streams and hands each, after its header, to the subscribe
/// waiting for it.
async fn accept_streams(conn: quinn::Connection, inner: Arc<Inner>) {
    let mut headers = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_uni() => match stream {
                Ok(recv) => {
                    headers.spawn(read_header(FrameReader::new(recv), inner.max_frame));
                }
                Err(_) => break,
            },
            Some(Ok(Some((channel, reader)))) = headers.join_next() => {
                let waiter = inner.lock().waiters.remove(&channel);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(reader);
                    }
                    // Nobody asked for it (a late stream of a dropped subscribe): dropping it
                    // stops it.
                    None => tracing::debug!(channel, "unexpected channel stream"),
                }
            }
        }
    }
}

/// Reads a channel stream's `subscribed` header.
async fn read_header(mut reader: FrameReader, max: usize) -> Option<(String, FrameReader)> {
    let channel = {
        let frame = reader.next(max).await.ok()??;
        let header: WireFrame = serde_json::from_slice(frame).ok()?;
        if header.ty != "subscribed" {
            return None;
        }
        header.channel?
    };
    Some((channel, reader))
}
