//! The upstream port: agents and SDK listeners connect here with a WebSocket upgrade on
//! `GET /piko/v1/upstream/{endpoint}`, and each connection becomes one multiplexer session
//! registered as an upstream of that endpoint.
//!
//! The upgrade is checked the way gorilla/websocket's `Upgrader` does it (spec §5.2.3), so Go
//! clients see the same statuses. An upstream is unregistered the moment it sends GoAway (it
//! accepts no new streams) or its session ends, exactly once.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_mux::{Session, SessionEnd};
use piko_protocol::{
    WsByteStream,
    wire::{MAX_ENDPOINT_ID_LEN, TENANT_HEADER, UPSTREAM_PATH},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::{self, Grant, Refusal, TENANT_SEPARATOR, Tenants, Verifier},
    cluster::{self, RebalanceConfig, RemoteEndpoints},
    endpoint_load::{EndpointLoad, Slot},
    json_error::{gin_error, not_found},
    metrics::Metrics,
    serve::Body,
    upstreams::Upstreams,
    warn_limit::warn_limited,
    websocket_upgrade,
};

/// Settings of the upstream port.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Multiplexer settings for every upstream session.
    pub mux: piko_mux::Config,
    /// Moving connections from a node with too many to the others.
    pub rebalance: RebalanceConfig,
    /// Token verification (`upstream.auth`); with no tenants either, every agent gets in.
    pub auth: Option<Arc<Verifier>>,
    /// Tenants, each with its keys and its endpoint names (`upstream.tenants`).
    pub tenants: Arc<Tenants>,
    /// Most connections open at once on the port, upstream sessions included (more are closed
    /// when accepted); `None`: no limit.
    pub max_connections: Option<usize>,
    /// Most upstreams one endpoint may have on this node (more get a retryable 429); `None`: no
    /// limit.
    pub max_upstreams_per_endpoint: Option<usize>,
}

/// How long the requests of a session whose token expired may take to finish before it is
/// closed.
const EXPIRED_DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// How long a connection asked to move (rebalancing) stays routable waiting for its agent to
/// reconnect; an agent that ignores GoAway (Piko v0.9.0's) is then cut, and reconnects.
const MOVE_LIMIT: Duration = Duration::from_secs(10);

/// What the upstream port's handler needs.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) config: Config,
    pub(crate) upstreams: Arc<Upstreams>,
    /// Other nodes' upstreams: a connection asked to move waits until it shows up again.
    pub(crate) remotes: Arc<RemoteEndpoints>,
    pub(crate) metrics: Arc<Metrics>,
    /// Sessions outlive their HTTP connection (hyper lets go of an upgraded connection): they
    /// are tracked here so shutdown can wait for them.
    pub(crate) sessions: TaskTracker,
    /// Cancelled when the node starts shutting down: new upstreams are refused and every
    /// session gets GoAway (its agent connects again, through the balancer, to another node)
    /// but stays routable.
    pub(crate) leaving: CancellationToken,
    /// Cancelled once the proxy has drained: every session is unregistered and closed when its
    /// streams are done. (Until then sessions stay routable, so requests already accepted by the
    /// proxy port still find their upstream.)
    pub(crate) drain: CancellationToken,
    /// Cancelled when the grace period is over: sessions still draining are closed.
    pub(crate) hard_stop: CancellationToken,
    /// `max_upstreams_per_endpoint`, when set: a connection takes its slot before its upgrade
    /// is answered and keeps it until its session ends, so concurrent registrations cannot
    /// overshoot the limit.
    pub(crate) registrations: Option<Arc<EndpointLoad>>,
}

impl Handler {
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        // Every request on the port, as Piko checks them, before anything else.
        let tenants = &self.config.tenants;
        let mut tenant_verifier = None;
        let grant = if self.config.auth.is_some() || !tenants.is_empty() {
            let default = self.config.auth.as_deref();
            match auth::authenticate_upstream(default, tenants, request.headers()).await {
                Ok((grant, tenant)) => {
                    tenant_verifier = tenant.and_then(|tenant| tenants.verifier(tenant));
                    Some((grant, tenant.map(str::to_owned)))
                }
                Err(refusal) => {
                    warn_limited!(subsystem = "upstream", reason = ?refusal, "upstream refused");
                    return refusal.response();
                }
            }
        } else {
            None
        };
        let Some(endpoint) = endpoint_from_path(request.uri().path(), UPSTREAM_PATH) else {
            return not_found();
        };
        if request.method() != Method::GET {
            return not_found();
        }
        if endpoint.len() > MAX_ENDPOINT_ID_LEN {
            return gin_error(StatusCode::BAD_REQUEST, "endpoint id too long");
        }
        if !tenants.is_empty() && endpoint.contains(TENANT_SEPARATOR) {
            // It could pass for another tenant's endpoint.
            return gin_error(StatusCode::BAD_REQUEST, "invalid endpoint id");
        }
        if let Some((grant, _)) = &grant
            && !grant.permits(&endpoint)
        {
            warn_limited!(subsystem = "upstream", endpoint_id = %endpoint, token_endpoints = ?grant.endpoints, "endpoint not permitted");
            return Refusal::EndpointNotPermitted.response();
        }
        // The session ends when its token does (unless its keys say otherwise).
        let verifier = tenant_verifier.or(self.config.auth.as_ref());
        let expires = grant
            .as_ref()
            .and_then(|(grant, _): &(Grant, _)| grant.expires)
            .filter(|_| verifier.is_some_and(|verifier| verifier.disconnects_on_expiry()));
        // A tenant's endpoints are its own.
        let tenant_id = grant.as_ref().and_then(|(_, tenant)| tenant.as_deref());
        let endpoint = auth::routed_name(tenant_id, &endpoint);
        if self.leaving.is_cancelled() {
            // Retryable for Go clients: they reconnect, through the balancer, to another node.
            return gin_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        }
        let accept_key = match websocket_upgrade::check(request.headers()) {
            Ok(key) => key,
            Err(status) => return websocket_upgrade::rejection(status),
        };
        let slot = match &self.registrations {
            Some(registrations) => match registrations.try_acquire(&endpoint) {
                Some(slot) => Some(slot),
                None => {
                    // Retryable: the agent backs off, or its balancer finds a node with room.
                    warn_limited!(subsystem = "upstream", endpoint_id = %endpoint, limit = self.config.max_upstreams_per_endpoint, "upstream refused: endpoint has its most upstreams");
                    return gin_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many upstreams for endpoint",
                    );
                }
            },
            None => None,
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
            // Closes of an upstream connection are abortive (zero linger, no close frame): a
            // v0.9.0 Go agent treats a clean close as its own shutdown and exits, but reconnects
            // after a reset (spec §5.7.2).
            match websocket_upgrade::into_client_io(upgraded, None) {
                Ok((tcp, read_buf)) => {
                    let _ = tcp.tcp().set_zero_linger();
                    let ws = WsByteStream::server(tcp, &read_buf);
                    handler
                        .start(ws, &endpoint, &client_ip, &tenant, expires, slot)
                        .await;
                }
                Err(upgraded) => {
                    let ws = WsByteStream::server(TokioIo::new(upgraded), &[]);
                    handler
                        .start(ws, &endpoint, &client_ip, &tenant, expires, slot)
                        .await;
                }
            }
        });

        websocket_upgrade::switching_protocols(&accept_key)
    }

    async fn start<S>(
        &self,
        ws: WsByteStream<S>,
        endpoint: &str,
        client_ip: &str,
        tenant: &str,
        expires: Option<SystemTime>,
        slot: Option<Slot>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let session = Session::server_transport(ws, self.config.mux.clone());
        self.run_upstream(session, endpoint, client_ip, tenant, expires, slot)
            .await;
    }

    /// Serves one upstream until it goes away. Its `slot` of the endpoint's upstream limit is
    /// given back when it leaves the routing table, as the count it stands for drops then.
    async fn run_upstream(
        &self,
        session: Session,
        endpoint: &str,
        client_ip: &str,
        tenant: &str,
        expires: Option<SystemTime>,
        mut slot: Option<Slot>,
    ) {
        let id = self.upstreams.add(endpoint, session.clone());
        self.metrics.upstream_connected();
        tracing::info!(
            subsystem = "upstream",
            endpoint_id = endpoint,
            client_ip,
            tenant_id = tenant,
            "upstream connected"
        );
        // Agents never open streams in Piko; reset any that one does rather than leak it. (Accept
        // fails once this side sent GoAway; the session's end is awaited below.)
        let refuse_streams = async {
            while let Ok(mut stream) = session.accept().await {
                stream.reset();
            }
            std::future::pending::<()>().await;
        };
        let mut refuse_streams = std::pin::pin!(refuse_streams);
        let mut told_to_move = false;
        let mut shed = false;
        let mut token_expired = false;
        let expiry = async {
            match expires {
                Some(at) => {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        let mut expiry = std::pin::pin!(expiry);
        loop {
            tokio::select! {
                _ = session.remote_go_away() => {
                    // The agent is draining: route nothing new to it, let its streams finish.
                    self.upstreams.remove(endpoint, id);
                    drop(slot.take());
                    tokio::select! {
                        _ = session.closed() => {}
                        _ = self.drain.cancelled() => {}
                    }
                    break;
                }
                _ = session.closed() => break,
                () = &mut expiry => {
                    tracing::info!(subsystem = "upstream", endpoint_id = endpoint, "upstream token expired");
                    token_expired = true;
                    break;
                }
                () = &mut refuse_streams => break,
                () = self.drain.cancelled() => break,
                () = self.leaving.cancelled(), if !told_to_move => {
                    session.go_away();
                    told_to_move = true;
                }
                () = session.local_go_away(), if !told_to_move => {
                    told_to_move = true;
                    // Also resolves when the session ends: the branch above sees to that.
                    if session.is_local_go_away() && !session.is_closed() && !self.leaving.is_cancelled() {
                        // Shed by the rebalancer.
                        shed = true;
                        break;
                    }
                }
            }
        }
        if shed {
            // Routable until the agent's new connection (here or elsewhere) is seen, then left
            // to finish its streams.
            let before = self
                .upstreams
                .count(endpoint)
                .saturating_add(self.remotes.total(endpoint));
            let moved = tokio::select! {
                moved = tokio::time::timeout(
                    MOVE_LIMIT,
                    cluster::replaced(&self.upstreams, &self.remotes, endpoint, before),
                ) => moved.is_ok(),
                _ = session.closed() => false,
                _ = session.remote_go_away() => false,
                () = self.drain.cancelled() => false,
            };
            self.upstreams.remove(endpoint, id);
            drop(slot.take());
            // An agent that moved is left to finish its streams. One that did not (it ignores
            // GoAway, as Piko v0.9.0's does) gets the same time again, then is cut: it
            // reconnects after a cut, and would otherwise stay unroutable.
            let streams_done = session.streams_closed();
            tokio::select! {
                () = streams_done => {}
                () = tokio::time::sleep(MOVE_LIMIT), if !moved => {}
                () = self.hard_stop.cancelled() => {}
            }
        }
        self.upstreams.remove(endpoint, id);
        drop(slot.take());
        if token_expired {
            // Nothing new is routed to it; the requests it carries finish (an agent that renews
            // its token has connected again by now, and gets GoAway here in case it has not).
            tokio::select! {
                () = drain(&session) => {}
                () = tokio::time::sleep(EXPIRED_DRAIN_LIMIT) => {}
                () = self.hard_stop.cancelled() => {}
            }
        }
        if self.drain.is_cancelled() {
            tokio::select! {
                () = drain(&session) => {}
                () = self.hard_stop.cancelled() => {}
            }
        }
        let node_shutdown = self.drain.is_cancelled();
        // Read from the session, not from which branch above won: a GoAway and the end of the
        // connection often arrive together.
        let agent_left = session.is_remote_go_away();
        session.close();
        let reason = session.closed().await;
        self.metrics.upstream_disconnected(match &reason {
            _ if token_expired => "token_expired",
            _ if agent_left => "agent_go_away",
            _ if node_shutdown => "node_shutdown",
            _ if shed => "rebalance",
            SessionEnd::PeerClosed => "agent_closed",
            SessionEnd::KeepAliveTimeout => "keep_alive_timeout",
            SessionEnd::WriteTimeout => "write_timeout",
            SessionEnd::Protocol(_) | SessionEnd::GoAway(_) => "protocol_error",
            SessionEnd::Io(_) => "connection_error",
            SessionEnd::LocalClose => "closed",
        });
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

/// Node shutdown: let the streams in flight finish (the agent was told to reconnect elsewhere
/// when the node started leaving); the caller bounds this by the grace period.
async fn drain(session: &Session) {
    session.go_away();
    session.streams_closed().await;
}

/// The endpoint ID of a path under `prefix`: exactly one non-empty, percent-decoded segment.
pub(crate) fn endpoint_from_path(path: &str, prefix: &str) -> Option<String> {
    let segment = path.strip_prefix(prefix)?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    Some(decoded.into_owned())
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
    use http::{HeaderValue, header};

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

    #[test]
    fn endpoint_is_one_decoded_segment() {
        assert_eq!(
            endpoint_from_path("/piko/v1/upstream/my-endpoint", UPSTREAM_PATH).as_deref(),
            Some("my-endpoint")
        );
        assert_eq!(
            endpoint_from_path("/piko/v1/upstream/a%20b", UPSTREAM_PATH).as_deref(),
            Some("a b")
        );
        assert_eq!(
            endpoint_from_path("/piko/v1/upstream/", UPSTREAM_PATH),
            None
        );
        assert_eq!(
            endpoint_from_path("/piko/v1/upstream/a/b", UPSTREAM_PATH),
            None
        );
        assert_eq!(endpoint_from_path("/other", UPSTREAM_PATH), None);
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
