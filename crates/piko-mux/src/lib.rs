//! A yamux (protocol version 0) stream multiplexer on tokio, wire-compatible with
//! `hashicorp/yamux` and Piko's fork of it.
//!
//! Piko carries every proxied request and TCP connection as one stream of a session that runs
//! over an upstream's WebSocket connection. This crate is that session layer: it knows nothing of
//! WebSockets or HTTP and runs over any `AsyncRead + AsyncWrite`.
//!
//! ```no_run
//! # async fn example(tcp: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! use piko_mux::{Config, Session};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let session = Session::server(tcp, Config::default());
//! let mut stream = session.open().await?;
//! stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
//! stream.shutdown().await?; // FIN: the peer reads EOF, and can still answer
//! let mut reply = Vec::new();
//! stream.read_to_end(&mut reply).await?;
//! # Ok(()) }
//! ```
//!
//! # Design
//! - One mutex-protected state per session holds the stream table and two output
//!   queues. Stream writes copy their bytes straight into the session's output queue; a single
//!   writer task swaps the queue out and writes it with one vectored write, so the frames of many
//!   streams share a syscall and the writer flushes only when it runs out of output.
//! - A single reader task reads large chunks into one reused buffer and applies everything in the
//!   chunk under one lock acquisition; payload pieces are copied straight into their stream's ring
//!   buffer, so memory per stream is its unread data and the ring it grew to (released once the
//!   session has been idle for a second).
//! - Ping replies and window updates go on a priority queue that is written before stream data.
//! - A timer task sends keep-alive pings and expires open and close deadlines; it sleeps until
//!   the next deadline rather than ticking, so idle sessions cost no wake-ups.
//!
//! # Layout
//! - [`frame`]: the 12-byte header and the incremental decoder, which yields payloads in pieces.
//! - [`Config`]: settings, with Piko's defaults.
//! - [`Session`]: open, accept, GoAway, close, and why the session ended.
//! - [`Stream`]: a stream as `AsyncRead + AsyncWrite`.
//! - [`Transport`]: what a session runs over; [`Io`] adapts any `AsyncRead + AsyncWrite`.
//! - `state`: the protocol state machine, free of I/O.
//! - [`Error`], [`SessionEnd`], [`StreamError`]: what can go wrong.

mod config;
mod error;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod id_hash;
mod session;
mod state;
mod stream;
mod transport;

pub use config::{Config, INITIAL_STREAM_WINDOW};
pub use error::{Error, ProtocolError, SessionEnd, StreamError};
pub use session::Session;
pub use stream::Stream;
pub use transport::{Io, Transport};
