//! Opening a WebSocket to a Piko server: URL, TCP, handshake, and errors reported the way Piko's
//! Go client reports them. Shared by [`Upstream`](crate::Upstream) (upstream port) and
//! [`Dialer`](crate::Dialer) (proxy port).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use piko_protocol::{HandshakeError, WsByteStream, client_handshake};
use tokio::net::TcpStream;

use crate::{
    client_tls::{TlsError, system_config},
    error::ConnectError,
    outbound_proxy::OutboundProxy,
    secret::Secret,
    server_stream::ServerStream,
};

/// Piko's Go client waits this long for the WebSocket handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The WebSocket URL of `endpoint` under `route` on the server at `base`: `http` becomes `ws`,
/// a path prefix of `base` is kept, the endpoint is percent-encoded.
pub(crate) fn ws_url(base: &str, route: &str, endpoint: &str) -> Result<http::Uri, ConnectError> {
    let uri: http::Uri = base
        .parse()
        .map_err(|err| ConnectError::Url(format!("{base}: {err}")))?;
    let scheme = match uri.scheme_str() {
        Some("http" | "ws") => "ws",
        Some("https" | "wss") => "wss",
        _ => {
            return Err(ConnectError::Url(format!(
                "{base}: scheme must be http or https"
            )));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| ConnectError::Url(format!("{base}: missing host")))?;
    let prefix = uri.path().trim_end_matches('/');
    let endpoint =
        percent_encoding::utf8_percent_encode(endpoint, percent_encoding::NON_ALPHANUMERIC);
    format!("{scheme}://{authority}{prefix}{route}{endpoint}")
        .parse()
        .map_err(|err| ConnectError::Url(format!("{base}: {err}")))
}

/// What a handshake sends: the bearer token and any other headers; the TLS settings for `https`
/// URLs (the system's roots when `None`); the outbound proxy to go through, if any.
#[derive(Debug, Default)]
pub(crate) struct Handshake {
    pub(crate) token: Option<Secret>,
    pub(crate) extra: Vec<(HeaderName, String)>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) proxy: Option<OutboundProxy>,
}

/// One attempt: TCP, TLS for `wss` URLs, then the WebSocket handshake, all bounded by
/// [`HANDSHAKE_TIMEOUT`]. Returns the connection, the headers of the server's `101` and its
/// address.
pub(crate) async fn connect(
    url: http::Uri,
    handshake: &Handshake,
) -> Result<(WsByteStream<ServerStream>, HeaderMap, SocketAddr), ConnectError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_within(url, handshake))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out").into())
        })
}

async fn connect_within(
    url: http::Uri,
    handshake: &Handshake,
) -> Result<(WsByteStream<ServerStream>, HeaderMap, SocketAddr), ConnectError> {
    let authority = url.authority().expect("ws_url has an authority");
    let secure = url.scheme_str() == Some("wss");
    let port = authority
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    // `[::1]` in a URL is `::1` to the resolver and to TLS.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = match &handshake.proxy {
        Some(proxy) => proxy.connect(&host, port).await?,
        None => TcpStream::connect((host.as_str(), port)).await?,
    };
    let _ = tcp.set_nodelay(true);
    piko_protocol::enable_keepalive(&tcp);
    let server = tcp.peer_addr()?;
    let stream = if secure {
        let mut tls = match &handshake.tls {
            Some(tls) => (**tls).clone(),
            None => system_config().map_err(|err| ConnectError::Tls(TlsError::Rustls(err)))?,
        };
        // A WebSocket handshake is HTTP/1.1, whatever else the configuration offers.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls_pki_types::ServerName::try_from(host)
            .map_err(|err| ConnectError::Url(format!("{url}: {err}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await?;
        ServerStream::Tls(Box::new(tls))
    } else {
        ServerStream::Plain(tcp)
    };
    let mut request_headers = HeaderMap::new();
    if let Some(token) = &handshake.token {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ConnectError::Url("token is not a valid header value".into()))?;
        request_headers.insert(header::AUTHORIZATION, value);
    }
    for (name, value) in &handshake.extra {
        let value = HeaderValue::from_str(value)
            .map_err(|_| ConnectError::Url(format!("{name} is not a valid header value")))?;
        request_headers.insert(name.clone(), value);
    }
    match client_handshake(stream, &url, &request_headers).await {
        Ok((ws, headers)) => Ok((ws, headers, server)),
        Err(err) => Err(handshake_error(err)),
    }
}

/// A handshake failure as Piko's Go client reports it: the JSON `error` of a non-101 answer
/// when there is one, else the status text.
fn handshake_error(err: HandshakeError) -> ConnectError {
    match err {
        HandshakeError::Refused {
            status,
            headers,
            body,
        } => {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let message = json
                .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .flatten()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "websocket: bad handshake".to_owned());
            ConnectError::Status {
                status: status.as_u16(),
                message,
            }
        }
        HandshakeError::Io(err) => ConnectError::Transport(err),
        HandshakeError::NotHttp11 => ConnectError::NotHttp11,
        invalid @ HandshakeError::Invalid(_) => {
            ConnectError::Transport(std::io::Error::other(invalid))
        }
    }
}

#[cfg(test)]
mod tests {
    use piko_protocol::wire::{TCP_PATH, UPSTREAM_PATH};

    use super::*;

    #[test]
    fn an_http_1_0_answer_says_what_is_likely_wrong() {
        let err = handshake_error(HandshakeError::NotHttp11);
        assert!(matches!(err, ConnectError::NotHttp11), "{err:?}");
        assert!(err.to_string().contains("use an https:// URL"), "{err}");
    }

    #[test]
    fn ws_url_keeps_the_prefix_and_encodes_the_endpoint() {
        assert_eq!(
            ws_url("http://piko.example.com:8001/base/", UPSTREAM_PATH, "a b")
                .unwrap()
                .to_string(),
            "ws://piko.example.com:8001/base/piko/v1/upstream/a%20b"
        );
        assert_eq!(
            ws_url("http://localhost:8000", TCP_PATH, "e")
                .unwrap()
                .to_string(),
            "ws://localhost:8000/_piko/v1/tcp/e"
        );
        assert_eq!(
            ws_url("https://piko.example.com", TCP_PATH, "e")
                .unwrap()
                .to_string(),
            "wss://piko.example.com/_piko/v1/tcp/e"
        );
        assert!(ws_url("ftp://x", UPSTREAM_PATH, "e").is_err());
        assert!(ws_url("not a url", UPSTREAM_PATH, "e").is_err());
    }
}
