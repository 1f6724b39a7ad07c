//! What a session runs over.
//!
//! [`Transport`] lets the session read input in place and hand output over as owned buffers, so
//! a transport with buffers of its own (a WebSocket library) needs no copy into or out of ours.
//! Any `AsyncRead + AsyncWrite` works through [`Io`].

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream as the session uses it.
pub trait Transport: Send + 'static {
    /// Waits for input and passes all of it to `consume` (which always takes every byte).
    /// Returns how many bytes were passed; 0 means end of stream.
    ///
    /// # Errors
    /// The transport failed.
    fn poll_read_with(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        consume: &mut dyn FnMut(&[u8]),
    ) -> Poll<io::Result<usize>>;

    /// Writes a prefix of `first` then `second` (at least one byte), advancing them past what was
    /// taken. The buffers are the caller's to reuse: a transport may take bytes with
    /// `split_to(..).freeze()` instead of copying them.
    ///
    /// # Errors
    /// The transport failed.
    fn poll_write_bufs(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        first: &mut BytesMut,
        second: &mut BytesMut,
    ) -> Poll<io::Result<()>>;

    /// Flushes what was written.
    ///
    /// # Errors
    /// The transport failed.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the output side gracefully.
    ///
    /// # Errors
    /// The transport failed.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Smallest read; an idle connection keeps about this much read buffer.
const MIN_READ: usize = 4 * 1024;
/// Largest read: bulk transfers move this much per syscall.
const MAX_READ: usize = 256 * 1024;

/// Any `AsyncRead + AsyncWrite` as a [`Transport`]: reads into a reused buffer that grows while
/// reads fill it (up to 256 KiB, fewer syscalls in bulk) and shrinks when they do not (little
/// memory when idle); writes the two output buffers with one vectored write.
#[derive(Debug)]
pub struct Io<T> {
    io: T,
    /// Always initialised to its length, so reads need no `unsafe`.
    buf: Vec<u8>,
}

impl<T> Io<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for Io<T> {
    fn poll_read_with(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        consume: &mut dyn FnMut(&[u8]),
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            this.buf.resize(MIN_READ, 0);
        }
        let mut read = ReadBuf::new(&mut this.buf);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        consume(&this.buf[..n]);
        let size = this.buf.len();
        if n == size && size < MAX_READ {
            this.buf.resize(size * 2, 0);
        } else if n < size / 4 && size > MIN_READ {
            this.buf.truncate(size / 2);
            this.buf.shrink_to_fit();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_bufs(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        first: &mut BytesMut,
        second: &mut BytesMut,
    ) -> Poll<io::Result<()>> {
        let slices = [IoSlice::new(first), IoSlice::new(second)];
        let slices = if first.is_empty() {
            &slices[1..]
        } else {
            &slices[..]
        };
        let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, slices))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let from_first = n.min(first.len());
        first.advance(from_first);
        n -= from_first;
        second.advance(n);
        Poll::Ready(Ok(()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
