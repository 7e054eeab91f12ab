//! One WebSocket connection: read frames into the session, write its queue out in batches.
//!
//! Reading, control frames and the close handshake go through tungstenite. Queued replies and
//! messages bypass it: a server's frames are unmasked, so a message's frame is its cached JSON
//! encoding (shared by every subscriber, encoded once per publish) behind a 2–10 byte header.
//! Each wake-up copies every queued frame once into one buffer and writes it with one call, with
//! no per-subscriber UTF-8 check, frame object or reference-count traffic.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use broker_core::{CloseReason, Codec, DecodeError, DecodeErrorKind, JsonCodec, Outbound, Session};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::config::WsConfig;

/// Close code for a frame over [`WsConfig::max_frame_size`].
const CLOSE_TOO_BIG: u16 = 1009;

/// Queue slots a connection keeps across a ping interval; more, left from a burst, are freed
/// at the next tick, so that a connection that once had a burst does not keep its memory.
const BATCH_KEEP: usize = 64;

/// Frames received back to back and handled before the queue is written (their replies then
/// leave in one write). Bounded so that a client sending without pause still gets its replies
/// and messages, long before its queue could overflow.
const READ_BURST: usize = 64;

/// Queue slots not worth keeping between wake-ups.
const SMALL_BATCH: usize = 8;

thread_local! {
    /// Frames gathered for one socket write, shared by every connection served on this thread
    /// (it is never held across an await), so that no connection keeps a write buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Drives one upgraded connection until it closes.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps its parameters twice in its future (as captured arguments and as the locals they are
/// moved into), which cost every idle connection 432 bytes.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
pub(crate) fn run<S>(
    mut ws: WebSocketStream<S>,
    mut session: Session,
    config: Arc<WsConfig>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let codec = JsonCodec;
        let conn = session.connection().clone();
        let id = conn.id();
        let mut batch: VecDeque<Outbound> = VecDeque::new();
        // Kept across iterations so that a wake-up arriving while another branch runs is not lost.
        let ready = conn.ready();
        tokio::pin!(ready);
        let start = tokio::time::Instant::now() + config.ping_interval;
        let mut ticker = interval_at(start, config.ping_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // Once the client has sent a close frame, tungstenite answers it and nothing else may go
        // out.
        let mut peer_closed = false;
        // One gate for everything but the queue: the socket, the ping timer and shutdown.
        let gate = Gate::new();
        // tungstenite may hold output of its own (a pong it owes) after reading; it is flushed
        // before queued frames are written under it.
        let mut tungstenite_output = false;
        // Pinned once: recreating it on every iteration would register and unregister a waiter.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut shutting_down = false;

        let outcome: Result<(), WsError> = async {
        loop {
            tokio::select! {
                // Queued frames first: a wake-up for them then polls nothing else.
                biased;
                _ = &mut ready => {
                    ready.set(conn.ready());
                    let closing = conn.drain(&mut batch);
                    if peer_closed || closing.is_some_and(|r| !r.flush_first()) {
                        batch.clear();
                    }
                    if !batch.is_empty() {
                        if std::mem::take(&mut tungstenite_output) {
                            ws.flush().await?;
                        }
                        write_batch(&mut ws, &mut batch, &codec, config.write_buffer_size).await?;
                    }
                    if batch.capacity() <= SMALL_BATCH {
                        // Cheap to allocate again; an idle connection then keeps no queue.
                        batch = VecDeque::new();
                    }
                    if let Some(reason) = closing {
                        // Boxed: a cold path that would otherwise enlarge every connection's
                        // task by its timer.
                        Box::pin(close(&mut ws, reason.code(), reason.text(), &config)).await;
                        tracing::debug!(conn = %id, ?reason, "closed by server");
                        return Ok(());
                    }
                }
                event = poll_fn(|cx| gate.poll(cx, |cx| {
                    if let Poll::Ready(frame) = ws.poll_next_unpin(cx) {
                        return Poll::Ready(Event::Frame(frame));
                    }
                    if !shutting_down && cancelled.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Shutdown);
                    }
                    ticker.poll_tick(cx).map(|_| Event::Tick)
                })) => match event {
                    Event::Frame(mut frame) => {
                        // Frames already received are handled in one go (up to READ_BURST), so
                        // that the replies to a burst of requests leave in one write instead
                        // of one write each.
                        let mut handled = 0;
                        loop {
                            tungstenite_output = true;
                            let Some(f) = frame else { return Ok(()) };
                            last_heard = Instant::now();
                            match f {
                                Ok(Message::Text(text)) => {
                                    // Boxed: the request's future (a publish through the
                                    // replicator) is large and short-lived; inline, every idle
                                    // connection would carry its space.
                                    Box::pin(session.handle_frame(
                                        &codec,
                                        text.as_bytes(),
                                        last_heard,
                                    ))
                                    .await;
                                }
                                Ok(Message::Binary(_)) => session.reply_decode_error(DecodeError {
                                    id: None,
                                    kind: DecodeErrorKind::Binary,
                                }),
                                // Pings are answered by tungstenite; a close is answered on the
                                // next poll, which then ends the stream.
                                Ok(Message::Close(_)) => peer_closed = true,
                                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                                Err(WsError::Capacity(e)) => {
                                    tracing::debug!(conn = %id, error = %e, "frame over the hard limit");
                                    Box::pin(close(&mut ws, CLOSE_TOO_BIG, "frame too large", &config))
                                        .await;
                                    return Ok(());
                                }
                                Err(e) => return Err(e),
                            }
                            handled += 1;
                            if handled >= READ_BURST || peer_closed {
                                break;
                            }
                            // Polled without a waker: if nothing is there, the gate is re-armed
                            // so that the loop polls the reader again with its waker.
                            match ws.next().now_or_never() {
                                Some(next) => frame = next,
                                None => {
                                    gate.arm();
                                    break;
                                }
                            }
                        }
                    }
                    Event::Tick => {
                        if batch.capacity() > BATCH_KEEP {
                            batch = VecDeque::new();
                        }
                        conn.shrink_queue(BATCH_KEEP);
                        let silent = last_heard.elapsed();
                        if silent >= config.ping_interval + config.pong_timeout {
                            tracing::debug!(conn = %id, "no pong: dropping dead connection");
                            return Ok(());
                        }
                        if silent >= config.ping_interval {
                            ws.send(Message::Ping(Bytes::new())).await?;
                        }
                    }
                    Event::Shutdown => {
                        shutting_down = true;
                        conn.close(CloseReason::Shutdown);
                    }
                },
            }
        }
    }
    .await;

        match outcome {
            Ok(()) => {}
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
            Err(WsError::Io(e)) => tracing::debug!(conn = %id, error = %e, "connection lost"),
            Err(e) => tracing::debug!(conn = %id, error = %e, "protocol error"),
        }
    }
}

/// What woke the connection, other than its queue.
enum Event {
    /// A frame from the client, or the end of the stream.
    Frame(Option<Result<Message, WsError>>),
    /// The ping timer.
    Tick,
    /// The server is shutting down.
    Shutdown,
}

/// Polls a future or stream only when it may make progress: after it woke its task (through
/// the gate's own waker) or after its last poll produced something. A `select!` loop would
/// otherwise poll every branch on every wake-up for queued frames; for the WebSocket reader
/// each such poll costs tungstenite a buffer reset and a read attempt, and with one frame per
/// wake-up (a modest rate to many subscribers) the useless polls were a third of the broker's
/// own work per delivery. One gate per connection (one small allocation) covers the socket, the
/// ping timer and shutdown, polled together: the last two are rare.
struct Gate {
    state: Arc<GateState>,
    waker: Waker,
}

struct GateState {
    /// Worth polling: the last poll was ready, or something gated woke since.
    armed: AtomicBool,
    /// The connection task, to wake when something gated wakes.
    task: AtomicWaker,
}

impl Wake for GateState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.armed.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// Makes the next [`Gate::poll`] call through, e.g. after the gated future was polled
    /// without the gate's waker.
    fn arm(&self) {
        self.state.armed.store(true, Ordering::Release);
    }

    fn new() -> Self {
        let state = Arc::new(GateState {
            armed: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(Arc::clone(&state)),
            state,
        }
    }

    /// Calls `poll` with the gate's waker if it may make progress, else stays pending.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.state.task.register(cx.waker());
        // Disarmed before the poll, so that a wake-up during it is not lost.
        if !self.state.armed.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        match poll(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(item) => {
                // A stream may have more buffered, with no wake-up to come for it.
                self.state.armed.store(true, Ordering::Release);
                Poll::Ready(item)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Writes every queued item as a text frame, in order, gathering up to `limit` bytes per
/// socket write.
///
/// The frames go to the socket under tungstenite, which is safe because tungstenite's own
/// write buffer is flushed first (by the caller, whenever tungstenite may hold output: an
/// automatic pong after a read) and nothing else writes until this returns: frames never
/// interleave. The payloads are the JSON codec's output, always
/// valid UTF-8 (`broker_core::encode_message_json` guarantees it for messages; replies are
/// built from strings), as text frames require.
///
/// Frames are gathered in the thread's scratch buffer and written at once; only what the
/// socket cannot take right now is copied out to wait for it, so the common case allocates
/// nothing.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    batch: &mut VecDeque<Outbound>,
    codec: &JsonCodec,
    limit: usize,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = ws.get_mut();
    while !batch.is_empty() {
        let rest = SCRATCH.with_borrow_mut(|buf| -> std::io::Result<Option<Vec<u8>>> {
            buf.clear();
            while let Some(item) = batch.pop_front() {
                match item {
                    Outbound::Message(env) => push_text_frame(buf, codec.encode_message_ref(&env)),
                    Outbound::Frame(frame) => push_text_frame(buf, &codec.encode(&frame)),
                }
                if buf.len() >= limit {
                    break;
                }
            }
            let rest = match io.write(buf).now_or_never() {
                Some(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Some(Ok(n)) if n == buf.len() => None,
                Some(Ok(n)) => Some(buf[n..].to_vec()),
                Some(Err(e)) => return Err(e),
                None => Some(buf.clone()),
            };
            if buf.capacity() > 2 * limit + SCRATCH_SLACK {
                // A huge frame passed through: do not keep its space.
                *buf = Vec::new();
            }
            Ok(rest)
        })?;
        if let Some(rest) = rest {
            io.write_all(&rest).await?;
        }
    }
    Ok(())
}

/// Scratch space kept beyond twice the write target.
const SCRATCH_SLACK: usize = 64 * 1024;

/// Appends one unmasked, unfragmented text frame (RFC 6455 section 5.2).
fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    const FIN_TEXT: u8 = 0x81;
    let len = payload.len();
    if len < 126 {
        out.extend_from_slice(&[FIN_TEXT, len as u8]);
    } else if len <= usize::from(u16::MAX) {
        out.extend_from_slice(&[FIN_TEXT, 126]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[FIN_TEXT, 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Sends a close frame and waits briefly for it to be written; a peer that does not read gets
/// dropped when the grace period ends.
async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &'static str, config: &WsConfig)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = timeout(config.shutdown_grace, ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_rfc_6455_header_for_every_length_class() {
        for (len, header) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            push_text_frame(&mut out, &payload);
            assert_eq!(&out[..header.len()], &header[..], "length {len}");
            assert_eq!(&out[header.len()..], &payload[..]);
        }
    }
}
