//! Piko's wire contract, shared by the server, the agent and the SDK.
//!
//! # Layout
//! - [`error_response`]: the JSON error responses of Piko's proxies.
//! - [`hop_by_hop`]: what a proxy strips from messages, and upgrade detection.
//! - [`wire`]: paths, header names and limits shared by the server, the agent and the SDK.
//! - [`ws_stream`]: a WebSocket connection as the byte stream the upstream multiplexer runs on.

pub mod error_response;
pub mod hop_by_hop;
pub mod wire;
pub mod ws_stream;

pub use ws_stream::{WsByteStream, websocket_config};
