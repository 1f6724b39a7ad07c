//! The upstream port: agents and SDK listeners connect here with a WebSocket upgrade on
//! `GET /piko/v1/upstream/{endpoint}`, and each connection becomes one multiplexer session
//! registered as an upstream of that endpoint.
//!
//! The upgrade is checked the way gorilla/websocket's `Upgrader` does it (spec §5.2.3), so Go
//! clients see the same statuses. An upstream is unregistered the moment it sends GoAway (it
//! accepts no new streams) or its session ends, exactly once.

use std::{net::SocketAddr, sync::Arc};

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, server::conn::auto::upgrade::downcast as downcast_upgrade};
use piko_mux::Session;
use piko_protocol::{
    WsByteStream, websocket_config,
    wire::{MAX_ENDPOINT_ID_LEN, TENANT_HEADER, UPSTREAM_PATH},
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    connection_deadlines::WatchedIo,
    json_error::{full, gin_error, not_found},
    serve::{Body, set_write_stall_limit},
    upstreams::Upstreams,
};

/// Settings of the upstream port.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Multiplexer settings for every upstream session.
    pub mux: piko_mux::Config,
}

/// What the upstream port's handler needs.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) config: Config,
    pub(crate) upstreams: Arc<Upstreams>,
    /// Sessions outlive their HTTP connection (hyper lets go of an upgraded connection): they
    /// are tracked here so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    /// Cancelled when the node shuts down: every session is drained.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once the proxy has drained: every session gets GoAway and is closed when its
    /// streams are done. (Until then sessions stay routable, so requests already accepted by the
    /// proxy port still find their upstream.)
    pub(crate) drain: CancellationToken,
    /// Cancelled when the grace period is over: sessions still draining are closed.
    pub(crate) hard_stop: CancellationToken,
}

impl Handler {
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let Some(endpoint) = endpoint_from_path(request.uri().path()) else {
            return not_found();
        };
        if request.method() != Method::GET {
            return not_found();
        }
        if endpoint.len() > MAX_ENDPOINT_ID_LEN {
            return gin_error(StatusCode::BAD_REQUEST, "endpoint id too long");
        }
        if self.shutdown.is_cancelled() {
            // Retryable for Go clients: they reconnect, through the balancer, to another node.
            return gin_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        }
        let accept_key = match check_upgrade(request.headers()) {
            Ok(key) => key,
            Err(status) => return upgrade_error(status),
        };
        let tenant = request
            .headers()
            .get(TENANT_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let client_ip = client_ip(request.headers(), peer);
        let upgrade = hyper::upgrade::on(request);
        let handler = self.clone();
        self.sessions.spawn(async move {
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, endpoint_id = %endpoint, "upstream upgrade failed");
                    return;
                }
            };
            let ws_config = websocket_config(handler.config.mux.receive_window);
            // Closes of an upstream connection are abortive (zero linger, no close frame): a
            // v0.9.0 Go agent treats a clean close as its own shutdown and exits, but reconnects
            // after a reset (spec §5.7.2).
            match downcast_upgrade::<TokioIo<WatchedIo<TcpStream>>>(upgraded) {
                Ok(parts) => {
                    let tcp = parts.io.into_inner().into_inner();
                    let _ = tcp.set_zero_linger();
                    // The session's keep-alive pings judge its health from here on.
                    set_write_stall_limit(&tcp, None);
                    let ws = WebSocketStream::from_partially_read(
                        tcp,
                        parts.read_buf.to_vec(),
                        Role::Server,
                        Some(ws_config),
                    )
                    .await;
                    handler.start(ws, &endpoint, &client_ip, &tenant).await;
                }
                Err(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(ws_config),
                    )
                    .await;
                    handler.start(ws, &endpoint, &client_ip, &tenant).await;
                }
            }
        });

        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept_key).expect("base64 is a valid header value"),
        );
        response
    }

    async fn start<S>(&self, ws: WebSocketStream<S>, endpoint: &str, client_ip: &str, tenant: &str)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let session = Session::server_transport(WsByteStream::new(ws), self.config.mux.clone());
        self.run_upstream(session, endpoint, client_ip, tenant)
            .await;
    }

    /// Serves one upstream until it goes away.
    async fn run_upstream(&self, session: Session, endpoint: &str, client_ip: &str, tenant: &str) {
        let id = self.upstreams.add(endpoint, session.clone());
        tracing::info!(
            subsystem = "upstream",
            endpoint_id = endpoint,
            client_ip,
            tenant_id = tenant,
            "upstream connected"
        );
        // Agents never open streams in Piko; reset any that one does rather than leak it.
        let refuse_streams = async {
            while let Ok(mut stream) = session.accept().await {
                stream.reset();
            }
        };
        tokio::select! {
            _ = session.remote_go_away() => {
                // The agent is draining: route nothing new to it, let its streams finish.
                self.upstreams.remove(endpoint, id);
                tokio::select! {
                    _ = session.closed() => {}
                    _ = self.drain.cancelled() => {}
                }
            }
            _ = session.closed() => {}
            _ = refuse_streams => {}
            _ = self.drain.cancelled() => {}
        }
        self.upstreams.remove(endpoint, id);
        if self.drain.is_cancelled() {
            tokio::select! {
                () = drain(&session) => {}
                () = self.hard_stop.cancelled() => {}
            }
        }
        session.close();
        let reason = session.closed().await;
        tracing::info!(
            subsystem = "upstream",
            endpoint_id = endpoint,
            client_ip,
            tenant_id = tenant,
            reason = %reason,
            "upstream disconnected"
        );
    }
}

/// Node shutdown: tell the agent to reconnect elsewhere (GoAway) and let the streams in flight
/// finish; the caller bounds this by the grace period.
async fn drain(session: &Session) {
    session.go_away();
    session.streams_closed().await;
}

/// The endpoint ID of an upstream path: exactly one non-empty, percent-decoded segment.
fn endpoint_from_path(path: &str) -> Option<String> {
    let segment = path.strip_prefix(UPSTREAM_PATH)?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    Some(decoded.into_owned())
}

/// Whether a comma-separated header contains `token`, case-insensitively (RFC 7230 token lists).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|value| {
            value
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
}

/// gorilla/websocket's upgrade checks, in its order; the `Sec-WebSocket-Accept` value on success.
fn check_upgrade(headers: &HeaderMap) -> Result<String, StatusCode> {
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if !has_token(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<http::Uri>().ok())
            .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()));
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        match (origin_host, host) {
            (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host) => {}
            _ => return Err(StatusCode::FORBIDDEN),
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(StatusCode::BAD_REQUEST)?;
    match base64::engine::general_purpose::STANDARD.decode(key.as_bytes()) {
        Ok(decoded) if decoded.len() == 16 => Ok(derive_accept_key(key.as_bytes())),
        _ => Err(StatusCode::BAD_REQUEST),
    }
}

/// gorilla's rejection: the status text as a plain-text body, and the version it speaks.
fn upgrade_error(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(status.canonical_reason().unwrap_or_default()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    response
}

/// The client IP Piko logs: `X-Forwarded-For`'s first entry, else `X-Real-IP`, else the peer.
fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> String {
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let real = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    forwarded
        .or(real)
        .map_or_else(|| peer.ip().to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        ("host", "piko:8001"),
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        GOOD.iter().copied().filter(|(n, _)| *n != name).collect()
    }

    #[test]
    fn accepts_a_valid_upgrade() {
        // RFC 6455's example key and accept value.
        assert_eq!(
            check_upgrade(&headers(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rejects_as_gorilla_does() {
        assert_eq!(
            check_upgrade(&headers(&without("connection"))),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check_upgrade(&headers(&without("upgrade"))),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check_upgrade(&headers(&without("sec-websocket-version"))),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check_upgrade(&headers(&without("sec-websocket-key"))),
            Err(StatusCode::BAD_REQUEST)
        );
        let mut short_key = without("sec-websocket-key");
        short_key.push(("sec-websocket-key", "c2hvcnQ="));
        assert_eq!(
            check_upgrade(&headers(&short_key)),
            Err(StatusCode::BAD_REQUEST)
        );
        let mut foreign = GOOD.to_vec();
        foreign.push(("origin", "https://evil.example.com"));
        assert_eq!(
            check_upgrade(&headers(&foreign)),
            Err(StatusCode::FORBIDDEN)
        );
        let mut same = GOOD.to_vec();
        same.push(("origin", "http://PIKO:8001"));
        assert!(check_upgrade(&headers(&same)).is_ok());
    }

    #[test]
    fn endpoint_is_one_decoded_segment() {
        assert_eq!(
            endpoint_from_path("/piko/v1/upstream/my-endpoint").as_deref(),
            Some("my-endpoint")
        );
        assert_eq!(
            endpoint_from_path("/piko/v1/upstream/a%20b").as_deref(),
            Some("a b")
        );
        assert_eq!(endpoint_from_path("/piko/v1/upstream/"), None);
        assert_eq!(endpoint_from_path("/piko/v1/upstream/a/b"), None);
        assert_eq!(endpoint_from_path("/other"), None);
    }

    #[test]
    fn client_ip_prefers_forwarding_headers() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        assert_eq!(client_ip(&headers(&[]), peer), "10.1.2.3");
        assert_eq!(
            client_ip(&headers(&[("x-real-ip", "1.1.1.1")]), peer),
            "1.1.1.1"
        );
        let both = headers(&[
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-real-ip", "1.1.1.1"),
        ]);
        assert_eq!(client_ip(&both, peer), "2.2.2.2");
    }
}
