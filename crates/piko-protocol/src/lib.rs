//! Piko's wire contract, shared by the server, the agent and the SDK.
//!
//! # Layout
//! - [`keepalive`]: TCP keep-alive on accepted and dialed connections.
//! - [`listen`]: listening sockets with a production-sized accept queue.
//! - [`relay`](mod@relay): bytes copied both ways between two connections.
//! - [`reset`]: closing a connection with a reset that arrives after what was written before it.
//! - [`wire`]: paths, header names and limits shared by the server, the agent and the SDK.
//! - [`ws_client_handshake`]: opening a WebSocket as a client.
//! - [`ws_frame`]: WebSocket frame headers and masking.
//! - [`ws_stream`]: a WebSocket connection as the byte stream the upstream multiplexer runs on.

pub mod keepalive;
pub mod listen;
pub mod relay;
pub mod reset;
pub mod wire;
pub mod ws_client_handshake;
pub mod ws_frame;
pub mod ws_stream;

pub use keepalive::enable_keepalive;
pub use listen::bind_listener;
pub use relay::relay;
pub use reset::reset_after_delivery;
pub use ws_client_handshake::{HandshakeError, client_handshake};
pub use ws_frame::{FrameError, Role};
pub use ws_stream::WsByteStream;
