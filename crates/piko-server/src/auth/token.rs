//! JSON Web Tokens, verified as golang-jwt v5 (Piko's library) verifies them with Piko's options:
//! the signature first, with an algorithm the configured keys allow (never `none`); then `exp`
//! (optional; valid while now < exp, no leeway), `nbf` (optional; valid from nbf on), and the
//! audience and issuer only when configured. `iat` is not checked. Signatures are checked with
//! aws-lc-rs for every algorithm, ES512 included. Keys are static (PEM text in the config) or
//! come from a JWK Set (see `jwks`).

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{hmac, signature};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{JwksConfig, JwksKeys};

/// A port's verification keys and claim checks (`<port>.auth`).
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Secret enabling HS256/384/512 (the string's bytes, as Piko uses them).
    pub hmac_secret_key: Option<String>,
    /// PEM public key (PKCS#1, PKIX, or a certificate) enabling RS256/384/512.
    pub rsa_public_key: Option<String>,
    /// PEM public key (PKIX, or a certificate) enabling ES256/384/512.
    pub ecdsa_public_key: Option<String>,
    /// When set, the token's `aud` must contain it.
    pub audience: Option<String>,
    /// When set, the token's `iss` must equal it.
    pub issuer: Option<String>,
    /// Keep upstream sessions open past their token's expiry.
    pub disable_disconnect_on_expiry: bool,
    /// Keys from a JWK Set instead (exclusive with the three keys above).
    pub jwks: Option<JwksConfig>,
}

impl AuthConfig {
    /// Whether a key turns authentication on.
    pub fn enabled(&self) -> bool {
        [
            &self.hmac_secret_key,
            &self.rsa_public_key,
            &self.ecdsa_public_key,
        ]
        .into_iter()
        .any(|key| key.as_deref().is_some_and(|key| !key.is_empty()))
            || self.jwks.is_some()
    }
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, badly signed, not valid yet, or for another audience or issuer.
    Invalid,
    /// Well signed, but past its `exp`.
    Expired,
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `piko.endpoints`: the endpoints it may reach or serve; empty means all.
    pub endpoints: Vec<String>,
    /// When it expires, if it does.
    pub expires: Option<SystemTime>,
}

impl Grant {
    /// Whether the token may reach or serve `endpoint` (exact match; an empty list allows all).
    pub fn permits(&self, endpoint: &str) -> bool {
        self.endpoints.is_empty() || self.endpoints.iter().any(|allowed| allowed == endpoint)
    }
}

/// Verifies tokens with a port's keys.
#[derive(Debug)]
pub struct Verifier {
    hmac: Option<Vec<u8>>,
    /// DER (PKCS#1 or SPKI).
    rsa: Option<Vec<u8>>,
    /// SPKI DER.
    ecdsa: Option<Vec<u8>>,
    jwks: Option<Arc<JwksKeys>>,
    audience: Option<String>,
    issuer: Option<String>,
    disconnect_on_expiry: bool,
}

impl Verifier {
    /// Resolves once the keys are loaded: at once for keys in the config, after the first
    /// successful fetch for a JWKS URL.
    pub async fn loaded(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.loaded().await;
        }
    }

    /// Whether an upstream's session ends when its token expires (Piko's default; off with
    /// `disable_disconnect_on_expiry`).
    pub fn disconnects_on_expiry(&self) -> bool {
        self.disconnect_on_expiry
    }

    /// The verifier of `config`; none when it enables no authentication. With a JWKS URL, its
    /// refresh task starts here (inside a tokio runtime).
    ///
    /// # Errors
    /// A key is not a PEM public key of its kind (the message names the key); a JWKS with
    /// another key, an unsupported scheme, or a file that cannot be read.
    pub fn new(config: &AuthConfig) -> Result<Option<Self>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let non_empty = |key: &Option<String>| key.clone().filter(|key| !key.is_empty());
        let jwks = match &config.jwks {
            Some(jwks) => {
                let statics = [
                    &config.hmac_secret_key,
                    &config.rsa_public_key,
                    &config.ecdsa_public_key,
                ];
                if statics.into_iter().any(|key| non_empty(key).is_some()) {
                    return Err(
                        "no other verification key can be set when jwks.endpoint is set".into(),
                    );
                }
                Some(JwksKeys::start(jwks)?)
            }
            None => None,
        };
        let rsa = non_empty(&config.rsa_public_key)
            .map(|pem| public_key_der(&pem).map_err(|err| format!("rsa public key: {err}")))
            .transpose()?;
        let ecdsa = non_empty(&config.ecdsa_public_key)
            .map(|pem| public_key_der(&pem).map_err(|err| format!("ecdsa public key: {err}")))
            .transpose()?;
        Ok(Some(Self {
            hmac: non_empty(&config.hmac_secret_key).map(String::into_bytes),
            rsa,
            ecdsa,
            jwks,
            audience: non_empty(&config.audience),
            issuer: non_empty(&config.issuer),
            disconnect_on_expiry: !config.disable_disconnect_on_expiry,
        }))
    }

    /// Checks `token` at time `now`.
    ///
    /// # Errors
    /// See [`TokenError`].
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Grant, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        let header: Header = decode_json(header)?;
        let signature = decode_segment(sig)?;
        let signed = &token[..header_and_payload_len(token)];
        let valid = match &self.jwks {
            Some(jwks) => {
                jwks.verify(
                    header.kid.as_deref(),
                    &header.alg,
                    signed.as_bytes(),
                    &signature,
                )
                .await
            }
            None => self.signature_valid(&header.alg, signed.as_bytes(), &signature),
        };
        if !valid {
            return Err(TokenError::Invalid);
        }
        let claims: serde_json::Map<String, Value> = decode_json(payload)?;
        self.check_claims(&claims, now)
    }

    fn signature_valid(&self, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
        let hmac_alg = match alg {
            "HS256" => Some(hmac::HMAC_SHA256),
            "HS384" => Some(hmac::HMAC_SHA384),
            "HS512" => Some(hmac::HMAC_SHA512),
            _ => None,
        };
        if let Some(hmac_alg) = hmac_alg {
            return self.hmac.as_ref().is_some_and(|secret| {
                hmac::verify(&hmac::Key::new(hmac_alg, secret), signed, sig).is_ok()
            });
        }
        let (key, scheme): (_, &'static dyn signature::VerificationAlgorithm) = match alg {
            "RS256" => (&self.rsa, &signature::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => (&self.rsa, &signature::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => (&self.rsa, &signature::RSA_PKCS1_2048_8192_SHA512),
            "ES256" => (&self.ecdsa, &signature::ECDSA_P256_SHA256_FIXED),
            "ES384" => (&self.ecdsa, &signature::ECDSA_P384_SHA384_FIXED),
            "ES512" => (&self.ecdsa, &signature::ECDSA_P521_SHA512_FIXED),
            // `none`, and anything the keys do not enable.
            _ => return false,
        };
        key.as_ref().is_some_and(|der| {
            signature::UnparsedPublicKey::new(scheme, der)
                .verify(signed, sig)
                .is_ok()
        })
    }

    fn check_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: SystemTime,
    ) -> Result<Grant, TokenError> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let exp = numeric_date(claims.get("exp"))?;
        // golang-jwt reports every failed check together; an expiry among them makes the error
        // "expired" for Piko.
        let expired = exp.is_some_and(|exp| now >= exp);
        let not_yet = numeric_date(claims.get("nbf"))?.is_some_and(|nbf| now < nbf);
        let wrong_audience = self
            .audience
            .as_ref()
            .is_some_and(|wanted| !audience_contains(claims.get("aud"), wanted));
        let wrong_issuer = self.issuer.as_ref().is_some_and(|wanted| {
            claims.get("iss").and_then(Value::as_str) != Some(wanted.as_str())
        });
        if expired {
            return Err(TokenError::Expired);
        }
        if not_yet || wrong_audience || wrong_issuer {
            return Err(TokenError::Invalid);
        }
        let piko: PikoClaim = match claims.get("piko") {
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|_| TokenError::Invalid)?
            }
            None => PikoClaim::default(),
        };
        Ok(Grant {
            endpoints: piko.endpoints.unwrap_or_default(),
            // An `exp` past what a time can hold (1e20, say) is a token that never expires here,
            // not a panic.
            expires: exp.and_then(|exp| {
                std::time::Duration::try_from_secs_f64(exp)
                    .ok()
                    .and_then(|after| UNIX_EPOCH.checked_add(after))
            }),
        })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Default, Deserialize)]
struct PikoClaim {
    endpoints: Option<Vec<String>>,
}

/// Length of `header.payload` in `token` (the signed part).
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

fn decode_segment(segment: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Invalid)
}

fn decode_json<T: for<'de> Deserialize<'de>>(segment: &str) -> Result<T, TokenError> {
    serde_json::from_slice(&decode_segment(segment)?).map_err(|_| TokenError::Invalid)
}

/// A JWT NumericDate: absent, or a JSON number (seconds, fractions allowed); anything else makes
/// the token invalid.
fn numeric_date(value: Option<&Value>) -> Result<Option<f64>, TokenError> {
    match value {
        None => Ok(None),
        // Whole seconds, as golang-jwt truncates them.
        Some(Value::Number(number)) => number
            .as_f64()
            .map(|seconds| Some(seconds.floor()))
            .ok_or(TokenError::Invalid),
        Some(_) => Err(TokenError::Invalid),
    }
}

/// `aud` as a string or an array of strings, containing `wanted`.
fn audience_contains(aud: Option<&Value>, wanted: &str) -> bool {
    match aud {
        Some(Value::String(aud)) => aud == wanted,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(wanted)),
        _ => false,
    }
}

/// The DER public key of a PEM text: `RSA PUBLIC KEY` (PKCS#1), `PUBLIC KEY` (PKIX), or a
/// `CERTIFICATE`'s subject public key; the first such block.
fn public_key_der(pem: &str) -> Result<Vec<u8>, String> {
    let mut lines = pem.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let body: String = lines
            .by_ref()
            .take_while(|line| *line != end)
            .filter(|line| !line.contains(':'))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|err| format!("invalid PEM {label}: {err}"))?;
        return match label {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Ok(der),
            "CERTIFICATE" => {
                let cert = rustls_pki_types::CertificateDer::from(der);
                let cert = webpki::EndEntityCert::try_from(&cert)
                    .map_err(|err| format!("invalid certificate: {err}"))?;
                Ok(cert.subject_public_key_info().as_ref().to_vec())
            }
            other => Err(format!("a {other} is not a public key")),
        };
    }
    Err("no PEM block".to_owned())
}

#[cfg(test)]
mod tests;
