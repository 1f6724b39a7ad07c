//! The admin port (this far): `GET /health` (200 while the process serves), `GET /ready` (200
//! once started, 503 while starting and shutting down, so a load balancer stops sending traffic
//! before the node goes) and `GET /metrics` (Prometheus text).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use piko_http::prometheus_text;

use crate::{
    json_error::{full, not_found},
    metrics::Metrics,
    serve::Body,
    upstreams::Upstreams,
};

/// What the admin port's handler needs.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstreams: Arc<Upstreams>,
}

impl Handler {
    pub(crate) fn handle(&self, request: &Request<Incoming>) -> Response<Body> {
        if request.method() != Method::GET {
            return not_found();
        }
        let status = match request.uri().path() {
            "/health" => StatusCode::OK,
            "/ready" if self.ready.load(Ordering::Acquire) => StatusCode::OK,
            "/ready" => StatusCode::SERVICE_UNAVAILABLE,
            "/metrics" => return self.metrics(),
            _ => return not_found(),
        };
        let mut response = Response::new(full(""));
        *response.status_mut() = status;
        response
    }

    fn metrics(&self) -> Response<Body> {
        prometheus_text::scrape_response(self.metrics.render(&self.upstreams))
    }
}
