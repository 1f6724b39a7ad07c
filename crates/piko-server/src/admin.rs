//! The admin port: `GET /health` (200 while the process serves), `GET /ready` (200 once started,
//! 503 while starting and shutting down, so a load balancer stops sending traffic before the node
//! goes), `GET /metrics` (Prometheus text) and the `/status/...` routes.
//!
//! Every route honours Piko's `?forward=<node-id>`: absent or this node's ID answers here; any
//! other node is unknown (404) until the cluster exists.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use piko_http::prometheus_text;

use crate::{
    cluster::Membership,
    json_error::{full, not_found},
    metrics::Metrics,
    serve::Body,
    status::{self, LocalNode},
    upstreams::Upstreams,
};

/// What the admin port's handler needs.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) local: LocalNode,
    pub(crate) membership: Arc<Membership>,
}

impl Handler {
    pub(crate) async fn handle(&self, request: &Request<Incoming>) -> Response<Body> {
        if request.method() != Method::GET {
            return not_found();
        }
        if let Some(node) = forward_target(request.uri().query())
            && node != self.local.id
        {
            return status::empty(StatusCode::NOT_FOUND);
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
