//! Session settings. The defaults are Piko's (hashicorp yamux's defaults as configured by Piko
//! v0.9.0), so a default session behaves towards a Go peer exactly as a Go peer would.

use std::time::Duration;

/// The stream window every yamux peer assumes at open, before any WindowUpdate.
pub const INITIAL_STREAM_WINDOW: u32 = 256 * 1024;

/// Settings for one session.
#[derive(Clone, Debug)]
pub struct Config {
    /// Streams the peer may open that the application has not accepted yet; further opens are
    /// reset.
    pub accept_backlog: usize,
    /// Streams this side may have opened without the peer's ACK; further opens wait.
    pub max_unacked_opens: usize,
    /// How long an opened stream may stay un-ACKed before it alone is reset.
    pub stream_open_timeout: Duration,
    /// How long a stream dropped after shutdown waits for the peer's FIN before it is reset.
    pub stream_close_timeout: Duration,
    /// Per-stream receive window this side grants. At least [`INITIAL_STREAM_WINDOW`]: a larger
    /// value is announced with a WindowUpdate at open/accept (Go peers accept any delta).
    pub receive_window: u32,
    /// Interval between keep-alive pings; `None` disables them (the peer's pings are still
    /// answered).
    pub keep_alive_interval: Option<Duration>,
    /// How long to wait for a keep-alive reply before the session fails.
    pub keep_alive_timeout: Duration,
    /// How long one batch of output may take to reach the transport before the session fails.
    pub write_timeout: Duration,
    /// Stream data queued for the transport above which writers wait, bounding memory when the
    /// connection is slower than the application.
    pub max_pending_output: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            accept_backlog: 256,
            max_unacked_opens: 256,
            stream_open_timeout: Duration::from_secs(75),
            stream_close_timeout: Duration::from_secs(300),
            receive_window: INITIAL_STREAM_WINDOW,
            keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_pending_output: 1024 * 1024,
        }
    }
}

impl Config {
    /// The receive window actually used: never below what the peer assumes at open.
    pub(crate) fn effective_receive_window(&self) -> u32 {
        self.receive_window.max(INITIAL_STREAM_WINDOW)
    }
}
