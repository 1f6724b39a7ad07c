//! The accept loop shared by the three HTTP ports: one task per connection, graceful shutdown of
//! every connection when the port stops.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    client_io::ClientIo,
    connection_deadlines::{Activity, Deadlines, Expired, TrackedBody, WatchedIo, watch},
    tls::ServerTls,
};

pub(crate) use piko_http::body::{Body, BoxError};

/// How long a TLS handshake may take when the port has no header read limit.
const DEFAULT_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// At most one warning per interval while connections are refused.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Interval of HTTP/2 keep-alive pings, and how long a reply may take.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How long an idle connection's graceful close may take.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Bounds on what a client may do.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Header read, idle and write-stall limits of each connection.
    pub(crate) deadlines: Deadlines,
    /// Largest request head, in bytes (hyper's floor is 8 KiB).
    pub(crate) max_header_bytes: usize,
    /// Most connections open at once (upgraded ones included); more are closed as soon as
    /// accepted. `None`: no limit.
    pub(crate) max_connections: Option<usize>,
}

impl Default for Limits {
    /// The upstream and admin ports: Go's `http.Server` as Piko runs them has no limits there;
    /// ours keep a dead or slow client from holding a connection forever.
    fn default() -> Self {
        Self {
            deadlines: Deadlines {
                header_read: Some(Duration::from_secs(10)),
                idle: Some(Duration::from_secs(300)),
                write_stall: Some(Duration::from_secs(10)),
            },
            max_header_bytes: 1 << 20,
            max_connections: None,
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
/// tunnels) leave hyper's control: their owners track them. With `tls`, every connection must
/// complete a TLS handshake first (within the header read limit).
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    protocols: Protocols,
    limits: Limits,
    handler: F,
    stop: CancellationToken,
    tracker: TaskTracker,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = limits
        .max_connections
        .map(|max| Arc::new(tokio::sync::Semaphore::new(max)));
    let mut last_refusal_logged: Option<tokio::time::Instant> = None;
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
        let slot = match &slots {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    // Closed at once: the client learns now (a balancer tries another node)
                    // rather than waiting in the backlog, and the node keeps its memory and
                    // descriptors for the connections it serves.
                    drop(tcp);
                    let now = tokio::time::Instant::now();
                    if last_refusal_logged.is_none_or(|at| now - at >= REFUSAL_LOG_INTERVAL) {
                        last_refusal_logged = Some(now);
                        tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; refusing connections");
                    }
                    continue;
                }
            },
            None => None,
        };
        let _ = tcp.set_nodelay(true);
        piko_protocol::enable_keepalive(&tcp);
        if let Some(limit) = limits.deadlines.write_stall {
            set_write_stall_limit(&tcp, Some(limit));
        }
        let handler = handler.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let io = match tls {
                None => ClientIo::plain(tcp, slot),
                Some(tls) => {
                    let limit = limits.deadlines.header_read.unwrap_or(DEFAULT_HANDSHAKE_LIMIT);
                    let handshake = tokio::select! {
                        handshake = tls.accept(tcp, limit) => handshake,
                        () = stop.cancelled() => return,
                    };
                    match handshake {
                        Some(stream) => ClientIo::tls(stream, slot),
                        None => return,
                    }
                }
            };
            let activity = Activity::new();
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |request: Request<Incoming>| {
                    let in_flight = activity.request_started(request.version() == Version::HTTP_2);
                    let response = handler(request, peer);
                    async move {
                        let response = response.await;
                        Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
                    }
                })
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                // Ours, in `connection_deadlines`: hyper's would also time idle keep-alive
                // connections with the header limit.
                .header_read_timeout(None)
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
            let io = TokioIo::new(WatchedIo::new(io, activity.clone()));
            let connection = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    watched = watch(connection.as_mut(), &activity, &limits.deadlines) => {
                        match watched {
                            Ok(Ok(())) => {}
                            Ok(Err(err)) => {
                                tracing::debug!(error = %err, %peer, "connection ended with an error");
                            }
                            Err(Expired::Idle) => {
                                // Closes an HTTP/1.1 connection at once; an HTTP/2 client gets
                                // GOAWAY first.
                                connection.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, connection.as_mut()).await;
                            }
                            Err(expired) => {
                                tracing::debug!(?expired, %peer, "connection cut");
                            }
                        }
                        return;
                    }
                    () = stop.cancelled(), if !stopping => {
                        // In-flight requests finish, still under the deadlines.
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}

/// Bounds how long bytes sent on `tcp` may stay unacknowledged (or unsent for a zero window)
/// before the kernel resets the connection; `None` lifts the bound.
pub(crate) fn set_write_stall_limit(tcp: &tokio::net::TcpStream, limit: Option<Duration>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket2::SockRef::from(tcp).set_tcp_user_timeout(limit) {
        tracing::debug!(error = %err, "TCP_USER_TIMEOUT not set");
    }
    // Elsewhere the kernel's own retransmission limits apply.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, limit);
}
