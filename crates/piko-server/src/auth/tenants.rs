//! Tenants of the upstream port (spec §7.1): each has its own keys, and, unlike Piko, its own
//! endpoint names. Tenant `acme`'s endpoint `api` is routed as `acme/api`: another tenant, or an
//! agent without a tenant, registering `api` serves a different endpoint and never receives
//! `acme`'s traffic. Proxy clients reach it with `x-piko-tenant-id: acme` and endpoint `api`, or
//! with endpoint `acme/api`.

use std::{collections::HashMap, sync::Arc};

use http::HeaderMap;

use super::token::Verifier;

/// The header naming a tenant.
pub(crate) const TENANT_HEADER: &str = "x-piko-tenant-id";

/// Separates a tenant from its endpoint names in routed names; refused in tenant IDs, and in
/// the endpoint IDs of upstreams while tenants are configured.
pub const TENANT_SEPARATOR: char = '/';

/// The configured tenants.
#[derive(Debug, Default)]
pub struct Tenants {
    verifiers: HashMap<String, Arc<Verifier>>,
}

/// A tenant list that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    /// A tenant without an ID.
    #[error("missing tenant id")]
    MissingId,
    /// A tenant ID with the separator in it.
    #[error("{0}: invalid tenant id: '/' is not allowed")]
    InvalidId(String),
    /// Two tenants with one ID.
    #[error("{0}: duplicate tenant id")]
    Duplicate(String),
}

impl Tenants {
    /// Tenants with their verifiers (IDs checked).
    ///
    /// # Errors
    /// An empty ID, an ID with a `/`, or an ID given twice.
    pub fn new(list: Vec<(String, Arc<Verifier>)>) -> Result<Self, TenantError> {
        let mut verifiers = HashMap::with_capacity(list.len());
        for (id, verifier) in list {
            if id.is_empty() {
                return Err(TenantError::MissingId);
            }
            if id.contains(TENANT_SEPARATOR) {
                return Err(TenantError::InvalidId(id));
            }
            if verifiers.contains_key(&id) {
                return Err(TenantError::Duplicate(id));
            }
            verifiers.insert(id, verifier);
        }
        Ok(Self { verifiers })
    }

    /// Whether no tenant is configured (the header is then ignored, as in Piko, on a port
    /// without auth).
    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    pub(crate) fn verifier(&self, id: &str) -> Option<&Arc<Verifier>> {
        self.verifiers.get(id)
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.verifiers.contains_key(id)
    }
}

/// The tenant a request names (`x-piko-tenant-id`), if any.
pub(crate) fn requested_tenant(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TENANT_HEADER)
        .map(|value| value.to_str().unwrap_or("\u{fffd}"))
        .filter(|tenant| !tenant.is_empty())
}

/// The name an endpoint is routed by: its own, or `<tenant>/<endpoint>` for a tenant's.
pub fn routed_name(tenant: Option<&str>, endpoint: &str) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}{TENANT_SEPARATOR}{endpoint}"),
        None => endpoint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;

    fn verifier() -> Arc<Verifier> {
        let config = AuthConfig {
            hmac_secret_key: Some("k".into()),
            ..AuthConfig::default()
        };
        Arc::new(Verifier::new(&config).unwrap().unwrap())
    }

    #[test]
    fn tenant_ids_are_checked() {
        let one = |id: &str| Tenants::new(vec![(id.into(), verifier())]).map(|_| ());
        assert_eq!(one(""), Err(TenantError::MissingId));
        assert_eq!(one("a/b"), Err(TenantError::InvalidId("a/b".into())));
        let twice = Tenants::new(vec![("a".into(), verifier()), ("a".into(), verifier())]);
        assert_eq!(twice.map(|_| ()), Err(TenantError::Duplicate("a".into())));
        let tenants = Tenants::new(vec![("a".into(), verifier())]).unwrap();
        assert!(tenants.contains("a") && !tenants.contains("b") && !tenants.is_empty());
    }

    #[test]
    fn a_tenant_s_endpoints_are_named_apart() {
        assert_eq!(routed_name(None, "api"), "api");
        assert_eq!(routed_name(Some("acme"), "api"), "acme/api");
    }
}
