//! Splicing an upgraded client connection (a WebSocket or other `101`) to the far side of its
//! tunnel: an upstream's stream on this node, or another node that holds the endpoint.

use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::{rt::TokioIo, server::conn::auto::upgrade::downcast as downcast_upgrade};
use piko_http::dialed_upgrade::DialedUpgrade;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{
    client_io::ClientIo, connection_deadlines::WatchedIo, counted_io::CountedReads,
    metrics::Outcome, serve::set_write_stall_limit,
};

/// The far side of a tunnel spliced to a client, and how a failure is passed on to it.
pub(crate) trait TunnelEnd: AsyncRead + AsyncWrite + Unpin {
    /// Ends the tunnel with a reset, after what was written to it has been delivered.
    fn abort(self) -> impl Future<Output = ()>;
}

/// An upstream's stream on this node (dropped unfinished, it is reset), or a connection that could
/// not be taken out of hyper (it can only be closed).
impl TunnelEnd for TokioIo<Upgraded> {
    async fn abort(self) {}
}

/// Another node's connection: reset, so that the far node resets the upstream's stream in turn
/// rather than half-close it.
impl TunnelEnd for DialedUpgrade {
    async fn abort(self) {
        piko_protocol::reset_after_delivery(self.tcp()).await;
    }
}

/// Relays an upgraded client connection and the other side of its tunnel (an upstream's
/// stream, or another node) until both ends are done, counting the bytes each way.
pub(crate) async fn splice<T: TunnelEnd>(
    client: Upgraded,
    other: T,
    (bytes_in, bytes_out): (Counter, Counter),
    write_stall_limit: Option<Duration>,
) -> Outcome {
    let mut other = CountedReads {
        inner: other,
        read: bytes_out,
    };
    match downcast_upgrade::<TokioIo<WatchedIo<ClientIo>>>(client) {
        Ok(parts) => {
            // A tunnel may be quiet for as long as it likes, and its client may pause reading
            // for longer than a response's (Go clears a hijacked connection's deadlines).
            let client = parts.io.into_inner().into_inner();
            set_write_stall_limit(client.tcp(), write_stall_limit);
            bytes_in.inc_by(parts.read_buf.len() as u64);
            if !parts.read_buf.is_empty() && other.write_all(&parts.read_buf).await.is_err() {
                return Outcome::UpstreamError;
            }
            let mut client = CountedReads {
                inner: client,
                read: bytes_in,
            };
            if piko_protocol::relay(&mut client, &mut other).await.is_err() {
                // A reset on either side reaches the other as a reset, after the bytes that
                // came before it.
                tokio::join!(
                    other.inner.abort(),
                    piko_protocol::reset_after_delivery(client.inner.tcp())
                );
            }
        }
        Err(client) => {
            let mut client = CountedReads {
                inner: TokioIo::new(client),
                read: bytes_in,
            };
            if piko_protocol::relay(&mut client, &mut other).await.is_err() {
                other.inner.abort().await;
            }
        }
    }
    Outcome::Success
}
