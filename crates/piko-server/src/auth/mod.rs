//! Authentication on the proxy, upstream and admin ports (spec §7): JWTs checked against the
//! port's keys, and the endpoints a token's `piko.endpoints` claim allows.
//!
//! - `token`: keys, verification, and what a token grants.
//! - `request`: finding a request's token and refusing it as Piko does.

mod request;
mod token;

pub(crate) use request::{Refusal, authenticate};
pub use token::{AuthConfig, Grant, TokenError, Verifier};
