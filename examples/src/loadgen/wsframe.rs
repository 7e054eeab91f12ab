//! A minimal WebSocket client (RFC 6455) over raw TCP, written for load generation: the same
//! code measures both brokers, and it must cost the generator far less than a delivery costs
//! the broker. No TLS, no extensions, no UTF-8 validation of received text (the payload is
//! parsed by the caller, which checks what it needs).
//!
//! Reading is zero-copy: [`FrameReader::next_frame`] hands out ranges into one buffer per
//! connection, filled by one `read` per wake-up. Writing gathers any number of frames into one
//! buffer, masked as a client must, for a single `write_all`.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::LoadError;

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Largest frame accepted from a server; anything bigger is a protocol error here.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

/// One received frame: its opcode and where its payload lies in the reader's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The opcode (`OP_*`).
    pub opcode: u8,
    /// Whether this is the last fragment.
    pub fin: bool,
    /// The payload, in [`FrameReader::bytes`].
    pub payload: Range<usize>,
}

/// Where the server is, and what to send in the upgrade request.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The server's address.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The request path, e.g. `/ws`.
    pub path: String,
    /// Extra header lines, each ending in `\r\n`.
    pub headers: String,
}

impl Endpoint {
    /// Parses `ws://host:port/path`.
    pub fn parse(url: &str, headers: String) -> Result<Self, LoadError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| LoadError::Config(format!("{url}: only ws:// URLs are supported")))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority.parse().map_err(|_| {
            LoadError::Config(format!("{url}: the host must be an IP address and port"))
        })?;
        Ok(Self {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
            headers,
        })
    }
}

/// Connects from `source` (any port) to the endpoint and performs the WebSocket upgrade.
/// Returns the stream and whatever the server sent after its response head.
pub async fn connect(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
) -> Result<(TcpStream, Vec<u8>), LoadError> {
    let socket = match endpoint.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(endpoint.addr).await?;
    stream.set_nodelay(true)?;
    let leftover = handshake(&mut stream, endpoint).await?;
    Ok((stream, leftover))
}

async fn handshake(stream: &mut TcpStream, ep: &Endpoint) -> Result<Vec<u8>, LoadError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| LoadError::Io(std::io::Error::other(e.to_string())))?;
    let key = base64(&raw);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        ep.path, ep.host, ep.headers
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(LoadError::Handshake("response head too long".into()));
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(LoadError::Handshake(
                "connection closed during handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(LoadError::Handshake(format!("server answered {status:?}")));
    }
    let expected = derive_accept_key(key.as_bytes());
    let accepted = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == expected
        })
    });
    if !accepted {
        return Err(LoadError::Handshake(
            "missing or wrong Sec-WebSocket-Accept".into(),
        ));
    }
    Ok(buf[head_end..].to_vec())
}

/// Reads server frames (unmasked) from a byte stream into one reusable buffer.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// A reader with `capacity` bytes of buffer (it grows for larger frames), primed with bytes
    /// that arrived with the handshake.
    pub fn new(capacity: usize, leftover: &[u8]) -> Self {
        let mut buf = vec![0u8; capacity.max(leftover.len()).max(64)];
        buf[..leftover.len()].copy_from_slice(leftover);
        Self {
            buf,
            start: 0,
            end: leftover.len(),
        }
    }

    /// The buffer that frame payload ranges point into.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Reads once from `io` (after making room); returns how many bytes arrived, 0 at EOF.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> std::io::Result<usize> {
        self.make_room();
        let n = io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Appends bytes as if they had been read (for tests and buffered handshakes).
    pub fn push(&mut self, bytes: &[u8]) {
        self.make_room();
        if self.buf.len() - self.end < bytes.len() {
            self.buf.resize(self.end + bytes.len(), 0);
        }
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// The next complete frame in the buffer, if any. Ranges stay valid until the next
    /// [`FrameReader::fill`] or [`FrameReader::push`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LoadError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (avail[0], avail[1]);
        if b1 & 0x80 != 0 {
            return Err(LoadError::Protocol("masked frame from the server".into()));
        }
        if b0 & 0x70 != 0 {
            return Err(LoadError::Protocol(
                "reserved bits set (no extension negotiated)".into(),
            ));
        }
        let (len, header) = match b1 & 0x7f {
            126 => {
                if avail.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4)
            }
            127 => {
                if avail.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&avail[2..10]);
                let len = u64::from_be_bytes(b);
                if len > MAX_FRAME as u64 {
                    return Err(LoadError::Protocol(format!("frame of {len} bytes")));
                }
                (len as usize, 10)
            }
            n => (n as usize, 2),
        };
        if len > MAX_FRAME {
            return Err(LoadError::Protocol(format!("frame of {len} bytes")));
        }
        if avail.len() < header + len {
            // Make sure the whole frame will fit once it has arrived.
            if self.buf.len() < header + len {
                self.buf.resize(header + len, 0);
            }
            return Ok(None);
        }
        let begin = self.start + header;
        self.start = begin + len;
        Ok(Some(Frame {
            opcode: b0 & 0x0f,
            fin: b0 & 0x80 != 0,
            payload: begin..begin + len,
        }))
    }

    /// Moves an incomplete frame to the front so the next read has room.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && (self.end == self.buf.len() || self.start > self.buf.len() / 2)
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = self.buf.len() * 2;
            self.buf.resize(grown, 0);
        }
    }
}

/// Gathers masked client frames for one write.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    mask: [u8; 4],
}

impl FrameWriter {
    /// A writer with a random masking key.
    pub fn new() -> Self {
        let mut mask = [0u8; 4];
        // A fixed key would do for a load generator; a random one keeps servers honest.
        let _ = getrandom::fill(&mut mask);
        Self {
            buf: Vec::with_capacity(4096),
            mask,
        }
    }

    /// Appends one frame whose payload is the concatenation of `parts`.
    pub fn frame(&mut self, opcode: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.buf.push(0x80 | opcode);
        if len < 126 {
            self.buf.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            self.buf.push(0x80 | 126);
            self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.buf.push(0x80 | 127);
            self.buf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.buf.extend_from_slice(&self.mask);
        let begin = self.buf.len();
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        let mask = self.mask;
        for (i, b) in self.buf[begin..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything gathered so far.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// The position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(T[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => v.push(n as u8),
            n if n <= 65535 => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn reads_frames_split_anywhere() {
        let big = vec![b'x'; 70_000];
        let mut wire = server_frame(OP_TEXT, b"hello");
        wire.extend(server_frame(OP_BINARY, &[7u8; 300]));
        wire.extend(server_frame(OP_PING, b""));
        wire.extend(server_frame(OP_TEXT, &big));
        for step in [1, 3, 7, 1000, wire.len()] {
            let mut r = FrameReader::new(16, &[]);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                r.push(chunk);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push((f.opcode, r.bytes()[f.payload].to_vec()));
                }
            }
            assert_eq!(got.len(), 4, "step {step}");
            assert_eq!(got[0], (OP_TEXT, b"hello".to_vec()));
            assert_eq!(got[1], (OP_BINARY, vec![7u8; 300]));
            assert_eq!(got[2], (OP_PING, vec![]));
            assert_eq!(got[3].1.len(), big.len());
        }
    }

    #[test]
    fn rejects_masked_server_frames() {
        let mut r = FrameReader::new(64, &[0x81, 0x81, 1, 2, 3, 4, b'a']);
        assert!(r.next_frame().is_err());
    }

    #[test]
    fn writes_masked_frames_a_server_can_unmask() {
        let mut w = FrameWriter::new();
        let payload = vec![b'z'; 200];
        w.frame(OP_TEXT, &[b"ab", &payload]);
        let b = &w.buf;
        assert_eq!(b[0], 0x81);
        assert_eq!(b[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([b[2], b[3]]), 202);
        let mask = [b[4], b[5], b[6], b[7]];
        let un: Vec<u8> = b[8..]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ mask[i & 3])
            .collect();
        assert_eq!(&un[..2], b"ab");
        assert_eq!(&un[2..], &payload[..]);
    }

    #[test]
    fn parses_ws_urls() {
        let e = Endpoint::parse("ws://127.0.0.1:8080/ws", String::new()).unwrap();
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.path, "/ws");
        let e = Endpoint::parse("ws://127.0.0.1:9", String::new()).unwrap();
        assert_eq!(e.path, "/");
        assert!(Endpoint::parse("wss://127.0.0.1:9", String::new()).is_err());
        assert!(Endpoint::parse("ws://localhost:9", String::new()).is_err());
    }
}
