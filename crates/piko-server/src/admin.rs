//! The admin port: `GET /health` (200 while the process serves), `GET /ready` (200 once started,
//! 503 while starting and shutting down, so a load balancer stops sending traffic before the node
//! goes), `GET /metrics` (Prometheus text) and the `/status/...` routes.
//!
//! Every route honours Piko's `?forward=<node-id>`: absent or this node's ID answers here;
//! another node's ID relays the request to that node's admin port; an unknown ID is a 404.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use piko_http::prometheus_text;
use piko_protocol::wire::FORWARD_HEADER;

use crate::{
    cluster::{Membership, NodeStatus},
    forward::Forwarder,
    json_error::{full, not_found, proxy_error},
    metrics::Metrics,
    serve::Body,
    status::{self, LocalNode},
    upstreams::Upstreams,
    warn_limit::warn_limited,
};

/// What the admin port's handler needs.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) local: LocalNode,
    pub(crate) membership: Arc<Membership>,
    pub(crate) forwarder: Forwarder,
    /// Token verification (`admin.auth`); any valid token grants everything.
    pub(crate) auth: Option<Arc<crate::auth::Verifier>>,
}

/// How long a forwarded admin request may take (Piko's).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl Handler {
    pub(crate) async fn handle(&self, request: &Request<Incoming>) -> Response<Body> {
        // Every request on the port (health and metrics included), as Piko checks them.
        if let Some(verifier) = &self.auth
            && let Err(refusal) = crate::auth::authenticate(
                verifier,
                &crate::auth::Tenants::default(),
                request.headers(),
            )
            .await
        {
            warn_limited!(subsystem = "admin", reason = ?refusal, "request refused");
            return refusal.response();
        }
        if request.method() != Method::GET {
            return not_found();
        }
        if let Some(target) = forward_target(request.uri().query())
            && target != self.local.id
        {
            // One hop only: a node that restarted at the same address is listed under its old
            // ID for a while, and a request for that ID must not come back here forever.
            if request.headers().contains_key(FORWARD_HEADER) {
                return status::empty(StatusCode::NOT_FOUND);
            }
            let nodes = self.membership.nodes().await;
            return match nodes
                .iter()
                .find(|node| node.id == target && node.status == NodeStatus::Active)
            {
                Some(node) => self.forward(&node.admin_addr, request).await,
                None => status::empty(StatusCode::NOT_FOUND),
            };
        }
        if let Some(response) = status::route(
            request.uri().path(),
            &self.local,
            &self.upstreams,
            &self.membership,
        )
        .await
        {
            return response;
        }
        let status = match request.uri().path() {
            "/health" => StatusCode::OK,
            "/ready" if self.ready.load(Ordering::Acquire) => StatusCode::OK,
            "/ready" => StatusCode::SERVICE_UNAVAILABLE,
            "/metrics" => return self.metrics().await,
            _ => return not_found(),
        };
        let mut response = Response::new(full(""));
        *response.status_mut() = status;
        response
    }

    /// Piko's admin forwarding (spec §9.3): the same request, `forward` included (the target
    /// answers it itself), to the node's admin port, within 15 seconds.
    async fn forward(&self, admin_addr: &str, request: &Request<Incoming>) -> Response<Body> {
        let mut copy = Request::new(full(""));
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        copy.headers_mut()
            .insert(FORWARD_HEADER, http::HeaderValue::from_static("true"));
        match tokio::time::timeout(FORWARD_TIMEOUT, self.forwarder.send(admin_addr, copy)).await {
            Ok(Ok(response)) => crate::forward::boxed(response),
            Ok(Err(err)) => {
                tracing::warn!(subsystem = "admin", addr = admin_addr, error = %err, "forward request");
                proxy_error(StatusCode::BAD_GATEWAY, "upstream unreachable")
            }
            Err(_) => proxy_error(StatusCode::GATEWAY_TIMEOUT, "upstream timeout"),
        }
    }

    async fn metrics(&self) -> Response<Body> {
        let nodes = self.membership.nodes().await;
        prometheus_text::scrape_response(self.metrics.render(&self.upstreams, &nodes))
    }
}

/// The node named by `?forward=`, if any.
fn forward_target(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(name, _)| *name == "forward")
        .map(|(_, value)| percent_encoding::percent_decode_str(value).decode_utf8_lossy())
        .filter(|value| !value.is_empty())
}
