//! Relaying bytes between two connections.
//!
//! Every byte read before one side's end reaches the other side first, whatever the end:
//! - a clean end (EOF) is passed on as one: the writer is flushed and, in [`relay`], shut down,
//!   while the other direction goes on;
//! - a failure (a reset) is passed on as a failure: the writer is flushed (best effort) and the
//!   relay returns the error, so that its caller can abort both connections. A client must see
//!   its connection reset, never a clean end that looks like a complete reply.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per call in each direction. tokio's default (8 KiB) turns a bulk transfer into many
/// small reads, writes and WebSocket messages; Go's `io.Copy`, which Piko relays with, uses 32 KiB.
pub const RELAY_BUFFER: usize = 32 * 1024;

/// Copies both ways until both directions have ended, each end passed on as a half-close; returns
/// the bytes copied `a` to `b` and `b` to `a`.
///
/// # Errors
/// Either side failed: what had been read from it before was written and flushed; the other
/// direction is abandoned, and both connections are left to their owner to abort.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = OneWay::new(true);
    let mut b_to_a = OneWay::new(true);
    poll_fn(|cx| {
        let forth = a_to_b.poll_copy(cx, &mut *a, &mut *b)?;
        let back = b_to_a.poll_copy(cx, &mut *b, &mut *a)?;
        match (forth, back) {
            (Poll::Ready(forth), Poll::Ready(back)) => Poll::Ready(Ok((forth, back))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Copies both ways until either direction ends, as Piko relays a tunnel whose peers cannot
/// half-close: the first end, flushed but not shut down, ends the relay.
///
/// # Errors
/// As [`relay`].
pub async fn relay_until_first_end<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = OneWay::new(false);
    let mut b_to_a = OneWay::new(false);
    poll_fn(|cx| {
        if a_to_b.poll_copy(cx, &mut *a, &mut *b)?.is_ready()
            || b_to_a.poll_copy(cx, &mut *b, &mut *a)?.is_ready()
        {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await
}

/// One direction of a relay.
struct OneWay {
    buf: Box<[u8]>,
    /// Unwritten bytes are `buf[pos..filled]`.
    pos: usize,
    filled: usize,
    /// The reader ended (EOF or a failure, kept in `failed` until what came before is flushed).
    read_done: bool,
    failed: Option<io::Error>,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// Whether a clean end is passed on by shutting the writer down.
    shutdown_at_end: bool,
    copied: u64,
    done: bool,
}

impl OneWay {
    fn new(shutdown_at_end: bool) -> Self {
        Self {
            buf: vec![0; RELAY_BUFFER].into_boxed_slice(),
            pos: 0,
            filled: 0,
            read_done: false,
            failed: None,
            unflushed: false,
            shutdown_at_end,
            copied: 0,
            done: false,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            if self.pos == self.filled && !self.read_done {
                let mut read_buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                    Poll::Pending => {
                        // Nothing more to read for now: what was written must not wait in a
                        // buffer for the next read.
                        if self.unflushed {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read_buf.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.filled = n;
                        }
                    }
                    Poll::Ready(Err(err)) => {
                        self.read_done = true;
                        self.failed = Some(err);
                    }
                }
            }
            while self.pos < self.filled {
                let n = ready!(
                    Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.filled])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                self.unflushed = true;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                self.unflushed = false;
                if let Some(err) = self.failed.take() {
                    return Poll::Ready(Err(err));
                }
                if self.shutdown_at_end {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, DuplexStream};

    /// A reader that yields `data`, then fails with a reset, in consecutive reads (no wait
    /// between them, as when both arrived together).
    struct DataThenReset {
        data: Option<Vec<u8>>,
    }

    impl AsyncRead for DataThenReset {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.data.take() {
                Some(data) => {
                    buf.put_slice(&data);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }

    impl AsyncWrite for DataThenReset {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The far side's reader behind a buffering writer, which keeps what it is given until a
    /// flush (as a WebSocket writer does).
    fn buffered_pipe() -> (BufWriter<DuplexStream>, DuplexStream) {
        let (near, far) = tokio::io::duplex(1 << 16);
        (BufWriter::with_capacity(1 << 16, near), far)
    }

    #[tokio::test]
    async fn bytes_before_a_reset_are_flushed_then_the_reset_is_returned() {
        for until_first_end in [false, true] {
            let mut upstream = DataThenReset {
                data: Some(b"reply".to_vec()),
            };
            let (mut client, mut far) = buffered_pipe();
            let result = if until_first_end {
                relay_until_first_end(&mut client, &mut upstream).await
            } else {
                relay(&mut client, &mut upstream).await.map(drop)
            };
            assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
            drop(client);
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"reply");
        }
    }

    #[tokio::test]
    async fn each_clean_end_is_passed_on_as_a_half_close() {
        let (mut a, mut a_far) = tokio::io::duplex(1 << 16);
        let (mut b, mut b_far) = tokio::io::duplex(1 << 16);
        let relayed = tokio::spawn(async move { relay(&mut a, &mut b).await });
        a_far.write_all(b"request").await.unwrap();
        a_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The other direction still goes on after the first one ended.
        b_far.write_all(b"reply").await.unwrap();
        b_far.shutdown().await.unwrap();
        got.clear();
        a_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"reply");
        assert_eq!(relayed.await.unwrap().unwrap(), (7, 5));
    }
}
