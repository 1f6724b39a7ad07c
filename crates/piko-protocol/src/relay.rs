//! Relaying bytes between two connections.
//!
//! Every byte read before one side's end reaches the other side first, whatever the end:
//! - a clean end (EOF) is passed on as one: the writer is flushed and, in [`relay`], shut down,
//!   while the other direction goes on;
//! - a failure to read (a reset) is passed on as a failure: the writer is flushed (best effort)
//!   and the relay returns the error, so that its caller can abort both connections. A client
//!   must see its connection reset, never a clean end that looks like a complete reply;
//! - a failure to write to a side (it reset while bytes were still going to it) first lets the
//!   other direction take what that side had sent before its reset (a service that answers an
//!   upload with an error and resets: the client gets the error), until that side ends or gives
//!   nothing more for a moment; then the relay returns the failure.

use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// Bytes read per call in each direction. tokio's default (8 KiB) turns a bulk transfer into many
/// small reads, writes and WebSocket messages; Go's `io.Copy`, which Piko relays with, uses 32 KiB.
pub const RELAY_BUFFER: usize = 32 * 1024;

/// How long a drain waits for more from a side that gives nothing. The kernel has what a side
/// sent before its reset by the time a write to it fails, but the runtime may learn that it is
/// readable a moment later; a side that really has nothing more ends the drain after this.
const DRAIN_QUIET_LIMIT: Duration = Duration::from_secs(1);

/// Copies both ways until both directions have ended, each end passed on as a half-close; returns
/// the bytes copied `a` to `b` and `b` to `a`.
///
/// # Errors
/// Either side failed: what had been read before was written and flushed; both connections are
/// left to their owner to abort.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut both = Both::new(true);
    poll_fn(|cx| both.poll(cx, &mut *a, &mut *b, Until::BothEnd)).await?;
    Ok((both.forth.copied, both.back.copied))
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
    let mut both = Both::new(false);
    poll_fn(|cx| both.poll(cx, &mut *a, &mut *b, Until::FirstEnd)).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    BothEnd,
    FirstEnd,
}

/// The two directions of a relay, `a` to `b` (`forth`) and back.
struct Both {
    forth: OneWay,
    back: OneWay,
    /// A direction failed to write; returned once the other direction has drained.
    write_failure: Option<io::Error>,
}

impl Both {
    fn new(shutdown_at_end: bool) -> Self {
        Self {
            forth: OneWay::new(shutdown_at_end),
            back: OneWay::new(shutdown_at_end),
            write_failure: None,
        }
    }

    fn poll<A, B>(
        &mut self,
        cx: &mut Context<'_>,
        a: &mut A,
        b: &mut B,
        until: Until,
    ) -> Poll<io::Result<()>>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let forth = self.forth.poll_copy(cx, &mut *a, &mut *b);
        if let Some(done) = self.settle(forth, Side::Forth) {
            return Poll::Ready(done);
        }
        let back = self.back.poll_copy(cx, &mut *b, &mut *a);
        if let Some(done) = self.settle(back, Side::Back) {
            return Poll::Ready(done);
        }
        // `forth` was polled before `back` failed to write: draining, it waits for its reader
        // only a quiet moment, whose timer must start now rather than on a wake-up that may
        // never come.
        if self.forth.draining && !self.forth.done {
            let forth = self.forth.poll_copy(cx, &mut *a, &mut *b);
            if let Some(done) = self.settle(forth, Side::Forth) {
                return Poll::Ready(done);
            }
        }
        let (forth_done, back_done) = (self.forth.done, self.back.done);
        let over = if self.write_failure.is_some() {
            forth_done && back_done
        } else {
            match until {
                Until::BothEnd => forth_done && back_done,
                Until::FirstEnd => forth_done || back_done,
            }
        };
        if !over {
            return Poll::Pending;
        }
        Poll::Ready(match self.write_failure.take() {
            Some(err) => Err(err),
            None => Ok(()),
        })
    }

    /// Takes in one direction's progress; `Some` when the relay is over.
    fn settle(
        &mut self,
        progress: Poll<Result<(), Failure>>,
        side: Side,
    ) -> Option<io::Result<()>> {
        match progress {
            Poll::Pending | Poll::Ready(Ok(())) => None,
            // The side read from failed: there is nothing left to take from it, and the other
            // direction writes to it.
            Poll::Ready(Err(Failure::Read(err))) => {
                Some(Err(self.write_failure.take().unwrap_or(err)))
            }
            Poll::Ready(Err(Failure::Write(err))) => {
                if self.write_failure.is_none() {
                    self.write_failure = Some(err);
                }
                let other = match side {
                    Side::Forth => &mut self.back,
                    Side::Back => &mut self.forth,
                };
                other.draining = true;
                None
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Forth,
    Back,
}

/// How one direction failed.
enum Failure {
    Read(io::Error),
    Write(io::Error),
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
    /// The other direction failed to write: this one ends once its reader ends or has given
    /// nothing for [`DRAIN_QUIET_LIMIT`] (timed by `drain_quiet`).
    draining: bool,
    drain_quiet: Option<Pin<Box<Sleep>>>,
    copied: u64,
    /// Ended, and its outcome returned.
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
            draining: false,
            drain_quiet: None,
            copied: 0,
            done: false,
        }
    }

    /// Copies until the reader ends; `Ready` once, then `Ready(Ok)` whenever polled again.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let outcome = ready!(self.poll_until_end(cx, reader, writer));
        self.done = true;
        Poll::Ready(outcome)
    }

    fn poll_until_end<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.pos == self.filled && !self.read_done {
                let mut read_buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read_buf) {
                    Poll::Pending => {
                        // Nothing more to read for now: what was written must not wait in a
                        // buffer for the next read.
                        if self.unflushed {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))
                                .map_err(Failure::Write)?;
                            self.unflushed = false;
                        }
                        if self.draining {
                            let quiet = self.drain_quiet.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep(DRAIN_QUIET_LIMIT))
                            });
                            ready!(quiet.as_mut().poll(cx));
                            return Poll::Ready(Ok(()));
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
                            if let Some(quiet) = &mut self.drain_quiet {
                                quiet.as_mut().reset(Instant::now() + DRAIN_QUIET_LIMIT);
                            }
                        }
                    }
                    Poll::Ready(Err(err)) => {
                        self.read_done = true;
                        self.failed = Some(err);
                    }
                }
            }
            while self.pos < self.filled {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.filled]))
                        .map_err(Failure::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.copied += n as u64;
                self.unflushed = true;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(Failure::Write)?;
                self.unflushed = false;
                if let Some(err) = self.failed.take() {
                    return Poll::Ready(Err(Failure::Read(err)));
                }
                // A drained relay ends in failure: its connections are aborted, not closed.
                if self.shutdown_at_end && !self.draining {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(Failure::Write)?;
                }
                return Poll::Ready(Ok(()));
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

    /// What a side's reads give after its data.
    #[derive(Clone, Copy, Debug)]
    enum Then {
        Reset,
        End,
        /// Nothing more arrives (for now).
        Nothing,
    }

    /// A side that refuses writes (it was reset) but had sent `data` before, followed by `then`.
    struct ResetAfterSending {
        data: Option<Vec<u8>>,
        then: Then,
    }

    impl AsyncRead for ResetAfterSending {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(data) = self.data.take() {
                buf.put_slice(&data);
                return Poll::Ready(Ok(()));
            }
            match self.then {
                Then::Reset => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
                Then::End => Poll::Ready(Ok(())),
                Then::Nothing => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for ResetAfterSending {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    // Paused time: the drain's wait for a side that sends nothing more passes at once.
    #[tokio::test(start_paused = true)]
    async fn what_a_side_sent_before_refusing_writes_reaches_the_other_side() {
        // With nothing more arriving, the drain ends after a quiet moment.
        for then in [Then::Reset, Then::End, Then::Nothing] {
            for until_first_end in [false, true] {
                let mut service = ResetAfterSending {
                    data: Some(b"ERR".to_vec()),
                    then,
                };
                let (mut client, mut far) = buffered_pipe();
                // The client is uploading: the write towards the service fails first.
                far.write_all(b"upload").await.unwrap();
                let result = if until_first_end {
                    relay_until_first_end(&mut client, &mut service).await
                } else {
                    relay(&mut client, &mut service).await.map(drop)
                };
                assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
                drop(client);
                let mut got = Vec::new();
                far.read_to_end(&mut got).await.unwrap();
                assert_eq!(
                    got, b"ERR",
                    "then {then:?}, until first end {until_first_end}"
                );
            }
        }
    }
}
