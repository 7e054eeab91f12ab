//! One WebSocket connection: read frames into the session, write its queue out in batches.

use std::collections::VecDeque;
use std::time::Instant;

use broker_core::{CloseReason, Codec, DecodeError, DecodeErrorKind, JsonCodec, Outbound, Session};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::config::WsConfig;

/// Close code for a frame over [`WsConfig::max_frame_size`].
const CLOSE_TOO_BIG: u16 = 1009;

/// Drives one upgraded connection until it closes.
pub(crate) async fn run<S>(
    mut ws: WebSocketStream<S>,
    mut session: Session,
    config: WsConfig,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
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

    let outcome: Result<(), WsError> = async {
        loop {
            tokio::select! {
                _ = &mut ready => {
                    ready.set(conn.ready());
                    let closing = conn.drain(&mut batch);
                    if closing.is_some_and(|r| !r.flush_first()) {
                        batch.clear();
                    }
                    let wrote = !batch.is_empty();
                    for item in batch.drain(..) {
                        let text = match item {
                            Outbound::Message(env) => codec.encode_message(&env),
                            Outbound::Frame(frame) => codec.encode(&frame),
                        };
                        ws.feed(Message::Text(utf8(text))).await?;
                    }
                    if wrote {
                        ws.flush().await?;
                    }
                    if let Some(reason) = closing {
                        close(&mut ws, reason.code(), reason.text(), &config).await;
                        tracing::debug!(conn = %id, ?reason, "closed by server");
                        return Ok(());
                    }
                }
                frame = ws.next() => {
                    let Some(frame) = frame else { return Ok(()) };
                    last_heard = Instant::now();
                    match frame {
                        Ok(Message::Text(text)) => {
                            session.handle_frame(&codec, text.as_bytes(), last_heard).await;
                        }
                        Ok(Message::Binary(_)) => session.reply_decode_error(DecodeError {
                            id: None,
                            kind: DecodeErrorKind::Binary,
                        }),
                        // Pings are answered by tungstenite; a close is answered on the next poll,
                        // which then ends the stream.
                        Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {}
                        Err(WsError::Capacity(e)) => {
                            tracing::debug!(conn = %id, error = %e, "frame over the hard limit");
                            close(&mut ws, CLOSE_TOO_BIG, "frame too large", &config).await;
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ = ticker.tick() => {
                    let silent = last_heard.elapsed();
                    if silent >= config.ping_interval + config.pong_timeout {
                        tracing::debug!(conn = %id, "no pong: dropping dead connection");
                        return Ok(());
                    }
                    if silent >= config.ping_interval {
                        ws.send(Message::Ping(Bytes::new())).await?;
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.close(CloseReason::Shutdown);
                }
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

/// Text frames carry the codec's output, which is JSON and so UTF-8; a failure here would be a
/// codec bug, answered with a placeholder rather than a panic.
fn utf8(bytes: Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(bytes).unwrap_or_else(|_| {
        tracing::error!("codec produced invalid UTF-8");
        Utf8Bytes::from_static(r#"{"type":"error","code":"internal","message":"encoding"}"#)
    })
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
