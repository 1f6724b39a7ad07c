//! The server's Prometheus metrics (spec §10.2), served on the admin port's `/metrics` in the
//! Prometheus text format Piko serves (0.0.4), so existing scrapes, alerts and Grafana dashboards
//! keep working: same names, types and labels.
//!
//! The cluster and gossip families report the single local node until the cluster exists.

use std::{fmt::Write as _, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::upstreams::Upstreams;

/// Go's default latency buckets, as Piko's histograms use them.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Piko's size buckets: 256 × 4ⁿ bytes, n = 0..7.
const SIZE_BUCKETS: [f64; 8] = [
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
];

/// An HTTP method as a label value, without allocating for the standard ones.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct MethodLabel(pub(crate) http::Method);

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

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
        let mut open_metrics = String::new();
        if let Err(err) =
            prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
        {
            self.handler_errors
                .get_or_create(&CauseLabel { cause: "encoding" })
                .inc();
            return Err(err);
        }
        Ok(to_prometheus_text(&open_metrics))
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
            MeteredBody {
                body,
                meter: self,
                labels,
                written: None,
            }
            .boxed()
        })
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        self.metrics.proxy.in_flight.dec();
    }
}

/// A proxied response's body, counting the bytes written.
struct MeteredBody {
    body: piko_http::body::Body,
    meter: RequestMeter,
    labels: RequestLabels,
    written: Option<u64>,
}

impl hyper::body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = piko_http::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            *self.written.get_or_insert(0) += data.len() as u64;
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        let meter = &self.meter;
        meter
            .metrics
            .proxy
            .finished(&self.labels, meter.started.elapsed(), self.written);
    }
}

/// OpenMetrics text (what `prometheus-client` writes) as the Prometheus 0.0.4 text Piko's Go
/// client serves: a counter's `# HELP` and `# TYPE` name it with its `_total`, and there is no
/// `# EOF`. Samples are the same in both.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => push_with_go_le(&mut text, line),
        }
        text.push('\n');
    }
    text
}

/// Writes a sample line with its `le` label as Go formats the bound (`256`, `2.5`,
/// `1.048576e+06`, where `prometheus-client` writes `256.0` and `1048576.0`): a series keeps its
/// identity when a node moves from Piko to piko.
fn push_with_go_le(text: &mut String, line: &str) {
    let Some(start) = line.find("le=\"").map(|i| i + 4) else {
        text.push_str(line);
        return;
    };
    let Some(len) = line[start..].find('"') else {
        text.push_str(line);
        return;
    };
    let bound = &line[start..start + len];
    text.push_str(&line[..start]);
    match bound.parse::<f64>() {
        Ok(value) if value.is_finite() => text.push_str(&go_float(value)),
        _ => text.push_str(bound),
    }
    text.push_str(&line[start + len..]);
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest digits, in exponent form when the
/// exponent is below -4 or at least 6 (when the shortest form has few digits, the 'g' rule of
/// precision 6 applies).
fn go_float(value: f64) -> String {
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if value != 0.0 && !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        format!("{value}")
    }
}

/// Go's `promhttp` approximation of a request's size: URL, method, protocol, header names and
/// values, host, and the declared body length.
pub(crate) fn approximate_request_size<B>(request: &http::Request<B>) -> f64 {
    let mut size = request.uri().to_string().len()
        + request.method().as_str().len()
        + match request.version() {
            http::Version::HTTP_2 => "HTTP/2.0".len(),
            _ => "HTTP/1.1".len(),
        };
    for (name, value) in request.headers() {
        size += name.as_str().len() + value.len();
    }
    if let Some(host) = request.headers().get(http::header::HOST) {
        size += host.len();
    }
    if let Some(length) = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        size += length;
    }
    size as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_formatted_as_go_formats_them() {
        for (value, go) in [
            (0.005, "0.005"),
            (0.25, "0.25"),
            (1.0, "1"),
            (2.5, "2.5"),
            (10.0, "10"),
            (256.0, "256"),
            (262_144.0, "262144"),
            (1_048_576.0, "1.048576e+06"),
            (4_194_304.0, "4.194304e+06"),
            (0.00001, "1e-05"),
        ] {
            assert_eq!(go_float(value), go, "{value}");
        }
        let mut text = String::new();
        push_with_go_le(&mut text, r#"x_bucket{status="200",le="1048576.0"} 3"#);
        assert_eq!(text, r#"x_bucket{status="200",le="1.048576e+06"} 3"#);
    }

    #[test]
    fn counters_are_named_with_total_as_go_names_them() {
        let open = "# HELP a_requests Total.\n# TYPE a_requests counter\na_requests_total 3\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP a_requests_total Total.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n"
        );
    }
}
