//! HTTP proxying pieces that the server's proxy port and the agent share, so both behave alike.
//!
//! # Layout
//! - [`hop_by_hop`]: what a proxy strips from messages, and upgrade detection.
//! - [`error_response`]: the JSON error responses of Piko's proxies; [`json_string`]: JSON
//!   string literals written by hand.
//! - [`access_log`]: `request` records written when a response has been sent.
//! - [`body`]: the response body type; [`counted_body`]: one that reports its size;
//!   [`error_after_flush`]: a relayed body whose failure does not swallow the bytes before it.
//! - [`dialed_upgrade`]: the socket under an upgraded connection a hyper client dialed.
//! - [`message_head`] and [`body_framing`]: HTTP/1.1 heads parsed and written, and bodies relayed
//!   as bytes with their framing, for a request path without an HTTP connection per exchange;
//!   [`rewound`]: a connection handed to hyper after its first head was read by hand.
//! - [`prometheus_text`]: metrics as Piko's Go services serve them, and shared metric pieces.

pub mod access_log;
pub mod body;
pub mod body_framing;
pub mod counted_body;
pub mod dialed_upgrade;
pub mod error_after_flush;
pub mod error_response;
pub mod hop_by_hop;
pub mod json_string;
pub mod message_head;
pub mod prometheus_text;
pub mod rewound;
