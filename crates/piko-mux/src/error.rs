//! Why a session ended, why an operation failed, and what a stream reports through `io::Error`.

use std::{io, sync::Arc};

use crate::frame::FrameError;

/// Why a session ended. Every stream and pending operation of the session reports it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SessionEnd {
    /// [`Session::close`](crate::Session::close) was called, or every session handle dropped.
    #[error("session closed locally")]
    LocalClose,
    /// The transport reached end of stream (the peer closed the connection).
    #[error("connection closed by the peer")]
    PeerClosed,
    /// The peer sent a GoAway with a code other than 0 (1: protocol error, 2: internal error).
    #[error("peer ended the session with go away code {0}")]
    GoAway(u32),
    /// No reply to a keep-alive ping within the configured timeout.
    #[error("keep-alive timed out")]
    KeepAliveTimeout,
    /// Output could not be written to the transport within the write timeout.
    #[error("connection write timed out")]
    WriteTimeout,
    /// The peer broke the protocol; this side sent GoAway(protocol error).
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The transport failed.
    #[error("connection error: {0}")]
    Io(Arc<io::Error>),
}

/// A peer's protocol violation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A header could not be decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Data beyond the window this side granted.
    #[error("stream {stream_id} sent {len} bytes with {window} bytes of window left")]
    WindowExceeded {
        /// The stream.
        stream_id: u32,
        /// Payload length of the offending frame.
        len: u32,
        /// Window that remained.
        window: u32,
    },
    /// A SYN for a stream ID that is in use.
    #[error("duplicate stream id {0}")]
    DuplicateStream(u32),
    /// A SYN with an ID of this side's parity (both peers think they are clients, or servers).
    #[error("stream id {0} has the wrong parity for the peer's role")]
    WrongParity(u32),
    /// A Ping or GoAway on a stream, or stream flags on stream 0.
    #[error("session frame on stream {0}")]
    BadStreamId(u32),
}

/// Why opening or accepting a stream failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The session is over.
    #[error("session ended: {0}")]
    SessionEnded(SessionEnd),
    /// The peer sent GoAway(0): it accepts no new streams.
    #[error("the peer is not accepting new streams")]
    RemoteGoAway,
    /// This side sent GoAway(0): it accepts no new streams.
    #[error("this side is not accepting new streams")]
    LocalGoAway,
    /// All 2^31 stream IDs of this side's parity were used.
    #[error("stream ids exhausted")]
    StreamIdsExhausted,
}

/// The cause carried inside the `io::Error`s a [`Stream`](crate::Stream) returns.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer reset the stream (`io::ErrorKind::ConnectionReset`).
    #[error("stream reset by the peer")]
    ResetByPeer,
    /// This side reset the stream (`io::ErrorKind::ConnectionAborted`).
    #[error("stream reset locally")]
    ResetLocally,
    /// The peer never acknowledged the open (`io::ErrorKind::TimedOut`).
    #[error("stream open was not acknowledged in time")]
    OpenTimeout,
    /// Writing after `shutdown` (`io::ErrorKind::BrokenPipe`).
    #[error("stream is closed for writing")]
    WriteAfterShutdown,
    /// The session ended (`io::ErrorKind::ConnectionAborted`).
    #[error("session ended: {0}")]
    SessionEnded(SessionEnd),
}

impl StreamError {
    pub(crate) fn to_io(&self) -> io::Error {
        let kind = match self {
            Self::ResetByPeer => io::ErrorKind::ConnectionReset,
            Self::ResetLocally | Self::SessionEnded(_) => io::ErrorKind::ConnectionAborted,
            Self::OpenTimeout => io::ErrorKind::TimedOut,
            Self::WriteAfterShutdown => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, self.clone())
    }
}
