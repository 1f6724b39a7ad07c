//! The error response Piko's proxies (the server's proxy port and the agent) send: a JSON
//! object with one `error` field.

use http::{HeaderValue, header};

/// Piko's proxy error response (server and agent alike): `{"error":"<message>"}` and a newline,
/// `application/json`, `nosniff`.
pub fn error_response(status: http::StatusCode, message: &str) -> http::Response<bytes::Bytes> {
    let body = format!("{{\"error\":{}}}\n", serde_json_string(message));
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

/// A JSON string literal (the messages are fixed ASCII, but quote properly anyway).
fn serde_json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
        assert_eq!(serde_json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
