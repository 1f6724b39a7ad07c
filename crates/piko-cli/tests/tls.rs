//! TLS end to end with generated certificates: a `piko server` serving TLS on its three ports,
//! a `piko agent` connecting over `https`, curl (`--cacert`, HTTP/2, plain HTTP), `piko forward`
//! (a WebSocket over TLS), `piko server status` with a token; certificate renewal without a
//! restart; client certificates; two nodes relaying to each other over TLS; a WebSocket client
//! (Python's `websockets`) reaching a WebSocket service through `wss://`.

mod common;

use std::time::Duration;

use common::{PATIENCE, Process, pki::Pki, start_server};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    process::Command,
};

const SECRET: &str = "tls-test-secret";

fn token(claims: &str) -> String {
    common::hs256_token(SECRET, claims)
}

/// curl's exit code, the status and HTTP version (`"200 2"`), and the body.
async fn curl(args: &[&str]) -> (i32, String, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        output.status.code().unwrap_or(-1),
        status.to_owned(),
        body.to_owned(),
    )
}

async fn piko(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_piko"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `--<port>.tls.cert` and `--<port>.tls.key` for each port.
fn tls_flags(pki: &Pki, ports: &[&str]) -> Vec<String> {
    let mut flags = Vec::new();
    for port in ports {
        flags.push(format!("--{port}.tls.cert"));
        flags.push(pki.path("cert.pem"));
        flags.push(format!("--{port}.tls.key"));
        flags.push(pki.path("key.pem"));
    }
    flags
}

/// Echoes `message` through a tunnel and returns what came back.
async fn echo(tunnel: &mut tokio::net::TcpStream, message: &[u8]) -> Vec<u8> {
    tunnel.write_all(message).await.unwrap();
    let mut reply = vec![0u8; message.len()];
    tokio::time::timeout(PATIENCE, tunnel.read_exact(&mut reply))
        .await
        .expect("echo in time")
        .unwrap();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_serves_tls_to_real_clients_and_renewed_certificates_need_no_restart() {
    let pki = Pki::new("ports");
    let mut args = tls_flags(&pki, &["proxy", "upstream", "admin"]);
    args.extend(["--admin.auth.hmac-secret-key".to_owned(), SECRET.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, admin, upstream, proxy) = start_server(&args).await;
    let ca = pki.path("ca.pem");

    let service = common::ok_service().await.to_string();
    let upstream_url = format!("https://{upstream}");
    let _agent = Process::start(&[
        "agent",
        "http",
        "e",
        &service,
        "--connect.url",
        &upstream_url,
        "--connect.tls.root-cas",
        &ca,
    ]);
    server.wait_log("upstream connected").await;
    let echo_addr = common::echo_service().await.to_string();
    let _tcp_agent = Process::start(&[
        "agent",
        "tcp",
        "t",
        &echo_addr,
        "--connect.url",
        &upstream_url,
        "--connect.tls.root-cas",
        &ca,
    ]);
    server.wait_log("upstream connected").await;

    let url = format!("https://{proxy}/hello");
    let endpoint = "x-piko-endpoint: e";
    assert_eq!(
        curl(&["--cacert", &ca, "--http1.1", "-H", endpoint, &url]).await,
        (0, "200 1.1".into(), "ok /hello".into())
    );
    // HTTP/2 through ALPN.
    assert_eq!(
        curl(&["--cacert", &ca, "--http2", "-H", endpoint, &url]).await,
        (0, "200 2".into(), "ok /hello".into())
    );
    // Plain HTTP to a TLS port: Go's answer.
    let (_, status, body) = curl(&[&format!("http://{proxy}/hello")]).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("400 1", "Client sent an HTTP request to an HTTPS server.\n")
    );
    // A client that does not trust the certificate does not get through.
    let (code, _, _) = curl(&["-H", endpoint, &url]).await;
    assert_ne!(code, 0);
    // Agents that cannot verify the node, or speak plain HTTP to it, keep trying (the server's
    // side can be fixed) and say why.
    let mut untrusting = Process::start(&[
        "agent",
        "http",
        "x",
        &service,
        "--connect.url",
        &upstream_url,
    ]);
    let failed = untrusting.wait_log("connect failed; retrying").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("certificate"), "{failed}");
    let plain_url = format!("http://{upstream}");
    let mut plain = Process::start(&["agent", "http", "x", &service, "--connect.url", &plain_url]);
    let failed = plain.wait_log("connect failed; retrying").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("use an https:// URL"), "{failed}");

    // A WebSocket over TLS: `piko forward` through the proxy port's TCP route.
    let proxy_url = format!("https://{proxy}");
    let (_forward, forward_addr) =
        common::start_forward_to(&proxy_url, "t", &["--connect.tls.root-cas", &ca]).await;
    let mut tunnel = tokio::net::TcpStream::connect(forward_addr).await.unwrap();
    assert_eq!(
        echo(&mut tunnel, b"before renewal").await,
        b"before renewal"
    );

    // The admin port: TLS and a token.
    let admin_url = format!("https://{admin}");
    let status = ["server", "status", "upstream", "endpoints", "--server.url"];
    let mut untrusting = status.to_vec();
    untrusting.push(admin_url.as_str());
    let (code, stdout, _) = piko(&untrusting).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("certificate"), "{stdout}");
    let mut with_ca = status.to_vec();
    with_ca.extend([admin_url.as_str(), "--server.tls.root-cas", &ca]);
    let (code, stdout, _) = piko(&with_ca).await;
    assert_eq!(code, 1);
    // Piko prints the error on stdout.
    assert!(stdout.contains("bad status: 401"), "{stdout}");
    let admin_token = token("{}");
    let mut with_token = with_ca.clone();
    with_token.extend(["--server.token", &admin_token]);
    let (code, stdout, stderr) = piko(&with_token).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("e: 1") && stdout.contains("t: 1"),
        "{stdout}"
    );

    // Renewal: new files in place; new connections get the new certificate, the open tunnel
    // goes on.
    let old_ca = pki.keep_ca("old-ca.pem");
    pki.issue();
    let renewed = tokio::time::timeout(PATIENCE, async {
        loop {
            let (code, status, _) = curl(&["--cacert", &ca, "-H", endpoint, &url]).await;
            if code == 0 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the renewed certificate is served");
    assert_eq!(renewed, "200 2");
    let (code, _, _) = curl(&["--cacert", &old_ca, "-H", endpoint, &url]).await;
    assert_ne!(code, 0, "the old certificate is no longer served");
    assert_eq!(echo(&mut tunnel, b"after renewal").await, b"after renewal");
    server.wait_log("tls certificate reloaded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_client_cas_are_set() {
    let pki = Pki::new("mtls");
    let (cert, key, ca) = (
        pki.path("cert.pem"),
        pki.path("key.pem"),
        pki.path("ca.pem"),
    );
    let (_server, _admin, _upstream, proxy) = start_server(&[
        "--proxy.tls.cert",
        &cert,
        "--proxy.tls.key",
        &key,
        "--proxy.tls.client-cas",
        &ca,
    ])
    .await;
    let url = format!("https://{proxy}/");
    let endpoint = "x-piko-endpoint: none";
    let (code, _, _) = curl(&["--cacert", &ca, "-H", endpoint, &url]).await;
    assert_ne!(code, 0, "no client certificate, no connection");
    let (client_cert, client_key) = (pki.path("client.pem"), pki.path("client-key.pem"));
    let args = [
        "--cacert",
        &ca,
        "-H",
        endpoint,
        "--cert",
        &client_cert,
        "--key",
        &client_key,
        &url,
    ];
    let (code, status, body) = curl(&args).await;
    assert_eq!(code, 0);
    assert_eq!(status, "502 2");
    assert_eq!(body.trim_end(), r#"{"error":"no available upstreams"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_relay_requests_and_admin_forwards_over_tls() {
    let pki = Pki::new("cluster");
    let (cert, key, ca) = (
        pki.path("cert.pem"),
        pki.path("key.pem"),
        pki.path("ca.pem"),
    );
    let tls = [
        "--proxy.tls.cert",
        &cert,
        "--proxy.tls.key",
        &key,
        "--proxy.tls.client.root-cas",
        &ca,
        "--admin.tls.cert",
        &cert,
        "--admin.tls.key",
        &key,
        "--admin.tls.client.root-cas",
        &ca,
        // Sealed gossip too: every link between the nodes is authenticated.
        "--cluster.secret",
        "tls-cluster-secret",
    ];
    // Node A's gossip address is logged before its ports.
    let mut a_args = tls.to_vec();
    a_args.extend(["--cluster.node-id", "node-a"]);
    let mut a = common::server_process(&a_args);
    let gossip = a.wait_log("starting gossip").await["advertise-addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let a_upstream = a.wait_log("starting upstream server").await["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b_args = tls.to_vec();
    b_args.extend(["--cluster.node-id", "node-b", "--cluster.join", &gossip]);
    let (mut b, b_admin, _b_upstream, b_proxy) = start_server(&b_args).await;

    let service = common::ok_service().await.to_string();
    let _agent = common::agent_http("e", &service, &a_upstream, &[]);
    a.wait_log("upstream connected").await;

    // Node B learns of A's upstream through gossip, then relays to A's TLS proxy port.
    let url = format!("https://{b_proxy}/relayed");
    let mut last = None;
    let relayed = tokio::time::timeout(PATIENCE, async {
        loop {
            let reply = curl(&["--cacert", &ca, "-H", "x-piko-endpoint: e", &url]).await;
            if reply.1.starts_with("200") {
                return reply;
            }
            last = Some(reply);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let mut lines = Vec::new();
        while let Ok(line) = b.logs.try_recv() {
            lines.push(line.to_string());
        }
        panic!(
            "node b does not relay to node a: {last:?}\n{}",
            lines.join("\n")
        )
    });
    assert_eq!(relayed.2, "ok /relayed");

    // A tunnel through B to an agent on A: the upgrade is relayed over TLS too.
    let echo_addr = common::echo_service().await.to_string();
    let a_upstream_url = format!("http://{a_upstream}");
    let _tcp_agent = Process::start(&[
        "agent",
        "tcp",
        "t",
        &echo_addr,
        "--connect.url",
        &a_upstream_url,
    ]);
    a.wait_log("upstream connected").await;
    let b_proxy_url = format!("https://{b_proxy}");
    let (_forward, forward_addr) =
        common::start_forward_to(&b_proxy_url, "t", &["--connect.tls.root-cas", &ca]).await;
    let echoed = tokio::time::timeout(PATIENCE, async {
        loop {
            // Until B has heard of the new upstream, the tunnel is refused and closed.
            let mut tunnel = tokio::net::TcpStream::connect(forward_addr).await.unwrap();
            let _ = tunnel.write_all(b"relayed tunnel").await;
            let mut reply = [0u8; 14];
            if tunnel.read_exact(&mut reply).await.is_ok() {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a tunnel through b reaches a");
    assert_eq!(&echoed, b"relayed tunnel");

    // `?forward=`: B answers for A, over A's TLS admin port.
    let b_admin_url = format!("https://{b_admin}");
    let (code, stdout, stderr) = piko(&[
        "server",
        "status",
        "upstream",
        "endpoints",
        "--server.url",
        &b_admin_url,
        "--server.tls.root-cas",
        &ca,
        "--forward",
        "node-a",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("e: 1") && stdout.contains("t: 1"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_reaches_a_websocket_service_over_tls() {
    let pki = Pki::new("websocket");
    let args = tls_flags(&pki, &["proxy"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut server, _admin, upstream, proxy) = start_server(&args).await;
    let (_echo, service) = common::websocket_echo_service().await;
    let _agent = common::agent_http("ws", &service, &upstream, &[]);
    server.wait_log("upstream connected").await;

    let output = common::websocket_client(
        &format!("wss://{proxy}/echo"),
        Some(&pki.path("ca.pem")),
        "ws",
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        common::WEBSOCKET_CLIENT_ECHOED
    );
}
