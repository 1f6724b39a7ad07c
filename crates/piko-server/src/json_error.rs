//! Piko's JSON error responses: `{"error":"..."}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::serve::Body;

/// A body of any fixed bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Piko's proxy error response (see [`piko_protocol::error_response::error_response`]).
pub(crate) fn proxy_error(status: StatusCode, message: &str) -> Response<Body> {
    piko_protocol::error_response::error_response(status, message).map(full)
}

/// The error response shape of Piko's gin handlers (upstream port, endpoint checks):
/// `application/json; charset=utf-8`, no trailing newline.
pub(crate) fn gin_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Go's `404 page not found`.
pub(crate) fn not_found() -> Response<Body> {
    let mut response = Response::new(full("404 page not found"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
