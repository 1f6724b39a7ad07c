//! A multiplexed stream: tokio `AsyncRead + AsyncWrite` over its share of the session.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{self, Context},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

use crate::{
    session::Shared,
    state::{Poll, State},
};

/// One stream of a [`Session`](crate::Session).
///
/// - Reads return the peer's bytes in order, then `Ok(0)` after the peer's FIN.
/// - Writes are queued on the session and batched with other streams' output; they wait while
///   the peer's window is exhausted. `poll_flush` has nothing to do.
/// - `shutdown` sends FIN: the peer reads EOF and may keep writing.
/// - Dropping a stream before `shutdown` resets it (RST). Dropping it after `shutdown` lets it
///   finish quietly: the session keeps discarding what the peer sends (granting window) until the
///   peer's FIN or [`Config::stream_close_timeout`](crate::Config::stream_close_timeout).
///
/// Errors are `io::Error`s wrapping a [`StreamError`](crate::StreamError).
#[derive(Debug)]
pub struct Stream {
    id: u32,
    shared: Arc<Shared>,
}

impl Stream {
    pub(crate) fn new(id: u32, shared: Arc<Shared>) -> Self {
        Self { id, shared }
    }

    /// The yamux stream ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Aborts the stream: sends RST; pending and later reads and writes fail.
    pub fn reset(&mut self) {
        let id = self.id;
        self.shared.with_state(|state, fx| state.reset(id, fx));
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> task::Poll<io::Result<()>> {
        self.read_into(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> task::Poll<io::Result<usize>> {
        self.write_slices(cx, &[buf])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> task::Poll<io::Result<usize>> {
        let mut slices: [&[u8]; 8] = [&[]; 8];
        for (slot, buf) in slices.iter_mut().zip(bufs) {
            *slot = buf;
        }
        self.write_slices(cx, &slices[..bufs.len().min(8)])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> task::Poll<io::Result<()>> {
        task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> task::Poll<io::Result<()>> {
        task::Poll::Ready(self.shut_down())
    }
}

/// Reading and writing through shared references: one task may read a stream while it writes
/// to it (for example to notice a reset while it relays a response). Reads and writes keep
/// separate wakers, so one reader and one writer at a time is what this supports.
impl AsyncRead for &Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> task::Poll<io::Result<()>> {
        self.read_into(cx, buf)
    }
}

impl AsyncWrite for &Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> task::Poll<io::Result<usize>> {
        self.write_slices(cx, &[buf])
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> task::Poll<io::Result<()>> {
        task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> task::Poll<io::Result<()>> {
        task::Poll::Ready(self.shut_down())
    }
}

impl Stream {
    fn read_into(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> task::Poll<io::Result<()>> {
        let id = self.id;
        match self
            .shared
            .with_state(|state, fx| state.poll_read(id, cx.waker(), buf, fx))
        {
            Poll::Ready(result) => task::Poll::Ready(result.map_err(|err| err.to_io())),
            Poll::Pending => task::Poll::Pending,
        }
    }

    fn shut_down(&self) -> io::Result<()> {
        let id = self.id;
        self.shared
            .with_state(|state, fx| state.shutdown(id, fx))
            .map_err(|err| err.to_io())
    }

    fn write_slices(&self, cx: &mut Context<'_>, bufs: &[&[u8]]) -> task::Poll<io::Result<usize>> {
        let id = self.id;
        match self
            .shared
            .with_state(|state, fx| state.poll_write(id, cx.waker(), bufs, fx))
        {
            Poll::Ready(result) => task::Poll::Ready(result.map_err(|err| err.to_io())),
            Poll::Pending => task::Poll::Pending,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let id = self.id;
        let close_timeout = self.shared.config.stream_close_timeout;
        self.shared.with_state(|state: &mut State, fx| {
            state.release(id, Instant::now(), close_timeout, fx)
        });
    }
}
