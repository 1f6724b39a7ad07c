//! Tokens on the three ports (spec §7, Piko's auth test cases): clients, agents and admin
//! requests without a valid token get Piko's 401s; a token's `piko.endpoints` limits what it
//! reaches or serves; an upstream's session ends when its token expires.

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use common::{Node, start_node_from, wait_upstreams};
use piko_server::{
    Config,
    auth::{AuthConfig, TokenError, Verifier},
};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret";

fn token(claims: &Value) -> String {
    common::hs256_token(SECRET, claims)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn verifier() -> Arc<Verifier> {
    common::hmac_verifier(SECRET)
}

async fn node_with_auth() -> Node {
    let mut config = Config::default();
    config.proxy.auth = Some(verifier());
    config.upstream.auth = Some(verifier());
    config.admin_auth = Some(verifier());
    start_node_from(config).await
}

/// An upstream for `endpoint` answering `ok`, listening with `token`.
async fn serve(node: &Node, endpoint: &str, token: &str) -> Result<(), piko::Error> {
    let listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .token(token)
        .listen(endpoint)
        .await?;
    tokio::spawn(answer_ok(listener, Duration::ZERO));
    Ok(())
}

/// Answers every request of `listener` with `ok`, after `delay`.
async fn answer_ok(mut listener: piko::Listener, delay: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    while let Ok(mut stream) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut read = 0;
            while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf[read..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
            }
            tokio::time::sleep(delay).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A GET with extra header lines: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: e.example.com\r\nconnection: close\r\n{headers}\r\n");
    let (head, body) = common::exchange(addr, &request).await;
    (head[9..12].parse().unwrap(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_wants_a_valid_token() {
    let node = node_with_auth().await;
    let all = token(&json!({ "exp": unix_now() + 600 }));
    serve(&node, "e", &all).await.unwrap();
    wait_upstreams(&node, "e", 1).await;

    let bearer = |token: &str| format!("authorization: Bearer {token}\r\n");
    let expired = token(&json!({ "exp": unix_now() - 1 }));
    let cases = [
        ("", 401, r#"{"error":"missing authorization"}"#),
        (
            "authorization: Bearer\r\n",
            401,
            r#"{"error":"invalid authorization"}"#,
        ),
        (
            "authorization: Basic abc\r\n",
            401,
            r#"{"error":"unsupported auth type"}"#,
        ),
        (
            "authorization: Bearer not.a.token\r\n",
            401,
            r#"{"error":"invalid token"}"#,
        ),
        (&bearer(&expired), 401, r#"{"error":"expired token"}"#),
        (
            &format!("{}x-piko-tenant-id: t\r\n", bearer(&all)),
            401,
            r#"{"error":"unknown tenant"}"#,
        ),
        (&bearer(&all), 200, "ok"),
        // Piko's header wins over `Authorization`, left for the upstream service.
        (
            &format!(
                "authorization: Basic for-the-service\r\nx-piko-authorization: Bearer {all}\r\n"
            ),
            200,
            "ok",
        ),
    ];
    for (headers, status, body) in cases {
        assert_eq!(
            get(node.proxy, "/", headers).await,
            (status, body.into()),
            "proxy: {headers}"
        );
    }
    // The admin port: every route, health included.
    for path in ["/health", "/metrics", "/status/upstream/endpoints"] {
        assert_eq!(get(node.admin, path, "").await.0, 401, "{path}");
        assert_eq!(get(node.admin, path, &bearer(&all)).await.0, 200, "{path}");
    }
    // The upstream port refuses an agent without a token, with Piko's message.
    let refused = serve(&node, "e", "not.a.token").await.unwrap_err();
    assert!(refused.to_string().contains("invalid token"), "{refused}");
}

/// The client's Piko token stops at Piko: the service behind the tunnel gets its own
/// `Authorization`, never `x-piko-authorization` (Piko passes it on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_piko_token_never_reaches_the_service() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let node = node_with_auth().await;
    let all = token(&json!({ "exp": unix_now() + 600 }));
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .token(&all)
        .listen("e")
        .await
        .unwrap();
    // Answers with the request head it received.
    tokio::spawn(async move {
        while let Ok(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", head.len());
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.write_all(&head).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    wait_upstreams(&node, "e", 1).await;
    let (status, head) = get(
        node.proxy,
        "/",
        &format!("authorization: Basic for-the-service\r\nx-piko-authorization: Bearer {all}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let head = head.to_lowercase();
    assert!(
        head.contains("authorization: basic for-the-service\r\n"),
        "{head}"
    );
    assert!(!head.contains("x-piko-authorization"), "{head}");
    assert!(!head.contains(&all.to_lowercase()), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_s_endpoints_limit_what_it_reaches_and_serves() {
    let node = node_with_auth().await;
    let only_e = token(&json!({ "piko": { "endpoints": ["e"] } }));
    serve(&node, "e", &only_e).await.unwrap();
    wait_upstreams(&node, "e", 1).await;
    let refused = serve(&node, "f", &only_e).await.unwrap_err();
    assert!(
        refused.to_string().contains("endpoint not permitted"),
        "{refused}"
    );

    let bearer = format!("authorization: Bearer {only_e}\r\n");
    assert_eq!(get(node.proxy, "/", &bearer).await, (200, "ok".into()));
    let other = format!("x-piko-endpoint: f\r\n{bearer}");
    assert_eq!(
        get(node.proxy, "/", &other).await,
        (401, r#"{"error":"endpoint not permitted"}"#.into())
    );
    // The TCP route checks it too.
    assert_eq!(get(node.proxy, "/_piko/v1/tcp/f", &bearer).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_session_ends_with_its_token() {
    let node = node_with_auth().await;
    let short = token(&json!({ "exp": unix_now() + 2 }));
    serve(&node, "e", &short).await.unwrap();
    wait_upstreams(&node, "e", 1).await;
    // At expiry the session is closed; the listener's reconnect with the same, now expired,
    // token is refused for good.
    tokio::time::timeout(Duration::from_secs(10), wait_upstreams(&node, "e", 0))
        .await
        .expect("the session outlived its token");
}

/// With `disable_disconnect_on_expiry` (Piko's option) a session outlives its token and keeps
/// serving; only new connections need a valid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_may_outlive_its_token_when_configured() {
    let lenient = Verifier::new(&AuthConfig {
        hmac_secret_key: Some(SECRET.into()),
        disable_disconnect_on_expiry: true,
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap();
    let mut config = Config::default();
    config.upstream.auth = Some(Arc::new(lenient));
    let node = start_node_from(config).await;
    let expires = unix_now() + 1;
    serve(&node, "e", &token(&json!({ "exp": expires })))
        .await
        .unwrap();
    wait_upstreams(&node, "e", 1).await;
    // Past the expiry (whole seconds, so a second and a bit after it), the session still serves.
    while unix_now() <= expires + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(node.proxy, "/", "").await, (200, "ok".into()));
    assert_eq!(node.upstreams.count("e"), 1);
}

/// An ES256 key pair and its JWK.
struct EcKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    kid: &'static str,
}

impl EcKey {
    fn new(kid: &'static str) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        Self { pair, kid }
    }

    fn jwk(&self) -> Value {
        use aws_lc_rs::signature::KeyPair as _;
        let point = self.pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        })
    }

    fn token(&self, claims: &Value) -> String {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = json!({ "alg": "ES256", "kid": self.kid });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self.pair.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// Serves `document` as a JWK Set over HTTP; counts the fetches.
async fn jwks_server(
    document: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (document, fetches) = (document.clone(), fetches.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = document.lock().unwrap().to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/jwks.json")
}

/// Keys rotate at the identity provider while agents are connected: the connected stay, a
/// token signed with the new key fetches the set again at once (no waiting for the cache's
/// time to live), and an unknown key cannot make the node fetch again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_with_agents_connected() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (old, new, unknown) = (EcKey::new("old"), EcKey::new("new"), EcKey::new("unknown"));
    let document = Arc::new(std::sync::Mutex::new(json!({ "keys": [old.jwk()] })));
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = jwks_server(document.clone(), fetches.clone()).await;
    let verifier = Arc::new(
        Verifier::new(&AuthConfig {
            jwks: Some(piko_server::auth::JwksConfig {
                endpoint: url,
                cache_ttl: Duration::from_secs(3600),
                timeout: Duration::from_secs(5),
            }),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap(),
    );
    // The first fetch happens at start (a token before it would spend the unknown-kid fetch).
    tokio::time::timeout(Duration::from_secs(10), verifier.loaded())
        .await
        .expect("the set never loaded");
    let mut config = Config::default();
    config.upstream.auth = Some(verifier);
    let node = start_node_from(config).await;
    serve(&node, "e", &old.token(&json!({}))).await.unwrap();
    wait_upstreams(&node, "e", 1).await;
    let after_start = fetches.load(Ordering::SeqCst);

    *document.lock().unwrap() = json!({ "keys": [new.jwk()] });
    serve(&node, "e", &new.token(&json!({}))).await.unwrap();
    wait_upstreams(&node, "e", 2).await;
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        after_start + 1,
        "one fetch for the new kid"
    );

    let refused = serve(&node, "e", &unknown.token(&json!({})))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("invalid token"), "{refused}");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        after_start + 1,
        "an unknown kid fetches at most every five minutes"
    );
    assert_eq!(node.upstreams.count("e"), 2, "connected agents stay");
}

/// A JWT with `header`, empty claims, signed by `sign`.
fn jwt(header: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(b"{}"));
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// Every key type a JWK Set may hold: RSA (limited to its `alg`), OKP Ed25519 and `oct`; a
/// token without `kid` is tried against every key; a token naming one key but signed by another,
/// or naming no key of the set, is invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_key_types() {
    use aws_lc_rs::{
        hmac,
        rand::SystemRandom,
        rsa::KeySize,
        signature::{self, Ed25519KeyPair, KeyPair as _, RsaKeyPair},
    };
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let ed = Ed25519KeyPair::generate().unwrap();
    let secret = b"an oct key of thirty-two bytes!!";
    let set = json!({ "keys": [
        {
            "kty": "RSA", "kid": "rsa", "alg": "RS256",
            "n": b64(rsa.public_key().modulus().big_endian_without_leading_zero()),
            "e": b64(rsa.public_key().exponent().big_endian_without_leading_zero()),
        },
        { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key().as_ref()) },
        { "kty": "oct", "kid": "oct", "k": b64(secret) },
        { "kty": "unknown types are skipped" },
    ]});
    let dir = std::env::temp_dir().join(format!("piko-jwks-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, set.to_string()).unwrap();
    let verifier = Verifier::new(&AuthConfig {
        jwks: Some(piko_server::auth::JwksConfig {
            endpoint: format!("file://{}", path.display()),
            cache_ttl: Duration::ZERO,
            timeout: Duration::ZERO,
        }),
        ..AuthConfig::default()
    })
    .unwrap()
    .unwrap();
    std::fs::remove_dir_all(dir).unwrap();

    let rsa = &rsa;
    let rsa_sign = move |padding: &'static dyn signature::RsaEncoding| {
        move |input: &[u8]| {
            let mut out = vec![0; rsa.public_modulus_len()];
            rsa.sign(padding, &SystemRandom::new(), input, &mut out)
                .unwrap();
            out
        }
    };
    let ed_sign = |input: &[u8]| ed.sign(input).as_ref().to_vec();
    let oct_sign = |input: &[u8]| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input)
            .as_ref()
            .to_vec()
    };
    let cases = [
        (
            jwt(
                &json!({"alg": "RS256", "kid": "rsa"}),
                rsa_sign(&signature::RSA_PKCS1_SHA256),
            ),
            true,
        ),
        // The key names RS256: the same key with PS256 is refused.
        (
            jwt(
                &json!({"alg": "PS256", "kid": "rsa"}),
                rsa_sign(&signature::RSA_PSS_SHA256),
            ),
            false,
        ),
        (jwt(&json!({"alg": "EdDSA", "kid": "ed"}), ed_sign), true),
        (jwt(&json!({"alg": "HS256", "kid": "oct"}), oct_sign), true),
        (jwt(&json!({"alg": "EdDSA"}), ed_sign), true),
        (jwt(&json!({"alg": "EdDSA", "kid": "rsa"}), ed_sign), false),
        (jwt(&json!({"alg": "HS256", "kid": "ed"}), oct_sign), false),
        (
            jwt(&json!({"alg": "EdDSA", "kid": "elsewhere"}), ed_sign),
            false,
        ),
    ];
    for (index, (token, valid)) in cases.iter().enumerate() {
        let outcome = verifier.verify(token, SystemTime::now()).await;
        assert_eq!(outcome.is_ok(), *valid, "case {index}: {outcome:?}");
        if !valid {
            assert_eq!(outcome.unwrap_err(), TokenError::Invalid, "case {index}");
        }
    }
}

/// A JWK Set read from a file, and the start-up errors of a bad JWKS configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_a_file_and_its_errors() {
    let key = EcKey::new("k");
    let dir = std::env::temp_dir().join(format!("piko-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, json!({ "keys": [key.jwk()] }).to_string()).unwrap();
    let jwks = |endpoint: String| AuthConfig {
        jwks: Some(piko_server::auth::JwksConfig {
            endpoint,
            cache_ttl: Duration::ZERO,
            timeout: Duration::ZERO,
        }),
        ..AuthConfig::default()
    };
    let verifier = Verifier::new(&jwks(format!("file://{}", path.display())))
        .unwrap()
        .unwrap();
    let grant = verifier
        .verify(
            &key.token(&json!({ "piko": { "endpoints": ["e"] } })),
            SystemTime::now(),
        )
        .await
        .unwrap();
    assert_eq!(grant.endpoints, ["e"]);

    // A provider that cannot be reached at start is not a start-up error: tokens are refused
    // until a fetch succeeds.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let verifier = Verifier::new(&jwks(unreachable)).unwrap().unwrap();
    assert_eq!(
        verifier
            .verify(&key.token(&json!({})), SystemTime::now())
            .await
            .unwrap_err(),
        TokenError::Invalid
    );

    let err = Verifier::new(&jwks("ftp://idp/jwks".into())).unwrap_err();
    assert_eq!(err, "jwks: unsupported scheme: ftp");
    let err = Verifier::new(&jwks("file:///missing/jwks.json".into())).unwrap_err();
    assert!(err.starts_with("jwks: /missing/jwks.json:"), "{err}");
    let err = Verifier::new(&AuthConfig {
        hmac_secret_key: Some("also".into()),
        ..jwks("https://idp/jwks".into())
    })
    .unwrap_err();
    assert!(err.contains("no other verification key"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// An upstream whose token is renewed in its file (a sidecar's job) connects again with the new
/// token before the old one expires, and not one request fails across the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_token_file_means_no_failed_request_at_expiry() {
    let node = node_with_auth().await;
    let dir = std::env::temp_dir().join(format!("piko-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    let issued = tokio::time::Instant::now();
    std::fs::write(&file, token(&json!({ "exp": unix_now() + 3 }))).unwrap();
    let listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .token_file(&file)
        .listen("e")
        .await
        .unwrap();
    // Requests that take a while, so some are in flight at the expiry.
    tokio::spawn(answer_ok(listener, Duration::from_millis(50)));
    wait_upstreams(&node, "e", 1).await;
    // The sidecar renews the token well before it expires.
    std::fs::write(&file, token(&json!({ "exp": unix_now() + 600 }))).unwrap();

    let client_token = token(&json!({}));
    let bearer = format!("authorization: Bearer {client_token}\r\n");
    let started = tokio::time::Instant::now();
    // Clients in parallel, so requests arrive at every moment; past the first token's expiry
    // (3 s) by a good margin.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (bearer, proxy) = (bearer.clone(), node.proxy);
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut sent = 0;
                while started.elapsed() < Duration::from_secs(5) {
                    let outcome = get(proxy, "/", &bearer).await;
                    if outcome != (200, "ok".to_owned()) {
                        failures.push(format!("{:?}: {outcome:?}", started.elapsed()));
                    }
                    sent += 1;
                }
                (sent, failures)
            })
        })
        .collect();
    // The new session comes before the old one's token expires: both serve for a while.
    tokio::time::timeout_at(issued + Duration::from_millis(2800), async {
        let mut changes = node.upstreams.subscribe();
        let _ = changes.wait_for(|_| node.upstreams.count("e") == 2).await;
    })
    .await
    .expect("no new session before the expiry");
    let mut sent = 0;
    let mut failures = Vec::new();
    for client in clients {
        let (n, failed) = client.await.unwrap();
        sent += n;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(sent > 100, "only {sent} requests");
    assert_eq!(node.upstreams.count("e"), 1, "the renewed session serves");
    std::fs::remove_dir_all(dir).unwrap();
}
