//! The server side of a WebSocket handshake, as gorilla/websocket's `Upgrader` does it (spec
//! §5.2.3), so Go clients see the statuses they expect; shared by the upstream port and the proxy
//! port's TCP route.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::upgrade::Upgraded;
use hyper_util::{rt::TokioIo, server::conn::auto::upgrade::downcast};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::{
    client_io::ClientIo,
    connection_deadlines::WatchedIo,
    json_error::full,
    serve::{Body, set_write_stall_limit},
};

/// Whether a comma-separated header contains `token`, case-insensitively (RFC 7230 token lists).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|value| {
            value
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
}

/// gorilla/websocket's upgrade checks, in its order; the `Sec-WebSocket-Accept` value on success.
pub(crate) fn check(headers: &HeaderMap) -> Result<String, StatusCode> {
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if !has_token(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<http::Uri>().ok())
            .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()));
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        match (origin_host, host) {
            (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host) => {}
            _ => return Err(StatusCode::FORBIDDEN),
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(StatusCode::BAD_REQUEST)?;
    match base64::engine::general_purpose::STANDARD.decode(key.as_bytes()) {
        Ok(decoded) if decoded.len() == 16 => Ok(derive_accept_key(key.as_bytes())),
        _ => Err(StatusCode::BAD_REQUEST),
    }
}

/// gorilla's rejection: the status text as a plain-text body, and the version it speaks.
pub(crate) fn rejection(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(status.canonical_reason().unwrap_or_default()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    response
}

/// The `101` that completes a handshake checked by [`check`].
pub(crate) fn switching_protocols(accept_key: &str) -> Response<Body> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(accept_key).expect("base64 is a valid header value"),
    );
    response
}

/// The client's connection and the bytes hyper read past the handshake, once the connection has
/// left hyper, with its write stall limit now `write_stall_limit` (`None` lifts it, where a
/// WebSocket's own keep-alive judges the peer from here on).
pub(crate) fn into_client_io(
    upgraded: Upgraded,
    write_stall_limit: Option<Duration>,
) -> Result<(ClientIo, Bytes), Upgraded> {
    let parts = downcast::<TokioIo<WatchedIo<ClientIo>>>(upgraded)?;
    let io = parts.io.into_inner().into_inner();
    set_write_stall_limit(io.tcp(), write_stall_limit);
    Ok((io, parts.read_buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        ("host", "piko:8001"),
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        GOOD.iter().copied().filter(|(n, _)| *n != name).collect()
    }

    #[test]
    fn accepts_a_valid_upgrade() {
        // RFC 6455's example key and accept value.
        assert_eq!(
            check(&headers(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rejects_as_gorilla_does() {
        assert_eq!(
            check(&headers(&without("connection"))),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check(&headers(&without("upgrade"))),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check(&headers(&without("sec-websocket-version"))),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check(&headers(&without("sec-websocket-key"))),
            Err(StatusCode::BAD_REQUEST)
        );
        let mut short_key = without("sec-websocket-key");
        short_key.push(("sec-websocket-key", "c2hvcnQ="));
        assert_eq!(check(&headers(&short_key)), Err(StatusCode::BAD_REQUEST));
        let mut foreign = GOOD.to_vec();
        foreign.push(("origin", "https://evil.example.com"));
        assert_eq!(check(&headers(&foreign)), Err(StatusCode::FORBIDDEN));
        let mut same = GOOD.to_vec();
        same.push(("origin", "http://PIKO:8001"));
        assert!(check(&headers(&same)).is_ok());
    }
}
