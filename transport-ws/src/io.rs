//! An IO adapter that reads in large chunks into a buffer that exists only while data is
//! waiting, so that an idle connection holds no read buffer at all.
//!
//! tungstenite keeps a read buffer per connection for its whole life and reads at most that
//! much per call. A small buffer keeps idle connections cheap but would turn a busy
//! publisher's burst into many small `read` calls; this adapter turns them back into one large
//! read (into the stack), and keeps on the heap only what the caller has not taken yet, until
//! it has.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once when the caller asks for less.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Wraps a stream; see the module documentation. Writes pass straight through.
#[derive(Debug)]
pub(crate) struct ChunkedReader<S> {
    inner: S,
    /// Bytes read and not yet handed out; empty (and unallocated) between bursts.
    pending: BytesMut,
}

impl<S> ChunkedReader<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            pending: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ChunkedReader<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            if out.remaining() >= READ_CHUNK {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Read into the stack; only what the caller cannot take yet goes to the heap. A read
            // that would block (an idle connection's every wake-up) allocates nothing.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            let filled = buf.filled();
            let n = out.remaining().min(filled.len());
            out.put_slice(&filled[..n]);
            if n < filled.len() {
                this.pending = BytesMut::from(&filled[n..]);
            }
            return Poll::Ready(Ok(()));
        }
        let n = out.remaining().min(this.pending.len());
        out.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        if this.pending.is_empty() {
            // Free the leftovers' buffer: an idle connection keeps no read buffer.
            this.pending = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChunkedReader<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_free_the_chunk() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let mut r = ChunkedReader::new(rx);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(r.pending.capacity(), 0, "no buffer kept after the burst");
    }

    #[tokio::test]
    async fn large_reads_bypass_the_chunk() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        tx.write_all(b"hello").await.unwrap();
        let mut r = ChunkedReader::new(rx);
        let mut big = vec![0u8; READ_CHUNK];
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"hello");
        assert_eq!(r.pending.capacity(), 0);
    }
}
