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
use serde_json::{Map, Value};

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

    /// Headers as Piko logs them: canonical names, arrays of values.
    fn render(&self, headers: &HeaderMap) -> Value {
        let mut out = Map::new();
        for name in headers.keys() {
            if !self.allowed(name) {
                continue;
            }
            let secret = SECRET_HEADERS.contains(&name.as_str()) && !self.explicitly_allowed(name);
            let values: Vec<Value> = headers
                .get_all(name)
                .iter()
                .map(|v| {
                    if secret {
                        "[redacted]".into()
                    } else {
                        String::from_utf8_lossy(v.as_bytes()).into()
                    }
                })
                .collect();
            out.insert(canonical(name.as_str()), Value::Array(values));
        }
        Value::Object(out)
    }
}

/// `x-forwarded-for` → `X-Forwarded-For`, as Go's `http.Header` keys read.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
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
    Rendered(Value),
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
    pub fn finish(
        mut self,
        config: &Config,
        response: http::Response<Body>,
    ) -> http::Response<Body> {
        let status = response.status().as_u16();
        let level = if status >= 500 && config.level < Level::Warn {
            Level::Warn
        } else {
            config.level
        };
        if !level.enabled() {
            return response;
        }
        let headers = config.response_headers.render(response.headers());
        let request_headers =
            match std::mem::replace(&mut self.headers, RequestHeaders::Rendered(Value::Null)) {
                RequestHeaders::Rendered(value) => value,
                RequestHeaders::Raw(raw) => config.request_headers.render(&raw),
            };
        let pending = Pending {
            record: self,
            request_headers,
            status,
            headers,
            level,
            subsystem: config.subsystem,
        };
        response.map(|body| {
            use http_body_util::BodyExt;
            LoggedBody {
                body,
                pending: Some(pending),
            }
            .boxed()
        })
    }
}

struct Pending {
    record: RequestRecord,
    request_headers: Value,
    status: u16,
    headers: Value,
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
        let entry = Entry {
            proto: proto(version),
            method: method.as_str(),
            host,
            path: &path,
            request_headers: &self.request_headers,
            response_headers: &self.headers,
            status: self.status,
            duration: go_duration(started.elapsed()),
        };
        let request = serde_json::to_string(&entry).unwrap_or_default();
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

/// The record of one request, in Piko's field order.
#[derive(serde::Serialize)]
struct Entry<'a> {
    proto: &'a str,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    request_headers: &'a Value,
    response_headers: &'a Value,
    status: u16,
    duration: String,
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
fn go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    let trim = |value: f64, unit: &str| {
        let text = format!("{value:.3}");
        format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
    };
    match nanos {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => trim(n as f64 / 1e3, "µs"),
        n if n < 1_000_000_000 => trim(n as f64 / 1e6, "ms"),
        n => trim(n as f64 / 1e9, "s"),
    }
}

/// A body that writes its request's record when it ends or is dropped.
struct LoggedBody {
    body: Body,
    pending: Option<Pending>,
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none()
            && let Some(pending) = self.pending.take()
        {
            pending.write();
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // Bodies hyper knows to be empty are never polled, and a client may go away mid-body:
        // either way the request is over.
        if let Some(pending) = self.pending.take() {
            pending.write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_are_filtered_canonicalised_and_secrets_redacted() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        headers.append("accept", "a".parse().unwrap());
        headers.append("accept", "b".parse().unwrap());
        let all = HeaderFilter::default().render(&headers);
        assert_eq!(all["Authorization"], json!(["[redacted]"]));
        assert_eq!(all["X-Forwarded-For"], json!(["1.2.3.4"]));
        assert_eq!(all["Accept"], json!(["a", "b"]));
        let blocked = HeaderFilter {
            block_list: vec!["Accept".into()],
            ..Default::default()
        }
        .render(&headers);
        assert!(blocked.get("Accept").is_none());
        let allowed = HeaderFilter {
            allow_list: vec!["authorization".into()],
            ..Default::default()
        }
        .render(&headers);
        assert_eq!(allowed, json!({"Authorization": ["Bearer t"]}));
        let both = HeaderFilter {
            allow_list: vec!["a".into()],
            block_list: vec!["b".into()],
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(go_duration(Duration::from_micros(1532)), "1.532ms");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_nanos(800)), "800ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
