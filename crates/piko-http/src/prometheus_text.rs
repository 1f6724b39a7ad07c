//! Prometheus text as Piko's Go services serve it (format 0.0.4), from `prometheus-client`'s
//! registries, and the pieces of Piko's HTTP metrics that the server and the agent share: bucket
//! bounds, the method label, the request size approximation.

use prometheus_client::{
    encoding::{EncodeLabelValue, LabelValueEncoder},
    registry::Registry,
};
use std::fmt::Write as _;

/// Go's default latency buckets, as Piko's histograms use them.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Piko's size buckets: 256 × 4ⁿ bytes, n = 0..7.
pub const SIZE_BUCKETS: [f64; 8] = [
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
];

/// An HTTP method as a label value: the standard methods by name, any other `OTHER`.
///
/// A method is whatever token a client sends, so labelling it as sent would let clients create
/// series without bound.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct MethodLabel(&'static str);

impl MethodLabel {
    /// The label of every method outside the standard set.
    pub const OTHER: Self = Self("OTHER");

    /// The label for `method`.
    pub fn of(method: &http::Method) -> Self {
        use http::Method;
        Self(match *method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::CONNECT => "CONNECT",
            Method::OPTIONS => "OPTIONS",
            Method::TRACE => "TRACE",
            Method::PATCH => "PATCH",
            _ => return Self::OTHER,
        })
    }

    /// The label's text.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0)
    }
}

/// The registry's metrics as Prometheus 0.0.4 text.
///
/// # Errors
/// The registry could not be encoded.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut open_metrics = String::new();
    prometheus_client::encoding::text::encode(&mut open_metrics, registry)?;
    Ok(to_prometheus_text(&open_metrics))
}

/// The answer to a scrape: the rendered text, or a 500 when it could not be rendered.
pub fn scrape_response(
    rendered: Result<String, std::fmt::Error>,
) -> http::Response<crate::body::Body> {
    use http::{HeaderValue, StatusCode, header};
    match rendered {
        Ok(text) => {
            let mut response = http::Response::new(crate::body::full(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(err) => {
            tracing::warn!(error = %err, "failed to encode metrics");
            let mut response = http::Response::new(crate::body::full("failed to encode metrics\n"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
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
pub fn approximate_request_size<B>(request: &http::Request<B>) -> f64 {
    // The URI's text length, without formatting it (this runs for every proxied request).
    let uri = request.uri();
    let uri_len = uri
        .scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let mut size = uri_len
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
    // The declared length is the client's word, up to u64::MAX: summed as a float, as Go sums
    // it into its float histogram, so no value can overflow the sum.
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    size as f64 + declared as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_counts_as_its_text() {
        for uri in ["/a/b?c=d", "http://example.com:8000/x?y", "*"] {
            let request = http::Request::builder().uri(uri).body(()).unwrap();
            let expected = request.uri().to_string().len() + "GET".len() + "HTTP/1.1".len();
            assert_eq!(approximate_request_size(&request), expected as f64, "{uri}");
        }
    }

    #[test]
    fn a_declared_length_past_usize_is_summed_without_overflow() {
        // In the test profile an overflowing sum panics; in release it used to wrap to a tiny
        // size.
        let request = http::Request::builder()
            .uri("/")
            .header("content-length", "18446744073709551613")
            .body(())
            .unwrap();
        assert!(approximate_request_size(&request) > 1.8e19);
    }

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        for (method, label) in [
            ("GET", "GET"),
            ("PATCH", "PATCH"),
            ("CONNECT", "CONNECT"),
            ("PROPFIND", "OTHER"),
            ("get", "OTHER"),
            ("X-RANDOM-1234", "OTHER"),
        ] {
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(MethodLabel::of(&method).as_str(), label, "{method}");
        }
    }

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
