//! Piko's JSON error responses: `{"error":"..."}`.

use http::{HeaderValue, Response, StatusCode, header};

use crate::serve::Body;

pub(crate) use piko_http::body::full;

/// Piko's proxy error response (see [`piko_http::error_response::error_response`]).
pub(crate) fn proxy_error(status: StatusCode, message: &str) -> Response<Body> {
    piko_http::error_response::error_response(status, message).map(full)
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
