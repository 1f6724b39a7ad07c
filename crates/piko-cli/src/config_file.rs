//! Piko's YAML configuration files (spec Appendix B), read strictly: an unknown key is an error
//! naming the key and its line, so a typo never silently falls back to a default.
//!
//! Every key of Piko v0.9.0 is accepted so existing files keep loading.

// Every key of Piko's schema is declared, so a typo is an error; fields are read as the features
// behind them are built.
#![allow(
    dead_code,
    reason = "keys accepted for compatibility before their feature exists"
)]

use std::{path::Path, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::{duration, expand_env};

/// A Go duration string in YAML. Piko's decoder rejects a bare integer (even `0`); so do we.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GoDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        duration::parse(&text)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Reads and parses a config file, expanding environment references first if asked.
pub(crate) fn load<T: for<'de> Deserialize<'de>>(path: &Path, expand: bool) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("read file: {}: {err}", path.display()))?;
    let text = if expand {
        expand_env::expand(&text, |name| std::env::var(name).ok())
    } else {
        text
    };
    serde_saphyr::from_str(&text)
        .map_err(|err| anyhow::anyhow!("parse config: {}: {err}", path.display()))
}

// ---- shared sections -----------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Log {
    pub(crate) level: Option<String>,
    pub(crate) subsystems: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Auth {
    pub(crate) hmac_secret_key: Option<String>,
    pub(crate) rsa_public_key: Option<String>,
    pub(crate) ecdsa_public_key: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) issuer: Option<String>,
    pub(crate) disable_disconnect_on_expiry: Option<bool>,
    pub(crate) jwks: Jwks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Jwks {
    pub(crate) endpoint: Option<String>,
    pub(crate) cache_ttl: Option<GoDuration>,
    pub(crate) timeout: Option<GoDuration>,
}

fn set(value: Option<&String>) -> bool {
    value.is_some_and(|v| !v.is_empty())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Tls {
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) client_cas: Option<String>,
    pub(crate) client: TlsClient,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsClient {
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) root_cas: Option<String>,
    pub(crate) insecure_skip_verify: Option<bool>,
    pub(crate) server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AccessLog {
    pub(crate) level: Option<String>,
    pub(crate) request_headers: HeaderFilter,
    pub(crate) response_headers: HeaderFilter,
    pub(crate) disable: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HeaderFilter {
    pub(crate) allow_list: Option<Vec<String>>,
    pub(crate) block_list: Option<Vec<String>>,
}

// ---- server ----------------------------------------------------------------------------------

/// `piko server`'s file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub(crate) cluster: Cluster,
    pub(crate) proxy: Proxy,
    pub(crate) upstream: Upstream,
    pub(crate) admin: Admin,
    pub(crate) log: Log,
    pub(crate) grace_period: Option<GoDuration>,
    /// Ours: how long to keep serving after SIGTERM before refusing connections.
    pub(crate) shutdown_delay: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Cluster {
    pub(crate) node_id: Option<String>,
    pub(crate) node_id_prefix: Option<String>,
    pub(crate) join: Option<Vec<String>>,
    pub(crate) join_timeout: Option<GoDuration>,
    pub(crate) abort_if_join_fails: Option<bool>,
    pub(crate) gossip: Gossip,
    /// Ours: the secret nodes authenticate relayed requests with.
    pub(crate) secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Gossip {
    pub(crate) bind_addr: Option<String>,
    pub(crate) advertise_addr: Option<String>,
    pub(crate) interval: Option<GoDuration>,
    pub(crate) max_packet_size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Proxy {
    pub(crate) bind_addr: Option<String>,
    pub(crate) advertise_addr: Option<String>,
    pub(crate) timeout: Option<GoDuration>,
    /// Ours: most requests in flight per endpoint on a node. Signed, so that a negative value
    /// gets our own error naming the key.
    pub(crate) max_requests_per_endpoint: Option<i64>,
    pub(crate) access_log: AccessLog,
    pub(crate) http: ProxyHttp,
    pub(crate) auth: Auth,
    pub(crate) tls: Tls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ProxyHttp {
    pub(crate) read_timeout: Option<GoDuration>,
    pub(crate) read_header_timeout: Option<GoDuration>,
    pub(crate) write_timeout: Option<GoDuration>,
    /// Ours: the write timeout of WebSocket and TCP tunnels.
    pub(crate) tunnel_write_timeout: Option<GoDuration>,
    pub(crate) idle_timeout: Option<GoDuration>,
    pub(crate) max_header_bytes: Option<u64>,
    /// Ours: most client connections at once.
    pub(crate) max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Upstream {
    pub(crate) bind_addr: Option<String>,
    pub(crate) advertise_addr: Option<String>,
    pub(crate) auth: Auth,
    pub(crate) rebalance: Rebalance,
    pub(crate) tls: Tls,
    pub(crate) tenants: Option<Vec<Tenant>>,
    /// Ours: most connections at once on the port.
    pub(crate) max_connections: Option<u64>,
    /// Ours: most upstreams per endpoint on a node.
    pub(crate) max_upstreams_per_endpoint: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Rebalance {
    pub(crate) threshold: Option<f64>,
    pub(crate) shed_rate: Option<f64>,
    pub(crate) min_conns: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Tenant {
    pub(crate) id: Option<String>,
    pub(crate) auth: Auth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Admin {
    pub(crate) bind_addr: Option<String>,
    pub(crate) advertise_addr: Option<String>,
    pub(crate) auth: Auth,
    pub(crate) tls: Tls,
}

// ---- agent -----------------------------------------------------------------------------------

/// `piko agent`'s file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AgentFile {
    pub(crate) connect: Connect,
    pub(crate) listeners: Option<Vec<Listener>>,
    pub(crate) server: AgentServer,
    pub(crate) log: Log,
    pub(crate) grace_period: Option<GoDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Connect {
    pub(crate) url: Option<String>,
    pub(crate) token: Option<String>,
    /// Ours: a file holding the token, read at every connect.
    pub(crate) token_file: Option<String>,
    pub(crate) tenant_id: Option<String>,
    pub(crate) timeout: Option<GoDuration>,
    pub(crate) proxy_url: Option<String>,
    pub(crate) tls: ClientTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClientTls {
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) root_cas: Option<String>,
    pub(crate) insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AgentServer {
    pub(crate) enabled: Option<bool>,
    pub(crate) bind_addr: Option<String>,
}

/// One `listeners:` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Listener {
    pub(crate) endpoint_id: Option<String>,
    pub(crate) addr: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) timeout: Option<GoDuration>,
    pub(crate) access_log: AccessLog,
    pub(crate) http_client: HttpClient,
    pub(crate) tls: ClientTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HttpClient {
    pub(crate) keep_alive_timeout: Option<GoDuration>,
    pub(crate) idle_conn_timeout: Option<GoDuration>,
    pub(crate) max_idle_conns: Option<i64>,
    /// Accepted with no effect: the agent never adds `Accept-Encoding` (Go's transport adds
    /// gzip and decompresses), so the client gets what it asked for either way.
    #[allow(dead_code)]
    disable_compression: Option<bool>,
}

// ---- forward ---------------------------------------------------------------------------------

/// `piko forward`'s file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ForwardFile {
    pub(crate) connect: ForwardConnect,
    pub(crate) ports: Option<Vec<ForwardPort>>,
    pub(crate) log: Log,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ForwardConnect {
    pub(crate) url: Option<String>,
    pub(crate) token: Option<String>,
    /// Ours: a file holding the token, read at every tunnel opened.
    pub(crate) token_file: Option<String>,
    pub(crate) timeout: Option<GoDuration>,
    pub(crate) tls: ClientTls,
}

/// One `ports:` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ForwardPort {
    pub(crate) addr: Option<String>,
    pub(crate) endpoint_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appendix B.1 of the spec: every server key, with defaults.
    const SERVER_ALL_KEYS: &str = r#"
cluster:
  node_id: ""
  node_id_prefix: ""
  join: []
  join_timeout: 1m
  abort_if_join_fails: true
  gossip:
    bind_addr: ":8003"
    advertise_addr: ""
    interval: 100ms
    max_packet_size: 1400
proxy:
  bind_addr: ":8000"
  advertise_addr: ""
  timeout: 30s
  access_log:
    level: info
    request_headers: {allow_list: [], block_list: []}
    response_headers: {allow_list: [], block_list: []}
    disable: false
  http:
    read_timeout: 10s
    read_header_timeout: 10s
    write_timeout: 10s
    idle_timeout: 5m
    max_header_bytes: 1048576
  auth:
    hmac_secret_key: ""
    rsa_public_key: ""
    ecdsa_public_key: ""
    audience: ""
    issuer: ""
    disable_disconnect_on_expiry: false
    jwks: {endpoint: "", cache_ttl: 0s, timeout: 0s}
  tls:
    cert: ""
    key: ""
    client_cas: ""
    client:
      cert: ""
      key: ""
      root_cas: ""
      insecure_skip_verify: false
      server_name: ""
upstream:
  bind_addr: ":8001"
  advertise_addr: ""
  auth: {}
  rebalance:
    threshold: 0
    shed_rate: 0.005
    min_conns: 50
  tls: {}
admin:
  bind_addr: ":8002"
  advertise_addr: ""
  auth: {}
  tls: {}
log:
  level: info
  subsystems: []
grace_period: 1m
"#;

    #[test]
    fn piko_s_full_server_file_loads() {
        let file: ServerFile = serde_saphyr::from_str(SERVER_ALL_KEYS).unwrap();
        assert_eq!(file.proxy.bind_addr.as_deref(), Some(":8000"));
        assert_eq!(file.proxy.timeout.unwrap().0, Duration::from_secs(30));
        assert_eq!(file.grace_period.unwrap().0, Duration::from_secs(60));
        assert_eq!(
            file.proxy.http.idle_timeout.unwrap().0,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_them() {
        let err = serde_saphyr::from_str::<ServerFile>("proxy:\n  bind_adr: \":1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bind_adr"), "{err}");
        let err = serde_saphyr::from_str::<ServerFile>("usage:\n  disable: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("usage"), "{err}");
        let err = serde_saphyr::from_str::<ServerFile>("proxy:\n  timeout: 30\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("duration") || err.contains("string"), "{err}");
    }

    #[test]
    fn piko_s_agent_file_loads() {
        let text = r#"
connect:
  url: http://piko.example.com:8001
  token: t0ken
  timeout: 30s
listeners:
  - endpoint_id: my-api
    addr: "3000"
    protocol: http
    timeout: 30s
server:
  enabled: false
  bind_addr: ":5000"
log:
  level: info
grace_period: 1m
"#;
        let file: AgentFile = serde_saphyr::from_str(text).unwrap();
        let listeners = file.listeners.as_ref().unwrap();
        assert_eq!(listeners[0].endpoint_id.as_deref(), Some("my-api"));
        assert_eq!(listeners[0].timeout.unwrap().0, Duration::from_secs(30));
    }

    #[test]
    fn piko_s_forward_file_loads() {
        let text = r#"
connect:
  url: http://localhost:8000
  token: ""
  timeout: 30s
  tls:
    cert: ""
    key: ""
    root_cas: ""
    insecure_skip_verify: false
ports:
  - addr: "3000"
    endpoint_id: my-endpoint
log:
  level: info
  subsystems: []
"#;
        let file: ForwardFile = serde_saphyr::from_str(text).unwrap();
        let ports = file.ports.as_ref().unwrap();
        assert_eq!(ports[0].endpoint_id.as_deref(), Some("my-endpoint"));
    }
}
