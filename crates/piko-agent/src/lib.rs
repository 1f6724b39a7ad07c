//! The Piko agent: exposes local services through a Piko server by registering one upstream
//! listener per endpoint (through the [`piko`] SDK) and proxying every request it receives to the
//! local service.
//!
//! # Layout
//! - [`Target`]: the local service address forms.
//! - [`serve_http`]: an HTTP listener, proxying to its target through a keep-alive pool.
//! - [`AgentMetrics`], [`serve_metrics`]: the HTTP listeners' metrics and the server that
//!   exposes them.
//! - [`serve_tcp`]: a TCP listener, relaying each connection to a local port.
//! - [`ClientTls`] (from the SDK): TLS towards `https` targets.

mod http_listener;
mod metrics;
mod metrics_server;
mod plain_exchange;
mod service_pool;
mod target;
mod tcp_listener;

pub use http_listener::{HttpConfig, serve_http};
pub use metrics::AgentMetrics;
pub use metrics_server::serve_metrics;
pub use piko::{ClientTls, TlsError};
pub use target::{InvalidAddr, Target};
pub use tcp_listener::{TcpConfig, serve_tcp, tcp_addr};
