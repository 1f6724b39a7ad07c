//! A WebSocket connection as an unframed byte stream, the way Piko's peers use it, with our own
//! framing (RFC 6455) once the handshake is done.
//!
//! - Frames are streamed: a frame's payload is handed on as it arrives, so a message of any size
//!   (a Go `Dialer` writes each `Write` as one message, 64 MiB included) takes no more memory
//!   than the read buffer.
//! - Each write becomes one binary message: a server's of at most [`MAX_WRITE_MESSAGE`] bytes, its
//!   header built on the stack and sent with the payload in one vectored write; a client's of at
//!   most 64 KiB, masked in a buffer of its own with a fresh random key per frame.
//! - Reads concatenate binary messages with no regard to their boundaries: Go's yamux writes a
//!   frame header and its payload as two messages, and gorilla's client fragments messages over
//!   4 KiB. Control frames between fragments are handled.
//! - A text message is an error. A close frame, or the connection ending without one (Go peers
//!   just close the socket), is a normal end of stream. A connection reset is an error for a
//!   reader of bytes (a tunnel's client must see its peer's reset, not a clean end), but only an
//!   end for the multiplexer, whose session is over either way.
//! - A frame that breaks RFC 6455 (see [`FrameError`]) is answered with close status 1002, logged,
//!   and is a read error.
//! - Pings are answered with a pong at the next frame boundary. The reader sends it itself only
//!   while the writer is not waiting on the socket, so neither takes the other's wake-up.
//! - With half-close (a TCP tunnel whose both ends are ours, negotiated with
//!   [`HALF_CLOSE_HEADER`](crate::wire::HALF_CLOSE_HEADER)), an empty binary message is the end of
//!   one direction: shutting the writer down sends one, and reading one is end of stream while the
//!   other direction goes on. Piko's peers skip empty messages, so they never see the difference.
//!
//! As a [`piko_mux::Transport`] it also avoids copies: the multiplexer parses payload in place in
//! the read buffer, and a server writes the multiplexer's output buffers as they are.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ws_frame::{
    FrameError, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, Role, apply_mask, opcode, parse_header,
    write_header,
};

/// Largest message a write produces. Bounds a peer that buffers whole messages (tungstenite,
/// gorilla's `ReadMessage`); the multiplexer's writer simply writes the rest of a large batch as
/// further messages.
pub const MAX_WRITE_MESSAGE: usize = 256 * 1024;

/// Largest message a client writes: the masked copy is kept for the connection's life, so it stays
/// small for the many connections of a `piko forward`.
const MAX_MASKED_MESSAGE: usize = 64 * 1024;

/// Smallest read buffer; an idle connection keeps this much.
const MIN_READ: usize = 4 * 1024;
/// Largest read buffer: bulk transfers move this much per syscall.
const MAX_READ: usize = 256 * 1024;

/// Close status of a normal end (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;

/// How reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A close frame, the end-of-direction message, or the connection closing.
    Closed,
    /// The connection was reset.
    Reset,
    /// The peer sent a frame we refuse.
    Failed(FrameError),
}

/// A WebSocket connection as `AsyncRead + AsyncWrite`.
#[derive(Debug)]
pub struct WsByteStream<S> {
    io: S,
    role: Role,
    half_close: bool,
    read: ReadState,
    write: WriteState,
}

#[derive(Debug)]
struct ReadState {
    /// Bytes from the socket; `start..end` not yet consumed. Always initialised to its length, so
    /// reads need no `unsafe`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Unmasked payload at `buf[start..start + ready]`, not yet handed on.
    ready: usize,
    /// Payload of the current data frame not yet taken from the socket into `ready`.
    frame_left: u64,
    mask: Option<[u8; 4]>,
    mask_offset: u64,
    /// A data message has started and its last frame is still to come.
    in_message: bool,
    ended: Option<End>,
}

#[derive(Debug)]
struct WriteState {
    /// Header of the data frame being written; `header_at..header_len` not yet sent.
    header: [u8; MAX_HEADER_LEN],
    header_at: usize,
    header_len: usize,
    /// Payload bytes the data frame being written still needs.
    frame_left: usize,
    /// A client's frames, masked, not yet sent (a client cannot mask the caller's buffer).
    masked: BytesMut,
    /// The latest ping's payload, to answer at the next frame boundary.
    pong: Option<([u8; MAX_CONTROL_PAYLOAD], usize)>,
    /// A close frame to send, with its status.
    close: Option<u16>,
    /// The end-of-direction message is to be sent (half-close).
    end_marker: bool,
    /// Encoded control frames not yet sent.
    control: BytesMut,
    /// The writer's last socket write was refused for now: it is waiting to be woken.
    writer_waiting: bool,
    /// A close frame has been queued: no data may follow it.
    close_queued: bool,
    /// The end-of-direction message has been queued.
    end_queued: bool,
}

impl<S> WsByteStream<S> {
    fn with_role(io: S, role: Role, read_ahead: &[u8], half_close: bool) -> Self {
        let mut buf = read_ahead.to_vec();
        let end = buf.len();
        if buf.len() < MIN_READ {
            buf.resize(MIN_READ, 0);
        }
        Self {
            io,
            role,
            half_close,
            read: ReadState {
                buf,
                start: 0,
                end,
                ready: 0,
                frame_left: 0,
                mask: None,
                mask_offset: 0,
                in_message: false,
                ended: None,
            },
            write: WriteState {
                header: [0; MAX_HEADER_LEN],
                header_at: 0,
                header_len: 0,
                frame_left: 0,
                masked: BytesMut::new(),
                pong: None,
                close: None,
                end_marker: false,
                control: BytesMut::new(),
                writer_waiting: false,
                close_queued: false,
                end_queued: false,
            },
        }
    }

    /// The server side of an established connection (its handshake done), starting with the bytes
    /// read past the handshake.
    pub fn server(io: S, read_ahead: &[u8]) -> Self {
        Self::with_role(io, Role::Server, read_ahead, false)
    }

    /// The client side of an established connection (its handshake done), starting with the bytes
    /// read past the handshake.
    pub fn client(io: S, read_ahead: &[u8]) -> Self {
        Self::with_role(io, Role::Client, read_ahead, false)
    }

    /// With half-close: the peer signals the end of each direction with an empty message, and
    /// shutting this stream down sends one and leaves the connection open for the other
    /// direction.
    #[must_use]
    pub fn half_closing(mut self) -> Self {
        self.half_close = true;
        self
    }

    /// The underlying connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

/// Whether a socket error is just the connection ending.
fn is_end_of_stream(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsByteStream<S> {
    /// Waits until unmasked payload is ready at `read.buf[read.start..][..n]` and returns `n`, or
    /// returns 0 once reading has ended.
    fn poll_payload(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // A pong the socket could not take last time.
        self.try_send_control(cx);
        loop {
            let read = &mut self.read;
            if read.ready > 0 {
                return Poll::Ready(Ok(read.ready));
            }
            if let Some(end) = read.ended {
                // A close frame answering the peer's, or reporting its error.
                self.try_send_control(cx);
                return Poll::Ready(match end {
                    End::Closed => Ok(0),
                    End::Reset => Err(io::ErrorKind::ConnectionReset.into()),
                    End::Failed(err) => Err(io::Error::new(io::ErrorKind::InvalidData, err)),
                });
            }
            let buffered = read.end - read.start;
            if read.frame_left > 0 {
                if buffered == 0 {
                    ready!(self.poll_fill(cx))?;
                    continue;
                }
                let n = buffered.min(usize::try_from(read.frame_left).unwrap_or(usize::MAX));
                if let Some(key) = read.mask {
                    apply_mask(
                        &mut read.buf[read.start..read.start + n],
                        key,
                        read.mask_offset,
                    );
                }
                read.mask_offset += n as u64;
                read.frame_left -= n as u64;
                read.ready = n;
                continue;
            }
            let (header, header_len) =
                match parse_header(&read.buf[read.start..read.end], self.role) {
                    Ok(Some(parsed)) => parsed,
                    Ok(None) => {
                        ready!(self.poll_fill(cx))?;
                        continue;
                    }
                    Err(err) => {
                        self.fail(err);
                        continue;
                    }
                };
            if header.is_control() {
                // At most 139 bytes: the buffer always has room for a whole control frame.
                let total = header_len + header.payload_len as usize;
                if buffered < total {
                    ready!(self.poll_fill(cx))?;
                    continue;
                }
                let mut payload = [0; MAX_CONTROL_PAYLOAD];
                let len = header.payload_len as usize;
                let at = read.start + header_len;
                payload[..len].copy_from_slice(&read.buf[at..at + len]);
                if let Some(key) = header.mask {
                    apply_mask(&mut payload[..len], key, 0);
                }
                read.start += total;
                self.on_control(header.opcode, &payload[..len]);
                self.try_send_control(cx);
                continue;
            }
            match header.opcode {
                opcode::TEXT => {
                    self.fail(FrameError::TextMessage);
                    continue;
                }
                opcode::CONTINUATION if !read.in_message => {
                    self.fail(FrameError::ContinuationWithoutStart);
                    continue;
                }
                opcode::BINARY if read.in_message => {
                    self.fail(FrameError::MessageNotEnded);
                    continue;
                }
                _ => {}
            }
            read.start += header_len;
            let whole_empty_message =
                header.opcode == opcode::BINARY && header.fin && header.payload_len == 0;
            read.in_message = !header.fin;
            read.frame_left = header.payload_len;
            read.mask = header.mask;
            read.mask_offset = 0;
            if whole_empty_message && self.half_close {
                read.ended = Some(End::Closed);
            }
        }
    }

    /// Marks `n` ready payload bytes as handed on.
    fn consume(&mut self, n: usize) {
        let read = &mut self.read;
        read.ready -= n;
        read.start += n;
        if read.start == read.end {
            read.start = 0;
            read.end = 0;
        }
    }

    /// Reads more from the socket into the buffer; the end of the connection ends reading.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let read = &mut self.read;
        if read.start > 0 && (read.end == read.buf.len() || read.start == read.end) {
            read.buf.copy_within(read.start..read.end, 0);
            read.end -= read.start;
            read.start = 0;
        }
        if read.end == read.buf.len() {
            let grown = (read.buf.len() * 2).min(MAX_READ).max(read.end + MIN_READ);
            read.buf.resize(grown, 0);
        }
        let room = read.buf.len() - read.end;
        let mut buf = ReadBuf::new(&mut read.buf[read.end..]);
        match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
            Ok(()) => {
                let n = buf.filled().len();
                read.end += n;
                if n == 0 {
                    read.ended = Some(End::Closed);
                } else if n == room && read.buf.len() < MAX_READ {
                    let grown = (read.buf.len() * 2).min(MAX_READ);
                    read.buf.resize(grown, 0);
                } else if n < room / 4 && read.buf.len() > MIN_READ && read.end <= MIN_READ / 2 {
                    // Reads no longer fill the buffer: give memory back to an idle connection.
                    read.buf.copy_within(read.start..read.end, 0);
                    read.end -= read.start;
                    read.start = 0;
                    read.buf.truncate((read.buf.len() / 2).max(MIN_READ));
                    read.buf.shrink_to_fit();
                }
                Poll::Ready(Ok(()))
            }
            Err(err) if is_end_of_stream(&err) => {
                read.ended = Some(if is_reset(&err) {
                    End::Reset
                } else {
                    End::Closed
                });
                Poll::Ready(Ok(()))
            }
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn on_control(&mut self, code: u8, payload: &[u8]) {
        match code {
            // Nothing may follow our close frame.
            opcode::PING if !self.write.close_queued => {
                let mut copy = [0; MAX_CONTROL_PAYLOAD];
                copy[..payload.len()].copy_from_slice(payload);
                self.write.pong = Some((copy, payload.len()));
            }
            opcode::CLOSE => {
                if payload.len() == 1 {
                    self.fail(FrameError::OneByteClose);
                    return;
                }
                // Echo the peer's status, as RFC 6455 §5.5.1 suggests.
                let status = match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => CLOSE_NORMAL,
                };
                self.queue_close(status);
                self.read.ended = Some(End::Closed);
            }
            _ => {}
        }
    }

    /// Ends reading with an error, answered with the close status it calls for.
    fn fail(&mut self, err: FrameError) {
        let status = err.close_status();
        tracing::warn!(
            subsystem = "websocket",
            close_status = status,
            error = %err,
            "closing a websocket connection"
        );
        self.read.ended = Some(End::Failed(err));
        self.read.ready = 0;
        self.queue_close(status);
    }

    fn queue_close(&mut self, status: u16) {
        if !self.write.close_queued {
            self.write.close_queued = true;
            self.write.close = Some(status);
        }
    }

    /// The reader sends pending control frames itself when the writer is not waiting on the
    /// socket (its wake-up would be taken) and no data frame is half sent; otherwise the writer
    /// sends them at its next frame boundary.
    fn try_send_control(&mut self, cx: &mut Context<'_>) {
        if !self.write.writer_waiting && self.at_frame_boundary() && self.has_control() {
            // Errors and a full socket are the writer's to meet; what is left stays queued.
            let _ = self.poll_send_control(cx);
            // Only the writer's own writes say whether it waits.
            self.write.writer_waiting = false;
        }
    }

    fn at_frame_boundary(&self) -> bool {
        self.write.frame_left == 0
            && self.write.header_at == self.write.header_len
            && self.write.masked.is_empty()
    }

    fn has_control(&self) -> bool {
        let w = &self.write;
        !w.control.is_empty() || w.pong.is_some() || w.close.is_some() || w.end_marker
    }

    /// A fresh masking key for a client's frame; `None` for a server.
    fn mask_key(&self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(rand::random)
    }

    /// Sends the queued control frames (at a frame boundary only).
    fn poll_send_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.write.control.is_empty() && !self.encode_next_control() {
                return Poll::Ready(Ok(()));
            }
            let control = std::mem::take(&mut self.write.control);
            let result = self.poll_io_write(cx, &[&control]);
            self.write.control = control;
            let n = ready!(result)?;
            self.write.control.advance(n);
        }
    }

    /// Encodes the next queued control frame, if any.
    fn encode_next_control(&mut self) -> bool {
        if let Some((payload, len)) = self.write.pong.take() {
            self.encode_control(opcode::PONG, &payload[..len]);
        } else if let Some(status) = self.write.close.take() {
            self.encode_control(opcode::CLOSE, &status.to_be_bytes());
        } else if std::mem::take(&mut self.write.end_marker) {
            self.encode_control(opcode::BINARY, &[]);
        } else {
            return false;
        }
        true
    }

    fn encode_control(&mut self, code: u8, payload: &[u8]) {
        let mask = self.mask_key();
        let mut header = [0; MAX_HEADER_LEN];
        let len = write_header(&mut header, true, code, payload.len() as u64, mask);
        let control = &mut self.write.control;
        control.extend_from_slice(&header[..len]);
        let at = control.len();
        control.extend_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut control[at..], key, 0);
        }
    }

    /// One vectored write to the socket, noting whether the writer now waits on it.
    fn poll_io_write(&mut self, cx: &mut Context<'_>, bufs: &[&[u8]]) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); 4];
        let mut used = 0;
        for buf in bufs.iter().filter(|b| !b.is_empty()).take(slices.len()) {
            slices[used] = IoSlice::new(buf);
            used += 1;
        }
        match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..used]) {
            Poll::Pending => {
                self.write.writer_waiting = true;
                Poll::Pending
            }
            Poll::Ready(Ok(0)) if used > 0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(result) => {
                self.write.writer_waiting = false;
                Poll::Ready(result)
            }
        }
    }

    /// Sends the client's masked frames still buffered.
    fn poll_send_masked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write.masked.is_empty() {
            let masked = std::mem::take(&mut self.write.masked);
            let result = self.poll_io_write(cx, &[&masked]);
            self.write.masked = masked;
            let n = ready!(result)?;
            self.write.masked.advance(n);
        }
        Ok(()).into()
    }

    /// Writes up to [`MAX_WRITE_MESSAGE`] bytes of `bufs` as (the rest of) one binary message;
    /// returns how many of them were taken.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[&[u8]]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.write.close_queued || self.write.end_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if self.role == Role::Client {
            ready!(self.poll_send_masked(cx))?;
        }
        if self.at_frame_boundary() && self.has_control() {
            ready!(self.poll_send_control(cx))?;
        }
        match self.role {
            Role::Server => self.poll_send_unmasked(cx, bufs, total),
            Role::Client => {
                let len = total.min(MAX_MASKED_MESSAGE);
                let key = self.mask_key();
                let mut header = [0; MAX_HEADER_LEN];
                let header_len = write_header(&mut header, true, opcode::BINARY, len as u64, key);
                let masked = &mut self.write.masked;
                masked.reserve(header_len + len);
                masked.extend_from_slice(&header[..header_len]);
                let mut left = len;
                for buf in bufs {
                    let take = buf.len().min(left);
                    masked.extend_from_slice(&buf[..take]);
                    left -= take;
                }
                if let Some(key) = key {
                    apply_mask(&mut masked[header_len..], key, 0);
                }
                // Taken: the bytes are ours now. Start sending them; a flush finishes.
                let _ = self.poll_send_masked(cx);
                Poll::Ready(Ok(len))
            }
        }
    }

    /// A server's write: the header from the stack and the caller's bytes in one vectored write.
    fn poll_send_unmasked(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[&[u8]],
        total: usize,
    ) -> Poll<io::Result<usize>> {
        if self.write.frame_left == 0 {
            let len = total.min(MAX_WRITE_MESSAGE);
            let w = &mut self.write;
            w.header_len = write_header(&mut w.header, true, opcode::BINARY, len as u64, None);
            w.header_at = 0;
            w.frame_left = len;
        }
        loop {
            let header = self.write.header;
            let header_rest = &header[self.write.header_at..self.write.header_len];
            let mut slices: [&[u8]; 4] = [header_rest, &[], &[], &[]];
            let mut left = self.write.frame_left;
            for (slot, buf) in slices[1..].iter_mut().zip(bufs) {
                let take = buf.len().min(left);
                *slot = &buf[..take];
                left -= take;
            }
            let n = ready!(self.poll_io_write(cx, &slices))?;
            let from_header = n.min(header_rest.len());
            self.write.header_at += from_header;
            let payload = n - from_header;
            if payload > 0 {
                self.write.frame_left -= payload;
                return Poll::Ready(Ok(payload));
            }
        }
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_masked(cx))?;
        if self.at_frame_boundary() && self.has_control() {
            ready!(self.poll_send_control(cx))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let ready = ready!(this.poll_payload(cx))?;
        let n = ready.min(buf.remaining());
        let start = this.read.start;
        buf.put_slice(&this.read.buf[start..start + n]);
        this.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, &[buf])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut slices: [&[u8]; 3] = [&[]; 3];
        for (slot, buf) in slices.iter_mut().zip(bufs.iter().filter(|b| !b.is_empty())) {
            *slot = buf;
        }
        self.poll_send(cx, &slices)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_all(cx)
    }

    /// With half-close, sends the end-of-direction message and flushes; otherwise sends a close
    /// frame and flushes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.half_close {
            if !this.write.end_queued && !this.write.close_queued {
                this.write.end_queued = true;
                this.write.end_marker = true;
            }
        } else {
            this.queue_close(CLOSE_NORMAL);
        }
        match ready!(this.poll_flush_all(cx)) {
            Err(err) if is_end_of_stream(&err) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> piko_mux::Transport for WsByteStream<S> {
    fn poll_read_with(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        consume: &mut dyn FnMut(&[u8]),
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let ready = match ready!(this.poll_payload(cx)) {
            Ok(n) => n,
            // The session is over either way.
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(err) => return Poll::Ready(Err(err)),
        };
        let start = this.read.start;
        consume(&this.read.buf[start..start + ready]);
        this.consume(ready);
        Poll::Ready(Ok(ready))
    }

    fn poll_write_bufs(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        first: &mut BytesMut,
        second: &mut BytesMut,
    ) -> Poll<io::Result<()>> {
        let mut n = ready!(self.poll_send(cx, &[&first[..], &second[..]]))?;
        let from_first = n.min(first.len());
        first.advance(from_first);
        n -= from_first;
        second.advance(n);
        Poll::Ready(Ok(()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_all(cx)
    }

    /// Flushes, but sends no close frame: like Piko's own peers, a session ends by closing the
    /// connection. (A v0.9.0 Go agent treats a close frame as its own shutdown and would not
    /// reconnect.)
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_all(cx)
    }
}
