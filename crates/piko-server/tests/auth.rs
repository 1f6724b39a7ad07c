//! Tokens on the three ports (spec §7, Piko's auth test cases): clients, agents and admin
//! requests without a valid token get Piko's 401s; a token's `piko.endpoints` limits what it
//! reaches or serves; an upstream's session ends when its token expires.

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::hmac;
use base64::Engine as _;
use common::{Node, start_node_from, wait_upstreams};
use piko_server::{
    Config,
    auth::{AuthConfig, Verifier},
};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret";

fn token(claims: &Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    format!(
        "{input}.{}",
        b64(hmac::sign(&key, input.as_bytes()).as_ref())
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn verifier() -> Arc<Verifier> {
    Arc::new(
        Verifier::new(&AuthConfig {
            hmac_secret_key: Some(SECRET.into()),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap(),
    )
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .token(token)
        .listen(endpoint)
        .await?;
    tokio::spawn(async move {
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
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(())
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
