//! Length-prefixed frames on QUIC streams: a 4-byte big-endian length, then that many bytes of
//! one JSON object.

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{ConnectionError, ReadError, RecvStream};

/// Bytes in a length prefix.
pub(crate) const PREFIX_LEN: usize = 4;

/// A read buffer that grew past this for one large frame is released after it, so that an idle
/// connection does not keep a megabyte around.
const KEEP_BUFFER: usize = 64 * 1024;

/// Prefixes `body` with its length.
///
/// Bodies are bounded by the broker's payload limit, checked to fit in a `u32` when a server
/// or client is built, so the saturation below never happens.
pub(crate) fn frame(body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + body.len());
    buf.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    buf.extend_from_slice(body);
    buf.freeze()
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The length prefix announces more than the limit.
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a length prefix or a frame.
    Truncated,
    /// The peer reset the stream.
    Reset,
    /// The connection is gone.
    Lost(ConnectionError),
    /// The stream was already closed locally; a bug rather than bad input.
    Closed,
}

impl From<ReadError> for FrameError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Reset(_) => Self::Reset,
            ReadError::ConnectionLost(e) => Self::Lost(e),
            // Streams here are neither 0-RTT nor read out of order.
            ReadError::ClosedStream
            | ReadError::IllegalOrderedRead
            | ReadError::ZeroRttRejected => Self::Closed,
        }
    }
}

/// Reads length-prefixed frames from one stream.
///
/// Cancel-safe: a partly read frame is kept and completed by the next call, so `next` may be
/// used as a `select!` branch.
#[derive(Debug)]
pub(crate) struct FrameReader {
    stream: RecvStream,
    prefix: [u8; PREFIX_LEN],
    prefix_read: usize,
    /// The length of the frame being read, once its prefix is complete.
    len: Option<usize>,
    buf: Vec<u8>,
    buf_read: usize,
}

impl FrameReader {
    pub(crate) fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            prefix: [0; PREFIX_LEN],
            prefix_read: 0,
            len: None,
            buf: Vec::new(),
            buf_read: 0,
        }
    }

    /// The next frame, or `None` when the peer finished the stream at a frame boundary. A
    /// frame longer than `max` is refused before any of it is read.
    pub(crate) async fn next(&mut self, max: usize) -> Result<Option<&[u8]>, FrameError> {
        let len = loop {
            if let Some(len) = self.len {
                break len;
            }
            if self.prefix_read < PREFIX_LEN {
                match self
                    .stream
                    .read(&mut self.prefix[self.prefix_read..])
                    .await?
                {
                    Some(n) => self.prefix_read += n,
                    None if self.prefix_read == 0 => return Ok(None),
                    None => return Err(FrameError::Truncated),
                }
                continue;
            }
            let len = u32::from_be_bytes(self.prefix) as usize;
            if len > max {
                return Err(FrameError::TooLarge { len, max });
            }
            if self.buf.capacity() > KEEP_BUFFER && len <= KEEP_BUFFER {
                self.buf = Vec::new();
            }
            self.buf.clear();
            self.buf.resize(len, 0);
            self.buf_read = 0;
            self.len = Some(len);
        };
        while self.buf_read < len {
            match self.stream.read(&mut self.buf[self.buf_read..]).await? {
                Some(n) => self.buf_read += n,
                None => return Err(FrameError::Truncated),
            }
        }
        self.len = None;
        self.prefix_read = 0;
        Ok(Some(&self.buf[..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_a_big_endian_length() {
        assert_eq!(&frame(b"{}")[..], b"\0\0\0\x02{}");
        let big = vec![b' '; 300];
        let f = frame(&big);
        assert_eq!(&f[..4], &[0, 0, 1, 44]);
        assert_eq!(f.len(), 304);
    }
}
