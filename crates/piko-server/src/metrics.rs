//! The server's Prometheus metrics (spec §10.2), served on the admin port's `/metrics` in the
//! Prometheus text format Piko serves (0.0.4), so existing scrapes, alerts and Grafana dashboards
//! keep working: same names, types and labels.
//!
//! The cluster and gossip families report the single local node until the cluster exists.

use std::time::Duration;

use piko_http::counted_body::CountedBody;
use piko_http::prometheus_text::{
    self, LATENCY_BUCKETS, MethodLabel, SIZE_BUCKETS, approximate_request_size,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::upstreams::Upstreams;

/// `status` and `method` of a proxied request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) status: u16,
    pub(crate) method: MethodLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Proxy-port request metrics.
#[derive(Debug)]
pub(crate) struct ProxyMetrics {
    pub(crate) in_flight: Gauge,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub(crate) request_size: Histogram,
    response_size: Histogram,
}

impl ProxyMetrics {
    /// Records a finished request: its labels, how long it took, and the response body bytes
    /// written (`None` when nothing was written: Piko observes -1 then).
    fn finished(&self, labels: &RequestLabels, elapsed: Duration, written: Option<u64>) {
        self.requests.get_or_create(labels).inc();
        // Piko measures with millisecond resolution.
        let seconds = elapsed.as_millis() as f64 / 1000.0;
        self.latency.get_or_create(labels).observe(seconds);
        self.response_size
            .observe(written.map_or(-1.0, |bytes| bytes as f64));
    }
}

/// A server node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) proxy: ProxyMetrics,
    connected_upstreams: Gauge,
    registered_endpoints: Gauge,
    pub(crate) upstream_requests: Counter,
    cluster_nodes: Family<StatusLabel, Gauge>,
    handler_errors: Family<CauseLabel, Counter>,
}

impl Metrics {
    /// Every family of spec §10.2, registered under Piko's names.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let proxy = ProxyMetrics {
            in_flight: Gauge::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            request_size: Histogram::new(SIZE_BUCKETS),
            response_size: Histogram::new(SIZE_BUCKETS),
        };
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "piko_proxy_requests_in_flight",
            "Number of requests currently handled by this server",
            proxy.in_flight.clone(),
        );
        registry.register(
            "piko_proxy_requests",
            "Total requests",
            proxy.requests.clone(),
        );
        registry.register(
            "piko_proxy_request_latency_seconds",
            "Request latency",
            proxy.latency.clone(),
        );
        registry.register(
            "piko_proxy_request_size_bytes",
            "Request size",
            proxy.request_size.clone(),
        );
        registry.register(
            "piko_proxy_response_size_bytes",
            "Response size",
            proxy.response_size.clone(),
        );
        let metrics = Self {
            proxy,
            connected_upstreams: Gauge::default(),
            registered_endpoints: Gauge::default(),
            upstream_requests: Counter::default(),
            cluster_nodes: Family::default(),
            handler_errors: Family::default(),
            registry,
        };
        let mut metrics = metrics;
        let registry = &mut metrics.registry;
        registry.register(
            "piko_upstreams_connected_upstreams",
            "Number of upstreams connected to this node",
            metrics.connected_upstreams.clone(),
        );
        registry.register(
            "piko_upstreams_registered_endpoints",
            "Number of endpoints with at least one upstream connected to this node",
            metrics.registered_endpoints.clone(),
        );
        registry.register(
            "piko_upstreams_upstream_requests",
            "Number of requests sent to an upstream connected to this node",
            metrics.upstream_requests.clone(),
        );
        registry.register(
            "piko_upstreams_remote_requests",
            "Number of requests forwarded to another node",
            Family::<NodeLabel, Counter>::default(),
        );
        registry.register(
            "piko_cluster_nodes",
            "Number of nodes in the cluster state",
            metrics.cluster_nodes.clone(),
        );
        metrics
            .cluster_nodes
            .get_or_create(&StatusLabel { status: "active" })
            .set(1);
        for (name, help) in GOSSIP_COUNTERS {
            registry.register(name, help, Counter::<u64>::default());
        }
        registry.register(
            "promhttp_metric_handler_errors",
            "Total number of internal errors encountered by the promhttp metric handler",
            metrics.handler_errors.clone(),
        );
        metrics
    }

    /// The text a scrape gets, with the routing table's gauges read now.
    pub(crate) fn render(&self, upstreams: &Upstreams) -> Result<String, std::fmt::Error> {
        let (endpoints, connected) = upstreams.totals();
        self.connected_upstreams.set(connected as i64);
        self.registered_endpoints.set(endpoints as i64);
        prometheus_text::encode(&self.registry).inspect_err(|_| {
            self.handler_errors
                .get_or_create(&CauseLabel { cause: "encoding" })
                .inc();
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Piko's gossip counters; zero until the cluster exists.
const GOSSIP_COUNTERS: [(&str, &str); 10] = [
    (
        "piko_gossip_connections_inbound",
        "Number of inbound gossip connections",
    ),
    (
        "piko_gossip_connections_outbound",
        "Number of outbound gossip connections",
    ),
    (
        "piko_gossip_stream_bytes_inbound",
        "Bytes read from gossip connections",
    ),
    (
        "piko_gossip_stream_bytes_outbound",
        "Bytes written to gossip connections",
    ),
    (
        "piko_gossip_packet_bytes_inbound",
        "Bytes received in gossip packets",
    ),
    (
        "piko_gossip_packet_bytes_outbound",
        "Bytes sent in gossip packets",
    ),
    (
        "piko_gossip_digest_entries_inbound",
        "Digest entries received",
    ),
    ("piko_gossip_digest_entries_outbound", "Digest entries sent"),
    (
        "piko_gossip_delta_entries_inbound",
        "Delta entries received",
    ),
    ("piko_gossip_delta_entries_outbound", "Delta entries sent"),
];

/// One proxy-port request in the metrics, from its arrival: in flight until it is dropped,
/// whether with its response body or before any response (the client went away).
pub(crate) struct RequestMeter {
    metrics: std::sync::Arc<Metrics>,
    method: http::Method,
    started: std::time::Instant,
}

impl RequestMeter {
    pub(crate) fn start<B>(metrics: std::sync::Arc<Metrics>, request: &http::Request<B>) -> Self {
        metrics.proxy.in_flight.inc();
        metrics
            .proxy
            .request_size
            .observe(approximate_request_size(request));
        Self {
            metrics,
            method: request.method().clone(),
            started: std::time::Instant::now(),
        }
    }

    /// Records the request once `response`'s body has been written (or abandoned): latency
    /// covers the whole body, as Piko's handler time does.
    pub(crate) fn finish(
        self,
        response: http::Response<piko_http::body::Body>,
    ) -> http::Response<piko_http::body::Body> {
        use http_body_util::BodyExt;
        let labels = RequestLabels {
            status: response.status().as_u16(),
            method: MethodLabel(self.method.clone()),
        };
        response.map(|body| {
            CountedBody::new(body, move |written| {
                let proxy = &self.metrics.proxy;
                proxy.finished(&labels, self.started.elapsed(), written);
            })
            .boxed()
        })
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        self.metrics.proxy.in_flight.dec();
    }
}
