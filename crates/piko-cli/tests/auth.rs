//! Tokens end to end: a `piko server` with HMAC keys on its proxy and upstream ports, a
//! `piko agent` with its token, and curl with and without one.

mod common;

use common::start_server;
use tokio::process::Command;

const SECRET: &str = "process-test-secret";

fn token(claims: &str) -> String {
    common::hs256_token(SECRET, claims)
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

/// `piko forward --connect.token-file`: the file is read for every tunnel, so a renewed token
/// is used without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_reads_its_token_file_for_every_tunnel() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let (mut server, _admin, upstream, proxy) =
        start_server(&["--proxy.auth.hmac-secret-key", SECRET]).await;
    let echo = common::echo_service().await.to_string();
    let _agent = common::start_agent_tcp(&mut server, &upstream, "t", &echo).await;
    let token_file = common::TempFile::new("token", &token(r#"{"piko":{"endpoints":["other"]}}"#));
    let url = format!("http://{proxy}");
    let (_forward, addr) =
        common::start_forward_to(&url, "t", &["--connect.token-file", token_file.path()]).await;
    let echoes = async || {
        let mut tunnel = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = tunnel.write_all(b"ping").await;
        let mut reply = [0u8; 4];
        tunnel.read_exact(&mut reply).await.is_ok() && &reply == b"ping"
    };
    assert!(!echoes().await, "the token does not permit endpoint t");
    std::fs::write(token_file.path(), token(r#"{"piko":{"endpoints":["t"]}}"#)).unwrap();
    assert!(
        echoes().await,
        "the renewed token is read for the next tunnel"
    );
}

/// Tenants from the config file: an agent with `--connect.tenant-id` and its tenant's token
/// serves the tenant's endpoint, which clients reach with `x-piko-tenant-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_serves_its_tenant_s_endpoint() {
    let file = common::TempFile::new(
        "server.yaml",
        "upstream:\n  tenants:\n    - id: acme\n      auth:\n        hmac_secret_key: acme-key\n",
    );
    let (mut server, _admin, upstream, proxy) = start_server(&["--config.path", file.path()]).await;
    let service = common::ok_service().await.to_string();
    let acme_token = common::hs256_token("acme-key", "{}");
    let _agent = common::agent_http(
        "api",
        &service,
        &upstream,
        &[
            "--connect.tenant-id",
            "acme",
            "--connect.token",
            &acme_token,
        ],
    );
    let line = server.wait_log("upstream connected").await;
    assert_eq!(line["endpoint-id"], "acme/api", "{line}");
    let endpoint = "x-piko-endpoint: api".to_owned();
    assert_eq!(
        curl(&proxy, &[endpoint.clone(), "x-piko-tenant-id: acme".into()]).await,
        ("200".into(), "ok /hello".into())
    );
    assert_eq!(curl(&proxy, &[endpoint]).await.0, "502");
}
