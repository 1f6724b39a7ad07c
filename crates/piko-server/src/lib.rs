//! A Piko server node.
//!
//! Agents and SDK listeners connect to the **upstream port** and register for an endpoint; HTTP
//! clients send requests to the **proxy port**, which relays each one over a multiplexed stream
//! to an upstream of its endpoint; the **admin port** answers health checks.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let server = piko_server::Server::bind(piko_server::Config::default()).await?;
//! println!("proxy on {}", server.proxy_addr());
//! // Serves until the future resolves (the CLI passes SIGINT/SIGTERM), then shuts down.
//! server.run(std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `server`: [`Server`] binds the ports, runs them, and shuts down in order.
//! - `upstream`: the upstream port's WebSocket handshake and session lifecycle.
//! - [`upstreams`]: the routing table (endpoint → upstream sessions, round-robin).
//! - `proxy`: request routing and relaying on the proxy port (its access log is
//!   [`piko_http::access_log`]); `upstream_exchange`: a body-less request sent on a stream and
//!   its response read back without an HTTP client connection.
//! - `tcp_route`: the proxy port's TCP-over-WebSocket route; `splice`: an upgraded client
//!   connection relayed to the far side of its tunnel (an upstream here, or another node).
//! - `websocket_upgrade`: the server side of WebSocket handshakes, gorilla's way.
//! - [`metrics`]: the Prometheus metrics of spec §10.2.
//! - `admin`: `/health`, `/ready`, `/metrics` and the [`status`] routes; `advertise`: the
//!   addresses the node publishes.
//! - [`tls`]: TLS on a port, its files reloaded when they change; `client_io`: a client's plain or
//!   TLS connection.
//! - `serve`: the accept loop shared by the ports; `connection_deadlines` and
//!   `request_body_idle`: the header read, idle and no-progress limits of client connections;
//!   `endpoint_load`: the in-flight request limit per endpoint; `warn_limit`: rate limits for
//!   the warnings peers can cause.

mod admin;
mod advertise;
pub mod auth;
mod client_io;
pub mod cluster;
mod connection_deadlines;
mod counted_io;
mod endpoint_load;
mod forward;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod json_error;
pub mod metrics;
pub mod proxy;
mod request_body_idle;
mod serve;
mod server;
mod splice;
pub mod status;
mod tcp_route;
pub mod tls;
pub mod upstream;
mod upstream_exchange;
pub mod upstreams;
mod warn_limit;
mod websocket_upgrade;

pub use server::{Config, Server, generate_node_id};
pub use upstreams::Upstreams;
