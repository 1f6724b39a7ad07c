//! What can go wrong connecting or listening.

use std::io;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the handshake with an error status (`<status>: <message>`, as Piko's
    /// Go client reports it).
    #[error("{status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The server's `{"error": ...}` message, or the status text.
        message: String,
    },
    /// The connection or the WebSocket handshake failed without an HTTP answer.
    #[error("{0}")]
    Transport(#[from] io::Error),
    /// The server does not answer in HTTP/1.1, as a TLS port answers a plain request (Go's
    /// servers, and ours, say `HTTP/1.0 400`): most likely the URL's scheme is wrong. Retried
    /// all the same, since an HTTP/1.0 error page from a proxy in between looks the same.
    #[error(
        "websocket: bad handshake: the server does not answer in HTTP/1.1 (a TLS port? use an https:// URL)"
    )]
    NotHttp11,
    /// The URL cannot be used.
    #[error("invalid url: {0}")]
    Url(String),
    /// The TLS settings cannot be used.
    #[error("tls: {0}")]
    Tls(#[from] crate::TlsError),
}

impl ConnectError {
    /// Whether trying again may succeed: failures without an HTTP answer, and the statuses Piko's
    /// Go client retries (408, 429, 500, 502, 503, 504). Anything else (401, 403, 404, ...) will
    /// not change by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            Self::Transport(_) | Self::NotHttp11 => true,
            Self::Url(_) | Self::Tls(_) => false,
        }
    }
}

/// Errors of [`Upstream`](crate::Upstream) and [`Listener`](crate::Listener).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listener was closed by [`Listener::close`](crate::Listener::close) or
    /// [`Listener::shutdown`](crate::Listener::shutdown).
    #[error("closed")]
    Closed,
    /// Connecting failed with an error that retrying cannot fix.
    #[error("connect: {0}")]
    Connect(#[from] ConnectError),
}
