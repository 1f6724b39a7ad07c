use std::time::Duration;

use aws_lc_rs::{
    encoding::AsDer as _,
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair as _},
};
use serde_json::json;

use super::*;

const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn signing_input(alg: &str, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn hs(alg: &str, secret: &str, claims: &Value) -> String {
    let algorithm = match alg {
        "HS256" => hmac::HMAC_SHA256,
        "HS384" => hmac::HMAC_SHA384,
        _ => hmac::HMAC_SHA512,
    };
    let input = signing_input(alg, claims);
    let tag = hmac::sign(
        &hmac::Key::new(algorithm, secret.as_bytes()),
        input.as_bytes(),
    );
    format!("{input}.{}", b64(tag.as_ref()))
}

fn hmac_verifier(secret: &str) -> Verifier {
    Verifier::new(&AuthConfig {
        hmac_secret_key: Some(secret.into()),
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn no_key_no_verifier_and_bad_keys_are_named() {
    assert!(Verifier::new(&AuthConfig::default()).unwrap().is_none());
    let err = Verifier::new(&AuthConfig {
        rsa_public_key: Some("not a key".into()),
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(err.starts_with("rsa public key:"), "{err}");
}

#[tokio::test]
async fn hmac_tokens_and_their_claims() {
    let verifier = hmac_verifier("secret");
    for alg in ["HS256", "HS384", "HS512"] {
        let grant = verifier
            .verify(&hs(alg, "secret", &json!({})), now())
            .await
            .unwrap();
        assert!(grant.permits("anything"), "{alg}: no list allows all");
    }
    let token = hs(
        "HS256",
        "secret",
        &json!({ "exp": NOW + 60, "piko": { "endpoints": ["a", "b"] } }),
    );
    let grant = verifier.verify(&token, now()).await.unwrap();
    assert!(grant.permits("a") && grant.permits("b") && !grant.permits("c"));
    assert_eq!(grant.expires, Some(now() + Duration::from_secs(60)));

    let check = async |claims: Value| {
        verifier
            .verify(&hs("HS256", "secret", &claims), now())
            .await
    };
    // exp: valid strictly before it, no leeway; fractions truncated as golang-jwt does.
    assert_eq!(check(json!({ "exp": NOW })).await, Err(TokenError::Expired));
    assert_eq!(
        check(json!({ "exp": NOW as f64 + 0.9 })).await,
        Err(TokenError::Expired)
    );
    assert!(check(json!({ "exp": NOW + 1 })).await.is_ok());
    // An exp past any representable time is far future, not a panic (overflow), as is a
    // negative or huge nbf.
    for exp in [json!(1e20), json!(1.7976931348623157e308), json!(u64::MAX)] {
        let grant = check(json!({ "exp": exp })).await.unwrap();
        assert_eq!(grant.expires, None, "{exp}");
    }
    assert!(check(json!({ "nbf": -1e300 })).await.is_ok());
    assert_eq!(
        check(json!({ "nbf": 1e300 })).await,
        Err(TokenError::Invalid)
    );
    // nbf: valid from it on.
    assert!(check(json!({ "nbf": NOW })).await.is_ok());
    assert_eq!(
        check(json!({ "nbf": NOW + 1 })).await,
        Err(TokenError::Invalid)
    );
    // Wrong types are invalid; an expiry wins over other failures.
    assert_eq!(
        check(json!({ "exp": "soon" })).await,
        Err(TokenError::Invalid)
    );
    assert_eq!(
        check(json!({ "exp": NOW - 1, "nbf": NOW + 1 })).await,
        Err(TokenError::Expired)
    );
    assert_eq!(
        check(json!({ "piko": { "endpoints": "a" } })).await,
        Err(TokenError::Invalid)
    );
    // No audience or issuer configured: theirs are not checked.
    assert!(
        check(json!({ "aud": "other", "iss": "other" }))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn malformed_and_forged_tokens_are_invalid() {
    let verifier = hmac_verifier("secret");
    let good = hs("HS256", "secret", &json!({}));
    let (unsigned, _) = good.rsplit_once('.').unwrap();
    for token in [
        String::new(),
        "a.b".into(),
        format!("{good}.extra"),
        format!("{unsigned}."),
        format!("{unsigned}.!!!"),
        hs("HS256", "other secret", &json!({})),
        // `none`, however well formed.
        format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{}"#)),
        // A header that is not JSON.
        format!("{}.{}.{}", b64(b"nope"), b64(b"{}"), b64(b"sig")),
    ] {
        assert_eq!(
            verifier.verify(&token, now()).await,
            Err(TokenError::Invalid),
            "{token}"
        );
    }
    // RS256 with only an HMAC key configured (and the classic HMAC-with-public-key confusion
    // cannot arise: each family has its own key).
    let rs = format!("{}.{}", signing_input("RS256", &json!({})), b64(b"sig"));
    assert_eq!(verifier.verify(&rs, now()).await, Err(TokenError::Invalid));
}

#[tokio::test]
async fn audience_and_issuer_when_configured() {
    let verifier = Verifier::new(&AuthConfig {
        hmac_secret_key: Some("secret".into()),
        audience: Some("piko".into()),
        issuer: Some("me".into()),
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap();
    let check = async |claims: Value| {
        verifier
            .verify(&hs("HS256", "secret", &claims), now())
            .await
    };
    assert!(check(json!({ "aud": "piko", "iss": "me" })).await.is_ok());
    assert!(
        check(json!({ "aud": ["x", "piko"], "iss": "me" }))
            .await
            .is_ok()
    );
    assert_eq!(
        check(json!({ "aud": "x", "iss": "me" })).await,
        Err(TokenError::Invalid)
    );
    assert_eq!(
        check(json!({ "iss": "me" })).await,
        Err(TokenError::Invalid)
    );
    assert_eq!(
        check(json!({ "aud": "piko" })).await,
        Err(TokenError::Invalid)
    );
    assert_eq!(
        check(json!({ "aud": "piko", "iss": "you" })).await,
        Err(TokenError::Invalid)
    );
}

#[tokio::test]
async fn ecdsa_tokens_on_every_curve_es512_included() {
    let rng = SystemRandom::new();
    for (alg, signing, other) in [
        (
            "ES256",
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            "ES384",
        ),
        (
            "ES384",
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            "ES512",
        ),
        (
            "ES512",
            &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            "ES256",
        ),
    ] {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let verifier = Verifier::new(&AuthConfig {
            ecdsa_public_key: Some(pem("PUBLIC KEY", spki.as_ref())),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap();
        let sign = |alg: &str| {
            let input = signing_input(alg, &json!({ "piko": { "endpoints": ["e"] } }));
            let sig = pair.sign(&rng, input.as_bytes()).unwrap();
            format!("{input}.{}", b64(sig.as_ref()))
        };
        let grant = verifier.verify(&sign(alg), now()).await.unwrap();
        assert!(grant.permits("e") && !grant.permits("f"), "{alg}");
        // The same key under another curve's algorithm is refused.
        assert_eq!(
            verifier.verify(&sign(other), now()).await,
            Err(TokenError::Invalid),
            "{alg} key as {other}"
        );
    }
}

#[tokio::test]
async fn rsa_tokens_with_pkcs1_and_pkix_keys() {
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let public = pair.public_key();
    let pkcs1 = pem("RSA PUBLIC KEY", public.as_ref());
    let pkix = pem("PUBLIC KEY", public.as_der().unwrap().as_ref());
    let rng = SystemRandom::new();
    for key in [pkcs1, pkix] {
        let verifier = Verifier::new(&AuthConfig {
            rsa_public_key: Some(key),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap();
        for (alg, padding) in [
            ("RS256", &signature::RSA_PKCS1_SHA256),
            ("RS384", &signature::RSA_PKCS1_SHA384),
            ("RS512", &signature::RSA_PKCS1_SHA512),
        ] {
            let input = signing_input(alg, &json!({}));
            let mut sig = vec![0; pair.public_modulus_len()];
            pair.sign(padding, &rng, input.as_bytes(), &mut sig)
                .unwrap();
            let token = format!("{input}.{}", b64(&sig));
            assert!(verifier.verify(&token, now()).await.is_ok(), "{alg}");
            let forged = format!("{input}.{}", b64(&vec![0; sig.len()]));
            assert_eq!(
                verifier.verify(&forged, now()).await,
                Err(TokenError::Invalid)
            );
        }
    }
}
