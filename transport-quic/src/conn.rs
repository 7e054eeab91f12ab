//! One QUIC connection: authenticate on the control stream, then read requests into the
//! session while a dispatcher drains the session's queue, replies to the control stream and each
//! channel's messages to that channel's own unidirectional stream, all written by the
//! connection's task straight into quinn.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::hash::BuildHasherDefault;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use broker_core::message::ENCODING_SLOTS;
use broker_core::{
    Broker, ChannelName, CloseReason, Codec, Envelope, ErrorCode, JsonCodec, Limits, Outbound,
    Request, RequestKind, ServerFrame, Session, WireError,
};
use bytes::{Buf, Bytes, BytesMut};
use quinn::{Connection, ConnectionError, Incoming, SendStream, VarInt};
use rustc_hash::FxHasher;
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
                () = poll_fn(|cx| writers.poll_flush(cx)), if writers.unflushed => {}
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

/// The per-connection buffers ran over the connection's limits.
#[derive(Debug)]
struct Overflow;

/// A stream being opened: `Connection::open_uni` waits while the client allows no more
/// concurrent streams.
type Opening = Pin<Box<dyn Future<Output = Result<SendStream, ConnectionError>> + Send>>;

/// Where one outgoing stream stands.
enum StreamState {
    Opening(Opening),
    Open(SendStream),
    /// Stopped by the client, or the connection is gone: its frames are dropped.
    Failed,
}

/// One outgoing stream (the control stream or a channel's) and its frames that quinn has not
/// accepted yet. Written by the connection's own task, straight from the dispatcher: quinn
/// takes whatever its flow control allows at once, and only the rest waits here, with the
/// task's waker registered with quinn (or with the stream's opening) for when the stream can
/// take more.
struct OutStream {
    state: StreamState,
    priority: i32,
    /// In order: the `subscribed` header while `header_pending`, then `messages` channel
    /// messages, then (once the stream is ending) the end frame. Bounded by `Writers`: messages
    /// by `max_buffered` over all streams, control frames by `max_control`.
    pending: VecDeque<Bytes>,
    messages: usize,
    header_pending: bool,
}

impl OutStream {
    fn open(send: SendStream, priority: i32) -> Self {
        let _ = send.set_priority(priority);
        Self {
            state: StreamState::Open(send),
            priority,
            pending: VecDeque::new(),
            messages: 0,
            header_pending: false,
        }
    }

    /// A channel stream to open, its first frame `header`.
    fn opening(conn: Connection, header: Bytes) -> Self {
        Self {
            state: StreamState::Opening(Box::pin(async move { conn.open_uni().await })),
            priority: CHANNEL_PRIORITY,
            pending: VecDeque::from([header]),
            messages: 0,
            header_pending: true,
        }
    }

    fn failed(&self) -> bool {
        matches!(self.state, StreamState::Failed)
    }

    /// Hands quinn as much of `pending` as it takes. True when nothing is left to write (or the
    /// stream failed); false when quinn (or the stream's opening) will wake the task.
    fn flush(&mut self, cx: &mut Context<'_>, buffered: &mut usize) -> bool {
        loop {
            let send = match &mut self.state {
                StreamState::Opening(open) => match open.as_mut().poll(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Ok(send)) => {
                        let _ = send.set_priority(self.priority);
                        self.state = StreamState::Open(send);
                        continue;
                    }
                    Poll::Ready(Err(_)) => {
                        self.fail(buffered);
                        return true;
                    }
                },
                StreamState::Open(send) => send,
                StreamState::Failed => return true,
            };
            if self.pending.is_empty() {
                return true;
            }
            // One chunk per write: quinn keeps every chunk as a segment of the stream's send
            // buffer and finds a segment by a walk from the oldest unacknowledged one, so
            // hundreds of message-sized chunks cost more than copying them into one.
            let mut one = [coalesce(&self.pending)];
            // Polled once: quinn registers the waker when it takes nothing, and a write that
            // does not complete writes nothing.
            let written = match pin!(send.write_chunks(&mut one)).poll(cx) {
                Poll::Pending => return false,
                Poll::Ready(r) => r,
            };
            let Ok(written) = written else {
                self.fail(buffered);
                return true;
            };
            self.consume(written.bytes, buffered);
        }
    }

    /// Drops the first `bytes` bytes of `pending`: whole frames leave (messages leave the
    /// count), and a frame written in part keeps its rest.
    fn consume(&mut self, mut bytes: usize, buffered: &mut usize) {
        while bytes > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if front.len() > bytes {
                front.advance(bytes);
                return;
            }
            bytes -= front.len();
            self.pending.pop_front();
            if self.header_pending {
                self.header_pending = false;
            } else if self.messages > 0 {
                self.messages -= 1;
                *buffered -= 1;
            }
        }
    }

    /// The stream is gone: its frames are dropped and leave the connection's count.
    fn fail(&mut self, buffered: &mut usize) {
        self.state = StreamState::Failed;
        self.pending.clear();
        *buffered -= self.messages;
        self.messages = 0;
        self.header_pending = false;
    }
}

/// The writing side of one connection: the demultiplexer and every outgoing stream, all
/// written by the connection's task (no task or channel per stream).
struct Writers {
    conn: Connection,
    demux: Demux,
    routes: Vec<Route>,
    /// Replies and notices. Its unwritten frames are bounded by `max_control`
    /// (`outbound_queue + CONTROL_SLACK`); beyond that the client is not reading its replies
    /// and is closed as a slow consumer, as the core does. `None` once finished.
    control: Option<OutStream>,
    /// The open channel streams (at most `max_subscriptions`, so a fast hasher is no HashDoS
    /// risk). Their unwritten messages together are bounded by `max_buffered`
    /// (`outbound_queue`, counted in `buffered`); a message beyond that closes the connection
    /// as a slow consumer (4008), its backlog dropped.
    streams: HashMap<ChannelName, OutStream, BuildHasherDefault<FxHasher>>,
    /// Streams ended by unsubscribe or invalidation (end frame queued) with frames still to
    /// write; finished once written.
    ending: Vec<OutStream>,
    /// Finished streams waiting for the client to acknowledge their end (or stop them). With
    /// `streams`, `ending` and the control stream at most `max_subscriptions + STREAM_SLACK + 1`;
    /// a client that keeps more from ending is closed as a slow consumer.
    lingering: JoinSet<()>,
    /// Messages in all streams' `pending`.
    buffered: usize,
    max_buffered: usize,
    max_control: usize,
    max_streams: usize,
    /// Some stream may have frames left to write.
    unflushed: bool,
}

impl Writers {
    fn new(conn: Connection, control: SendStream, limits: &Limits) -> Self {
        let max_buffered = limits.outbound_queue.max(1);
        Self {
            conn,
            demux: Demux::default(),
            routes: Vec::new(),
            control: Some(OutStream::open(control, CONTROL_PRIORITY)),
            streams: HashMap::default(),
            ending: Vec::new(),
            lingering: JoinSet::new(),
            buffered: 0,
            max_buffered,
            max_control: max_buffered + broker_core::hub::CONTROL_SLACK,
            max_streams: limits.max_subscriptions + STREAM_SLACK + 1,
            unflushed: false,
        }
    }

    /// Queues every item of `batch` on its stream; the writes follow in `poll_flush`. Never
    /// waits.
    fn dispatch(
        &mut self,
        batch: &mut VecDeque<Outbound>,
        core: &broker_core::Connection,
    ) -> Result<(), Overflow> {
        while self.lingering.try_join_next().is_some() {}
        self.unflushed = true;
        let mut routes = std::mem::take(&mut self.routes);
        let mut items = batch.drain(..).peekable();
        let mut result = Ok(());
        while let Some(item) = items.next() {
            match item {
                // The common case, a run of messages on a channel whose stream is open: one
                // lookup for the run, no route per message.
                Outbound::Message(env) if self.demux.is_open(&env.message().channel) => {
                    let channel = env.message().channel.clone();
                    let Some(stream) = self.streams.get_mut(&channel) else {
                        continue;
                    };
                    result = queue_message(stream, &env, &mut self.buffered, self.max_buffered);
                    while let Some(Outbound::Message(next)) = items.peek() {
                        if result.is_err() || next.message().channel != channel {
                            break;
                        }
                        result = queue_message(stream, next, &mut self.buffered, self.max_buffered);
                        items.next();
                    }
                }
                item => {
                    self.demux
                        .route(item, |c| core.subscriptions().contains(c), &mut routes);
                    result = routes.drain(..).try_for_each(|r| self.apply(r));
                }
            }
            if result.is_err() {
                break;
            }
        }
        // Dropping the drain empties `batch`, also after an overflow.
        drop(items);
        routes.clear();
        self.routes = routes;
        result
    }

    fn apply(&mut self, route: Route) -> Result<(), Overflow> {
        match route {
            Route::Control(frame) => {
                let Some(control) = self.control.as_mut().filter(|c| !c.failed()) else {
                    // The control stream failed: the connection is going away.
                    return Ok(());
                };
                if control.pending.len() >= self.max_control {
                    return Err(Overflow);
                }
                control
                    .pending
                    .push_back(framing::frame(&JsonCodec.encode(&frame)));
                Ok(())
            }
            Route::Open(channel) => {
                let open = 1 + self.streams.len() + self.ending.len() + self.lingering.len();
                if open >= self.max_streams {
                    return Err(Overflow);
                }
                let header = ServerFrame::Subscribed {
                    id: None,
                    channel: channel.clone(),
                };
                let stream = OutStream::opening(
                    self.conn.clone(),
                    framing::frame(&JsonCodec.encode(&header)),
                );
                // The demultiplexer opens a channel's stream only when it has none.
                if let Some(old) = self.streams.insert(channel, stream) {
                    self.ending.push(old);
                }
                Ok(())
            }
            Route::Message(env) => {
                // The demultiplexer routes `Open` before a channel's first message.
                match self.streams.get_mut(&env.message().channel) {
                    Some(stream) => {
                        queue_message(stream, &env, &mut self.buffered, self.max_buffered)
                    }
                    None => Ok(()),
                }
            }
            Route::End(channel, frame) => {
                if let Some(mut stream) = self.streams.remove(&channel) {
                    if !stream.failed() {
                        stream
                            .pending
                            .push_back(framing::frame(&JsonCodec.encode(&frame)));
                    }
                    self.ending.push(stream);
                }
                Ok(())
            }
        }
    }

    /// Writes what quinn takes of every stream's frames and finishes the ending streams that
    /// are written out. Ready when nothing is left to write; pending (with the task's waker
    /// registered where a stream waits) otherwise.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let buffered = &mut self.buffered;
        let mut done = true;
        if let Some(control) = &mut self.control {
            done &= control.flush(cx, buffered);
        }
        for stream in self.streams.values_mut() {
            if !stream.pending.is_empty() {
                done &= stream.flush(cx, buffered);
            }
        }
        let lingering = &mut self.lingering;
        self.ending.retain_mut(|stream| {
            if !stream.flush(cx, buffered) {
                done = false;
                return true;
            }
            if let StreamState::Open(mut send) =
                std::mem::replace(&mut stream.state, StreamState::Failed)
            {
                if send.finish().is_ok() {
                    lingering.spawn(async move {
                        let _ = send.stopped().await;
                    });
                }
            }
            false
        });
        if done {
            self.unflushed = false;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ends every stream after what is queued on it and waits, at most `grace`, until the client
    /// has acknowledged everything.
    async fn finish(mut self, grace: Duration) {
        let streams = std::mem::take(&mut self.streams);
        self.ending.extend(streams.into_values());
        self.ending.extend(self.control.take());
        let _ = timeout(grace, async {
            poll_fn(|cx| self.poll_flush(cx)).await;
            while self.lingering.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Most bytes copied into one chunk per write (a stalled stream's backlog goes in several).
const COALESCE_BYTES: usize = 64 * 1024;

/// The first frames of `pending` as one chunk: the first frame itself when alone, else a copy
/// of the frames that fit in [`COALESCE_BYTES`] (at least one). `pending` must not be empty.
fn coalesce(pending: &VecDeque<Bytes>) -> Bytes {
    if pending.len() == 1 {
        return pending[0].clone();
    }
    let mut total = 0;
    let mut n = 0;
    for frame in pending {
        if n > 0 && total + frame.len() > COALESCE_BYTES {
            break;
        }
        total += frame.len();
        n += 1;
    }
    if n == 1 {
        return pending[0].clone();
    }
    let mut out = BytesMut::with_capacity(total);
    for frame in pending.iter().take(n) {
        out.extend_from_slice(frame);
    }
    out.freeze()
}

/// Queues one message on its channel's stream, counted in `buffered`; `Overflow` when that
/// would pass `max_buffered`.
fn queue_message(
    stream: &mut OutStream,
    env: &Envelope,
    buffered: &mut usize,
    max_buffered: usize,
) -> Result<(), Overflow> {
    if stream.failed() {
        // The client stopped this stream: its messages are dropped until it unsubscribes.
        return Ok(());
    }
    if *buffered >= max_buffered {
        return Err(Overflow);
    }
    stream.pending.push_back(framed_message(env));
    stream.messages += 1;
    *buffered += 1;
    Ok(())
}

/// A message's length-prefixed frame, built once per publish for all QUIC subscribers.
fn framed_message(env: &Envelope) -> Bytes {
    env.encoded(FRAMED_SLOT, |_| {
        framing::frame(&JsonCodec.encode_message(env))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(frames: &[&'static [u8]], header: bool, messages: usize) -> OutStream {
        OutStream {
            state: StreamState::Failed,
            priority: CHANNEL_PRIORITY,
            pending: frames.iter().map(|f| Bytes::from_static(f)).collect(),
            messages,
            header_pending: header,
        }
    }

    #[test]
    fn written_bytes_release_whole_frames_and_count_only_messages() {
        // Header (3 bytes), two messages (4 and 5 bytes), end frame (2 bytes).
        let mut s = stream(&[b"hhh", b"mmmm", b"nnnnn", b"ee"], true, 2);
        let mut buffered = 2;
        assert_eq!(&coalesce(&s.pending)[..], b"hhhmmmmnnnnnee");
        s.consume(5, &mut buffered); // the header and half of the first message
        assert!(!s.header_pending);
        assert_eq!((s.messages, buffered), (2, 2));
        assert_eq!(&s.pending[0][..], b"mm");
        s.consume(2, &mut buffered);
        assert_eq!((s.messages, buffered), (1, 1));
        s.consume(7, &mut buffered);
        assert_eq!((s.messages, buffered), (0, 0));
        assert!(s.pending.is_empty());
    }

    #[test]
    fn a_lone_frame_is_written_without_a_copy_and_a_large_backlog_in_parts() {
        static BIG: [u8; COALESCE_BYTES] = [0; COALESCE_BYTES];
        let s = stream(&[b"only"], false, 1);
        assert_eq!(coalesce(&s.pending).as_ptr(), s.pending[0].as_ptr());
        let s = stream(&[b"ab", &BIG, b"cd"], false, 3);
        assert_eq!(coalesce(&s.pending).len(), 2, "the first frame alone fits");
        let s = stream(&[&BIG, b"cd"], false, 2);
        assert_eq!(
            coalesce(&s.pending).len(),
            COALESCE_BYTES,
            "at least one frame"
        );
    }
}
