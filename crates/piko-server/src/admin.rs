//! The admin port (this far): `GET /health` (200 while the process serves), `GET /ready` (200
//! once started, 503 while starting and shutting down, so a load balancer stops sending traffic
//! before the node goes) and `GET /metrics` (Prometheus text).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

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
        match self.metrics.render(&self.upstreams) {
            Ok(text) => {
                let mut response = Response::new(full(text));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            Err(err) => {
                tracing::warn!(subsystem = "admin", error = %err, "failed to encode metrics");
                let mut response = Response::new(full("failed to encode metrics\n"));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        }
    }
}
