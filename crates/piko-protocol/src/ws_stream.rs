//! A WebSocket connection as an unframed byte stream, the way Piko's peers use it.
//!
//! - Each write becomes one binary message (our multiplexer writes whole batches of frames, so a
//!   frame header and its payload travel in one message).
//! - Reads concatenate binary messages with no regard to their boundaries: Go's yamux writes a
//!   frame header and its payload as two messages, and gorilla's client fragments messages over
//!   4 KiB.
//! - A text message is an error. A close frame, or the connection ending without one (Go peers
//!   just close the socket), is a normal end of stream. A connection reset is an error for a
//!   reader of bytes (a tunnel's client must see its peer's reset, not a clean end), but only an
//!   end for the multiplexer, whose session is over either way.
//! - Pings are answered by tungstenite on the next read or write.
//! - With half-close (a TCP tunnel whose both ends are ours, negotiated with
//!   [`HALF_CLOSE_HEADER`](crate::wire::HALF_CLOSE_HEADER)), an empty binary message is the end of
//!   one direction: shutting the writer down sends one, and reading one is end of stream while the
//!   other direction goes on. Piko's peers skip empty messages, so they never see the difference.
//!
//! As a [`piko_mux::Transport`] it also avoids two copies: the multiplexer parses each message's
//! payload in place, and its output buffers become messages without being copied into ours.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        error::{Error as WsError, ProtocolError},
        protocol::WebSocketConfig,
    },
};

/// Largest message a write produces. Bounds the peer's per-message memory; the multiplexer's
/// writer simply writes the rest of a large batch as further messages.
pub const MAX_WRITE_MESSAGE: usize = 256 * 1024;

/// Messages that tungstenite buffers before writing them to the socket; a flush writes the rest.
/// Lets a batch's control message and data message leave in one syscall.
const WRITE_BUFFER_SIZE: usize = 64 * 1024;

/// Bytes tungstenite reads from the socket per syscall. It is also what an idle connection keeps
/// allocated for reading, so it trades bulk throughput against the idle-upstream memory budget.
pub const READ_BUFFER_SIZE: usize = 16 * 1024;

/// Length of a yamux frame header; a Go peer may send a whole window of payload in one message,
/// after the header's own message.
const MUX_HEADER_LEN: usize = 12;

/// The tungstenite settings for a byte-stream connection whose multiplexer grants at most
/// `largest_receive_window` bytes per stream.
///
/// Messages up to that window plus a frame header are accepted (a Go peer writes a whole window
/// in one message), and at least [`MAX_WRITE_MESSAGE`] (what our own peers send).
pub fn websocket_config(largest_receive_window: u32) -> WebSocketConfig {
    let max_message = (largest_receive_window as usize + MUX_HEADER_LEN).max(MAX_WRITE_MESSAGE);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A WebSocket connection as `AsyncRead + AsyncWrite`.
#[derive(Debug)]
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    /// Unread remainder of the current message.
    chunk: Bytes,
    eof: bool,
    /// The connection was reset rather than closed (with `eof`).
    reset: bool,
    half_close: bool,
    /// The half-close marker has been sent.
    write_closed: bool,
    /// Reused for outgoing messages: tungstenite copies a message into its own buffer and drops
    /// it, so the allocation comes back to us instead of being freed and faulted in again.
    scratch: BytesMut,
}

impl<S> WsByteStream<S> {
    /// Wraps an established WebSocket connection.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            chunk: Bytes::new(),
            eof: false,
            reset: false,
            half_close: false,
            write_closed: false,
            scratch: BytesMut::new(),
        }
    }

    /// Wraps a connection whose peer signals the end of each direction with an empty message.
    /// Shutting this stream down then sends that message and leaves the connection open for the
    /// other direction.
    pub fn with_half_close(ws: WebSocketStream<S>) -> Self {
        Self {
            half_close: true,
            ..Self::new(ws)
        }
    }

    /// The WebSocket connection.
    pub fn get_ref(&self) -> &WebSocketStream<S> {
        &self.ws
    }
}

/// Whether a read error is just the connection ending, with or without a close handshake.
fn is_end_of_stream(err: &WsError) -> bool {
    match err {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        WsError::Io(err) => matches!(
            err.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// Whether a read error is the peer aborting the connection rather than closing it.
fn is_reset(err: &WsError) -> bool {
    matches!(err, WsError::Io(err) if matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    ))
}

fn to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.remaining());
                buf.put_slice(&self.chunk.split_to(n));
                if self.chunk.is_empty() {
                    // Release our reference to tungstenite's read buffer now, so it can reuse
                    // the allocation for the next message instead of allocating a fresh one.
                    self.chunk = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                if self.reset {
                    return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
                }
                return Poll::Ready(Ok(()));
            }
            ready!(self.as_mut().poll_message(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsByteStream<S> {
    /// Waits for the next binary message (into `chunk`) or the end of the stream (`eof`).
    fn poll_message(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => {
                    if data.is_empty() && self.half_close {
                        self.eof = true;
                    }
                    self.chunk = data;
                    return Poll::Ready(Ok(()));
                }
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary byte stream",
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(err)) if is_end_of_stream(&err) => {
                    self.eof = true;
                    self.reset = is_reset(&err);
                    return Poll::Ready(Ok(()));
                }
                Some(Err(err)) => return Poll::Ready(Err(to_io(err))),
            }
        }
    }

    /// Sends `bufs` (up to [`MAX_WRITE_MESSAGE`] bytes of them) as one binary message.
    fn send(&mut self, cx: &mut Context<'_>, bufs: &[&[u8]]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.scratch.reserve(total.min(MAX_WRITE_MESSAGE));
        for buf in bufs {
            let room = MAX_WRITE_MESSAGE - self.scratch.len();
            self.scratch.extend_from_slice(&buf[..buf.len().min(room)]);
        }
        let message = self.scratch.split().freeze();
        let len = message.len();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(to_io)?;
        if self.scratch.capacity() > MAX_WRITE_MESSAGE {
            // Only reclaimable once tungstenite has dropped the last message.
            self.scratch = BytesMut::new();
        }
        Poll::Ready(Ok(len))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send(cx, &[buf])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut slices: [&[u8]; 4] = [&[]; 4];
        let mut used = 0;
        for buf in bufs.iter().filter(|b| !b.is_empty()).take(slices.len()) {
            slices[used] = buf;
            used += 1;
        }
        if used == 0 {
            return Poll::Ready(Ok(0));
        }
        self.send(cx, &slices[..used])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    /// With half-close, sends the end-of-direction message and flushes; otherwise closes the
    /// WebSocket connection with a close frame.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.half_close {
            if !self.write_closed {
                ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
                Pin::new(&mut self.ws)
                    .start_send(Message::Binary(Bytes::new()))
                    .map_err(to_io)?;
                self.write_closed = true;
            }
            return Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io);
        }
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(err) if is_end_of_stream(&err) => Poll::Ready(Ok(())),
            Err(err) => Poll::Ready(Err(to_io(err))),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> piko_mux::Transport for WsByteStream<S> {
    fn poll_read_with(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        consume: &mut dyn FnMut(&[u8]),
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.chunk.is_empty() {
                let chunk = std::mem::take(&mut self.chunk);
                consume(&chunk);
                return Poll::Ready(Ok(chunk.len()));
            }
            if self.eof {
                return Poll::Ready(Ok(0));
            }
            ready!(self.as_mut().poll_message(cx))?;
        }
    }

    fn poll_write_bufs(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        first: &mut BytesMut,
        second: &mut BytesMut,
    ) -> Poll<io::Result<()>> {
        let mut progressed = false;
        for buf in [first, second] {
            while !buf.is_empty() {
                match Pin::new(&mut self.ws).poll_ready(cx) {
                    Poll::Pending if progressed => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => result.map_err(to_io)?,
                }
                // The caller's bytes become the message: tungstenite copies them into its output
                // buffer and drops the message, so the caller's buffer is unique again at once.
                let message = buf.split_to(buf.len().min(MAX_WRITE_MESSAGE)).freeze();
                Pin::new(&mut self.ws)
                    .start_send(Message::Binary(message))
                    .map_err(to_io)?;
                progressed = true;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(self, cx)
    }

    /// Flushes, but sends no close frame: like Piko's own peers, a session ends by closing the
    /// connection. (A v0.9.0 Go agent treats a close frame as its own shutdown and would not
    /// reconnect.)
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(self, cx)
    }
}
