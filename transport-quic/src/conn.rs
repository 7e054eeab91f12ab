//! One QUIC connection: authenticate on the control stream, then read requests into the
//! session while a dispatcher drains the session's queue, replies to the control stream and each
//! channel's messages to that channel's own unidirectional stream, one writer task per stream.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use broker_core::message::ENCODING_SLOTS;
use broker_core::{
    Broker, ChannelName, CloseReason, Codec, Envelope, ErrorCode, JsonCodec, Limits, Outbound,
    Request, RequestKind, ServerFrame, Session, WireError,
};
use bytes::Bytes;
use quinn::{Connection, Incoming, SendStream, VarInt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::close_code;
use crate::config::QuicConfig;
use crate::demux::{Demux, Route};
use crate::framing::{self, FrameError, FrameReader};

/// Largest frame accepted before authentication: an `auth` frame is small, and an
/// unauthenticated client should not make the server allocate a megabyte.
const MAX_AUTH_FRAME: usize = 16 * 1024;

/// Streams ended by unsubscribe or invalidation whose last bytes the client has not yet
/// acknowledged may linger beyond `max_subscriptions` by this many; a client that leaves more
/// of its streams unread than that is closed as a slow consumer.
const STREAM_SLACK: usize = 64;

/// Frames handed to quinn per write call.
const WRITE_BATCH: usize = 64;

/// Replies go out ahead of bulk channel data (quinn sends higher priorities first and
/// round-robins streams of equal priority).
const CONTROL_PRIORITY: i32 = 1;
const CHANNEL_PRIORITY: i32 = 0;

/// The [`Envelope`] encoding slot holding a message's length-prefixed frame, so that it is
/// built once per publish and shared by every QUIC subscriber. Slot 0 is `JsonCodec`'s.
const FRAMED_SLOT: usize = 1;
const _: () = assert!(FRAMED_SLOT < ENCODING_SLOTS);

/// What every connection task needs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: QuicConfig,
    pub(crate) shutdown: CancellationToken,
}

/// Drives one incoming connection until it closes.
pub(crate) async fn run(incoming: Incoming, shared: Arc<Shared>) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "quic handshake failed");
            return;
        }
    };
    if let Some(authed) = authenticate(&conn, &shared).await {
        serve(conn, authed, &shared).await;
    }
}

/// An authenticated connection's control stream and session.
struct Authed {
    session: Session,
    control: SendStream,
    reader: FrameReader,
}

/// Accepts the control stream and checks its first frame, which must be `auth`. On failure the
/// client gets an `error` frame and the connection is closed with 4401.
async fn authenticate(conn: &Connection, shared: &Shared) -> Option<Authed> {
    let config = &shared.config;
    let first = async {
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut reader = FrameReader::new(recv);
        let frame = reader
            .next(MAX_AUTH_FRAME)
            .await
            .map(|f| f.map(<[u8]>::to_vec));
        Some((send, reader, frame))
    };
    let (send, reader, frame) = tokio::select! {
        r = timeout(config.auth_timeout, first) => match r {
            Ok(Some(x)) => x,
            Ok(None) => return None, // the connection is gone
            Err(_) => {
                close(conn, close_code::UNAUTHORIZED, "no auth frame in time");
                return None;
            }
        },
        _ = shared.shutdown.cancelled() => {
            close(conn, close_code::SHUTDOWN, CloseReason::Shutdown.text());
            return None;
        }
    };
    let frame = match frame {
        Ok(Some(f)) => f,
        Ok(None) | Err(FrameError::Reset) => {
            close(
                conn,
                close_code::UNAUTHORIZED,
                "control stream ended before auth",
            );
            return None;
        }
        Err(e) => {
            if let Some((code, reason)) = frame_error_close(&e) {
                close(conn, code, &reason);
            }
            return None;
        }
    };
    let (id, outcome) = match JsonCodec.decode(&frame) {
        Ok(Request {
            id,
            kind: RequestKind::Auth { api_key },
        }) => {
            let outcome = shared
                .broker
                .authenticate(Some(&api_key.0))
                .await
                .map_err(|e| (e.code(), e.to_string()));
            (id, outcome)
        }
        Ok(Request { id, .. }) => (
            id,
            Err((
                ErrorCode::Unauthorized,
                "authenticate first: the first frame must be auth".to_owned(),
            )),
        ),
        Err(e) => (
            e.id.clone(),
            Err((ErrorCode::Unauthorized, format!("authenticate first: {e}"))),
        ),
    };
    match outcome {
        Ok(principal) => {
            tracing::debug!(principal = principal.id(), remote = %conn.remote_address(), "quic connected");
            let session = shared.broker.connect(principal);
            // Queued like any reply, so that it is the control stream's first frame.
            session.connection().send(ServerFrame::Authed { id });
            Some(Authed {
                session,
                control: send,
                reader,
            })
        }
        Err((code, message)) => {
            let frame = ServerFrame::Error { id, code, message };
            write_last_and_close(conn, send, &frame, config.shutdown_grace).await;
            None
        }
    }
}

/// Writes `frame` as the last frame of `send`, waits (at most `grace`) for the client to
/// acknowledge it, then closes the connection with 4401.
async fn write_last_and_close(
    conn: &Connection,
    mut send: SendStream,
    frame: &ServerFrame,
    grace: Duration,
) {
    let bytes = framing::frame(&JsonCodec.encode(frame));
    let _ = timeout(grace, async {
        send.write_all(&bytes).await.ok()?;
        send.finish().ok()?;
        send.stopped().await.ok()
    })
    .await;
    close(conn, close_code::UNAUTHORIZED, "unauthorized");
}

fn close(conn: &Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// How a connection ends.
enum End {
    /// Close at once (queued frames are dropped).
    Close(u32, String),
    /// Write what is queued, wait for the client to acknowledge it, then close.
    Flush(CloseReason),
    /// The connection is already gone.
    Lost,
}

/// The close code and reason for a frame the server cannot read; `None` when the connection is
/// already gone.
fn frame_error_close(e: &FrameError) -> Option<(u32, String)> {
    match e {
        FrameError::TooLarge { len, max } => Some((
            close_code::FRAME_TOO_LARGE,
            format!("frame of {len} bytes is over the limit of {max}"),
        )),
        FrameError::Truncated => Some((
            close_code::PROTOCOL_ERROR,
            "control stream ended inside a frame".into(),
        )),
        FrameError::Reset | FrameError::Lost(_) | FrameError::Closed => None,
    }
}

/// Serves an authenticated connection until it closes.
async fn serve(conn: Connection, authed: Authed, shared: &Shared) {
    let Authed {
        mut session,
        control,
        mut reader,
    } = authed;
    let core = Arc::clone(session.connection());
    let id = core.id();
    let mut writers = Writers::new(conn.clone(), control, &shared.broker.config().limits);
    let mut batch = VecDeque::new();
    // Kept across iterations so that a wake-up arriving while another branch runs is not lost.
    let ready = core.ready();
    tokio::pin!(ready);
    let closed = conn.closed();
    tokio::pin!(closed);
    let mut reading = true;
    let mut shutdown_seen = false;

    let end = {
        let requests = read_requests(&mut reader, &mut session, shared.config.max_frame_size);
        tokio::pin!(requests);
        loop {
            tokio::select! {
                _ = &mut ready => {
                    ready.set(core.ready());
                    let closing = core.drain(&mut batch);
                    if let Some(reason) = closing.filter(|r| !r.flush_first()) {
                        break End::Close(reason.code().into(), reason.text().into());
                    }
                    if writers.dispatch(&mut batch, &core).is_err() {
                        core.close(CloseReason::SlowConsumer);
                        shared.broker.metrics().slow_consumers.inc();
                        tracing::debug!(conn = %id, "slow consumer: stream buffers full");
                        let reason = CloseReason::SlowConsumer;
                        break End::Close(reason.code().into(), reason.text().into());
                    }
                    if let Some(reason) = closing {
                        break End::Flush(reason);
                    }
                }
                end = &mut requests, if reading => match end {
                    // The client finished (or reset) its side of the control stream: it sends
                    // no more requests, but its subscriptions keep delivering until it closes.
                    Ok(()) => reading = false,
                    Err(e) => match frame_error_close(&e) {
                        Some((code, reason)) => break End::Close(code, reason),
                        None => break End::Lost,
                    },
                },
                _ = shared.shutdown.cancelled(), if !shutdown_seen => {
                    shutdown_seen = true;
                    core.close(CloseReason::Shutdown);
                }
                _ = &mut closed => break End::Lost,
            }
        }
    };

    match end {
        End::Close(code, reason) => {
            tracing::debug!(conn = %id, code, reason, "closing");
            close(&conn, code, &reason);
        }
        End::Flush(reason) => {
            writers.finish(shared.config.shutdown_grace).await;
            tracing::debug!(conn = %id, ?reason, "closed by server");
            close(&conn, reason.code().into(), reason.text());
        }
        End::Lost => tracing::debug!(conn = %id, "connection lost"),
    }
    // Dropping the session removes the connection and its subscriptions from the hub; dropping
    // the writers aborts any stream task still running.
}

/// Reads control-stream frames into the session. `Ok` when the client ends its side of the
/// stream at a frame boundary (or resets it); not cancel-safe.
async fn read_requests(
    reader: &mut FrameReader,
    session: &mut Session,
    max_frame: usize,
) -> Result<(), FrameError> {
    loop {
        match reader.next(max_frame).await {
            Ok(Some(frame)) => {
                session
                    .handle_frame(&JsonCodec, frame, Instant::now())
                    .await
            }
            Ok(None) | Err(FrameError::Reset) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// One item for a channel stream's writer.
#[derive(Debug)]
enum StreamItem {
    /// A channel message: counts against the connection's outbound limit until written.
    Message(Bytes),
    /// The header or the end frame.
    Frame(Bytes),
}

/// The per-connection buffers ran over the connection's limits.
#[derive(Debug)]
struct Overflow;

/// The writing side of one connection: the demultiplexer and one writer task per stream.
struct Writers {
    conn: Connection,
    demux: Demux,
    routes: Vec<Route>,
    /// Bounded by `outbound_queue + CONTROL_SLACK` frames; when full the client is not reading
    /// its replies and is closed as a slow consumer, as the core does.
    control: Option<mpsc::Sender<Bytes>>,
    /// Each bounded by `outbound_queue + 2` (header, messages, end frame); the messages of all
    /// of them together are bounded by `outbound_queue` through `buffered`. When a message
    /// would exceed that, the connection is closed as a slow consumer (4008).
    streams: HashMap<ChannelName, mpsc::Sender<StreamItem>>,
    /// The control writer and every channel writer, including ended streams whose end the
    /// client has not yet acknowledged. At most `max_subscriptions + STREAM_SLACK + 1`.
    tasks: JoinSet<()>,
    /// Messages handed to channel writers and not yet written into quinn.
    buffered: Arc<AtomicUsize>,
    max_buffered: usize,
    max_tasks: usize,
}

impl Writers {
    fn new(conn: Connection, control: SendStream, limits: &Limits) -> Self {
        let max_buffered = limits.outbound_queue.max(1);
        let (tx, rx) = mpsc::channel(max_buffered + broker_core::hub::CONTROL_SLACK);
        let mut tasks = JoinSet::new();
        tasks.spawn(control_writer(control, rx));
        Self {
            conn,
            demux: Demux::default(),
            routes: Vec::new(),
            control: Some(tx),
            streams: HashMap::new(),
            tasks,
            buffered: Arc::new(AtomicUsize::new(0)),
            max_buffered,
            max_tasks: limits.max_subscriptions + STREAM_SLACK + 1,
        }
    }

    /// Hands every item of `batch` to its stream's writer. Never waits.
    fn dispatch(
        &mut self,
        batch: &mut VecDeque<Outbound>,
        core: &broker_core::Connection,
    ) -> Result<(), Overflow> {
        while self.tasks.try_join_next().is_some() {}
        let mut routes = std::mem::take(&mut self.routes);
        for item in batch.drain(..) {
            self.demux
                .route(item, |c| core.subscriptions().contains(c), &mut routes);
        }
        let result = routes.drain(..).try_for_each(|r| self.apply(r));
        routes.clear();
        self.routes = routes;
        result
    }

    fn apply(&mut self, route: Route) -> Result<(), Overflow> {
        match route {
            Route::Control(frame) => {
                let Some(control) = &self.control else {
                    return Ok(());
                };
                match control.try_send(framing::frame(&JsonCodec.encode(&frame))) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(_)) => Err(Overflow),
                    // The control writer failed: the connection is going away.
                    Err(TrySendError::Closed(_)) => Ok(()),
                }
            }
            Route::Open(channel) => {
                if self.tasks.len() >= self.max_tasks {
                    return Err(Overflow);
                }
                let (tx, rx) = mpsc::channel(self.max_buffered + 2);
                let header = ServerFrame::Subscribed {
                    id: None,
                    channel: channel.clone(),
                };
                // A fresh channel has room for its header.
                let _ = tx.try_send(StreamItem::Frame(framing::frame(
                    &JsonCodec.encode(&header),
                )));
                self.tasks.spawn(channel_writer(
                    self.conn.clone(),
                    rx,
                    Arc::clone(&self.buffered),
                ));
                self.streams.insert(channel, tx);
                Ok(())
            }
            Route::Message(env) => {
                // The demultiplexer routes `Open` before a channel's first message.
                let Some(tx) = self.streams.get(&env.message().channel) else {
                    return Ok(());
                };
                if self.buffered.fetch_add(1, Ordering::Relaxed) >= self.max_buffered {
                    return Err(Overflow);
                }
                match tx.try_send(StreamItem::Message(framed_message(&env))) {
                    Ok(()) => Ok(()),
                    // The client stopped this stream: its messages are dropped until it
                    // unsubscribes.
                    Err(TrySendError::Closed(_)) => {
                        self.buffered.fetch_sub(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(TrySendError::Full(_)) => Err(Overflow),
                }
            }
            Route::End(channel, frame) => {
                if let Some(tx) = self.streams.remove(&channel) {
                    // Room is reserved for the end frame; dropping `tx` then lets the writer
                    // finish the stream after it.
                    let _ =
                        tx.try_send(StreamItem::Frame(framing::frame(&JsonCodec.encode(&frame))));
                }
                Ok(())
            }
        }
    }

    /// Ends every stream after what is queued on it and waits, at most `grace`, until the client
    /// has acknowledged everything.
    async fn finish(mut self, grace: Duration) {
        self.streams.clear();
        self.control = None;
        let tasks = &mut self.tasks;
        let _ = timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    }
}

/// A message's length-prefixed frame, built once per publish for all QUIC subscribers.
fn framed_message(env: &Envelope) -> Bytes {
    env.encoded(FRAMED_SLOT, |_| {
        framing::frame(&JsonCodec.encode_message(env))
    })
}

/// Writes replies on the control stream until the dispatcher drops its sender, then finishes
/// the stream and waits for the client to acknowledge it.
async fn control_writer(mut send: SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let _ = send.set_priority(CONTROL_PRIORITY);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

/// Opens one channel's stream and writes its frames until the dispatcher drops its sender,
/// then finishes the stream and waits for the client to acknowledge it (or stop it).
async fn channel_writer(
    conn: Connection,
    mut rx: mpsc::Receiver<StreamItem>,
    buffered: Arc<AtomicUsize>,
) {
    if let Ok(mut send) = conn.open_uni().await {
        let _ = send.set_priority(CHANNEL_PRIORITY);
        if write_items(&mut send, &mut rx, &buffered).await && send.finish().is_ok() {
            let _ = send.stopped().await;
        }
    }
    // Whatever could not be written leaves the connection's count.
    rx.close();
    while let Ok(item) = rx.try_recv() {
        if matches!(item, StreamItem::Message(_)) {
            buffered.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Writes items as they come; false if the stream failed (stopped by the client, connection
/// lost).
async fn write_items(
    send: &mut SendStream,
    rx: &mut mpsc::Receiver<StreamItem>,
    buffered: &AtomicUsize,
) -> bool {
    let mut items = Vec::with_capacity(WRITE_BATCH);
    let mut chunks = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut items, WRITE_BATCH).await > 0 {
        let mut messages = 0;
        chunks.extend(items.drain(..).map(|item| match item {
            StreamItem::Message(b) => {
                messages += 1;
                b
            }
            StreamItem::Frame(b) => b,
        }));
        let written = send.write_all_chunks(&mut chunks).await;
        chunks.clear();
        // Counted until quinn holds them: a stalled stream keeps its backlog on the count.
        buffered.fetch_sub(messages, Ordering::Relaxed);
        if written.is_err() {
            return false;
        }
    }
    true
}
