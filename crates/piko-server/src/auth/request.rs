//! A request's bearer token, and the 401 replies Piko gives when it is missing or refused.

use std::time::SystemTime;

use http::{HeaderMap, Response, StatusCode};

use super::{
    tenants::{Tenants, requested_tenant},
    token::{Grant, TokenError, Verifier},
};
use crate::{json_error::gin_error, serve::Body};

/// Carries the token in preference to `Authorization`, which clients may need for the upstream
/// service itself.
pub(crate) const PIKO_AUTHORIZATION: &str = "x-piko-authorization";

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Missing,
    Malformed,
    UnsupportedType,
    Invalid,
    Expired,
    UnknownTenant,
    EndpointNotPermitted,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Self::Missing => "missing authorization",
            Self::Malformed => "invalid authorization",
            Self::UnsupportedType => "unsupported auth type",
            Self::Invalid => "invalid token",
            Self::Expired => "expired token",
            Self::UnknownTenant => "unknown tenant",
            Self::EndpointNotPermitted => "endpoint not permitted",
        }
    }

    /// Piko's reply: 401 with a JSON error.
    pub(crate) fn response(self) -> Response<Body> {
        gin_error(StatusCode::UNAUTHORIZED, self.message())
    }
}

/// Checks the request's token on the proxy or admin port: what it grants, or why it is
/// refused. A tenant header must name one of `tenants` (on the proxy port it selects the
/// tenant's endpoints; the admin port has none).
pub(crate) async fn authenticate(
    verifier: &Verifier,
    tenants: &Tenants,
    headers: &HeaderMap,
) -> Result<Grant, Refusal> {
    if requested_tenant(headers).is_some_and(|tenant| !tenants.contains(tenant)) {
        return Err(Refusal::UnknownTenant);
    }
    verify(verifier, headers).await
}

/// Checks an upstream's token, with its tenant's keys when it names one: what it grants and the
/// tenant, or why it is refused. As in Piko, once tenants are configured an upstream must name
/// one; `default` verifies the others.
pub(crate) async fn authenticate_upstream<'h>(
    default: Option<&Verifier>,
    tenants: &Tenants,
    headers: &'h HeaderMap,
) -> Result<(Grant, Option<&'h str>), Refusal> {
    match requested_tenant(headers) {
        Some(tenant) => {
            let verifier = tenants.verifier(tenant).ok_or(Refusal::UnknownTenant)?;
            Ok((verify(verifier, headers).await?, Some(tenant)))
        }
        None if !tenants.is_empty() => Err(Refusal::UnknownTenant),
        None => match default {
            Some(verifier) => Ok((verify(verifier, headers).await?, None)),
            None => Err(Refusal::UnknownTenant),
        },
    }
}

async fn verify(verifier: &Verifier, headers: &HeaderMap) -> Result<Grant, Refusal> {
    let token = bearer(headers)?;
    verifier
        .verify(token, SystemTime::now())
        .await
        .map_err(|err| match err {
            TokenError::Invalid => Refusal::Invalid,
            TokenError::Expired => Refusal::Expired,
        })
}

/// `x-piko-authorization`, else `Authorization`: `Bearer <token>`, the scheme exact.
fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers
        .get(PIKO_AUTHORIZATION)
        .or_else(|| headers.get(http::header::AUTHORIZATION))
        .ok_or(Refusal::Missing)?;
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::Malformed)?;
    if scheme != "Bearer" {
        return Err(Refusal::UnsupportedType);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn the_token_comes_from_piko_s_header_first() {
        assert_eq!(bearer(&headers(&[])), Err(Refusal::Missing));
        assert_eq!(bearer(&headers(&[("authorization", "Bearer a")])), Ok("a"));
        assert_eq!(
            bearer(&headers(&[
                ("authorization", "Bearer a"),
                ("x-piko-authorization", "Bearer b")
            ])),
            Ok("b")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer")])),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer a")])),
            Err(Refusal::UnsupportedType)
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "Basic a")])),
            Err(Refusal::UnsupportedType)
        );
    }
}
