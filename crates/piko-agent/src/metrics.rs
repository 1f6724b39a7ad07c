//! The agent's Prometheus metrics (spec §10.3): per-endpoint request metrics of its HTTP
//! listeners, served on `server.bind_addr` when `server.enabled` (TCP listeners record none, as
//! in Piko).

use std::{sync::Arc, time::Instant};

use http_body_util::BodyExt;
use piko_http::{
    body::Body,
    counted_body::CountedBody,
    prometheus_text::{self, LATENCY_BUCKETS, MethodLabel, SIZE_BUCKETS, approximate_request_size},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: u16,
    method: MethodLabel,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// An agent's metrics, shared by its HTTP listeners.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    in_flight: Family<EndpointLabel, Gauge>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    request_size: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    response_size: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    handler_errors: Family<CauseLabel, Counter>,
    alive_tasks: Gauge,
}

impl AgentMetrics {
    /// Piko's agent families, registered under its names.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            in_flight: Family::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            request_size: Family::new_with_constructor(size_histogram),
            response_size: Family::new_with_constructor(size_histogram),
            handler_errors: Family::default(),
            alive_tasks: Gauge::default(),
        };
        let mut metrics = metrics;
        let registry = &mut metrics.registry;
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "piko_agent_requests_in_flight",
            "Number of requests currently handled by this agent",
            metrics.in_flight.clone(),
        );
        registry.register(
            "piko_agent_requests",
            "Total requests",
            metrics.requests.clone(),
        );
        registry.register(
            "piko_agent_request_latency_seconds",
            "Request latency",
            metrics.latency.clone(),
        );
        registry.register(
            "piko_agent_request_size_bytes",
            "Request size",
            metrics.request_size.clone(),
        );
        registry.register(
            "piko_agent_response_size_bytes",
            "Response size",
            metrics.response_size.clone(),
        );
        registry.register(
            "piko_runtime_alive_tasks",
            "Tasks alive in the agent's async runtime (one per connection and stream: a count that never comes back down is a leak)",
            metrics.alive_tasks.clone(),
        );
        registry.register(
            "promhttp_metric_handler_errors",
            "Total number of internal errors encountered by the promhttp metric handler",
            metrics.handler_errors.clone(),
        );
        metrics
    }

    /// The text a scrape gets (Prometheus 0.0.4, as Piko serves it).
    ///
    /// # Errors
    /// The registry could not be encoded (counted in `promhttp_metric_handler_errors_total`).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            self.alive_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        prometheus_text::encode(&self.registry).inspect_err(|_| {
            self.handler_errors
                .get_or_create(&CauseLabel { cause: "encoding" })
                .inc();
        })
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One request of one endpoint, in flight from its arrival until it is dropped, with its
/// response body or before any response.
pub(crate) struct RequestMeter {
    metrics: Arc<AgentMetrics>,
    endpoint: EndpointLabel,
    method: MethodLabel,
    started: Instant,
}

impl RequestMeter {
    pub(crate) fn start<B>(
        metrics: Arc<AgentMetrics>,
        endpoint: &str,
        request: &http::Request<B>,
    ) -> Self {
        let endpoint = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        metrics.in_flight.get_or_create(&endpoint).inc();
        metrics
            .request_size
            .get_or_create(&endpoint)
            .observe(approximate_request_size(request));
        Self {
            metrics,
            endpoint,
            method: MethodLabel::of(request.method()),
            started: Instant::now(),
        }
    }

    /// Records the request when `response`'s body has been written (or abandoned).
    pub(crate) fn finish(self, response: http::Response<Body>) -> http::Response<Body> {
        let meter = self.respond(response.status());
        response.map(|body| CountedBody::new(body, move |written| meter.done(written)).boxed())
    }

    /// The request's response has begun with `status`; its body is relayed by the caller.
    pub(crate) fn respond(self, status: http::StatusCode) -> ResponseMeter {
        let labels = RequestLabels {
            status: status.as_u16(),
            method: self.method,
            endpoint: self.endpoint.endpoint.clone(),
        };
        ResponseMeter {
            request: self,
            labels,
        }
    }
}

/// A request whose response is being sent.
pub(crate) struct ResponseMeter {
    request: RequestMeter,
    labels: RequestLabels,
}

impl ResponseMeter {
    /// Records the request: its response's body ended after `written` data bytes (`None` for
    /// none).
    pub(crate) fn done(self, written: Option<u64>) {
        let metrics = &self.request.metrics;
        metrics.requests.get_or_create(&self.labels).inc();
        // Piko measures with millisecond resolution.
        let seconds = self.request.started.elapsed().as_millis() as f64 / 1000.0;
        metrics.latency.get_or_create(&self.labels).observe(seconds);
        metrics
            .response_size
            .get_or_create(&self.request.endpoint)
            .observe(written.map_or(-1.0, |bytes| bytes as f64));
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        self.metrics.in_flight.get_or_create(&self.endpoint).dec();
    }
}
