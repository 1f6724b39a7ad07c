//! Arbitrary strings through piko-server's JWT verification (`Verifier::verify`), with an HMAC
//! key, and with RSA and ECDSA keys plus an audience and an issuer to check. The keys are fixed
//! test keys in `fuzz/keys/`; the seed corpus holds tokens they signed, with odd claims.
//!
//! Checks: no panic; verification completes at once (no JWKS, nothing to wait for); the same
//! token gets the same answer twice; a granted token's expiry, when it has one that fits in a
//! `SystemTime`, is after the time it was checked at.

#![no_main]

use std::{
    future::Future,
    pin::pin,
    sync::OnceLock,
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use libfuzzer_sys::fuzz_target;
use piko_server::auth::{AuthConfig, Grant, TokenError, Verifier};

/// The instant tokens are checked at (the seeds' `exp` and `nbf` are around it).
const NOW_SECS: u64 = 1_800_000_000;

/// The HMAC key of the seeds' HS* tokens.
const HMAC_SECRET: &str = "fuzz-hmac-secret";

fn verifiers() -> &'static [Verifier; 2] {
    static VERIFIERS: OnceLock<[Verifier; 2]> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        let hmac = AuthConfig {
            hmac_secret_key: Some(HMAC_SECRET.to_owned()),
            ..AuthConfig::default()
        };
        let public_keys = AuthConfig {
            rsa_public_key: Some(include_str!("../keys/rsa_public.pem").to_owned()),
            ecdsa_public_key: Some(include_str!("../keys/ec_public.pem").to_owned()),
            audience: Some("fuzz-audience".to_owned()),
            issuer: Some("fuzz-issuer".to_owned()),
            ..AuthConfig::default()
        };
        [hmac, public_keys].map(|config| {
            Verifier::new(&config)
                .expect("the test keys load")
                .expect("a key turns auth on")
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    for verifier in verifiers() {
        let first = verify_now(verifier, token, now);
        assert_eq!(
            first,
            verify_now(verifier, token, now),
            "a second look differs"
        );
        if let Ok(grant) = first {
            assert!(
                grant.expires.is_none_or(|expires| expires > now),
                "granted a token that expired at {:?}",
                grant.expires
            );
        }
    }
});

/// `Verifier::verify`, which has nothing to wait for with static keys.
fn verify_now(verifier: &Verifier, token: &str, now: SystemTime) -> Result<Grant, TokenError> {
    let mut verify = pin!(verifier.verify(token, now));
    match verify
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("verification with static keys waited"),
    }
}
