//! Our `pubsub.v1` protocol over WebSocket (`docs/PROTOCOL.md`), spoken with the lean client
//! of [`wsframe`] rather than `transport_ws::Client`, so that the
//! generator's cost per delivery stays far below the broker's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backend, PublishOutcome, Publisher, Sink, Slot, Subscriber};
use crate::loadgen::LoadError;
use crate::loadgen::payload::now_ns;
use crate::loadgen::wsframe::{
    self, Endpoint, FrameReader, FrameWriter, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING,
    OP_PONG, OP_TEXT,
};

/// Per-connection read buffer. Large enough that a busy subscriber reads a broker's whole
/// batch (up to 64 KiB) in a few calls.
const READ_BUFFER: usize = 16 * 1024;

const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","#;
const DATA_KEY: &[u8] = br#""data":"#;

/// Our broker's WebSocket endpoint.
#[derive(Debug)]
pub struct PubsubWs {
    endpoint: Endpoint,
    url: String,
    /// Payload size every publisher uses, so a message's payload is found without a search.
    payload_size: usize,
}

impl PubsubWs {
    /// `url` is the broker's `ws://…/ws` address; `api_key` goes in the `x-api-key` header.
    pub fn new(url: &str, api_key: &str, payload_size: usize) -> Result<Self, LoadError> {
        if api_key.bytes().any(|b| b.is_ascii_control()) {
            return Err(LoadError::Config(
                "API key contains control characters".into(),
            ));
        }
        let headers = format!("x-api-key: {api_key}\r\nSec-WebSocket-Protocol: pubsub.v1\r\n");
        Ok(Self {
            endpoint: Endpoint::parse(url, headers)?,
            url: url.to_owned(),
            payload_size,
        })
    }
}

#[async_trait]
impl Backend for PubsubWs {
    fn name(&self) -> &'static str {
        "ws"
    }

    fn target(&self) -> String {
        self.url.clone()
    }

    async fn subscriber(
        &self,
        slot: Slot,
        channels: &[String],
    ) -> Result<Box<dyn Subscriber>, LoadError> {
        let (mut stream, leftover) = wsframe::connect(&self.endpoint, slot.source).await?;
        let mut reader = FrameReader::new(READ_BUFFER, &leftover);
        let mut writer = FrameWriter::new();
        for (i, channel) in channels.iter().enumerate() {
            let req = format!(r#"{{"type":"subscribe","id":"s{i}","channel":"{channel}"}}"#);
            writer.frame(OP_TEXT, &[req.as_bytes()]);
        }
        writer.flush(&mut stream).await?;
        let mut confirmed = 0;
        while confirmed < channels.len() {
            let Some(frame) = next_text(&mut reader, &mut stream, &mut writer).await? else {
                return Err(LoadError::Closed("while subscribing".into()));
            };
            let reply: Reply<'_> = serde_json::from_slice(&reader.bytes()[frame])
                .map_err(|e| LoadError::Protocol(format!("bad reply: {e}")))?;
            match reply.ty {
                "subscribed" => confirmed += 1,
                "error" => return Err(LoadError::Refused(reply.describe())),
                _ => {}
            }
        }
        Ok(Box::new(WsSubscriber {
            stream,
            reader,
            writer,
            payload_size: self.payload_size,
        }))
    }

    async fn publisher(&self, slot: Slot) -> Result<Box<dyn Publisher>, LoadError> {
        let (stream, leftover) = wsframe::connect(&self.endpoint, slot.source).await?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(PubShared::default());
        let reader = tokio::spawn(read_replies(
            read,
            FrameReader::new(READ_BUFFER, &leftover),
            Arc::clone(&shared),
        ));
        Ok(Box::new(WsPublisher {
            write,
            writer: FrameWriter::new(),
            shared,
            reader,
            sent: 0,
        }))
    }
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, borrow)]
    channel: Option<&'a str>,
}

impl Reply<'_> {
    fn describe(&self) -> String {
        format!(
            "{}: {}",
            self.code.unwrap_or("?"),
            self.message.as_deref().unwrap_or("")
        )
    }
}

/// Reads until the next text frame (answering pings); `None` if the connection ended.
async fn next_text(
    reader: &mut FrameReader,
    stream: &mut TcpStream,
    writer: &mut FrameWriter,
) -> Result<Option<std::ops::Range<usize>>, LoadError> {
    loop {
        while let Some(f) = reader.next_frame()? {
            match f.opcode {
                OP_TEXT => return Ok(Some(f.payload)),
                OP_PING => {
                    let payload = reader.bytes()[f.payload].to_vec();
                    writer.frame(OP_PONG, &[&payload]);
                    writer.flush(stream).await?;
                }
                OP_CLOSE => return Err(close_error(&reader.bytes()[f.payload])),
                _ => {}
            }
        }
        if reader.fill(stream).await? == 0 {
            return Ok(None);
        }
    }
}

fn close_error(payload: &[u8]) -> LoadError {
    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
    LoadError::Closed(format!("close code {code:?} {reason}"))
}

/// The payload of a `message` frame, or `None` for any other frame.
pub(crate) fn message_payload(frame: &[u8], payload_size: usize) -> Option<&[u8]> {
    if !frame.starts_with(MESSAGE_PREFIX) || frame.last() != Some(&b'}') {
        return None;
    }
    // `data` is the last field (docs/PROTOCOL.md's order, kept by the encoder): with payloads
    // of a known size it sits at a fixed distance from the end, no search needed.
    let end = frame.len() - 1;
    if let Some(begin) = end.checked_sub(payload_size) {
        if frame[..begin].ends_with(DATA_KEY) {
            return Some(&frame[begin..end]);
        }
    }
    let at = wsframe::find(frame, DATA_KEY)?;
    Some(&frame[at + DATA_KEY.len()..end])
}

struct WsSubscriber {
    stream: TcpStream,
    reader: FrameReader,
    writer: FrameWriter,
    payload_size: usize,
}

#[async_trait]
impl Subscriber for WsSubscriber {
    async fn run(
        self: Box<Self>,
        sink: &mut dyn Sink,
        stop: CancellationToken,
    ) -> Result<(), LoadError> {
        let Self {
            mut stream,
            mut reader,
            mut writer,
            payload_size,
        } = *self;
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let now = now_ns();
            while let Some(f) = reader.next_frame()? {
                let bytes = &reader.bytes()[f.payload];
                match f.opcode {
                    OP_TEXT => match message_payload(bytes, payload_size) {
                        Some(p) => sink.message(p, now),
                        None => other_frame(bytes)?,
                    },
                    OP_PING => writer.frame(OP_PONG, &[bytes]),
                    OP_PONG => {}
                    OP_CLOSE => return Err(close_error(bytes)),
                    OP_BINARY | OP_CONTINUATION => {
                        return Err(LoadError::Protocol("unexpected binary frame".into()));
                    }
                    op => return Err(LoadError::Protocol(format!("unknown opcode {op}"))),
                }
            }
            sink.batch_end();
            if writer.pending() > 0 {
                writer.flush(&mut stream).await?;
            }
            tokio::select! {
                biased;
                _ = &mut stopped => return Ok(()),
                n = reader.fill(&mut stream) => {
                    if n? == 0 {
                        return Err(LoadError::Closed("by the broker".into()));
                    }
                }
            }
        }
    }
}

/// A frame other than a message: replies are fine, errors and invalidations end the run.
fn other_frame(bytes: &[u8]) -> Result<(), LoadError> {
    let reply: Reply<'_> = serde_json::from_slice(bytes)
        .map_err(|e| LoadError::Protocol(format!("bad frame: {e}")))?;
    match reply.ty {
        "error" => Err(LoadError::Refused(reply.describe())),
        "invalidated" => Err(LoadError::Closed(format!(
            "subscription to {} invalidated",
            reply.channel.unwrap_or("?")
        ))),
        _ => Ok(()),
    }
}

#[derive(Default)]
struct PubShared {
    acked: AtomicU64,
    errors: AtomicU64,
    /// The broker pinged; the writer answers with its next flush.
    pong_due: AtomicBool,
    first_error: std::sync::Mutex<Option<String>>,
}

struct WsPublisher {
    write: OwnedWriteHalf,
    writer: FrameWriter,
    shared: Arc<PubShared>,
    reader: JoinHandle<Result<(), LoadError>>,
    sent: u64,
}

#[async_trait]
impl Publisher for WsPublisher {
    async fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), LoadError> {
        self.writer.frame(
            OP_TEXT,
            &[
                br#"{"type":"publish","channel":""#,
                channel.as_bytes(),
                br#"","data":"#,
                payload,
                b"}",
            ],
        );
        self.sent += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), LoadError> {
        if self.shared.pong_due.swap(false, Ordering::Relaxed) {
            self.writer.frame(OP_PONG, &[]);
        }
        self.writer.flush(&mut self.write).await?;
        Ok(())
    }

    async fn finish(mut self: Box<Self>, timeout: Duration) -> Result<PublishOutcome, LoadError> {
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let answered =
            |s: &PubShared| s.acked.load(Ordering::Relaxed) + s.errors.load(Ordering::Relaxed);
        while answered(&self.shared) < self.sent && tokio::time::Instant::now() < deadline {
            if self.reader.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Close politely: status 1000.
        self.writer.frame(OP_CLOSE, &[&1000u16.to_be_bytes()]);
        let _ = self.writer.flush(&mut self.write).await;
        self.reader.abort();
        let outcome = PublishOutcome {
            acknowledged: self.shared.acked.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
        };
        if let Some(e) = self
            .shared
            .first_error
            .lock()
            .ok()
            .and_then(|mut e| e.take())
        {
            tracing::warn!(error = %e, "publisher saw an error");
        }
        Ok(outcome)
    }
}

/// The publisher's reading half: counts `published` and `error` replies.
async fn read_replies(
    mut read: OwnedReadHalf,
    mut reader: FrameReader,
    shared: Arc<PubShared>,
) -> Result<(), LoadError> {
    loop {
        while let Some(f) = reader.next_frame()? {
            let bytes = &reader.bytes()[f.payload];
            match f.opcode {
                OP_TEXT => {
                    // `{"type":"published",…}` is by far the most common: skip the parse.
                    if bytes.starts_with(br#"{"type":"published""#) {
                        shared.acked.fetch_add(1, Ordering::Relaxed);
                    } else if let Ok(r) = serde_json::from_slice::<Reply<'_>>(bytes) {
                        if r.ty == "error" {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut first) = shared.first_error.lock() {
                                first.get_or_insert_with(|| r.describe());
                            }
                        }
                    }
                }
                OP_PING => shared.pong_due.store(true, Ordering::Relaxed),
                OP_CLOSE => return Err(close_error(bytes)),
                _ => {}
            }
        }
        if reader.fill(&mut read).await? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_payload_of_a_message_frame() {
        let frame = br#"{"type":"message","channel":"c","message_id":"m","origin":"local","data":{"t":1,"s":2,"p":3}}"#;
        let payload = br#"{"t":1,"s":2,"p":3}"#;
        assert_eq!(
            message_payload(frame, payload.len()),
            Some(&payload[..]),
            "fixed offset"
        );
        assert_eq!(
            message_payload(frame, 5),
            Some(&payload[..]),
            "fallback search"
        );
        assert_eq!(
            message_payload(br#"{"type":"published","message_id":"m"}"#, 5),
            None
        );
    }

    #[test]
    fn errors_and_invalidations_end_a_subscriber() {
        assert!(other_frame(br#"{"type":"pong"}"#).is_ok());
        assert!(matches!(
            other_frame(br#"{"type":"error","code":"x","message":"y"}"#),
            Err(LoadError::Refused(m)) if m == "x: y"
        ));
        assert!(other_frame(br#"{"type":"invalidated","channel":"c"}"#).is_err());
    }
}
