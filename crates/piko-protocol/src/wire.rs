//! Names and paths on Piko's wire that more than one component uses.

/// Path prefix of the upstream port's WebSocket route; the endpoint ID is the one segment after
/// it (`/piko/v1/upstream/{endpoint}`).
pub const UPSTREAM_PATH: &str = "/piko/v1/upstream/";

/// Path prefix of the proxy port's TCP-over-WebSocket route (`/_piko/v1/tcp/{endpoint}`).
pub const TCP_PATH: &str = "/_piko/v1/tcp/";

/// Names the endpoint of a proxied request, taking precedence over the Host header.
pub const ENDPOINT_HEADER: &str = "x-piko-endpoint";

/// Marks a request as already proxied by a Piko node (set on every request sent upstream).
pub const FORWARD_HEADER: &str = "x-piko-forward";

/// Tenant of an upstream connection.
pub const TENANT_HEADER: &str = "x-piko-tenant-id";

/// Alternative to `Authorization`, taking precedence over it.
pub const AUTHORIZATION_HEADER: &str = "x-piko-authorization";

/// Longest endpoint ID accepted. Piko accepts any length; an ID is a routing key that ends up in
/// logs, metrics and gossip, so a bound keeps a client from making every one of them huge.
pub const MAX_ENDPOINT_ID_LEN: usize = 256;

/// Asks, on a TCP tunnel's WebSocket handshake, for half-close: each side ends its direction with
/// an empty binary message and keeps reading the other (Piko closes both at the first end). The
/// server confirms by echoing it in its `101`; a Piko server ignores it, and both sides then
/// close both directions at the first end, as Piko does.
pub const HALF_CLOSE_HEADER: &str = "x-piko-half-close";
