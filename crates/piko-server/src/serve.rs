//! The accept loop shared by the three HTTP ports: one task per connection, graceful shutdown of
//! every connection when the port stops.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub(crate) use piko_http::body::{Body, BoxError};

/// Interval of HTTP/2 keep-alive pings, and how long a reply may take.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Bounds on what a client may do before its request is read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// How long a client may take to send request headers (a slow-loris bound); `None` waits.
    pub(crate) header_read_timeout: Option<Duration>,
    /// Largest request head, in bytes (hyper's floor is 8 KiB).
    pub(crate) max_header_bytes: usize,
}

impl Default for Limits {
    /// Go's `http.Server` defaults as Piko's upstream and admin ports run them, plus a header
    /// timeout Go lacks there.
    fn default() -> Self {
        Self {
            header_read_timeout: Some(Duration::from_secs(10)),
            max_header_bytes: 1 << 20,
        }
    }
}

/// Which HTTP versions a port speaks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Protocols {
    /// HTTP/1.1 only (the upstream and admin ports).
    Http1,
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c), detected per connection (the proxy port).
    Http1And2,
}

/// Serves `listener` until `stop` is cancelled, then asks every connection to finish its
/// in-flight requests; `tracker` lets the caller wait for them. Upgraded connections (WebSockets,
/// tunnels) leave hyper's control: their owners track them.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    protocols: Protocols,
    limits: Limits,
    handler: F,
    stop: CancellationToken,
    tracker: TaskTracker,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            // A client must start its request within the header timeout. (hyper's own header
            // timer only starts once it has detected the protocol, so a connection that never
            // sends a byte would otherwise be held forever.)
            if let Some(limit) = limits.header_read_timeout {
                let mut first = [0u8; 1];
                tokio::select! {
                    peeked = tokio::time::timeout(limit, tcp.peek(&mut first)) => {
                        if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                            return;
                        }
                    }
                    () = stop.cancelled() => return,
                }
            }
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request, peer).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
            // HTTP/2 clients are pinged, so a dead one does not hold its connection forever.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(HTTP2_KEEP_ALIVE))
                .keep_alive_timeout(HTTP2_KEEP_ALIVE);
            if matches!(protocols, Protocols::Http1) {
                builder = builder.http1_only();
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, %peer, "connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
