//! The response body type both proxies serve: either a relayed body or a fixed one.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Error type of response bodies: whatever a relayed body fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
