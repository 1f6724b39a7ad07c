//! `Upstream`: where to connect and how, and the connection handshake.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::HeaderName;
use piko_mux::Session;
use piko_protocol::wire::{TENANT_HEADER, UPSTREAM_PATH};

use crate::{
    backoff::Backoff,
    error::{ConnectError, Error},
    forward::Forwarder,
    listener::Listener,
    outbound_proxy::OutboundProxy,
    secret::{Secret, redact_userinfo},
    websocket_connect::{Handshake, connect, ws_url},
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
    token: Option<Secret>,
    /// Read at every connect instead of `token`.
    token_file: Option<std::path::PathBuf>,
    tenant: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// May carry a password.
    proxy: Option<Secret>,
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
            token_file: None,
            tenant: None,
            tls: None,
            proxy: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            mux: piko_mux::Config::default(),
        }
    }

    /// Sends `Authorization: Bearer <token>` when connecting.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// Reads the token from `path` at every connect (a failure to read is retried like a
    /// connection failure), so a token renewed in the file (by a sidecar, say) is used from the
    /// next connection on. The listener connects again before the current token expires (its
    /// `exp`), new connection first, so no request fails at expiry.
    pub fn token_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// The token to connect with now.
    fn current_token(&self) -> Result<Option<Secret>, ConnectError> {
        match &self.token_file {
            Some(path) => crate::secret::read_token_file(path).map(Some),
            None => Ok(self.token.clone()),
        }
    }

    /// When the token in the token file expires, if it is a JWT with an `exp`. None for a token
    /// given directly: it cannot be renewed, so there is nothing to reconnect for before it
    /// expires (the server ends the session then, unless configured not to).
    pub(crate) fn renewable_token_expiry(&self) -> Option<std::time::SystemTime> {
        self.token_file.as_ref()?;
        let token = self.current_token().ok()??;
        jwt_expiry(token.expose())
    }

    /// Sends `x-piko-tenant-id` when connecting.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// TLS settings for an `https` URL (the system's roots by default). See [`ClientTls`] for
    /// Piko's settings.
    ///
    /// [`ClientTls`]: crate::ClientTls
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Connects through an outbound proxy: `http://[user:password@]host:port` (HTTP `CONNECT`)
    /// or `socks5://[user:password@]host:port`. Environment proxy variables are not consulted,
    /// as with Piko.
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(Secret::new(url));
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

    /// Registers as an upstream of `endpoint` (as [`Upstream::listen`] does) and forwards each
    /// connection to the TCP address `addr` (`host:port`), in the background.
    ///
    /// # Errors
    /// As [`Upstream::listen`].
    pub async fn listen_and_forward(
        &self,
        endpoint: &str,
        addr: impl Into<String>,
    ) -> Result<Forwarder, Error> {
        let listener = self.listen(endpoint).await?;
        Ok(Forwarder::start(listener, addr.into()))
    }

    pub(crate) async fn connect_with_retry(
        &self,
        endpoint: &str,
        backoff: &mut Backoff,
    ) -> Result<(Session, SocketAddr), Error> {
        loop {
            tracing::debug!(subsystem = "client", endpoint_id = endpoint, url = %redact_userinfo(&self.url), "connecting");
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
                        url = %redact_userinfo(&self.url),
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
                        url = %redact_userinfo(&self.url),
                        error = %err,
                        "connect failed; non-retryable"
                    );
                    return Err(err.into());
                }
            }
        }
    }

    /// One connection attempt: TCP, WebSocket handshake, multiplexer session; with the server's
    /// address.
    pub(crate) async fn connect(
        &self,
        endpoint: &str,
    ) -> Result<(Session, SocketAddr), ConnectError> {
        let url = ws_url(&self.url, UPSTREAM_PATH, endpoint)?;
        let headers = Handshake {
            token: self.current_token()?,
            extra: self
                .tenant
                .iter()
                .map(|tenant| (HeaderName::from_static(TENANT_HEADER), tenant.clone()))
                .collect(),
            tls: self.tls.clone(),
            proxy: self
                .proxy
                .as_ref()
                .map(|url| OutboundProxy::parse(url.expose()))
                .transpose()?,
        };
        let (ws, _, server) = connect(url, &headers).await?;
        let session = Session::client_transport(ws, self.mux.clone());
        Ok((session, server))
    }
}

/// A JWT's `exp`, read without checking the token (the server checks it).
fn jwt_expiry(token: &str) -> Option<std::time::SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    // Whatever the file holds, never a panic: no negative, infinite or far-future overflow.
    std::time::UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(exp).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_token_s_expiry_is_read_without_checking_it() {
        use base64::Engine as _;
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let token = |claims: &str| format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(claims));
        assert_eq!(
            jwt_expiry(&token(r#"{"exp":1800000000}"#)),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        );
        assert_eq!(jwt_expiry(&token("{}")), None);
        assert_eq!(jwt_expiry(&token(r#"{"exp":"soon"}"#)), None);
        assert_eq!(jwt_expiry("not a jwt"), None);
        assert_eq!(jwt_expiry("opaque-token"), None);
        for absurd in ["1e300", "-1", "1.8e19"] {
            assert_eq!(
                jwt_expiry(&token(&format!(r#"{{"exp":{absurd}}}"#))),
                None,
                "{absurd}"
            );
        }
    }
}
