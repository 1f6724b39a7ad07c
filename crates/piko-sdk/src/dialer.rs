//! `Dialer`: a TCP-like connection to an endpoint, through a Piko server's proxy port.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::HeaderName;
use piko_protocol::{
    WsByteStream,
    wire::{HALF_CLOSE_HEADER, TCP_PATH},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    error::ConnectError,
    secret::Secret,
    server_stream::ServerStream,
    websocket_connect::{Handshake, connect, ws_url},
};

/// Connects to endpoints through a Piko server's proxy port (`/_piko/v1/tcp/{endpoint}`), the
/// way `piko forward` does: each connection reaches a new connection on an upstream of the
/// endpoint (`piko agent tcp`, or a [`Listener`](crate::Listener)).
///
/// ```no_run
/// # async fn example() -> Result<(), piko::ConnectError> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let dialer = piko::Dialer::new("http://localhost:8000");
/// let mut conn = dialer.dial("my-redis").await?;
/// conn.write_all(b"PING\r\n").await?;
/// let mut reply = [0u8; 7];
/// conn.read_exact(&mut reply).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Dialer {
    url: String,
    token: Option<Secret>,
    /// Read at every dial instead of `token`.
    token_file: Option<std::path::PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    /// The server's proxy-port URL (`http://host:port`, optionally with a path prefix).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            token_file: None,
            tls: None,
        }
    }

    /// TLS settings for an `https` URL (the system's roots by default). See [`ClientTls`] for
    /// Piko's settings.
    ///
    /// [`ClientTls`]: crate::ClientTls
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Sends `Authorization: Bearer <token>` when dialing.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// Reads the token from `path` at every dial, so a token renewed in the file is used from
    /// the next tunnel on (tunnels already open are not cut when their token expires).
    pub fn token_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Opens a connection to `endpoint`. One attempt, bounded by a 60 s handshake timeout (bound
    /// it further with `tokio::time::timeout`).
    ///
    /// # Errors
    /// `502: no available upstreams` when the endpoint has no upstream, `401: ...` when the
    /// token is refused, or the transport's error.
    pub async fn dial(&self, endpoint: &str) -> Result<TcpTunnel, ConnectError> {
        let url = ws_url(&self.url, TCP_PATH, endpoint)?;
        let token = match &self.token_file {
            Some(path) => Some(crate::secret::read_token_file(path)?),
            None => self.token.clone(),
        };
        let headers = Handshake {
            token,
            extra: vec![(HeaderName::from_static(HALF_CLOSE_HEADER), "1".into())],
            tls: self.tls.clone(),
            // Like Piko's Dialer: no outbound proxy.
            proxy: None,
        };
        let (ws, response_headers, server) = connect(url, &headers).await?;
        // A Piko server does not know half-close: then, as with Piko, the first direction to end
        // ends both.
        let stream = if response_headers.contains_key(HALF_CLOSE_HEADER) {
            ws.half_closing()
        } else {
            ws
        };
        Ok(TcpTunnel { stream, server })
    }
}

/// A connection to an endpoint opened by [`Dialer::dial`]. Message boundaries mean nothing: it is
/// a byte stream. Shutting it down ends this direction only (the reply can still be read) when
/// the server supports half-close, as piko servers do.
#[derive(Debug)]
pub struct TcpTunnel {
    stream: WsByteStream<ServerStream>,
    server: SocketAddr,
}

impl TcpTunnel {
    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// Closes the tunnel with a reset, so that the endpoint's service sees its connection reset
    /// rather than ended: what to do when the local side of a relay failed. What was written
    /// before is delivered first (the wait is bounded by
    /// [`DELIVERY_STALL_LIMIT`](piko_protocol::reset::DELIVERY_STALL_LIMIT)).
    pub async fn abort(self) {
        piko_protocol::reset_after_delivery(self.stream.get_ref().tcp()).await;
    }
}

impl AsyncRead for TcpTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpTunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
