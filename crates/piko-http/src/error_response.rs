//! The error response Piko's proxies (the server's proxy port and the agent) send: a JSON
//! object with one `error` field.

use http::{HeaderValue, header};

use crate::json_string::push_json_string;

/// Piko's proxy error response (server and agent alike): `{"error":"<message>"}` and a newline,
/// `application/json`, `nosniff`.
pub fn error_response(status: http::StatusCode, message: &str) -> http::Response<bytes::Bytes> {
    let mut body = String::with_capacity(message.len() + 14);
    body.push_str("{\"error\":");
    push_json_string(&mut body, message);
    body.push_str("}\n");
    let mut response = http::Response::new(bytes::Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_pikos() {
        let response = error_response(http::StatusCode::BAD_GATEWAY, "upstream unreachable");
        assert_eq!(
            response.body().as_ref(),
            b"{\"error\":\"upstream unreachable\"}\n"
        );
        let quoted = error_response(http::StatusCode::BAD_GATEWAY, "a\"b");
        assert_eq!(quoted.body().as_ref(), b"{\"error\":\"a\\\"b\"}\n");
    }
}
