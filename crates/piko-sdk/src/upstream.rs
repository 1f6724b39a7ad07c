//! `Upstream`: where to connect and how, and the connection handshake.

use std::{net::SocketAddr, time::Duration};

use http::{HeaderValue, header};
use piko_mux::Session;
use piko_protocol::{
    WsByteStream, websocket_config,
    wire::{TENANT_HEADER, UPSTREAM_PATH},
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::{
    backoff::Backoff,
    error::{ConnectError, Error},
    listener::Listener,
};

/// A Piko server's upstream port, and the credentials to register endpoints on it.
///
/// ```no_run
/// # async fn example() -> Result<(), piko::Error> {
/// use tokio::io::AsyncWriteExt;
///
/// let upstream = piko::Upstream::new("http://localhost:8001");
/// let mut listener = upstream.listen("my-endpoint").await?;
/// while let Ok(mut conn) = listener.accept().await {
///     // One connection per proxied request: answer it.
///     tokio::spawn(async move {
///         let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").await;
///         let _ = conn.shutdown().await;
///     });
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Upstream {
    url: String,
    token: Option<String>,
    tenant: Option<String>,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) mux: piko_mux::Config,
}

impl Upstream {
    /// The server's upstream-port URL (`http://host:port`, optionally with a path prefix).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            tenant: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            mux: piko_mux::Config::default(),
        }
    }

    /// Sends `Authorization: Bearer <token>` when connecting.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sends `x-piko-tenant-id` when connecting.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Reconnect backoff bounds (default 100 ms to 15 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    /// Multiplexer settings of each connection.
    pub fn mux_config(mut self, config: piko_mux::Config) -> Self {
        self.mux = config;
        self
    }

    /// Registers as an upstream of `endpoint`: connects now, retrying retryable failures with
    /// backoff for as long as the caller waits (bound it with `tokio::time::timeout`).
    ///
    /// # Errors
    /// A failure that retrying cannot fix, such as `401: invalid token`.
    pub async fn listen(&self, endpoint: &str) -> Result<Listener, Error> {
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff);
        let (session, server) = self.connect_with_retry(endpoint, &mut backoff).await?;
        Ok(Listener::new(
            self.clone(),
            endpoint.to_owned(),
            session,
            server,
            backoff,
        ))
    }

    pub(crate) async fn connect_with_retry(
        &self,
        endpoint: &str,
        backoff: &mut Backoff,
    ) -> Result<(Session, SocketAddr), Error> {
        loop {
            tracing::debug!(subsystem = "client", endpoint_id = endpoint, url = %self.url, "connecting");
            match self.connect(endpoint).await {
                Ok(connected) => {
                    tracing::debug!(subsystem = "client", endpoint_id = endpoint, "connected");
                    return Ok(connected);
                }
                Err(err) if err.is_retryable() => {
                    let wait = backoff.next_wait();
                    tracing::warn!(
                        subsystem = "client",
                        endpoint_id = endpoint,
                        url = %self.url,
                        backoff = ?wait,
                        error = %err,
                        "connect failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(err) => {
                    tracing::error!(
                        subsystem = "client",
                        endpoint_id = endpoint,
                        url = %self.url,
                        error = %err,
                        "connect failed; non-retryable"
                    );
                    return Err(err.into());
                }
            }
        }
    }

    /// The WebSocket URL of `endpoint`: `http` becomes `ws`, a path prefix is kept.
    fn ws_url(&self, endpoint: &str) -> Result<http::Uri, ConnectError> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|err| ConnectError::Url(format!("{}: {err}", self.url)))?;
        let scheme = match uri.scheme_str() {
            Some("http" | "ws") => "ws",
            Some("https" | "wss") => {
                return Err(ConnectError::Url(format!(
                    "{}: TLS is not supported yet",
                    self.url
                )));
            }
            _ => {
                return Err(ConnectError::Url(format!(
                    "{}: scheme must be http or https",
                    self.url
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| ConnectError::Url(format!("{}: missing host", self.url)))?;
        let prefix = uri.path().trim_end_matches('/');
        let endpoint =
            percent_encoding::utf8_percent_encode(endpoint, percent_encoding::NON_ALPHANUMERIC);
        format!("{scheme}://{authority}{prefix}{UPSTREAM_PATH}{endpoint}")
            .parse()
            .map_err(|err| ConnectError::Url(format!("{}: {err}", self.url)))
    }

    /// One connection attempt: TCP, WebSocket handshake, multiplexer session; with the server's
    /// address.
    pub(crate) async fn connect(
        &self,
        endpoint: &str,
    ) -> Result<(Session, SocketAddr), ConnectError> {
        let url = self.ws_url(endpoint)?;
        let authority = url.authority().expect("ws_url has an authority");
        let port = authority.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            // `[::1]` in a URL is `::1` to the resolver.
            TcpStream::connect((
                authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']'),
                port,
            )),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = tcp.set_nodelay(true);
        let server = tcp.peer_addr()?;
        let mut request = url
            .into_client_request()
            .map_err(|err| ConnectError::Url(err.to_string()))?;
        let headers = request.headers_mut();
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ConnectError::Url("token is not a valid header value".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        if let Some(tenant) = &self.tenant {
            let value = HeaderValue::from_str(tenant)
                .map_err(|_| ConnectError::Url("tenant is not a valid header value".into()))?;
            headers.insert(TENANT_HEADER, value);
        }
        let ws_config = websocket_config(self.mux.receive_window);
        let handshake = tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config));
        let (ws, _) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err(err)) => return Err(handshake_error(err)),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake timed out",
                )
                .into());
            }
        };
        let session = Session::client_transport(WsByteStream::new(ws), self.mux.clone());
        Ok((session, server))
    }
}

/// Piko's Go client waits this long for the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A handshake failure as Piko's Go client reports it: the JSON `error` of a non-101 answer
/// when there is one, else the status text.
fn handshake_error(err: tungstenite::Error) -> ConnectError {
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let message = json
                .then(|| response.body().as_deref())
                .flatten()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "websocket: bad handshake".to_owned());
            ConnectError::Status {
                status: status.as_u16(),
                message,
            }
        }
        tungstenite::Error::Io(err) => ConnectError::Transport(err),
        other => ConnectError::Transport(std::io::Error::other(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_keeps_the_prefix_and_encodes_the_endpoint() {
        let upstream = Upstream::new("http://piko.example.com:8001/base/");
        assert_eq!(
            upstream.ws_url("a b").unwrap().to_string(),
            "ws://piko.example.com:8001/base/piko/v1/upstream/a%20b"
        );
        assert_eq!(
            Upstream::new("http://localhost:8001")
                .ws_url("e")
                .unwrap()
                .to_string(),
            "ws://localhost:8001/piko/v1/upstream/e"
        );
        assert!(Upstream::new("ftp://x").ws_url("e").is_err());
        assert!(Upstream::new("not a url").ws_url("e").is_err());
    }

    #[test]
    fn retryable_statuses_are_piko_s() {
        let status = |status| ConnectError::Status {
            status,
            message: String::new(),
        };
        for retryable in [408, 429, 500, 502, 503, 504] {
            assert!(status(retryable).is_retryable(), "{retryable}");
        }
        for fatal in [400, 401, 403, 404, 405] {
            assert!(!status(fatal).is_retryable(), "{fatal}");
        }
    }
}
