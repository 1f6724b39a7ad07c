//! The proxy port: every request is routed to an upstream of its endpoint and relayed over a new
//! multiplexer stream, as one HTTP/1.1 exchange (spec §3).
//!
//! - The endpoint comes from `x-piko-endpoint`, else the first label of the Host (`:authority`
//!   on HTTP/2).
//! - Bodies stream both ways and are relayed byte for byte (nothing is added to
//!   `Accept-Encoding`, nothing decompressed), so server-sent events and chunked responses flow as
//!   they are produced.
//! - Upgrades (WebSockets and others) are relayed: after the upstream's `101` both connections
//!   become one byte pipe.
//! - `timeout` bounds the wait for the response headers only (an upgrade's `101` included): a
//!   long download or a slow stream of events is not cut (Piko cuts any response not finished
//!   within 10 s: spec §15.2). The read and write timeouts bound a client's silence, not the
//!   exchange's length; `tunnel_write_timeout` does the same, longer, for upgraded connections.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;

use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_http::dialed_upgrade::DialedUpgrade;
use piko_http::error_after_flush::ErrorAfterFlush;
use piko_http::{
    access_log::{self, RequestRecord},
    hop_by_hop::{append_forwarded_for, remove as remove_hop_by_hop, upgrade_protocol},
};
use piko_protocol::wire::{ENDPOINT_HEADER, FORWARD_HEADER, MAX_ENDPOINT_ID_LEN};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::{
    auth::{self, Grant, Refusal, Tenants, Verifier},
    cluster::{ForwardAuth, RemoteEndpoints, RemoteNode, SIGNATURE_HEADER},
    endpoint_load::EndpointLoad,
    forward::{self, Forwarder},
    json_error::{gin_error, proxy_error},
    metrics::{self, Direction, Metrics, Outcome, RequestMeter},
    request_body_idle::{BodyProgress, IdleLimitedBody, caused_by_idle_body},
    serve::{Body, BoxError},
    splice::splice,
    tcp_route::{self, Route},
    upstream_exchange,
    upstreams::Upstreams,
    warn_limit::warn_limited,
};

/// Settings of the proxy port.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long to wait for an upstream's response headers, an upgrade's `101` included (Piko
    /// waits for a WebSocket's forever); `None` waits forever.
    pub timeout: Option<Duration>,
    /// The access log.
    pub access_log: access_log::Config,
    /// How long a client may take to send a request's headers, from their first byte (from
    /// accept for a connection's first request); `None` waits forever.
    pub read_header_timeout: Option<Duration>,
    /// How long a client may leave a request body unfinished without sending a byte (the
    /// request fails with 408, or is cut if its response has started); `None` waits forever.
    /// An idle limit, not a deadline: uploads of any length pass while they progress.
    pub read_timeout: Option<Duration>,
    /// How long a client may accept no response bytes before its connection is cut; `None`
    /// waits forever. An idle limit, not a deadline: downloads and event streams of any length
    /// pass while they progress.
    pub write_timeout: Option<Duration>,
    /// The same for an upgraded connection (a WebSocket or TCP tunnel), whose client may pause
    /// for longer; `None` waits forever (as Piko does).
    pub tunnel_write_timeout: Option<Duration>,
    /// How long a connection may wait for its next request before it is closed; `None` keeps it.
    pub idle_timeout: Option<Duration>,
    /// Largest request head accepted (larger ones get 431).
    pub max_header_bytes: usize,
    /// Most client connections open at once, tunnels included (more are closed when
    /// accepted); `None`: no limit.
    pub max_connections: Option<usize>,
    /// Most requests (tunnels included) in flight to one endpoint through this node; more are
    /// answered with a retryable 503. `None`: no limit.
    pub max_requests_per_endpoint: Option<usize>,
    /// Token verification (`proxy.auth`); none lets every client in.
    pub auth: Option<Arc<Verifier>>,
    /// The upstream port's tenants: `x-piko-tenant-id` selects one's endpoints.
    pub tenants: Arc<Tenants>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout: Some(Duration::from_secs(30)),
            access_log: access_log::Config::default(),
            read_header_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(10)),
            write_timeout: Some(Duration::from_secs(10)),
            tunnel_write_timeout: Some(Duration::from_secs(300)),
            idle_timeout: Some(Duration::from_secs(300)),
            max_header_bytes: 1 << 20,
            max_connections: None,
            max_requests_per_endpoint: None,
            auth: None,
            tenants: Arc::default(),
        }
    }
}

/// What the proxy port's handler needs.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) config: Config,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) metrics: Arc<Metrics>,
    /// Upstream connections and upgraded tunnels, which outlive the request handler.
    pub(crate) exchanges: TaskTracker,
    /// Other nodes' endpoints, for requests this node has no upstream for.
    pub(crate) remotes: Arc<RemoteEndpoints>,
    pub(crate) forwarder: Forwarder,
    /// Tells requests relayed by other nodes from clients' requests.
    pub(crate) auth: Arc<ForwardAuth>,
    /// `max_requests_per_endpoint`, when set.
    pub(crate) endpoint_load: Option<Arc<EndpointLoad>>,
}

impl Handler {
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let record = RequestRecord::start(&self.config.access_log, &request);
        // Every request on the port, as Piko checks them, before anything else.
        if let Some(verifier) = &self.config.auth {
            match auth::authenticate(verifier, &self.config.tenants, request.headers()).await {
                Ok(grant) => {
                    request.extensions_mut().insert(grant);
                }
                Err(refusal) => {
                    warn_limited!(subsystem = "proxy", reason = ?refusal, "request refused");
                    let response = refusal.response();
                    return match record {
                        Some(record) => record.finish(&self.config.access_log, response),
                        None => response,
                    };
                }
            }
        }
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        if request.headers().contains_key(FORWARD_HEADER)
            && self.auth.verify(request.headers(), request.method(), path)
        {
            request.extensions_mut().insert(RelayedByNode);
        }
        // A tunnel takes the meter and finishes it when it ends.
        let mut meter = Some(RequestMeter::start(self.metrics.clone(), &request));
        let forwarded = is_forwarded(&request);
        let mut response = self.clone().proxy(request, peer, &mut meter).await;
        // The mark is ours to give: an upstream's own would make the sending node replay the
        // request elsewhere.
        response.headers_mut().remove(forward::NO_UPSTREAM_HEADER);
        if forwarded && response.extensions().get::<metrics::NoUpstream>().is_some() {
            forward::mark_no_upstream(&mut response);
        }
        let response = match meter {
            Some(meter) => meter.finish(response),
            None => response,
        };
        match record {
            Some(record) => record.finish(&self.config.access_log, response),
            None => response,
        }
    }

    /// Takes a slot of `endpoint`'s in-flight limit for the request (held by its meter until the
    /// response or tunnel ends): `None`; or, when the endpoint has no slot left, the answer: Piko's
    /// JSON error with a retryable 503.
    pub(crate) fn refused_over_endpoint_limit(
        &self,
        endpoint: &str,
        meter: &mut Option<RequestMeter>,
    ) -> Option<Response<Body>> {
        let Some(load) = &self.endpoint_load else {
            return None;
        };
        match load.try_acquire(endpoint) {
            Some(slot) => {
                if let Some(meter) = meter.as_mut() {
                    meter.hold(slot);
                }
                None
            }
            None => {
                warn_limited!(subsystem = "proxy", endpoint_id = %endpoint, "endpoint has its most requests in flight");
                let mut response = proxy_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in flight for endpoint",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Some(response)
            }
        }
    }

    /// The name `endpoint` is routed by: among a tenant's endpoints when the request names a
    /// configured tenant. Without tenants the header means nothing, as in Piko.
    fn routed_endpoint<B>(
        &self,
        request: &Request<B>,
        endpoint: String,
    ) -> Result<String, Refusal> {
        let tenants = &self.config.tenants;
        match auth::requested_tenant(request.headers()) {
            _ if tenants.is_empty() => Ok(endpoint),
            None => Ok(endpoint),
            Some(tenant) if tenants.contains(tenant) => {
                Ok(auth::routed_name(Some(tenant), &endpoint))
            }
            Some(_) => Err(Refusal::UnknownTenant),
        }
    }

    async fn proxy(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        meter: &mut Option<RequestMeter>,
    ) -> Response<Body> {
        match tcp_route::route(request.method(), request.uri().path()) {
            Route::Tunnel(endpoint) => {
                let endpoint = match self.routed_endpoint(&request, endpoint) {
                    Ok(endpoint) => endpoint,
                    Err(refusal) => return refusal.response(),
                };
                return tcp_route::tunnel(&self, request, peer, &endpoint, meter).await;
            }
            Route::Redirect(location) => return tcp_route::redirect(&location),
            Route::Http => {}
        }
        let Some(endpoint) = endpoint_id(&request) else {
            warn_limited!(subsystem = "proxy", "request missing endpoint id");
            return gin_error(StatusCode::BAD_REQUEST, "missing endpoint id");
        };
        // Before the name reaches a log line or a table: as the TCP route and upstreams do.
        if endpoint.len() > MAX_ENDPOINT_ID_LEN {
            warn_limited!(subsystem = "proxy", "endpoint id too long");
            return gin_error(StatusCode::BAD_REQUEST, "endpoint id too long");
        }
        let endpoint = match self.routed_endpoint(&request, endpoint) {
            Ok(endpoint) => endpoint,
            Err(refusal) => return refusal.response(),
        };
        if let Err(refusal) = permitted(&request, &endpoint) {
            return refusal.response();
        }
        if let Some(response) = self.refused_over_endpoint_limit(&endpoint, meter) {
            return response;
        }
        let upgrade_protocol = upgrade_protocol(request.headers());
        if let (Some(meter), Some(_)) = (meter.as_mut(), &upgrade_protocol) {
            meter.set_route(metrics::Route::Upgrade);
        }
        // Not here: another node may hold the endpoint. A request that was forwarded already
        // is served from this node's upstreams only, so it never travels further.
        if let Some(node) = self.remote_for(&request, &endpoint) {
            return self.forward(request, peer, &endpoint, node, meter).await;
        }
        let timeout = self.config.timeout;
        // The timeout covers everything up to the response headers, including waiting for the
        // stream itself (an agent that stopped acknowledging streams holds opens back).
        let deadline = timeout.map(|limit| tokio::time::Instant::now() + limit);
        let stream = match self.open_stream(&endpoint, deadline).await {
            Ok(stream) => stream,
            Err(response) => return response,
        };
        let client_upgrade = upgrade_protocol
            .is_some()
            .then(|| hyper::upgrade::on(&mut request));
        prepare_request(&mut request, peer, upgrade_protocol.as_ref());
        // The client's Piko token is for Piko (each node on the way checks it): the service
        // behind the tunnel has no use for it and must not be able to replay it. Piko passes
        // it on.
        request.headers_mut().remove(auth::PIKO_AUTHORIZATION);
        if client_upgrade.is_none() && hyper::body::Body::is_end_stream(request.body()) {
            return self
                .exchange_without_body(request, stream, deadline, &endpoint)
                .await;
        }
        let (parts, body) = request.into_parts();
        let route = match upgrade_protocol {
            Some(_) => metrics::Route::Upgrade,
            None => metrics::Route::Http,
        };
        let (body, body_progress) = IdleLimitedBody::new(
            body,
            self.config.read_timeout,
            self.metrics.proxy.bytes(route, Direction::In),
        );
        let request = Request::from_parts(parts, body);

        let (mut sender, connection) = match hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
        {
            Ok(parts) => parts,
            Err(err) => {
                warn_limited!(subsystem = "proxy.http", error = %err, "proxy request");
                return proxy_error(StatusCode::BAD_GATEWAY, "upstream unreachable");
            }
        };
        // An upgrade needs the connection to outlive the response: it runs in its own task. A
        // plain exchange is driven here and then from the response body, in the client
        // connection's own task: no task and no cross-task wake-ups per request.
        let mut inline = None;
        let exchange = sender.send_request(request);
        // Until the upgrade's response head arrives, the exchange belongs to this request: a
        // timeout or a client that goes away abandons it (the task is aborted, the stream reset).
        let mut upgrade_exchange = None;
        if client_upgrade.is_some() {
            upgrade_exchange = Some(AbortOnDropHandle::new(self.exchanges.spawn(async move {
                if let Err(err) = connection.with_upgrades().await {
                    tracing::debug!(subsystem = "proxy.http", error = %err, "upstream exchange ended");
                }
            })));
        } else {
            inline = Some(Box::pin(connection));
        }
        let waited = response_within(
            timeout,
            deadline,
            body_progress,
            drive_until(exchange, &mut inline),
        );
        let Some(result) = waited.await else {
            return upstream_timeout(&endpoint);
        };
        let mut response = match result {
            Ok(response) => response,
            Err(err) if caused_by_idle_body(&err) => {
                warn_limited!(subsystem = "proxy.http", endpoint_id = %endpoint, "request body read timed out");
                return request_timeout();
            }
            Err(err) => {
                warn_limited!(subsystem = "proxy.http", endpoint_id = %endpoint, error = %err, "proxy request");
                return proxy_error(StatusCode::BAD_GATEWAY, "upstream unreachable");
            }
        };
        // From here the exchange lives on its own (a body to relay, or an upgraded pipe).
        if let Some(exchange) = upgrade_exchange {
            drop(exchange.detach());
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let meter = meter.take();
                let proxy = &self.metrics.proxy;
                let bytes_in = proxy.bytes(metrics::Route::Upgrade, Direction::In).clone();
                let bytes_out = proxy.bytes(metrics::Route::Upgrade, Direction::Out).clone();
                let tunnel_write_timeout = self.config.tunnel_write_timeout;
                self.exchanges.spawn(async move {
                    let relay = async {
                        let (Ok(client), Ok(upstream)) =
                            tokio::join!(client_upgrade, upstream_upgrade)
                        else {
                            // The client went before its side of the upgrade completed.
                            return Outcome::ClientError;
                        };
                        let bytes = (bytes_in, bytes_out);
                        splice(client, TokioIo::new(upstream), bytes, tunnel_write_timeout).await
                    };
                    let outcome = relay.await;
                    if let Some(meter) = meter {
                        meter.finish_tunnel(outcome);
                    }
                });
            }
        } else {
            remove_hop_by_hop(response.headers_mut());
        }
        let exchanges = self.exchanges.clone();
        response.map(|body| {
            // An upstream that fails mid-body (its stream reset): what it sent before reaches
            // the client first.
            ErrorAfterFlush::new(ExchangeBody {
                body,
                connection: inline,
                exchanges,
            })
            .boxed()
        })
    }

    /// A request without a body (most requests): its head written to the stream and the
    /// response read from it directly, with no HTTP client connection.
    async fn exchange_without_body(
        &self,
        request: Request<Incoming>,
        stream: piko_mux::Stream,
        deadline: Option<tokio::time::Instant>,
        endpoint: &str,
    ) -> Response<Body> {
        let (parts, _) = request.into_parts();
        let exchanged = upstream_exchange::exchange(stream, &parts);
        let Some(result) = response_within(self.config.timeout, deadline, None, exchanged).await
        else {
            return upstream_timeout(endpoint);
        };
        match result {
            Ok(mut response) => {
                remove_hop_by_hop(response.headers_mut());
                // An upstream that fails mid-body (its stream reset): what it sent before
                // reaches the client first.
                response.map(|body| ErrorAfterFlush::new(body).boxed())
            }
            Err(err) => {
                warn_limited!(subsystem = "proxy.http", endpoint_id = %endpoint, error = %err, "proxy request");
                proxy_error(StatusCode::BAD_GATEWAY, "upstream unreachable")
            }
        }
    }

    /// Relays a request to `node`; if that node cannot be reached, or answers that it has no
    /// upstream for the endpoint any more (its upstreams moved before the gossip did), tries one
    /// other node, when the request's body can be replayed (none, or at most 64 KiB). An upgrade (WebSocket, or the TCP route) is
    /// spliced to the node once it accepts: the bytes pass through this node untouched.
    pub(crate) async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        endpoint: &str,
        node: RemoteNode,
        meter: &mut Option<RequestMeter>,
    ) -> Response<Body> {
        if let Some(meter) = meter.as_mut() {
            meter.set_route(metrics::Route::Forwarded);
        }
        let upgrade = upgrade_protocol(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        prepare_request(&mut request, peer, upgrade.as_ref());
        let (parts, body) = request.into_parts();
        let (body, progress) = IdleLimitedBody::new(
            body,
            self.config.read_timeout,
            self.metrics
                .proxy
                .bytes(metrics::Route::Forwarded, Direction::In),
        );
        // A request that may go to a second node keeps a copy of its body: none (upgrades
        // included: nothing is upgraded until a node accepts), or a small one read in full
        // first. Larger and streamed bodies go once.
        let replayable = hyper::body::Body::size_hint(&body)
            .exact()
            .is_some_and(|length| length <= forward::REPLAYABLE_BODY_LIMIT);
        let (request, progress, mut retry) = if replayable {
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) if caused_by_idle_body(&*err) => return request_timeout(),
                Err(err) => {
                    tracing::debug!(subsystem = "proxy.http", endpoint_id = %endpoint, error = %err, "request body");
                    return proxy_error(StatusCode::BAD_GATEWAY, "upstream unreachable");
                }
            };
            let retry = forward::copy_with_body(&parts, bytes.clone());
            (forward::copy_with_body(&parts, bytes), None, Some(retry))
        } else {
            (Request::from_parts(parts, body.boxed()), progress, None)
        };
        let idempotent = request.method().is_idempotent();
        let mut response = match self.send_to(&node, request, endpoint, progress).await {
            Ok(response) => response,
            Err(failure) => {
                // Nothing was sent, or nothing came back and repeating the request is harmless.
                let retryable = match &failure {
                    Failure::Unreachable(_) => true,
                    Failure::Unanswered(_) => idempotent,
                    Failure::Other(_) => false,
                };
                let retry = retry.take().filter(|_| retryable);
                match (retry, self.remotes.pick(endpoint, Some(&node.id))) {
                    (Some(retry), Some(other)) => {
                        match self.send_to(&other, retry, endpoint, None).await {
                            Ok(response) => response,
                            Err(failure) => return failure.into_response(),
                        }
                    }
                    _ => return failure.into_response(),
                }
            }
        };
        if forward::had_no_upstream(&response)
            && let Some(retry) = retry
            && let Some(other) = self.remotes.pick(endpoint, Some(&node.id))
        {
            response = match self.send_to(&other, retry, endpoint, None).await {
                Ok(response) => response,
                Err(failure) => return failure.into_response(),
            };
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let node_upgrade = hyper::upgrade::on(&mut response);
            let meter = meter.take();
            let proxy = &self.metrics.proxy;
            let bytes_in = proxy
                .bytes(metrics::Route::Forwarded, Direction::In)
                .clone();
            let bytes_out = proxy
                .bytes(metrics::Route::Forwarded, Direction::Out)
                .clone();
            let tunnel_write_timeout = self.config.tunnel_write_timeout;
            self.exchanges.spawn(async move {
                let outcome = match tokio::join!(client_upgrade, node_upgrade) {
                    (Ok(client), Ok(node)) => {
                        let bytes = (bytes_in, bytes_out);
                        match DialedUpgrade::unwrap(node) {
                            Ok(node) => splice(client, node, bytes, tunnel_write_timeout).await,
                            // Not a connection of ours: it can only be closed.
                            Err(node) => {
                                splice(client, TokioIo::new(node), bytes, tunnel_write_timeout)
                                    .await
                            }
                        }
                    }
                    _ => Outcome::ClientError,
                };
                if let Some(meter) = meter {
                    meter.finish_tunnel(outcome);
                }
            });
            return forward::boxed(response);
        }
        let no_upstream = forward::had_no_upstream(&response);
        let mut response = forward::boxed(response);
        remove_hop_by_hop(response.headers_mut());
        response.headers_mut().remove(forward::NO_UPSTREAM_HEADER);
        if no_upstream {
            response.extensions_mut().insert(metrics::NoUpstream);
        }
        response
    }

    /// The node to relay `request` to: one holding `endpoint`'s upstreams when this node holds
    /// none and the request was not relayed here already.
    pub(crate) fn remote_for<B>(&self, request: &Request<B>, endpoint: &str) -> Option<RemoteNode> {
        if is_forwarded(request) || self.upstreams.count(endpoint) > 0 {
            return None;
        }
        self.remotes.pick(endpoint, None)
    }

    /// One attempt at a forwarded request: the node's response head within the proxy timeout,
    /// counted from the last piece of request body relayed, as for a local upstream.
    async fn send_to(
        &self,
        node: &RemoteNode,
        request: Request<Body>,
        endpoint: &str,
        body_progress: Option<Arc<BodyProgress>>,
    ) -> Result<Response<Incoming>, Failure> {
        self.metrics.remote_request(&node.id);
        let deadline = self
            .config
            .timeout
            .map(|limit| tokio::time::Instant::now() + limit);
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let signature = node.key.sign(&node.id, request.method(), path);
        let mut request = request;
        request.headers_mut().insert(SIGNATURE_HEADER, signature);
        let sent = self.forwarder.send(&node.proxy_addr, request);
        let result = response_within(self.config.timeout, deadline, body_progress, sent)
            .await
            .ok_or_else(|| Failure::Other(upstream_timeout(endpoint)))?;
        result.map_err(|err| {
            warn_limited!(subsystem = "proxy.http", endpoint_id = %endpoint, node_id = %node.id, error = %err, "proxy request");
            let response = proxy_error(StatusCode::BAD_GATEWAY, "upstream unreachable");
            match err {
                forward::SendError::Connect(_) => Failure::Unreachable(response),
                forward::SendError::Unanswered(_) => Failure::Unanswered(response),
                forward::SendError::Other(_) => Failure::Other(response),
            }
        })
    }

    /// A stream to an upstream of `endpoint`. An upstream that is going away (its GoAway not yet
    /// processed here) refuses the open before the request reached it, so the next one is tried.
    pub(crate) async fn open_stream(
        &self,
        endpoint: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<piko_mux::Stream, Response<Body>> {
        let attempts = self.upstreams.count(endpoint).max(1);
        for _ in 0..attempts {
            let Some(session) = self.upstreams.select(endpoint) else {
                break;
            };
            match within(deadline, session.open()).await {
                Some(Ok(stream)) => {
                    self.metrics.upstream_requests.inc();
                    return Ok(stream);
                }
                Some(Err(piko_mux::Error::RemoteGoAway)) => continue,
                Some(Err(err)) => {
                    warn_limited!(subsystem = "proxy.http", endpoint_id = %endpoint, error = %err, "proxy request");
                    return Err(proxy_error(StatusCode::BAD_GATEWAY, "upstream unreachable"));
                }
                None => return Err(upstream_timeout(endpoint)),
            }
        }
        warn_limited!(subsystem = "proxy.http", endpoint_id = %endpoint, "no available upstreams");
        Err(no_available_upstreams())
    }
}

/// A relayed request that got no response, with the reply its client gets.
enum Failure {
    /// The node was not reached: nothing was sent, another node may be tried.
    Unreachable(Response<Body>),
    /// The connection closed before any response: another node may be tried if the request
    /// can be repeated (an idempotent method).
    Unanswered(Response<Body>),
    /// Timed out or failed midway.
    Other(Response<Body>),
}

impl Failure {
    fn into_response(self) -> Response<Body> {
        match self {
            Self::Unreachable(response) | Self::Unanswered(response) | Self::Other(response) => {
                response
            }
        }
    }
}

/// Refuses a request whose token does not allow `endpoint` (401, as Piko).
pub(crate) fn permitted<B>(request: &Request<B>, endpoint: &str) -> Result<(), Refusal> {
    match request.extensions().get::<Grant>() {
        Some(grant) if !grant.permits(endpoint) => {
            warn_limited!(subsystem = "proxy", endpoint_id = %endpoint, token_endpoints = ?grant.endpoints, "endpoint not permitted");
            Err(Refusal::EndpointNotPermitted)
        }
        _ => Ok(()),
    }
}

/// Marks a request another node relayed here (its signature checked).
#[derive(Clone, Copy, Debug)]
struct RelayedByNode;

/// Whether another node relayed `request` here: Piko's `X-Piko-Forward` with a valid signature
/// (a client's own is ignored).
fn is_forwarded<B>(request: &Request<B>) -> bool {
    request.extensions().get::<RelayedByNode>().is_some()
}

/// Piko's 502 for an endpoint without an upstream here, marked so that the metrics tell it
/// apart from an upstream that failed.
pub(crate) fn no_available_upstreams() -> Response<Body> {
    let mut response = proxy_error(StatusCode::BAD_GATEWAY, "no available upstreams");
    response.extensions_mut().insert(metrics::NoUpstream);
    response
}

/// Awaits `future`, giving up at `deadline` if there is one.
async fn within<F: Future>(deadline: Option<tokio::time::Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// The client left its request body unfinished; the connection cannot be reused.
fn request_timeout() -> Response<Body> {
    let mut response = proxy_error(StatusCode::REQUEST_TIMEOUT, "request timeout");
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Awaits the response head: within `timeout` of the later of `deadline`'s start and the last
/// piece of request body the relay took. An upload still moving is not a slow upstream; one that
/// stopped (the client or the upstream stalled) counts like any wait.
async fn response_within<F: Future>(
    timeout: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
    body: Option<Arc<BodyProgress>>,
    future: F,
) -> Option<F::Output> {
    let (Some(limit), Some(mut deadline)) = (timeout.filter(|t| !t.is_zero()), deadline) else {
        return Some(future.await);
    };
    let mut future = std::pin::pin!(future);
    loop {
        match tokio::time::timeout_at(deadline, future.as_mut()).await {
            Ok(output) => return Some(output),
            Err(_) => match body.as_ref().map(|body| body.last_frame() + limit) {
                Some(later) if later > deadline => deadline = later,
                _ => return None,
            },
        }
    }
}

fn upstream_timeout(endpoint: &str) -> Response<Body> {
    warn_limited!(subsystem = "proxy.http", endpoint_id = %endpoint, "proxy request timed out");
    proxy_error(StatusCode::GATEWAY_TIMEOUT, "upstream timeout")
}

/// The client side of one exchange over a stream.
type UpstreamConnection =
    Pin<Box<hyper::client::conn::http1::Connection<TokioIo<piko_mux::Stream>, IdleLimitedBody>>>;

/// Awaits `future` while also driving `connection` (which moves the request and response bytes).
async fn drive_until<F: Future>(
    future: F,
    connection: &mut Option<UpstreamConnection>,
) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        poll_connection(connection, cx);
        future.as_mut().poll(cx)
    })
    .await
}

/// Polls the connection if it still runs; forgets it once it finished.
fn poll_connection(connection: &mut Option<UpstreamConnection>, cx: &mut Context<'_>) {
    if let Some(running) = connection
        && let Poll::Ready(result) = running.as_mut().poll(cx)
    {
        if let Err(err) = result {
            tracing::debug!(subsystem = "proxy.http", error = %err, "upstream exchange ended");
        }
        *connection = None;
    }
}

/// A response body that drives its exchange's connection as it is read. Dropped before its end
/// (the client went away), it drops the connection, which resets the stream so the upstream
/// stops too.
struct ExchangeBody {
    body: Incoming,
    connection: Option<UpstreamConnection>,
    exchanges: TaskTracker,
}

impl hyper::body::Body for ExchangeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        poll_connection(&mut this.connection, cx);
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        if frame.is_none()
            && let Some(connection) = this.connection.take()
        {
            // The response is complete; the connection only has its close left to do, and the
            // client need not wait for it.
            this.exchanges.spawn(async move {
                let _ = connection.await;
            });
        }
        Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The endpoint a request is for (spec §3.2).
fn endpoint_id<B>(request: &Request<B>) -> Option<String> {
    if let Some(value) = request
        .headers()
        .get(ENDPOINT_HEADER)
        .and_then(|v| v.to_str().ok())
        && !value.is_empty()
    {
        return Some(value.to_owned());
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))?;
    endpoint_from_host(host)
}

/// The first label of a host name; none for IP addresses and dot-less names.
fn endpoint_from_host(host: &str) -> Option<String> {
    let name = match host.strip_prefix('[') {
        // A bracketed IPv6 literal, with or without a port.
        Some(_) => return None,
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    if name.is_empty() || name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let (label, _) = name.split_once('.')?;
    Some(label.to_owned())
}

/// Turns a client request into the one an upstream receives (spec §3.5): origin-form target,
/// HTTP/1.1, the client's Host kept, hop-by-hop headers dropped, `X-Forwarded-For` and
/// `X-Piko-Forward` added, one exchange per stream.
fn prepare_request<B>(request: &mut Request<B>, peer: SocketAddr, upgrade: Option<&String>) {
    let authority = request.uri().authority().cloned();
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = target
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    remove_hop_by_hop(headers);
    if !headers.contains_key(header::HOST)
        && let Some(authority) = authority
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    append_forwarded_for(headers, peer.ip());
    headers.insert(FORWARD_HEADER, HeaderValue::from_static("true"));
    // Node-to-node only: a relaying node signs its own request.
    headers.remove(SIGNATURE_HEADER);
    match upgrade.and_then(|p| HeaderValue::from_str(p).ok()) {
        Some(protocol) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        None => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_from_header_then_host() {
        let request = |pairs: &[(&str, &str)]| {
            let mut builder = Request::builder().uri("/x");
            for (name, value) in pairs {
                builder = builder.header(*name, *value);
            }
            builder.body(()).unwrap()
        };
        let both = request(&[
            ("x-piko-endpoint", "from-header"),
            ("host", "from-host.example.com"),
        ]);
        assert_eq!(endpoint_id(&both).as_deref(), Some("from-header"));
        let empty_header = request(&[("x-piko-endpoint", ""), ("host", "from-host.example.com")]);
        assert_eq!(endpoint_id(&empty_header).as_deref(), Some("from-host"));
        let with_port = request(&[("host", "my-endpoint.piko.example.com:9000")]);
        assert_eq!(endpoint_id(&with_port).as_deref(), Some("my-endpoint"));
        for host in [
            "localhost",
            "localhost:8000",
            "10.0.0.1",
            "10.0.0.1:80",
            "[::1]:8000",
            "[::1]",
            "",
        ] {
            assert_eq!(
                endpoint_id(&request(&[("host", host)])),
                None,
                "host {host:?}"
            );
        }
        let h2 = Request::builder()
            .uri("https://api.example.com/x")
            .body(())
            .unwrap();
        assert_eq!(endpoint_id(&h2).as_deref(), Some("api"));
    }

    #[test]
    fn prepared_request_follows_piko() {
        let mut request = Request::builder()
            .method("POST")
            .uri("http://svc.example.com/a/b?c=d")
            .header("connection", "keep-alive, x-custom")
            .header("x-custom", "dropped")
            .header("keep-alive", "timeout=5")
            .header("x-forwarded-for", "203.0.113.7")
            .header("authorization", "Bearer kept")
            .header(SIGNATURE_HEADER, "1.00")
            .body(())
            .unwrap();
        let peer: SocketAddr = "198.51.100.1:4000".parse().unwrap();
        prepare_request(&mut request, peer, None);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.version(), Version::HTTP_11);
        let headers = request.headers();
        assert_eq!(headers["host"], "svc.example.com");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 198.51.100.1");
        assert_eq!(headers["x-piko-forward"], "true");
        assert_eq!(headers["connection"], "close");
        assert_eq!(headers["authorization"], "Bearer kept");
        assert!(!headers.contains_key("x-custom"));
        assert!(!headers.contains_key("keep-alive"));
        assert!(!headers.contains_key(SIGNATURE_HEADER), "node-to-node only");

        let mut upgrade = Request::builder()
            .uri("/ws")
            .header("host", "e.example.com")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let protocol = upgrade_protocol(upgrade.headers());
        assert_eq!(protocol.as_deref(), Some("websocket"));
        prepare_request(&mut upgrade, peer, protocol.as_ref());
        assert_eq!(upgrade.headers()["connection"], "Upgrade");
        assert_eq!(upgrade.headers()["upgrade"], "websocket");
    }
}
