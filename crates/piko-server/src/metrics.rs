//! The server's Prometheus metrics (spec §10.2), served on the admin port's `/metrics` in the
//! Prometheus text format Piko serves (0.0.4), so existing scrapes, alerts and Grafana dashboards
//! keep working: same names, types and labels.
//!
//! The gossip traffic counters stay at zero: chitchat does not report its traffic.
//!
//! Beyond Piko's families, a few that operators of a tunnel need, none labelled by endpoint (an
//! endpoint label multiplies series by the number of endpoints): how long requests and tunnels
//! take by route and outcome, bytes relayed, streams open to upstreams, and why upstreams
//! disconnect.

use std::{sync::OnceLock, time::Duration};

use piko_http::counted_body::CountedBody;
use piko_http::prometheus_text::{
    self, LATENCY_BUCKETS, MethodLabel, SIZE_BUCKETS, approximate_request_size,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{cluster::NodeStatus, upstreams::Upstreams};

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

/// The proxy port's routes, as the `route` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A plain HTTP request.
    Http,
    /// An HTTP upgrade (WebSocket) relayed to an upstream.
    Upgrade,
    /// The TCP route.
    Tcp,
    /// A request relayed to another node, which holds the endpoint's upstreams.
    Forwarded,
}

impl Route {
    const ALL: [Self; 4] = [Self::Http, Self::Upgrade, Self::Tcp, Self::Forwarded];

    fn label(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Upgrade => "upgrade",
            Self::Tcp => "tcp",
            Self::Forwarded => "forwarded",
        }
    }
}

/// Which way relayed bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From clients towards upstreams.
    In,
    /// From upstreams towards clients.
    Out,
}

/// Marks a response that says the endpoint has no upstream here, so that its outcome is told
/// apart from other 502s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoUpstream;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    route: &'static str,
    /// `in`: from clients towards upstreams; `out`: towards clients.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// What became of a request or a tunnel, as the `outcome` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    ClientError,
    NoUpstream,
    UpstreamError,
    Timeout,
    ServerError,
}

impl Outcome {
    const COUNT: usize = 6;

    /// A response's outcome.
    fn of(status: u16, no_upstream: bool) -> Self {
        match status {
            _ if no_upstream => Self::NoUpstream,
            ..400 => Self::Success,
            504 => Self::Timeout,
            400..500 => Self::ClientError,
            502 => Self::UpstreamError,
            _ => Self::ServerError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::NoUpstream => "no_upstream",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::ServerError => "server_error",
        }
    }
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
    route_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `route_duration`'s histograms, each looked up once (on first use, so that only the
    /// combinations that happen are exposed).
    route_histograms: [[OnceLock<Histogram>; Outcome::COUNT]; 4],
    bytes: Family<BytesLabels, Counter>,
    /// `bytes`' counters by route and direction, looked up once rather than per request.
    byte_counters: [[Counter; 2]; 4],
    active_streams: Gauge,
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

    fn route_finished(&self, route: Route, outcome: Outcome, elapsed: Duration) {
        self.route_histograms[route as usize][outcome as usize]
            .get_or_init(|| {
                self.route_duration
                    .get_or_create(&RouteLabels {
                        route: route.label(),
                        outcome: outcome.label(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The counter of bytes relayed on `route` in `direction`.
    pub(crate) fn bytes(&self, route: Route, direction: Direction) -> &Counter {
        &self.byte_counters[route as usize][direction as usize]
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
    upstream_connects: Counter,
    upstream_disconnects: Family<ReasonLabel, Counter>,
    remote_requests: Family<NodeLabel, Counter>,
    alive_tasks: Gauge,
    /// The node IDs `remote_requests` has a series for. IDs come from gossip, so the set is
    /// capped and pruned as nodes are forgotten.
    remote_request_nodes: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Most node IDs `piko_upstreams_remote_requests` labels; requests to further nodes are counted
/// under `node_id="other"` until a labelled node is forgotten.
pub(crate) const MAX_REMOTE_NODE_LABELS: usize = 256;

/// The `node_id` that stands for every node past [`MAX_REMOTE_NODE_LABELS`].
const OTHER_NODE: &str = "other";

impl Metrics {
    /// Every family of spec §10.2, registered under Piko's names.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let byte_counters = Route::ALL.map(|route| {
            ["in", "out"].map(|direction| {
                bytes
                    .get_or_create(&BytesLabels {
                        route: route.label(),
                        direction,
                    })
                    .clone()
            })
        });
        let proxy = ProxyMetrics {
            in_flight: Gauge::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            request_size: Histogram::new(SIZE_BUCKETS),
            response_size: Histogram::new(SIZE_BUCKETS),
            route_duration: Family::new_with_constructor(latency_histogram),
            route_histograms: Default::default(),
            bytes,
            byte_counters,
            active_streams: Gauge::default(),
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
        registry.register(
            "piko_proxy_route_duration_seconds",
            "Time from a request's arrival to the end of its response, or of its tunnel, by route (http, upgrade, tcp) and outcome",
            proxy.route_duration.clone(),
        );
        registry.register(
            "piko_proxy_bytes",
            "Body and tunnel bytes relayed, by route and direction (in: from clients, out: to clients)",
            proxy.bytes.clone(),
        );
        registry.register(
            "piko_proxy_active_streams",
            "Streams open to upstreams connected to this node",
            proxy.active_streams.clone(),
        );
        let alive_tasks = Gauge::default();
        registry.register(
            "piko_runtime_alive_tasks",
            "Tasks alive in the node's async runtime (one per connection, stream and timer job: a count that never comes back down is a leak)",
            alive_tasks.clone(),
        );
        let metrics = Self {
            proxy,
            upstream_connects: Counter::default(),
            upstream_disconnects: Family::default(),
            remote_requests: Family::default(),
            alive_tasks,
            remote_request_nodes: std::sync::Mutex::default(),
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
            "piko_upstreams_connects",
            "Upstream connections accepted by this node",
            metrics.upstream_connects.clone(),
        );
        registry.register(
            "piko_upstreams_disconnects",
            "Upstream connections ended, by reason",
            metrics.upstream_disconnects.clone(),
        );
        registry.register(
            "piko_upstreams_remote_requests",
            "Number of requests forwarded to another node",
            metrics.remote_requests.clone(),
        );
        registry.register(
            "piko_cluster_nodes",
            "Number of nodes in the cluster state",
            metrics.cluster_nodes.clone(),
        );
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
    pub(crate) fn render(
        &self,
        upstreams: &Upstreams,
        nodes: &[crate::cluster::Node],
    ) -> Result<String, std::fmt::Error> {
        for status in [
            NodeStatus::Active,
            NodeStatus::Unreachable,
            NodeStatus::Left,
        ] {
            let count = nodes.iter().filter(|node| node.status == status).count();
            self.cluster_nodes
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let (endpoints, connected) = upstreams.totals();
        self.connected_upstreams.set(connected as i64);
        self.registered_endpoints.set(endpoints as i64);
        self.proxy
            .active_streams
            .set(i64::try_from(upstreams.open_streams()).unwrap_or(i64::MAX));
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

impl Metrics {
    /// A request was forwarded to `node_id`.
    pub(crate) fn remote_request(&self, node_id: &str) {
        // The set stays locked while the series is found or made, so that a concurrent
        // `forget_remote_nodes` cannot leave a series behind for a node no longer in the set.
        let mut labelled = self
            .remote_request_nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let node_id = if labelled.contains(node_id) {
            node_id
        } else if labelled.len() < MAX_REMOTE_NODE_LABELS {
            labelled.insert(node_id.to_owned());
            node_id
        } else {
            OTHER_NODE
        };
        self.remote_requests
            .get_or_create(&NodeLabel {
                node_id: node_id.to_owned(),
            })
            .inc();
    }

    /// Drops the `remote_requests` series of nodes the cluster no longer knows, so that node IDs
    /// which come and go (a new ID at every restart) do not pile up.
    pub(crate) fn forget_remote_nodes(&self, known: impl Fn(&str) -> bool) {
        let mut labelled = self
            .remote_request_nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        labelled.retain(|node_id| {
            let keep = known(node_id);
            if !keep {
                self.remote_requests.remove(&NodeLabel {
                    node_id: node_id.clone(),
                });
            }
            keep
        });
    }

    /// An upstream connected.
    pub(crate) fn upstream_connected(&self) {
        self.upstream_connects.inc();
    }

    /// An upstream's connection ended, for `reason`.
    pub(crate) fn upstream_disconnected(&self, reason: &'static str) {
        self.upstream_disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
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
/// whether with its response body, at the end of its tunnel, or before any response (the client
/// went away).
pub(crate) struct RequestMeter {
    metrics: std::sync::Arc<Metrics>,
    method: MethodLabel,
    started: std::time::Instant,
    route: Route,
    /// The request's slot of its endpoint's in-flight limit: the meter lives exactly as long.
    slot: Option<crate::endpoint_load::Slot>,
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
            method: MethodLabel::of(request.method()),
            started: std::time::Instant::now(),
            route: Route::Http,
            slot: None,
        }
    }

    /// Keeps `slot` until the request is over.
    pub(crate) fn hold(&mut self, slot: crate::endpoint_load::Slot) {
        self.slot = Some(slot);
    }

    /// The request turned out to be on `route`.
    pub(crate) fn set_route(&mut self, route: Route) {
        self.route = route;
    }

    /// Records the request once `response`'s body has been written (or abandoned): latency
    /// covers the whole body, as Piko's handler time does.
    pub(crate) fn finish(
        self,
        response: http::Response<piko_http::body::Body>,
    ) -> http::Response<piko_http::body::Body> {
        use http_body_util::BodyExt;
        let status = response.status().as_u16();
        let labels = RequestLabels {
            status,
            method: self.method,
        };
        let outcome = Outcome::of(status, response.extensions().get::<NoUpstream>().is_some());
        response.map(|body| {
            CountedBody::new(body, move |written| {
                let proxy = &self.metrics.proxy;
                let elapsed = self.started.elapsed();
                proxy.finished(&labels, elapsed, written);
                proxy.route_finished(self.route, outcome, elapsed);
                if let Some(written) = written {
                    proxy.bytes(self.route, Direction::Out).inc_by(written);
                }
            })
            .boxed()
        })
    }

    /// Records a tunnel (an upgrade or the TCP route) when it ends, as Piko does: status 200
    /// (Piko's handlers write the upgrade past gin's response writer, which keeps its default),
    /// the tunnel's lifetime, a response size of 0 (gin's on a hijack). The tunnel's bytes are
    /// counted as they pass; `outcome` says whether it was ever established.
    pub(crate) fn finish_tunnel(self, outcome: Outcome) {
        let labels = RequestLabels {
            status: 200,
            method: self.method,
        };
        let proxy = &self.metrics.proxy;
        let elapsed = self.started.elapsed();
        proxy.finished(&labels, elapsed, Some(0));
        proxy.route_finished(self.route, outcome, elapsed);
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        self.metrics.proxy.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote_series(metrics: &Metrics) -> Vec<String> {
        let text = prometheus_text::encode(&metrics.registry).unwrap();
        text.lines()
            .filter(|line| line.starts_with("piko_upstreams_remote_requests_total{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn node_ids_from_gossip_label_a_bounded_set_of_series() {
        let metrics = Metrics::new();
        for n in 0..MAX_REMOTE_NODE_LABELS + 100 {
            metrics.remote_request(&format!("forged-{n}"));
        }
        let series = remote_series(&metrics);
        assert_eq!(series.len(), MAX_REMOTE_NODE_LABELS + 1);
        assert!(
            series.iter().any(|line| line
                .starts_with(r#"piko_upstreams_remote_requests_total{node_id="other"} 100"#)),
            "{series:?}"
        );

        // Forgotten nodes free their series and their places.
        metrics.forget_remote_nodes(|id| id == "forged-0");
        assert_eq!(remote_series(&metrics).len(), 2);
        metrics.remote_request("real");
        assert!(
            remote_series(&metrics)
                .iter()
                .any(|line| line.contains(r#"node_id="real""#))
        );
    }
}
