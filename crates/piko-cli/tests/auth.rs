//! Tokens end to end: a `piko server` with HMAC keys on its proxy and upstream ports, a
//! `piko agent` with its token, and curl with and without one.

mod common;

use aws_lc_rs::hmac;
use base64::Engine as _;
use common::start_server;
use tokio::process::Command;

const SECRET: &str = "process-test-secret";

fn token(claims: &str) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(claims.as_bytes()));
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    format!(
        "{input}.{}",
        b64(hmac::sign(&key, input.as_bytes()).as_ref())
    )
}

async fn curl(proxy: &str, headers: &[String]) -> (String, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .arg(format!("http://{proxy}/hello"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_clients_need_their_tokens() {
    let (mut server, _admin, upstream, proxy) = start_server(&[
        "--proxy.auth.hmac-secret-key",
        SECRET,
        "--upstream.auth.hmac-secret-key",
        SECRET,
    ])
    .await;
    let service = common::ok_service().await.to_string();

    // An agent whose token does not allow the endpoint is refused for good: it exits, saying why.
    let other = token(r#"{"piko":{"endpoints":["other"]}}"#);
    let mut refused = common::agent_http("e", &service, &upstream, &["--connect.token", &other]);
    let line = refused.wait_log("failed to run agent").await;
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("endpoint not permitted"),
        "{line}"
    );

    let only_e = token(r#"{"piko":{"endpoints":["e"]}}"#);
    let _agent = common::agent_http("e", &service, &upstream, &["--connect.token", &only_e]);
    server.wait_log("upstream connected").await;

    let endpoint = "x-piko-endpoint: e".to_owned();
    assert_eq!(
        curl(&proxy, std::slice::from_ref(&endpoint)).await,
        ("401".into(), r#"{"error":"missing authorization"}"#.into())
    );
    let client = format!("Authorization: Bearer {}", token("{}"));
    assert_eq!(
        curl(&proxy, &[endpoint, client]).await,
        ("200".into(), "ok /hello".into())
    );
}
