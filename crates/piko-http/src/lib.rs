//! HTTP proxying pieces that the server's proxy port and the agent share, so both behave alike.
//!
//! # Layout
//! - [`hop_by_hop`]: what a proxy strips from messages, and upgrade detection.
//! - [`error_response`]: the JSON error responses of Piko's proxies.
//! - [`access_log`]: `request` records written when a response has been sent.
//! - [`body`]: the response body type; [`counted_body`]: one that reports its size;
//!   [`error_after_flush`]: a relayed body whose failure does not swallow the bytes before it.
//! - [`dialed_upgrade`]: the socket under an upgraded connection a hyper client dialed.
//! - [`prometheus_text`]: metrics as Piko's Go services serve them, and shared metric pieces.

pub mod access_log;
pub mod body;
pub mod counted_body;
pub mod dialed_upgrade;
pub mod error_after_flush;
pub mod error_response;
pub mod hop_by_hop;
pub mod prometheus_text;
