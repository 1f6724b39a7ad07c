//! Verification keys from a JWK Set (`<port>.auth.jwks`), with the semantics of keyfunc, which
//! Piko uses: a URL is fetched at start (a failure is logged, not fatal) and again every
//! `cache_ttl`; a token whose `kid` is unknown fetches it again at once, at most once every five
//! minutes; a `file://` set is read once. A token without `kid` is tried against every key, and
//! a key that names its `alg` only verifies that algorithm. A response larger than
//! [`MAX_JWKS_BYTES`] is refused (the old set is kept), and a plain `http://` URL to another host
//! is warned about at start: keys fetched that way can be swapped on the path.

use std::{
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use aws_lc_rs::{hmac, signature};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;
use tokio::time::Instant;

/// `<port>.auth.jwks`.
#[derive(Clone, Debug)]
pub struct JwksConfig {
    /// `http://`, `https://` or `file://<path>`.
    pub endpoint: String,
    /// How often a URL is fetched again (Piko: 0 means an hour).
    pub cache_ttl: Duration,
    /// Each fetch's time limit (Piko: 0 means a minute).
    pub timeout: Duration,
}

/// How often an unknown `kid` may fetch the set again.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(300);

/// A key set and where it comes from.
#[derive(Debug)]
pub(crate) struct JwksKeys {
    keys: RwLock<Arc<Vec<Jwk>>>,
    url: Option<hyper::Uri>,
    timeout: Duration,
    last_unknown_refresh: Mutex<Option<Instant>>,
    /// True once a set has been loaded.
    loaded: tokio::sync::watch::Sender<bool>,
}

/// Largest JWK Set response read: far beyond any real set (a key is a few hundred bytes), small
/// enough that a hostile or broken provider cannot grow the node's memory.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;

impl JwksKeys {
    /// Loads the set: a file now (an error is fatal), a URL now and then every `cache_ttl` in
    /// the background (an error is logged). Must run inside a tokio runtime.
    pub(crate) fn start(config: &JwksConfig) -> Result<Arc<Self>, String> {
        if let Some(path) = config.endpoint.strip_prefix("file://") {
            let text = std::fs::read(path).map_err(|err| format!("jwks: {path}: {err}"))?;
            let keys = parse_set(&text).map_err(|err| format!("jwks: {path}: {err}"))?;
            return Ok(Arc::new(Self {
                keys: RwLock::new(Arc::new(keys)),
                url: None,
                timeout: Duration::ZERO,
                last_unknown_refresh: Mutex::new(None),
                loaded: tokio::sync::watch::Sender::new(true),
            }));
        }
        let scheme = config.endpoint.split("://").next().unwrap_or_default();
        if scheme != "http" && scheme != "https" {
            return Err(format!("jwks: unsupported scheme: {scheme}"));
        }
        let url: hyper::Uri = config
            .endpoint
            .parse()
            .map_err(|err| format!("jwks: {}: {err}", config.endpoint))?;
        if plain_http_off_loopback(&url) {
            tracing::warn!(subsystem = "auth", url = %url, "jwks fetched over plain HTTP from another host: anyone on the path can swap the keys; use an https:// URL");
        }
        let or_default = |value: Duration, default: u64| {
            if value.is_zero() {
                Duration::from_secs(default)
            } else {
                value
            }
        };
        let keys = Arc::new(Self {
            keys: RwLock::default(),
            url: Some(url),
            timeout: or_default(config.timeout, 60),
            last_unknown_refresh: Mutex::new(None),
            loaded: tokio::sync::watch::Sender::new(false),
        });
        let ttl = or_default(config.cache_ttl, 3600);
        let refreshed = Arc::downgrade(&keys);
        tokio::spawn(async move {
            loop {
                let Some(keys) = refreshed.upgrade() else {
                    return;
                };
                keys.refresh().await;
                drop(keys);
                tokio::time::sleep(ttl).await;
            }
        });
        Ok(keys)
    }

    /// Fetches the set again; keeps the old one on failure.
    async fn refresh(&self) {
        let Some(url) = &self.url else {
            return;
        };
        match tokio::time::timeout(self.timeout, fetch(url.clone())).await {
            Ok(Ok(keys)) => {
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                self.loaded.send_replace(true);
            }
            Ok(Err(err)) => {
                tracing::warn!(subsystem = "auth", url = %url, error = %err, "failed to refresh jwks");
            }
            Err(_) => {
                tracing::warn!(subsystem = "auth", url = %url, "failed to refresh jwks: timeout");
            }
        }
    }

    /// Resolves once a set has been loaded.
    pub(crate) async fn loaded(&self) {
        let _ = self.loaded.subscribe().wait_for(|loaded| *loaded).await;
    }

    fn current(&self) -> Arc<Vec<Jwk>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a key of the set verifies `sig` over `signed` with `alg`.
    pub(crate) async fn verify(
        &self,
        kid: Option<&str>,
        alg: &str,
        signed: &[u8],
        sig: &[u8],
    ) -> bool {
        let Some(kid) = kid else {
            return self
                .current()
                .iter()
                .any(|key| key.verify(alg, signed, sig));
        };
        let find = |keys: &[Jwk]| {
            keys.iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .map(|key| key.verify(alg, signed, sig))
        };
        if let Some(verified) = find(&self.current()) {
            return verified;
        }
        if self.url.is_some() && self.may_refresh_for_unknown_kid() {
            self.refresh().await;
            return find(&self.current()).unwrap_or(false);
        }
        false
    }

    fn may_refresh_for_unknown_kid(&self) -> bool {
        let mut last = self
            .last_unknown_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < UNKNOWN_KID_REFRESH) {
            return false;
        }
        *last = Some(now);
        true
    }
}

async fn fetch(url: hyper::Uri) -> Result<Vec<Jwk>, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_platform_verifier()
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let response = client.get(url).await.map_err(|err| err.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("bad status: {}", response.status().as_u16()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                format!("response larger than {MAX_JWKS_BYTES} bytes")
            } else {
                err.to_string()
            }
        })?
        .to_bytes();
    parse_set(&body)
}

/// Whether `url` is plain HTTP to a host other than this machine's loopback.
fn plain_http_off_loopback(url: &hyper::Uri) -> bool {
    if url.scheme_str() != Some("http") {
        return false;
    }
    let host = url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// One key of a set.
#[derive(Debug)]
pub(crate) struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: JwkKey,
}

#[derive(Debug)]
enum JwkKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The curve's algorithm and the uncompressed point.
    Ec {
        alg: &'static str,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    Oct(Vec<u8>),
}

impl Jwk {
    fn verify(&self, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
        if self.alg.as_deref().is_some_and(|own| own != alg) {
            return false;
        }
        let with = |scheme: &'static dyn signature::VerificationAlgorithm, der: &[u8]| {
            signature::UnparsedPublicKey::new(scheme, der)
                .verify(signed, sig)
                .is_ok()
        };
        match (&self.key, alg) {
            (JwkKey::Rsa { n, e }, _) => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, signed, sig)
                    .is_ok()
            }
            (
                JwkKey::Ec {
                    alg: curve_alg,
                    point,
                },
                _,
            ) if *curve_alg == alg => {
                let scheme: &'static dyn signature::VerificationAlgorithm = match alg {
                    "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
                    "ES384" => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => &signature::ECDSA_P521_SHA512_FIXED,
                };
                with(scheme, point)
            }
            (JwkKey::Ed25519(x), "EdDSA") => with(&signature::ED25519, x),
            (JwkKey::Oct(secret), _) => {
                let algorithm = match alg {
                    "HS256" => hmac::HMAC_SHA256,
                    "HS384" => hmac::HMAC_SHA384,
                    "HS512" => hmac::HMAC_SHA512,
                    _ => return false,
                };
                hmac::verify(&hmac::Key::new(algorithm, secret), signed, sig).is_ok()
            }
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

/// The usable keys of a JWK Set document; keys of unknown types are skipped.
pub(crate) fn parse_set(document: &[u8]) -> Result<Vec<Jwk>, String> {
    let set: RawSet =
        serde_json::from_slice(document).map_err(|err| format!("invalid jwks: {err}"))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|key| serde_json::from_value::<RawKey>(key).ok())
        .filter_map(|raw| {
            let b64 = |field: &Option<String>| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(field.as_deref()?.trim_end_matches('='))
                    .ok()
            };
            let key = match (raw.kty.as_str(), raw.crv.as_deref()) {
                ("RSA", _) => JwkKey::Rsa {
                    n: b64(&raw.n)?,
                    e: b64(&raw.e)?,
                },
                ("EC", Some(crv)) => {
                    let alg = match crv {
                        "P-256" => "ES256",
                        "P-384" => "ES384",
                        "P-521" => "ES512",
                        _ => return None,
                    };
                    let mut point = vec![4u8];
                    point.extend(b64(&raw.x)?);
                    point.extend(b64(&raw.y)?);
                    JwkKey::Ec { alg, point }
                }
                ("OKP", Some("Ed25519")) => JwkKey::Ed25519(b64(&raw.x)?),
                ("oct", _) => JwkKey::Oct(b64(&raw.k)?),
                _ => return None,
            };
            Some(Jwk {
                kid: raw.kid,
                alg: raw.alg,
                key,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn plain_http_is_flagged_only_off_loopback() {
        for (url, flagged) in [
            ("http://keys.example.com/jwks.json", true),
            ("http://10.0.0.1:8080/jwks", true),
            ("https://keys.example.com/jwks.json", false),
            ("http://localhost:8080/jwks", false),
            ("http://127.0.0.1/jwks", false),
            ("http://[::1]:80/jwks", false),
        ] {
            let url: hyper::Uri = url.parse().unwrap();
            assert_eq!(plain_http_off_loopback(&url), flagged, "{url}");
        }
    }

    #[tokio::test]
    async fn a_response_past_the_cap_is_refused_with_a_clear_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // Endless keys: the fetch must stop reading at the cap, not at the end.
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tcp.read(&mut request).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
            while tcp.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let url: hyper::Uri = format!("http://{addr}/jwks").parse().unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), fetch(url))
            .await
            .expect("the fetch read on past the cap")
            .unwrap_err();
        assert_eq!(err, format!("response larger than {MAX_JWKS_BYTES} bytes"));
    }
}
