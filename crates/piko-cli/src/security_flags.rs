//! `piko server`'s `--<port>.auth.*` and `--<port>.tls.*` flags (spec §7.1, §8.1, §8.2) for the
//! proxy, upstream and admin ports. Token keys and JWKS turn authentication on; a certificate and
//! key turn TLS on, and `tls.client.*` says how the node reaches the same port of other nodes
//! then.

use std::time::Duration;

use crate::duration;

/// Declares the flags of one port, named `--<port>.auth.*` and `--<port>.tls.*`.
macro_rules! port_security_flags {
    ($name:ident, $port:literal, $heading:literal) => {
        #[doc = concat!("`--", $port, ".auth.*` and `--", $port, ".tls.*`.")]
        #[derive(Debug, clap::Args)]
        #[command(next_help_heading = $heading)]
        pub(crate) struct $name {
            /// Secret key verifying HS256/384/512 tokens.
            #[arg(long = concat!($port, ".auth.hmac-secret-key"),
                id = concat!($port, ".auth.hmac-secret-key"))]
            hmac_secret_key: Option<String>,
            /// PEM public key verifying RS256/384/512 tokens.
            #[arg(long = concat!($port, ".auth.rsa-public-key"),
                id = concat!($port, ".auth.rsa-public-key"))]
            rsa_public_key: Option<String>,
            /// PEM public key verifying ES256/384/512 tokens.
            #[arg(long = concat!($port, ".auth.ecdsa-public-key"),
                id = concat!($port, ".auth.ecdsa-public-key"))]
            ecdsa_public_key: Option<String>,
            /// Required token audience (`aud`).
            #[arg(long = concat!($port, ".auth.audience"),
                id = concat!($port, ".auth.audience"))]
            audience: Option<String>,
            /// Required token issuer (`iss`).
            #[arg(long = concat!($port, ".auth.issuer"),
                id = concat!($port, ".auth.issuer"))]
            issuer: Option<String>,
            /// Keep sessions open after their token expires.
            #[arg(
                long = concat!($port, ".auth.disable-disconnect-on-expiry"),
                id = concat!($port, ".auth.disable-disconnect-on-expiry"),
                num_args = 0..=1,
                default_missing_value = "true"
            )]
            disable_disconnect_on_expiry: Option<bool>,
            /// URL of a JWKS with the token verification keys.
            #[arg(long = concat!($port, ".auth.jwks.endpoint"),
                id = concat!($port, ".auth.jwks.endpoint"))]
            jwks_endpoint: Option<String>,
            /// How long fetched JWKS keys are cached; 0 is an hour [default: 0s].
            #[arg(long = concat!($port, ".auth.jwks.cache-ttl"),
                id = concat!($port, ".auth.jwks.cache-ttl"), value_parser = duration::parse)]
            jwks_cache_ttl: Option<Duration>,
            /// Timeout of a JWKS fetch; 0 is a minute [default: 0s].
            #[arg(long = concat!($port, ".auth.jwks.timeout"),
                id = concat!($port, ".auth.jwks.timeout"), value_parser = duration::parse)]
            jwks_timeout: Option<Duration>,
            /// Certificate (PEM file) the port serves TLS with.
            #[arg(long = concat!($port, ".tls.cert"),
                id = concat!($port, ".tls.cert"))]
            tls_cert: Option<String>,
            /// Private key (PEM file) of the certificate.
            #[arg(long = concat!($port, ".tls.key"),
                id = concat!($port, ".tls.key"))]
            tls_key: Option<String>,
            /// CA bundle (PEM file) client certificates must chain to.
            #[arg(long = concat!($port, ".tls.client-cas"),
                id = concat!($port, ".tls.client-cas"))]
            tls_client_cas: Option<String>,
            /// Client certificate (PEM file) for connections this node makes.
            #[arg(long = concat!($port, ".tls.client.cert"),
                id = concat!($port, ".tls.client.cert"))]
            tls_client_cert: Option<String>,
            /// Private key (PEM file) of the client certificate.
            #[arg(long = concat!($port, ".tls.client.key"),
                id = concat!($port, ".tls.client.key"))]
            tls_client_key: Option<String>,
            /// CA bundle (PEM file) verifying the nodes this node connects to.
            #[arg(long = concat!($port, ".tls.client.root-cas"),
                id = concat!($port, ".tls.client.root-cas"))]
            tls_client_root_cas: Option<String>,
            /// Skip verifying the nodes this node connects to.
            #[arg(
                long = concat!($port, ".tls.client.insecure-skip-verify"),
                id = concat!($port, ".tls.client.insecure-skip-verify"),
                num_args = 0..=1,
                default_missing_value = "true"
            )]
            tls_client_insecure_skip_verify: Option<bool>,
            /// Server name expected in the certificates of the nodes this node connects to.
            #[arg(long = concat!($port, ".tls.client.server-name"),
                id = concat!($port, ".tls.client.server-name"))]
            tls_client_server_name: Option<String>,
        }

        impl $name {
            /// The port's token verification: flags over the file's `auth:`; none when no key
            /// is set.
            ///
            /// # Errors
            /// A key is not a public key of its kind: `config: <port>: auth: ...`.
            pub(crate) fn verifier(
                &self,
                file: &crate::config_file::Auth,
            ) -> anyhow::Result<Option<std::sync::Arc<piko_server::auth::Verifier>>> {
                let config = crate::security_flags::auth_config(
                    file,
                    crate::security_flags::AuthOverrides {
                        hmac_secret_key: self.hmac_secret_key.as_ref(),
                        rsa_public_key: self.rsa_public_key.as_ref(),
                        ecdsa_public_key: self.ecdsa_public_key.as_ref(),
                        audience: self.audience.as_ref(),
                        issuer: self.issuer.as_ref(),
                        disable_disconnect_on_expiry: self.disable_disconnect_on_expiry,
                        jwks_endpoint: self.jwks_endpoint.as_ref(),
                        jwks_cache_ttl: self.jwks_cache_ttl,
                        jwks_timeout: self.jwks_timeout,
                    },
                );
                piko_server::auth::Verifier::new(&config)
                    .map(|verifier| verifier.map(std::sync::Arc::new))
                    .map_err(|err| anyhow::anyhow!(concat!("config: ", $port, ": auth: {}"), err))
            }

            /// The port's TLS: flags over the file's `tls:`; none without a certificate or key.
            ///
            /// # Errors
            /// Half a certificate, client CAs without one, or files that do not load:
            /// `config: <port>: tls: ...`.
            pub(crate) fn server_tls(
                &self,
                file: &crate::config_file::Tls,
                http2: bool,
            ) -> anyhow::Result<Option<std::sync::Arc<piko_server::tls::ServerTls>>> {
                crate::security_flags::server_tls(
                    $port,
                    [
                        (&self.tls_cert, &file.cert),
                        (&self.tls_key, &file.key),
                        (&self.tls_client_cas, &file.client_cas),
                    ],
                    http2,
                )
            }

            /// How this node reaches the same port of other nodes when the port serves TLS:
            /// flags over the file's `tls.client:`.
            ///
            /// # Errors
            /// Files that do not load, or a server name that is not one:
            /// `config: <port>: tls: client: ...`.
            #[allow(dead_code, reason = "nodes never connect to each other's upstream port")]
            pub(crate) fn peer_tls(
                &self,
                file: &crate::config_file::TlsClient,
            ) -> anyhow::Result<piko_server::tls::PeerTls> {
                let pick = |flag: &Option<String>, file: &Option<String>| {
                    flag.clone().or_else(|| file.clone()).filter(|v| !v.is_empty())
                };
                crate::security_flags::peer_tls(
                    $port,
                    &piko::ClientTls {
                        root_cas: pick(&self.tls_client_root_cas, &file.root_cas).map(Into::into),
                        cert: pick(&self.tls_client_cert, &file.cert).map(Into::into),
                        key: pick(&self.tls_client_key, &file.key).map(Into::into),
                        insecure_skip_verify: self
                            .tls_client_insecure_skip_verify
                            .or(file.insecure_skip_verify)
                            .unwrap_or(false),
                    },
                    pick(&self.tls_client_server_name, &file.server_name),
                )
            }
        }
    };
}

port_security_flags!(
    ProxySecurityFlags,
    "proxy",
    "Proxy port authentication and TLS"
);
port_security_flags!(
    UpstreamSecurityFlags,
    "upstream",
    "Upstream port authentication and TLS"
);
port_security_flags!(
    AdminSecurityFlags,
    "admin",
    "Admin port authentication and TLS"
);

/// `[cert, key, client_cas]`, each as (flag, file value).
type TlsSources<'a> = [(&'a Option<String>, &'a Option<String>); 3];

/// A port's TLS from its settings (see the flags' `server_tls`).
pub(crate) fn server_tls(
    port: &str,
    sources: TlsSources<'_>,
    http2: bool,
) -> anyhow::Result<Option<std::sync::Arc<piko_server::tls::ServerTls>>> {
    let [cert, key, client_cas] = sources.map(|(flag, file)| {
        flag.clone()
            .or_else(|| file.clone())
            .filter(|v| !v.is_empty())
    });
    let (cert, key) = match (cert, key) {
        (None, None) if client_cas.is_some() => {
            // Piko ignores them; asking for client certificates on a port that does not even
            // serve TLS is a mistake to point out.
            anyhow::bail!("config: {port}: tls: client_cas needs a cert and key")
        }
        (None, None) => return Ok(None),
        (Some(_), None) => anyhow::bail!("config: {port}: tls: missing key"),
        (None, Some(_)) => anyhow::bail!("config: {port}: tls: missing cert"),
        (Some(cert), Some(key)) => (cert, key),
    };
    let files = piko_server::tls::TlsFiles {
        cert: cert.into(),
        key: key.into(),
        client_cas: client_cas.map(Into::into),
    };
    piko_server::tls::ServerTls::load(files, http2)
        .map(|tls| Some(std::sync::Arc::new(tls)))
        .map_err(|err| anyhow::anyhow!("config: {port}: tls: {err}"))
}

/// How a node reaches another node's TLS port (see the flags' `peer_tls`).
pub(crate) fn peer_tls(
    port: &str,
    client: &piko::ClientTls,
    server_name: Option<String>,
) -> anyhow::Result<piko_server::tls::PeerTls> {
    let config = client
        .config_or_system()
        .map_err(|err| anyhow::anyhow!("config: {port}: tls: client: {err}"))?;
    let server_name = server_name
        .map(|name| {
            rustls_pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                anyhow::anyhow!("config: {port}: tls: client: server_name: invalid: {name}")
            })
        })
        .transpose()?;
    Ok(piko_server::tls::PeerTls {
        config,
        server_name,
    })
}

/// Flags that override a port's `auth:` keys.
#[derive(Clone, Copy, Default)]
pub(crate) struct AuthOverrides<'a> {
    pub(crate) hmac_secret_key: Option<&'a String>,
    pub(crate) rsa_public_key: Option<&'a String>,
    pub(crate) ecdsa_public_key: Option<&'a String>,
    pub(crate) audience: Option<&'a String>,
    pub(crate) issuer: Option<&'a String>,
    pub(crate) disable_disconnect_on_expiry: Option<bool>,
    pub(crate) jwks_endpoint: Option<&'a String>,
    pub(crate) jwks_cache_ttl: Option<Duration>,
    pub(crate) jwks_timeout: Option<Duration>,
}

/// An `auth:` block with its flags over it.
pub(crate) fn auth_config(
    file: &crate::config_file::Auth,
    flags: AuthOverrides<'_>,
) -> piko_server::auth::AuthConfig {
    let pick =
        |flag: Option<&String>, file: &Option<String>| flag.cloned().or_else(|| file.clone());
    piko_server::auth::AuthConfig {
        hmac_secret_key: pick(flags.hmac_secret_key, &file.hmac_secret_key),
        rsa_public_key: pick(flags.rsa_public_key, &file.rsa_public_key),
        ecdsa_public_key: pick(flags.ecdsa_public_key, &file.ecdsa_public_key),
        audience: pick(flags.audience, &file.audience),
        issuer: pick(flags.issuer, &file.issuer),
        disable_disconnect_on_expiry: flags
            .disable_disconnect_on_expiry
            .or(file.disable_disconnect_on_expiry)
            .unwrap_or(false),
        jwks: pick(flags.jwks_endpoint, &file.jwks.endpoint)
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| piko_server::auth::JwksConfig {
                endpoint,
                cache_ttl: flags
                    .jwks_cache_ttl
                    .or(file.jwks.cache_ttl.map(|d| d.0))
                    .unwrap_or_default(),
                timeout: flags
                    .jwks_timeout
                    .or(file.jwks.timeout.map(|d| d.0))
                    .unwrap_or_default(),
            }),
    }
}

/// `upstream.tenants` (YAML only): each with an ID and keys of its own.
///
/// # Errors
/// Piko's `config: upstream: tenant: missing tenant id` and `... tenant auth disabled`; ours for
/// an ID with a `/` or given twice, and for keys that do not load.
pub(crate) fn tenants(
    file: &[crate::config_file::Tenant],
) -> anyhow::Result<std::sync::Arc<piko_server::auth::Tenants>> {
    let mut list = Vec::with_capacity(file.len());
    for tenant in file {
        let id = tenant.id.clone().unwrap_or_default();
        if id.is_empty() {
            anyhow::bail!("config: upstream: tenant: missing tenant id");
        }
        let config = auth_config(&tenant.auth, AuthOverrides::default());
        let verifier = piko_server::auth::Verifier::new(&config)
            .map_err(|err| anyhow::anyhow!("config: upstream: tenant: {id}: auth: {err}"))?
            .ok_or_else(|| anyhow::anyhow!("config: upstream: tenant: tenant auth disabled"))?;
        list.push((id, std::sync::Arc::new(verifier)));
    }
    piko_server::auth::Tenants::new(list)
        .map(std::sync::Arc::new)
        .map_err(|err| anyhow::anyhow!("config: upstream: tenant: {err}"))
}
