//! NATS over WebSocket: the NATS client protocol (`INFO`, `CONNECT`, `SUB`, `PUB`, `MSG`,
//! `PING`, `PONG`, `+OK`, `-ERR`) carried as a byte stream in binary WebSocket frames, as
//! `nats.ws` does, to `nats-server`'s `websocket` listener (no TLS, no compression).
//!
//! A NATS message may span WebSocket frames and a frame may hold many messages, so the
//! protocol is parsed from the frames' payloads as one stream; only bytes of an incomplete
//! message are copied aside.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backend, PublishOutcome, Publisher, Sink, Slot, Subscriber};
use crate::loadgen::LoadError;
use crate::loadgen::payload::now_ns;
use crate::loadgen::wsframe::{
    self, Endpoint, FrameReader, FrameWriter, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING,
    OP_PONG, OP_TEXT,
};

const READ_BUFFER: usize = 16 * 1024;
/// Publishes gathered into one WebSocket frame at most.
const MAX_FRAME_PAYLOAD: usize = 32 * 1024;

/// A `nats-server` WebSocket listener.
#[derive(Debug)]
pub struct NatsWs {
    endpoint: Endpoint,
    url: String,
    connect: String,
}

impl NatsWs {
    /// `url` is the listener, e.g. `ws://127.0.0.1:8222`; `token` the server's auth token.
    pub fn new(url: &str, token: Option<&str>) -> Result<Self, LoadError> {
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "name": "loadgen",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "echo": false,
            "headers": false,
            "no_responders": false,
        });
        if let Some(t) = token {
            connect["auth_token"] = t.into();
        }
        Ok(Self {
            endpoint: Endpoint::parse(url, String::new())?,
            url: url.to_owned(),
            connect: format!("CONNECT {connect}\r\n"),
        })
    }

    /// Connects, reads `INFO`, sends `CONNECT` plus `extra` and a `PING`, and waits for the
    /// `PONG`, which proves the server processed everything before it.
    async fn open(&self, slot: Slot, extra: &str) -> Result<Conn, LoadError> {
        let (stream, leftover) = wsframe::connect(&self.endpoint, slot.source).await?;
        let mut conn = Conn {
            stream,
            reader: FrameReader::new(READ_BUFFER, &leftover),
            writer: FrameWriter::new(),
            parser: Parser::default(),
        };
        let mut got_info = false;
        while !got_info {
            conn.read_ops(|op| {
                if let Op::Info = op {
                    got_info = true;
                }
                Ok(())
            })
            .await?;
        }
        let hello = format!("{}{extra}PING\r\n", self.connect);
        conn.writer.frame(OP_BINARY, &[hello.as_bytes()]);
        conn.writer.flush(&mut conn.stream).await?;
        let mut pong = false;
        while !pong {
            conn.read_ops(|op| match op {
                Op::Pong => {
                    pong = true;
                    Ok(())
                }
                Op::Err(e) => Err(LoadError::Refused(e)),
                _ => Ok(()),
            })
            .await?;
        }
        Ok(conn)
    }
}

#[async_trait]
impl Backend for NatsWs {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn target(&self) -> String {
        self.url.clone()
    }

    async fn subscriber(
        &self,
        slot: Slot,
        channels: &[String],
    ) -> Result<Box<dyn Subscriber>, LoadError> {
        let subs: String = channels
            .iter()
            .enumerate()
            .map(|(i, c)| format!("SUB {c} {}\r\n", i + 1))
            .collect();
        Ok(Box::new(NatsSubscriber(self.open(slot, &subs).await?)))
    }

    async fn publisher(&self, slot: Slot) -> Result<Box<dyn Publisher>, LoadError> {
        let conn = self.open(slot, "").await?;
        let Conn {
            stream,
            reader,
            writer,
            parser,
        } = conn;
        let (read, write) = stream.into_split();
        let shared = Arc::new(PubShared::default());
        let task = tokio::spawn(read_publisher(read, reader, parser, Arc::clone(&shared)));
        Ok(Box::new(NatsPublisher {
            write,
            writer,
            proto: Vec::with_capacity(MAX_FRAME_PAYLOAD + 1024),
            shared,
            task,
            sent: 0,
        }))
    }
}

/// One NATS protocol operation from the server.
#[derive(Debug, PartialEq, Eq)]
enum Op<'a> {
    Info,
    Msg(&'a [u8]),
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// An established connection: socket, WebSocket framing, NATS stream parser.
struct Conn {
    stream: TcpStream,
    reader: FrameReader,
    writer: FrameWriter,
    parser: Parser,
}

impl Conn {
    /// Hands every complete operation already received to `f`, or if there is none, reads
    /// until there is; pings are answered.
    async fn read_ops(
        &mut self,
        mut f: impl FnMut(Op<'_>) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        loop {
            let mut ping = false;
            let mut seen = 0;
            drain_frames(&mut self.reader, &mut self.parser, &mut |op| {
                seen += 1;
                if op == Op::Ping {
                    ping = true;
                }
                f(op)
            })?;
            if ping {
                self.writer.frame(OP_BINARY, &[b"PONG\r\n"]);
                self.writer.flush(&mut self.stream).await?;
            }
            if seen > 0 {
                return Ok(());
            }
            if self.reader.fill(&mut self.stream).await? == 0 {
                return Err(LoadError::Closed("by the server".into()));
            }
        }
    }
}

/// Feeds every complete WebSocket frame in `reader` to the NATS parser.
fn drain_frames(
    reader: &mut FrameReader,
    parser: &mut Parser,
    f: &mut dyn FnMut(Op<'_>) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    while let Some(frame) = reader.next_frame()? {
        let bytes = &reader.bytes()[frame.payload];
        match frame.opcode {
            OP_BINARY | OP_TEXT | OP_CONTINUATION => parser.feed(bytes, f)?,
            OP_CLOSE => return Err(LoadError::Closed("by the server".into())),
            // The server does not ping at the WebSocket level; NATS has its own PING.
            OP_PING | OP_PONG => {}
            op => return Err(LoadError::Protocol(format!("unknown opcode {op}"))),
        }
    }
    Ok(())
}

/// The NATS protocol parser: holds only the incomplete tail of the stream.
#[derive(Default, Debug)]
struct Parser {
    pending: Vec<u8>,
}

impl Parser {
    fn feed(
        &mut self,
        data: &[u8],
        f: &mut dyn FnMut(Op<'_>) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        if self.pending.is_empty() {
            let used = parse_all(data, f)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let used = parse_all(&self.pending, f)?;
            self.pending.drain(..used);
        }
        Ok(())
    }
}

/// Parses every complete operation in `buf`; returns how many bytes they took.
fn parse_all(
    buf: &[u8],
    f: &mut dyn FnMut(Op<'_>) -> Result<(), LoadError>,
) -> Result<usize, LoadError> {
    let mut at = 0;
    while let Some((op, used)) = parse_one(&buf[at..])? {
        f(op)?;
        at += used;
    }
    Ok(at)
}

/// One operation at the start of `buf`, and its length; `None` if incomplete.
fn parse_one(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, LoadError> {
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > 64 * 1024 {
            return Err(LoadError::Protocol("NATS control line too long".into()));
        }
        return Ok(None);
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let next = eol + 1;
    if let Some(args) = line.strip_prefix(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let size = args
            .rsplit(|&b| b == b' ')
            .next()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| LoadError::Protocol("bad MSG line".into()))?;
        if buf.len() < next + size + 2 {
            return Ok(None);
        }
        return Ok(Some((Op::Msg(&buf[next..next + size]), next + size + 2)));
    }
    let op = if line == b"PING" {
        Op::Ping
    } else if line == b"PONG" {
        Op::Pong
    } else if line == b"+OK" {
        Op::Ok
    } else if line.starts_with(b"INFO ") {
        Op::Info
    } else if let Some(e) = line.strip_prefix(b"-ERR ") {
        Op::Err(String::from_utf8_lossy(e).into_owned())
    } else {
        return Err(LoadError::Protocol(format!(
            "unexpected NATS line {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        )));
    };
    Ok(Some((op, next)))
}

struct NatsSubscriber(Conn);

#[async_trait]
impl Subscriber for NatsSubscriber {
    async fn run(
        self: Box<Self>,
        sink: &mut dyn Sink,
        stop: CancellationToken,
    ) -> Result<(), LoadError> {
        let Conn {
            mut stream,
            mut reader,
            mut writer,
            mut parser,
        } = self.0;
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let now = now_ns();
            let mut ping = false;
            drain_frames(&mut reader, &mut parser, &mut |op| match op {
                Op::Msg(payload) => {
                    sink.message(payload, now);
                    Ok(())
                }
                Op::Ping => {
                    ping = true;
                    Ok(())
                }
                Op::Err(e) => Err(LoadError::Refused(e)),
                Op::Info | Op::Pong | Op::Ok => Ok(()),
            })?;
            sink.batch_end();
            if ping {
                writer.frame(OP_BINARY, &[b"PONG\r\n"]);
                writer.flush(&mut stream).await?;
            }
            tokio::select! {
                biased;
                _ = &mut stopped => return Ok(()),
                n = reader.fill(&mut stream) => {
                    if n? == 0 {
                        return Err(LoadError::Closed("by the server".into()));
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct PubShared {
    errors: AtomicU64,
    pongs: AtomicU64,
    pong_arrived: Notify,
    /// The server pinged; the writer answers with its next flush.
    pong_due: AtomicBool,
}

struct NatsPublisher {
    write: OwnedWriteHalf,
    writer: FrameWriter,
    /// NATS protocol bytes not yet framed.
    proto: Vec<u8>,
    shared: Arc<PubShared>,
    task: JoinHandle<Result<(), LoadError>>,
    sent: u64,
}

impl NatsPublisher {
    fn frame_proto(&mut self) {
        if !self.proto.is_empty() {
            self.writer.frame(OP_BINARY, &[&self.proto]);
            self.proto.clear();
        }
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), LoadError> {
        self.proto.extend_from_slice(b"PUB ");
        self.proto.extend_from_slice(channel.as_bytes());
        self.proto.push(b' ');
        self.proto
            .extend_from_slice(payload.len().to_string().as_bytes());
        self.proto.extend_from_slice(b"\r\n");
        self.proto.extend_from_slice(payload);
        self.proto.extend_from_slice(b"\r\n");
        self.sent += 1;
        if self.proto.len() >= MAX_FRAME_PAYLOAD {
            self.frame_proto();
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), LoadError> {
        if self.shared.pong_due.swap(false, Ordering::Relaxed) {
            self.proto.extend_from_slice(b"PONG\r\n");
        }
        self.frame_proto();
        self.writer.flush(&mut self.write).await?;
        Ok(())
    }

    async fn finish(mut self: Box<Self>, timeout: Duration) -> Result<PublishOutcome, LoadError> {
        // Core NATS publishes have no acknowledgement; a PONG after them proves the server
        // has processed every one.
        let shared = Arc::clone(&self.shared);
        let before = shared.pongs.load(Ordering::Relaxed);
        let arrived = shared.pong_arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        self.proto.extend_from_slice(b"PING\r\n");
        self.flush().await?;
        let processed = tokio::time::timeout(timeout, async {
            while shared.pongs.load(Ordering::Relaxed) == before {
                arrived.as_mut().await;
                arrived.set(shared.pong_arrived.notified());
                arrived.as_mut().enable();
            }
        })
        .await
        .is_ok();
        self.task.abort();
        Ok(PublishOutcome {
            acknowledged: if processed { self.sent } else { 0 },
            errors: self.shared.errors.load(Ordering::Relaxed),
        })
    }
}

/// The publisher's reading half: answers pings (through the writer), counts errors.
async fn read_publisher(
    mut read: OwnedReadHalf,
    mut reader: FrameReader,
    mut parser: Parser,
    shared: Arc<PubShared>,
) -> Result<(), LoadError> {
    loop {
        drain_frames(&mut reader, &mut parser, &mut |op| {
            match op {
                Op::Ping => shared.pong_due.store(true, Ordering::Relaxed),
                Op::Pong => {
                    shared.pongs.fetch_add(1, Ordering::Relaxed);
                    shared.pong_arrived.notify_waiters();
                }
                Op::Err(e) => {
                    tracing::warn!(error = %e, "NATS refused a publish");
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                Op::Msg(_) | Op::Info | Op::Ok => {}
            }
            Ok(())
        })?;
        if reader.fill(&mut read).await? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(stream: &[u8], step: usize) -> Vec<String> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for chunk in stream.chunks(step) {
            p.feed(chunk, &mut |op| {
                out.push(match op {
                    Op::Msg(m) => format!("MSG {}", String::from_utf8_lossy(m)),
                    other => format!("{other:?}"),
                });
                Ok(())
            })
            .unwrap();
        }
        assert!(p.pending.is_empty());
        out
    }

    #[test]
    fn parses_a_stream_split_anywhere() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nMSG a.b 1 5\r\nhello\r\nPING\r\n\
                       MSG a.b 1 reply.to 0\r\n\r\nMSG x 2 4\r\n\r\n\r\n\r\nPONG\r\n-ERR 'Slow Consumer'\r\n";
        let want = vec![
            "Info",
            "Ok",
            "MSG hello",
            "Ping",
            "MSG ",
            "MSG \r\n\r\n",
            "Pong",
            "Err(\"'Slow Consumer'\")",
        ];
        for step in [1, 2, 5, 13, stream.len()] {
            assert_eq!(ops(stream, step), want, "step {step}");
        }
    }

    #[test]
    fn rejects_garbage() {
        let mut p = Parser::default();
        assert!(p.feed(b"HELLO\r\n", &mut |_| Ok(())).is_err());
        let mut p = Parser::default();
        assert!(p.feed(b"MSG a 1 x\r\n", &mut |_| Ok(())).is_err());
    }
}
