//! Authentication on the proxy, upstream and admin ports (spec §7): JWTs checked against the
//! port's keys, and the endpoints a token's `piko.endpoints` claim allows.
//!
//! - `token`: keys, verification, and what a token grants.
//! - `jwks`: keys from a JWK Set, fetched and refreshed.
//! - `request`: finding a request's token and refusing it as Piko does.
//! - `tenants`: the upstream port's tenants and their endpoint names.

mod jwks;
mod request;
mod tenants;
mod token;

pub use jwks::JwksConfig;
pub(crate) use request::{PIKO_AUTHORIZATION, Refusal, authenticate, authenticate_upstream};
pub(crate) use tenants::requested_tenant;
pub use tenants::{TENANT_SEPARATOR, TenantError, Tenants, routed_name};
pub use token::{AuthConfig, Grant, TokenError, Verifier};
