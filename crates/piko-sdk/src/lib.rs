//! The Piko SDK: serve an endpoint from a Rust program through a Piko server (or cluster),
//! without opening any inbound port.
//!
//! [`Upstream::listen`] connects out to the server's upstream port and registers the program as
//! an upstream of an endpoint; [`Listener::accept`] then yields one connection
//! (`AsyncRead + AsyncWrite`) per request or TCP connection that clients send to that endpoint.
//! The listener reconnects by itself, with backoff, whenever it is cut off.
//!
//! [`Dialer::dial`] goes the other way: a TCP-like connection to an endpoint through the server's
//! proxy port, reaching whatever listens on that endpoint.
//!
//! # Layout
//! - [`Upstream`]: server URL, credentials, backoff; the connection handshake.
//! - [`ClientTls`]: TLS settings towards the server (system roots, a CA bundle, a client
//!   certificate).
//! - [`Listener`]: accepted connections across reconnects; graceful close.
//! - [`Dialer`], [`TcpTunnel`]: connections to an endpoint through the proxy port.
//! - [`Forwarder`], [`forward_connection`]: an endpoint's connections relayed to a local port.
//! - `serve_http` (feature `hyper`, on by default): a hyper service on a listener.
//!
//! `examples/` has an HTTP service, a TCP echo service and a dialer.
//! - [`Error`], [`ConnectError`]: what can go wrong, and what is worth retrying.

mod backoff;
mod client_tls;
mod dialer;
mod error;
mod forward;
mod listener;
mod outbound_proxy;
mod secret;
#[cfg(feature = "hyper")]
mod serve_http;
mod server_stream;
mod upstream;
mod websocket_connect;

pub use client_tls::{ClientTls, TlsError};
pub use dialer::{Dialer, TcpTunnel};
pub use error::{ConnectError, Error};
pub use forward::{ForwardError, Forwarder, forward_connection};
pub use listener::Listener;
pub use piko_mux::Stream;
#[cfg(feature = "hyper")]
pub use serve_http::serve_http;
pub use upstream::Upstream;
