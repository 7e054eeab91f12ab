//! Our `pubsub.v1` over QUIC (`docs/PROTOCOL.md`, "QUIC"), spoken with quinn directly rather
//! than `transport_quic::Client`, whose messages are parsed into `serde_json::Value`s (fine
//! for an application, too costly for a generator that must out-run the broker). The wire is
//! the same: a control stream with length-prefixed JSON frames (`auth` first), and one
//! unidirectional stream per subscription opened by the server, its first frame the
//! `subscribed` header.
//!
//! Connections share a few client endpoints (one UDP socket per source address), as QUIC
//! allows, so that ten thousand connections do not need ten thousand sockets and drivers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pubsub_ws::message_payload;
use super::{Backend, PublishOutcome, Publisher, Sink, Slot, Subscriber};
use crate::loadgen::LoadError;
use crate::loadgen::payload::now_ns;

/// Read buffer per stream; grows for larger frames.
const READ_BUFFER: usize = 16 * 1024;
/// Largest frame accepted from the server.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A broker's QUIC listener.
pub struct QuicBackend {
    addr: SocketAddr,
    server_name: String,
    api_key: String,
    config: quinn::ClientConfig,
    payload_size: usize,
    /// One client endpoint per source address, created on first use.
    endpoints: Mutex<HashMap<Option<IpAddr>, Endpoint>>,
}

impl std::fmt::Debug for QuicBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicBackend")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl QuicBackend {
    /// The broker at `addr`, whose certificate is in the PEM file `cert` and valid for
    /// `server_name`.
    pub fn new(
        addr: SocketAddr,
        cert: &Path,
        server_name: &str,
        api_key: &str,
        payload_size: usize,
    ) -> Result<Self, LoadError> {
        let trusted = transport_quic::tls::certificates_from_pem_file(cert)
            .map_err(|e| LoadError::Config(format!("--cert: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in trusted {
            roots
                .add(c)
                .map_err(|e| LoadError::Config(format!("--cert: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LoadError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![broker_core::PROTOCOL_V1.as_bytes().to_vec()];
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| LoadError::Config(format!("TLS for QUIC: {e}")))?;
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(64))
            .max_idle_timeout(Some(
                IdleTimeout::try_from(Duration::from_secs(60))
                    .map_err(|e| LoadError::Config(format!("idle timeout: {e}")))?,
            ))
            .keep_alive_interval(Some(Duration::from_secs(15)));
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(Self {
            addr,
            server_name: server_name.to_owned(),
            api_key: api_key.to_owned(),
            config,
            payload_size,
            endpoints: Mutex::default(),
        })
    }

    fn endpoint(&self, source: Option<IpAddr>) -> Result<Endpoint, LoadError> {
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = eps.get(&source) {
            return Ok(ep.clone());
        }
        let bind = SocketAddr::new(source.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), 0);
        let ep = transport_quic::client_endpoint(bind)?;
        eps.insert(source, ep.clone());
        Ok(ep)
    }

    /// Connects and authenticates; returns the connection and its control stream.
    async fn open(&self, slot: Slot) -> Result<Control, LoadError> {
        let endpoint = self.endpoint(slot.source)?;
        let conn = endpoint
            .connect_with(self.config.clone(), self.addr, &self.server_name)
            .map_err(|e| LoadError::Handshake(e.to_string()))?
            .await
            .map_err(|e| LoadError::Handshake(e.to_string()))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| LoadError::Handshake(e.to_string()))?;
        let mut out = Vec::new();
        push_frame(
            &mut out,
            &[
                br#"{"type":"auth","id":"auth","api_key":"#,
                serde_json::to_string(&self.api_key)
                    .unwrap_or_default()
                    .as_bytes(),
                b"}",
            ],
        );
        send.write_all(&out).await.map_err(write_err)?;
        let mut control = Control {
            conn,
            send,
            recv: LenReader::new(recv),
        };
        let reply = control.reply().await?;
        match reply.ty.as_str() {
            "authed" => Ok(control),
            "error" => Err(LoadError::Refused(reply.describe())),
            other => Err(LoadError::Protocol(format!("reply to auth: {other}"))),
        }
    }
}

#[async_trait]
impl Backend for QuicBackend {
    fn name(&self) -> &'static str {
        "quic"
    }

    fn target(&self) -> String {
        format!("quic://{}", self.addr)
    }

    async fn subscriber(
        &self,
        slot: Slot,
        channels: &[String],
    ) -> Result<Box<dyn Subscriber>, LoadError> {
        let mut control = self.open(slot).await?;
        let mut out = Vec::new();
        for (i, c) in channels.iter().enumerate() {
            let req = format!(r#"{{"type":"subscribe","id":"s{i}","channel":"{c}"}}"#);
            push_frame(&mut out, &[req.as_bytes()]);
        }
        control.send.write_all(&out).await.map_err(write_err)?;
        // The replies come on the control stream, the channels' streams separately, in
        // either order.
        let mut streams = Vec::new();
        let mut confirmed = 0;
        let conn = control.conn.clone();
        while confirmed < channels.len() || streams.len() < channels.len() {
            tokio::select! {
                reply = control.reply(), if confirmed < channels.len() => {
                    let reply = reply?;
                    match reply.ty.as_str() {
                        "subscribed" => confirmed += 1,
                        "error" => return Err(LoadError::Refused(reply.describe())),
                        _ => {}
                    }
                }
                stream = conn.accept_uni(), if streams.len() < channels.len() => {
                    let stream = stream.map_err(|e| LoadError::Closed(e.to_string()))?;
                    let mut reader = LenReader::new(stream);
                    let header = reader.frame_bytes().await?;
                    let header: Reply = serde_json::from_slice(&header)
                        .map_err(|e| LoadError::Protocol(format!("stream header: {e}")))?;
                    if header.ty != "subscribed" {
                        return Err(LoadError::Protocol(format!("stream header {}", header.ty)));
                    }
                    streams.push(reader);
                }
            }
        }
        Ok(Box::new(QuicSubscriber {
            control,
            streams,
            payload_size: self.payload_size,
        }))
    }

    async fn publisher(&self, slot: Slot) -> Result<Box<dyn Publisher>, LoadError> {
        let Control { conn, send, recv } = self.open(slot).await?;
        let shared = Arc::new(PubShared::default());
        let reader = tokio::spawn(read_replies(recv, Arc::clone(&shared)));
        Ok(Box::new(QuicPublisher {
            _conn: conn,
            send,
            out: Vec::with_capacity(16 * 1024),
            shared,
            reader,
            sent: 0,
        }))
    }
}

#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl Reply {
    fn describe(&self) -> String {
        format!(
            "{}: {}",
            self.code.as_deref().unwrap_or("?"),
            self.message.as_deref().unwrap_or("")
        )
    }
}

fn write_err(e: quinn::WriteError) -> LoadError {
    LoadError::Closed(format!("while writing: {e}"))
}

/// Appends one frame: a 4-byte big-endian length, then the concatenation of `parts`.
fn push_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

struct Control {
    conn: quinn::Connection,
    send: SendStream,
    recv: LenReader,
}

impl Control {
    async fn reply(&mut self) -> Result<Reply, LoadError> {
        let frame = self.recv.frame_bytes().await?;
        serde_json::from_slice(&frame).map_err(|e| LoadError::Protocol(format!("bad reply: {e}")))
    }
}

/// Length-prefixed frames from one stream, read into one reusable buffer.
struct LenReader {
    stream: RecvStream,
    frames: FrameBuf,
}

/// Received bytes not yet handed out as frames: `buf[start..end]`.
struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl std::ops::Deref for LenReader {
    type Target = FrameBuf;
    fn deref(&self) -> &FrameBuf {
        &self.frames
    }
}

impl std::ops::DerefMut for LenReader {
    fn deref_mut(&mut self) -> &mut FrameBuf {
        &mut self.frames
    }
}

impl FrameBuf {
    fn new() -> Self {
        Self {
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// The next complete frame already buffered, as a range into `buf`.
    fn next_frame(&mut self) -> Result<Option<std::ops::Range<usize>>, LoadError> {
        let avail = self.end - self.start;
        if avail < 4 {
            return Ok(None);
        }
        let len = frame_len(&self.buf[self.start..])?;
        if avail < 4 + len {
            if self.buf.len() < 4 + len {
                self.buf.resize(4 + len, 0);
            }
            return Ok(None);
        }
        let begin = self.start + 4;
        self.start = begin + len;
        Ok(Some(begin..begin + len))
    }

    /// Hands every complete frame of what is buffered followed by `data` to `on_frame`, and
    /// keeps the incomplete rest for the next call.
    fn feed(
        &mut self,
        mut data: &[u8],
        now: u64,
        on_frame: &mut impl FnMut(&[u8], u64) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        if self.start < self.end {
            // Complete the frame cut by the last chunk; what follows it is parsed in place.
            let avail = self.end - self.start;
            if avail < 4 {
                let take = (4 - avail).min(data.len());
                self.append(&data[..take]);
                data = &data[take..];
                if self.end - self.start < 4 {
                    return Ok(());
                }
            }
            let need = 4 + frame_len(&self.buf[self.start..])?;
            let take = (need - (self.end - self.start)).min(data.len());
            self.append(&data[..take]);
            data = &data[take..];
            if self.end - self.start < need {
                return Ok(());
            }
            on_frame(&self.buf[self.start + 4..self.start + need], now)?;
            self.start = 0;
            self.end = 0;
        }
        while data.len() >= 4 {
            let len = frame_len(data)?;
            if data.len() < 4 + len {
                break;
            }
            on_frame(&data[4..4 + len], now)?;
            data = &data[4 + len..];
        }
        self.append(data);
        Ok(())
    }

    /// Appends `data` to the buffered bytes.
    fn append(&mut self, data: &[u8]) {
        self.reserve(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// Makes room for at least `n` (≥ 1) more bytes after `end`: moves the buffered bytes to
    /// the front when that is not enough, and grows the buffer when even that is not.
    fn reserve(&mut self, n: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end + n > self.buf.len() {
            self.compact();
            if self.end + n > self.buf.len() {
                self.buf.resize((self.end + n).max(2 * self.buf.len()), 0);
            }
        }
    }

    /// Moves the buffered bytes to the front of `buf`.
    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// The length a frame's 4-byte prefix at the start of `b` announces (`b` holds at least 4
/// bytes); an error past [`MAX_FRAME`].
fn frame_len(b: &[u8]) -> Result<usize, LoadError> {
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if len > MAX_FRAME {
        return Err(LoadError::Protocol(format!("frame of {len} bytes")));
    }
    Ok(len)
}

impl LenReader {
    fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            frames: FrameBuf::new(),
        }
    }

    /// Reads once; 0 at the end of the stream.
    async fn fill(&mut self) -> Result<usize, LoadError> {
        // Compacted before every read, so that each read may fill the whole rest of the buffer.
        self.frames.compact();
        self.frames.reserve(1);
        let n = match self
            .stream
            .read(&mut self.frames.buf[self.frames.end..])
            .await
        {
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(e) => return Err(LoadError::Closed(e.to_string())),
        };
        self.frames.end += n;
        Ok(n)
    }

    /// The next frame, copied out (for the rare control frames).
    async fn frame_bytes(&mut self) -> Result<Vec<u8>, LoadError> {
        loop {
            if let Some(r) = self.next_frame()? {
                return Ok(self.buf[r].to_vec());
            }
            if self.fill().await? == 0 {
                return Err(LoadError::Closed("stream ended".into()));
            }
        }
    }
}

struct QuicSubscriber {
    /// Kept open: dropping it would end the connection's control stream.
    control: Control,
    streams: Vec<LenReader>,
    payload_size: usize,
}

#[async_trait]
impl Subscriber for QuicSubscriber {
    async fn run(
        self: Box<Self>,
        sink: &mut dyn Sink,
        stop: CancellationToken,
    ) -> Result<(), LoadError> {
        let Self {
            control,
            mut streams,
            payload_size,
        } = *self;
        // One subscription per connection in every scenario; more would need a select over
        // the streams.
        let Some(mut stream) = streams.pop() else {
            return Err(LoadError::Setup("no subscription stream".into()));
        };
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        // Frames already buffered (read with the header), then the stream's chunks as quinn
        // holds them: frames that lie whole in a chunk are parsed in place, only a frame cut
        // by a chunk's end is copied (into `stream.buf`) to be completed by the next chunk.
        let now = now_ns();
        while let Some(r) = stream.next_frame()? {
            deliver(sink, payload_size, &stream.buf[r], now)?;
        }
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    control.conn.close(VarInt::from_u32(0), b"done");
                    return Ok(());
                }
                chunk = stream.stream.read_chunk(usize::MAX, true) => {
                    let chunk = match chunk {
                        Ok(Some(c)) => c.bytes,
                        Ok(None) => {
                            return Err(LoadError::Closed("subscription stream ended".into()));
                        }
                        Err(e) => return Err(LoadError::Closed(e.to_string())),
                    };
                    stream.frames.feed(&chunk, now_ns(), &mut |frame, now| {
                        deliver(sink, payload_size, frame, now)
                    })?;
                }
            }
            sink.batch_end();
        }
    }
}

/// One frame of a subscription stream: a message for `sink`, or the end of the stream.
fn deliver(
    sink: &mut dyn Sink,
    payload_size: usize,
    frame: &[u8],
    now: u64,
) -> Result<(), LoadError> {
    match message_payload(frame, payload_size) {
        Some(p) => {
            sink.message(p, now);
            Ok(())
        }
        None => {
            let reply: Reply = serde_json::from_slice(frame)
                .map_err(|e| LoadError::Protocol(format!("bad frame: {e}")))?;
            Err(LoadError::Closed(format!("stream ended with {}", reply.ty)))
        }
    }
}

#[derive(Default)]
struct PubShared {
    acked: AtomicU64,
    errors: AtomicU64,
}

struct QuicPublisher {
    _conn: quinn::Connection,
    send: SendStream,
    out: Vec<u8>,
    shared: Arc<PubShared>,
    reader: JoinHandle<Result<(), LoadError>>,
    sent: u64,
}

#[async_trait]
impl Publisher for QuicPublisher {
    async fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<(), LoadError> {
        push_frame(
            &mut self.out,
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
        if !self.out.is_empty() {
            self.send.write_all(&self.out).await.map_err(write_err)?;
            self.out.clear();
        }
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
        self.reader.abort();
        self._conn.close(VarInt::from_u32(0), b"done");
        Ok(PublishOutcome {
            acknowledged: self.shared.acked.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
        })
    }
}

/// The publisher's control stream replies: counts `published` and `error`.
async fn read_replies(mut recv: LenReader, shared: Arc<PubShared>) -> Result<(), LoadError> {
    loop {
        while let Some(r) = recv.next_frame()? {
            let bytes = &recv.buf[r];
            if bytes.starts_with(br#"{"type":"published""#) {
                shared.acked.fetch_add(1, Ordering::Relaxed);
            } else if bytes.starts_with(br#"{"type":"error""#) {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(frame = %String::from_utf8_lossy(bytes), "QUIC publish refused");
            }
        }
        if recv.fill().await? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of 0..40 bytes, fed in chunks cut at every size from 1 to the whole: every frame
    /// comes out once, whole and in order.
    #[test]
    fn frames_cut_anywhere_by_chunk_boundaries_come_out_whole() {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for n in 0..40u8 {
            let body: Vec<u8> = (0..n).map(|i| i.wrapping_mul(7) ^ n).collect();
            push_frame(&mut wire, &[&body]);
            expected.push(body);
        }
        for cut in 1..=wire.len() {
            let mut frames = FrameBuf::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                frames
                    .feed(chunk, 0, &mut |f, _| {
                        got.push(f.to_vec());
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(got, expected, "chunks of {cut} bytes");
            assert_eq!(frames.start, frames.end, "nothing left over");
        }
    }

    #[test]
    fn an_oversized_length_is_refused() {
        let mut frames = FrameBuf::new();
        let wire = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        assert!(frames.feed(&wire, 0, &mut |_, _| Ok(())).is_err());
    }
}
