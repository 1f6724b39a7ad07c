//! Relaying bytes between two connections, each direction ending on its own (a FIN one way is
//! passed on as a FIN, and the other way goes on).

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes read per call in each direction. tokio's default (8 KiB) turns a bulk transfer into many
/// small reads, writes and WebSocket messages; Go's `io.Copy`, which Piko relays with, uses 32 KiB.
pub const RELAY_BUFFER: usize = 32 * 1024;

/// Copies both ways until both directions have ended; returns the bytes copied `a` to `b` and
/// `b` to `a`.
///
/// # Errors
/// Either side failed (the other is left to its owner to close).
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await
}
