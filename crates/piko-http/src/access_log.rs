//! The access log (spec §3.11): one `request` record per proxied request, written when its
//! response has been sent, in subsystem `proxy.access` (server) or `proxy.http.access` (agent).
//! The record is a JSON object, serialised once, in the event's `access_record` field; piko's
//! logger writes it as it is, nested under `request` as Piko's lines have it.
//!
//! Unlike Piko, credentials are not logged by default: `Authorization`, `X-Piko-Authorization`,
//! `Proxy-Authorization`, `Cookie` and `Set-Cookie` are replaced by `[redacted]` unless the allow
//! list names them.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use hyper::body::{Frame, SizeHint};
use std::fmt::Write as _;

use crate::json_string::push_json_string;

use crate::body::{Body, BoxError};

/// Headers that carry credentials.
const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "x-piko-authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    // Node-to-node: a relayed request's signature, replayable for a few minutes.
    "x-piko-forward-signature",
];

/// Severity of access-log records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `debug`
    Debug,
    /// `info` (the default)
    #[default]
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

impl Level {
    /// Whether the installed logger keeps records of this level.
    fn enabled(self) -> bool {
        match self {
            Self::Debug => tracing::enabled!(tracing::Level::DEBUG),
            Self::Info => tracing::enabled!(tracing::Level::INFO),
            Self::Warn => tracing::enabled!(tracing::Level::WARN),
            Self::Error => tracing::enabled!(tracing::Level::ERROR),
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warn" => Self::Warn,
            "error" => Self::Error,
            other => return Err(format!("unsupported level: {other}")),
        })
    }
}

/// Which headers of one direction are logged: with an allow list only those, else all but the
/// block list.
#[derive(Clone, Debug, Default)]
pub struct HeaderFilter {
    /// Headers to log (case-insensitive); empty means all.
    pub allow_list: Vec<String>,
    /// Headers not to log (case-insensitive).
    pub block_list: Vec<String>,
}

impl HeaderFilter {
    fn validate(&self) -> Result<(), String> {
        if !self.allow_list.is_empty() && !self.block_list.is_empty() {
            return Err("cannot define both allow list and block list".into());
        }
        Ok(())
    }

    fn allowed(&self, name: &HeaderName) -> bool {
        let listed = |list: &[String]| list.iter().any(|n| n.eq_ignore_ascii_case(name.as_str()));
        if !self.allow_list.is_empty() {
            return listed(&self.allow_list);
        }
        !listed(&self.block_list)
    }

    fn explicitly_allowed(&self, name: &HeaderName) -> bool {
        self.allow_list
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_str()))
    }

    /// Headers as Piko logs them, as JSON text: canonical names in sorted order (Go's
    /// encoding of a map), arrays of values. Written straight into one string: this runs twice
    /// per request.
    fn render(&self, headers: &HeaderMap) -> String {
        let mut names: Vec<&HeaderName> = headers.keys().filter(|n| self.allowed(n)).collect();
        names.sort_unstable_by(|a, b| canonical_order(a.as_str(), b.as_str()));
        let mut out = String::with_capacity(2 + names.len() * 48);
        out.push('{');
        for (i, name) in names.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            // Header names are tokens: nothing in them needs escaping.
            push_canonical(&mut out, name.as_str());
            out.push_str("\":[");
            let secret = SECRET_HEADERS.contains(&name.as_str()) && !self.explicitly_allowed(name);
            for (j, value) in headers.get_all(name).iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                if secret {
                    out.push_str("\"[redacted]\"");
                } else {
                    push_json_string(&mut out, &String::from_utf8_lossy(value.as_bytes()));
                }
            }
            out.push(']');
        }
        out.push('}');
        out
    }
}

/// The byte at `index` of `name` once canonicalised: the first letter of each dash-separated part
/// upper case.
fn canonical_byte(name: &[u8], index: usize) -> u8 {
    if index == 0 || name[index - 1] == b'-' {
        name[index].to_ascii_uppercase()
    } else {
        name[index]
    }
}

/// Orders header names as their canonical forms order.
fn canonical_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    (0..a.len().min(b.len()))
        .map(|i| canonical_byte(a, i).cmp(&canonical_byte(b, i)))
        .find(|order| order.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// `x-forwarded-for` → `X-Forwarded-For`, as Go's `http.Header` keys read.
fn push_canonical(out: &mut String, name: &str) {
    let bytes = name.as_bytes();
    for index in 0..bytes.len() {
        out.push(char::from(canonical_byte(bytes, index)));
    }
}

/// Access-log settings (`proxy.access_log` on the server, a listener's `access_log` on the
/// agent).
#[derive(Clone, Debug)]
pub struct Config {
    /// The log subsystem of records: `proxy.access` on the server, `proxy.http.access` on the
    /// agent.
    pub subsystem: &'static str,
    /// Level of records (raised to warn for 5xx responses).
    pub level: Level,
    /// No access log at all.
    pub disable: bool,
    /// Which request headers are logged.
    pub request_headers: HeaderFilter,
    /// Which response headers are logged.
    pub response_headers: HeaderFilter,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            subsystem: "proxy.access",
            level: Level::default(),
            disable: false,
            request_headers: HeaderFilter::default(),
            response_headers: HeaderFilter::default(),
        }
    }
}

impl Config {
    /// # Errors
    /// An allow list and a block list for the same direction.
    pub fn validate(&self) -> Result<(), String> {
        if self.disable {
            return Ok(());
        }
        self.request_headers
            .validate()
            .map_err(|e| format!("access log: request headers: {e}"))?;
        self.response_headers
            .validate()
            .map_err(|e| format!("access log: response headers: {e}"))
    }
}

/// What is known of a request when it arrives.
#[derive(Debug)]
pub struct RequestRecord {
    method: http::Method,
    version: http::Version,
    uri: http::Uri,
    host: Option<http::HeaderValue>,
    headers: RequestHeaders,
    started: Instant,
}

/// Request headers, rendered at once when the record will surely be written, else kept raw in
/// case the response turns out to be a 5xx (whose record is raised to warn).
#[derive(Debug)]
enum RequestHeaders {
    Rendered(String),
    Raw(HeaderMap),
}

impl RequestRecord {
    /// Notes a request as it arrives; `None` when it will not be logged (disabled, `/_piko`
    /// paths, or a level the logger drops).
    pub fn start<B>(config: &Config, request: &http::Request<B>) -> Option<Self> {
        if config.disable || request.uri().path().starts_with("/_piko") {
            return None;
        }
        let headers = if config.level.enabled() {
            RequestHeaders::Rendered(config.request_headers.render(request.headers()))
        } else if Level::Warn.enabled() {
            RequestHeaders::Raw(request.headers().clone())
        } else {
            return None;
        };
        Some(Self {
            method: request.method().clone(),
            version: request.version(),
            uri: request.uri().clone(),
            host: request.headers().get(http::header::HOST).cloned(),
            headers,
            started: Instant::now(),
        })
    }

    /// Wraps the response so the record is written once its body has been sent (or dropped).
    /// Responses whose record the logger would drop are returned as they are.
    pub fn finish(self, config: &Config, response: http::Response<Body>) -> http::Response<Body> {
        match self.respond(config, response.status(), response.headers()) {
            Some(record) => response.map(|body| {
                use http_body_util::BodyExt;
                LoggedBody {
                    body,
                    record: Some(record),
                }
                .boxed()
            }),
            None => response,
        }
    }

    /// The record of a response with `status` and `headers` whose body is relayed by the
    /// caller: written when the returned value is dropped (the body sent, or abandoned). `None`
    /// when the logger would drop it.
    pub fn respond(
        mut self,
        config: &Config,
        status: http::StatusCode,
        headers: &HeaderMap,
    ) -> Option<ResponseRecord> {
        let status = status.as_u16();
        let level = if status >= 500 && config.level < Level::Warn {
            Level::Warn
        } else {
            config.level
        };
        if !level.enabled() {
            return None;
        }
        let headers = config.response_headers.render(headers);
        let request_headers =
            match std::mem::replace(&mut self.headers, RequestHeaders::Rendered(String::new())) {
                RequestHeaders::Rendered(value) => value,
                RequestHeaders::Raw(raw) => config.request_headers.render(&raw),
            };
        Some(ResponseRecord(Some(Pending {
            record: self,
            request_headers,
            status,
            headers,
            level,
            subsystem: config.subsystem,
        })))
    }
}

/// A request's record once its response has begun: written when dropped.
pub struct ResponseRecord(Option<Pending>);

impl std::fmt::Debug for ResponseRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseRecord").finish_non_exhaustive()
    }
}

impl Drop for ResponseRecord {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            pending.write();
        }
    }
}

struct Pending {
    record: RequestRecord,
    request_headers: String,
    status: u16,
    headers: String,
    level: Level,
    subsystem: &'static str,
}

impl Pending {
    fn write(self) {
        let RequestRecord {
            method,
            version,
            uri,
            host,
            started,
            ..
        } = self.record;
        let host = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let path = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy();
        // The record in Piko's field order, as one JSON object.
        let mut request = String::with_capacity(
            160 + host.len() + path.len() + self.request_headers.len() + self.headers.len(),
        );
        request.push_str("{\"proto\":\"");
        request.push_str(proto(version));
        request.push_str("\",\"method\":");
        push_json_string(&mut request, method.as_str());
        request.push_str(",\"host\":");
        push_json_string(&mut request, host);
        request.push_str(",\"path\":");
        push_json_string(&mut request, &path);
        request.push_str(",\"request_headers\":");
        request.push_str(&self.request_headers);
        request.push_str(",\"response_headers\":");
        request.push_str(&self.headers);
        let _ = write!(request, ",\"status\":{},\"duration\":\"", self.status);
        push_go_duration(&mut request, started.elapsed());
        request.push_str("\"}");
        match self.level {
            Level::Debug => tracing::debug!(
                subsystem = self.subsystem,
                access_record = request,
                "request"
            ),
            Level::Info => tracing::info!(
                subsystem = self.subsystem,
                access_record = request,
                "request"
            ),
            Level::Warn => tracing::warn!(
                subsystem = self.subsystem,
                access_record = request,
                "request"
            ),
            Level::Error => tracing::error!(
                subsystem = self.subsystem,
                access_record = request,
                "request"
            ),
        }
    }
}

/// The protocol as Go's `Request.Proto` names it.
fn proto(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A duration as Go prints it (`1.532ms`, `2.5s`).
fn push_go_duration(out: &mut String, duration: Duration) {
    let nanos = duration.as_nanos();
    let mut trimmed = |value: f64, unit: &str| {
        let start = out.len();
        let _ = write!(out, "{value:.3}");
        let kept = out[start..]
            .trim_end_matches('0')
            .trim_end_matches('.')
            .len();
        out.truncate(start + kept);
        out.push_str(unit);
    };
    match nanos {
        0 => out.push_str("0s"),
        n if n < 1_000 => {
            let _ = write!(out, "{n}ns");
        }
        n if n < 1_000_000 => trimmed(n as f64 / 1e3, "µs"),
        n if n < 1_000_000_000 => trimmed(n as f64 / 1e6, "ms"),
        n => trimmed(n as f64 / 1e9, "s"),
    }
}

/// A body that writes its request's record when it ends or is dropped. Bodies hyper knows to be
/// empty are never polled, and a client may go away mid-body: either way dropping the record
/// writes it.
struct LoggedBody {
    body: Body,
    record: Option<ResponseRecord>,
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.record.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    #[test]
    fn headers_are_filtered_canonicalised_and_secrets_redacted() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        headers.append("accept", "a".parse().unwrap());
        headers.append("accept", "b".parse().unwrap());
        let render = |filter: &HeaderFilter| -> serde_json::Value {
            serde_json::from_str(&filter.render(&headers)).unwrap()
        };
        let all = render(&HeaderFilter::default());
        assert_eq!(
            HeaderFilter::default().render(&headers),
            r#"{"Accept":["a","b"],"Authorization":["[redacted]"],"X-Forwarded-For":["1.2.3.4"]}"#,
            "sorted by canonical name, as Go encodes a map"
        );
        assert_eq!(all["Authorization"], json!(["[redacted]"]));
        assert_eq!(all["X-Forwarded-For"], json!(["1.2.3.4"]));
        assert_eq!(all["Accept"], json!(["a", "b"]));
        let blocked = render(&HeaderFilter {
            block_list: vec!["Accept".into()],
            ..Default::default()
        });
        assert!(blocked.get("Accept").is_none());
        let allowed = render(&HeaderFilter {
            allow_list: vec!["authorization".into()],
            ..Default::default()
        });
        assert_eq!(allowed, json!({"Authorization": ["Bearer t"]}));
        let both = HeaderFilter {
            allow_list: vec!["a".into()],
            block_list: vec!["b".into()],
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn header_values_are_escaped_as_json_and_names_sorted_canonically() {
        let mut headers = HeaderMap::new();
        headers.insert("x-b", HeaderValue::from_bytes(b"q\"\\\t\xff").unwrap());
        headers.insert("x-_a", HeaderValue::from_static("1"));
        headers.insert("x-a-b", HeaderValue::from_static("2"));
        let text = HeaderFilter::default().render(&headers);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["X-B"], json!(["q\"\\\t\u{fffd}"]));
        let names: Vec<&str> = text
            .match_indices("\":[")
            .map(|(i, _)| {
                let start = text[..i].rfind('"').unwrap() + 1;
                &text[start..i]
            })
            .collect();
        // Canonical forms compared byte by byte: "X-A-B" < "X-B" < "X-_a".
        assert_eq!(names, ["X-A-B", "X-B", "X-_a"]);
    }

    fn go_duration(duration: Duration) -> String {
        let mut out = String::new();
        push_go_duration(&mut out, duration);
        out
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(go_duration(Duration::from_micros(1532)), "1.532ms");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_nanos(800)), "800ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
