//! Our server, agent, forward and SDK against Piko v0.9.0's own Go code, built from its source
//! (see `piko_testkit::go_piko`):
//! - Piko's Go SDK (`client.Upstream.Listen` served by `net/http`, `ListenAndForward`,
//!   `client.Dialer`, including single writes of 1 MiB and 64 MiB) and Piko's Go agent against
//!   our server;
//! - our agent (HTTP, WebSocket, TCP), our forward and our SDK (`Listener`, `Dialer`,
//!   `listen_and_forward`) against Piko's Go server.
//!
//! Without Go or Piko's source the tests print why and pass, unless `PIKO_REQUIRE_INTEROP=1`.

mod common;

use std::{path::Path, process::Stdio};

use common::{
    PATIENCE, Process, echo_service, ok_service, pki::Pki, start_agent_tcp, start_forward,
    start_go_server, start_server,
};
use piko_testkit::go_piko::{GoPiko, go_piko};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

fn built() -> Option<&'static GoPiko> {
    go_piko(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// A Go SDK upstream (`-mode listen` or `forward`) of `endpoint`, once it has connected.
async fn go_upstream(go: &GoPiko, args: &[&str], url: &str, endpoint: &str) -> Child {
    let mut child = Command::new(&go.sdk)
        .args(args)
        .args(["-url", url, "-endpoint", endpoint])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the Go upstream never connected")
        .unwrap();
    assert_eq!(first.as_deref(), Some("connected"));
    child
}

/// Runs the Go SDK's `Dialer` with `args` and asserts that its echo checked.
async fn go_dial(go: &GoPiko, args: &[&str]) {
    let output = tokio::time::timeout(
        PATIENCE * 3,
        Command::new(&go.sdk)
            .args(["-mode", "dial"])
            .args(args)
            .output(),
    )
    .await
    .expect("the Go dialer hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "PASS",
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until Piko's Go server at admin address `admin` routes to `endpoint`: it logs
/// "upstream connected" before it adds the upstream to its routing table.
async fn go_server_routes(admin: &str, endpoint: &str) {
    let url = format!("http://{admin}/status/upstream/endpoints");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "5", &url])
            .output()
            .await
            .expect("curl is installed");
        let endpoints: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_default();
        if endpoints[endpoint].as_u64().is_some_and(|n| n > 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{endpoint} never routed: {endpoints}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `curl` through the proxy port at `proxy` to `endpoint`; asserts success and returns the body.
async fn curl(proxy: &str, endpoint: &str, extra: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H"])
        .arg(format!("x-piko-endpoint: {endpoint}"))
        .args(extra)
        .arg(format!("http://{proxy}/hello?x=1"))
        .output()
        .await
        .expect("curl is installed");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Sends `len` bytes through `conn` to an echo service and checks they all come back. (Piko's
/// TCP connections cannot half-close, so the echo is read by length, not to its end.)
async fn echo_through(conn: impl AsyncRead + AsyncWrite + Send + 'static, len: u32) {
    let payload: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(conn);
    let sent = payload.clone();
    let send = tokio::spawn(async move { writer.write_all(&sent).await.map(|()| writer) });
    let mut echoed = vec![0u8; payload.len()];
    tokio::time::timeout(PATIENCE, reader.read_exact(&mut echoed))
        .await
        .expect("the echo hung")
        .unwrap();
    assert!(echoed == payload, "echoed bytes differ");
    drop(send.await.unwrap().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_sdk_listener_serves_behind_our_server() {
    let Some(go) = built() else {
        return;
    };
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let url = format!("http://{upstream}");
    let _go_upstream = go_upstream(go, &["-mode", "listen"], &url, "go-http").await;
    server.wait_log("upstream connected").await;
    assert_eq!(curl(&proxy, "go-http", &[]).await, "GET /hello?x=1 ");
    assert_eq!(
        curl(&proxy, "go-http", &["--data-binary", "payload"]).await,
        "POST /hello?x=1 payload"
    );
}

/// Piko's `Dialer` writes one WebSocket message per `Write`: 64 KiB writes, then one write of
/// 1 MiB and one of 64 MiB, all of which Piko's own server takes. The server streams the
/// message: its memory never approaches the message's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_sdk_dialer_reaches_our_tcp_agent_with_writes_of_any_size() {
    let Some(go) = built() else {
        return;
    };
    let service = echo_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "echo", &service.to_string()).await;
    let url = format!("http://{proxy}");
    for (bytes, write) in [("8388608", "65536"), ("1048576", "0"), ("67108864", "0")] {
        go_dial(
            go,
            &[
                "-url",
                &url,
                "-endpoint",
                "echo",
                "-bytes",
                bytes,
                "-write",
                write,
            ],
        )
        .await;
    }
    let peak = common::peak_rss_kib(server.child.id().unwrap());
    assert!(peak < 48 * 1024, "server peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_forward_reaches_a_go_sdk_listen_and_forward() {
    let Some(go) = built() else {
        return;
    };
    let service = echo_service().await.to_string();
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let url = format!("http://{upstream}");
    let args = ["-mode", "forward", "-addr", service.as_str()];
    let _go_upstream = go_upstream(go, &args, &url, "go-echo").await;
    server.wait_log("upstream connected").await;
    let (_forward, local) = start_forward(&proxy, "go-echo").await;
    echo_through(TcpStream::connect(local).await.unwrap(), 4 << 20).await;
}

/// The Go SDK's roles with a token, over TLS verified with a given CA: a Go `Listener` registers
/// over `https://` and serves curl's `https` requests; a Go `Dialer` reaches our TCP agent (itself
/// connected over TLS with a token). Without its token the Go upstream gets Piko's 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_roles_with_a_token_over_tls() {
    let Some(go) = built() else {
        return;
    };
    let pki = Pki::new("interop");
    let (cert, key, ca) = (
        pki.path("cert.pem"),
        pki.path("key.pem"),
        pki.path("ca.pem"),
    );
    let secret = "interop-secret";
    let (mut server, _admin, upstream, proxy) = start_server(&[
        "--proxy.tls.cert",
        &cert,
        "--proxy.tls.key",
        &key,
        "--upstream.tls.cert",
        &cert,
        "--upstream.tls.key",
        &key,
        "--proxy.auth.hmac-secret-key",
        secret,
        "--upstream.auth.hmac-secret-key",
        secret,
    ])
    .await;
    let token = common::hs256_token(secret, "{}");
    let upstream_url = format!("https://{upstream}");

    let refused = tokio::time::timeout(
        PATIENCE,
        Command::new(&go.sdk)
            .args(["-mode", "listen", "-ca", &ca, "-url", &upstream_url])
            .args(["-endpoint", "go-http"])
            .output(),
    )
    .await
    .expect("the refused Go upstream hung")
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("401"),
        "{stderr}"
    );

    let _go_upstream = go_upstream(
        go,
        &["-mode", "listen", "-ca", &ca, "-token", &token],
        &upstream_url,
        "go-http",
    )
    .await;
    server.wait_log("upstream connected").await;
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &ca])
        .args(["-H", "x-piko-endpoint: go-http"])
        .args(["-H", &format!("x-piko-authorization: Bearer {token}")])
        .arg(format!("https://{proxy}/hello?x=1"))
        .output()
        .await
        .expect("curl is installed");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "GET /hello?x=1 ");

    let service = echo_service().await.to_string();
    let _agent = Process::start(&[
        "agent",
        "tcp",
        "echo",
        &service,
        "--connect.url",
        &upstream_url,
        "--connect.tls.root-cas",
        &ca,
        "--connect.token",
        &token,
    ]);
    server.wait_log("upstream connected").await;
    let proxy_url = format!("https://{proxy}");
    go_dial(
        go,
        &[
            "-url",
            &proxy_url,
            "-endpoint",
            "echo",
            "-bytes",
            "1048576",
            "-ca",
            &ca,
            "-token",
            &token,
        ],
    )
    .await;
}

/// Piko's Go agent (`piko agent http` and `piko agent tcp`) registers with our server: curl
/// reaches its HTTP service, our forward its TCP service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_agent_serves_through_our_server() {
    let Some(go) = built() else {
        return;
    };
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let url = format!("http://{upstream}");
    let http_service = ok_service().await.to_string();
    let tcp_service = echo_service().await.to_string();
    let _http_agent = Process::start_program(
        &go.piko,
        &[
            "agent",
            "http",
            "go-http",
            &http_service,
            "--connect.url",
            &url,
        ],
        &[],
    );
    server.wait_log("upstream connected").await;
    let _tcp_agent = Process::start_program(
        &go.piko,
        &[
            "agent",
            "tcp",
            "go-tcp",
            &tcp_service,
            "--connect.url",
            &url,
        ],
        &[],
    );
    server.wait_log("upstream connected").await;

    assert_eq!(curl(&proxy, "go-http", &[]).await, "ok /hello?x=1");
    let (_forward, local) = start_forward(&proxy, "go-tcp").await;
    echo_through(TcpStream::connect(local).await.unwrap(), 4 << 20).await;
}

/// Our agent (HTTP, WebSocket, TCP) and our forward through Piko's Go server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agent_and_forward_work_through_a_go_server() {
    let Some(go) = built() else {
        return;
    };
    let (mut server, admin, upstream, proxy) = start_go_server(&go.piko).await;
    let http_service = ok_service().await.to_string();
    let (_websocket_service, websocket_service) = common::websocket_echo_service().await;
    let tcp_service = echo_service().await.to_string();
    let _http_agent = common::agent_http("http", &http_service, &upstream, &[]);
    let _websocket_agent = common::agent_http("ws", &websocket_service, &upstream, &[]);
    let _tcp_agent = start_agent_tcp(&mut server, &upstream, "tcp", &tcp_service).await;
    for endpoint in ["http", "ws", "tcp"] {
        go_server_routes(&admin, endpoint).await;
    }

    assert_eq!(curl(&proxy, "http", &[]).await, "ok /hello?x=1");
    let output = common::websocket_client(&format!("ws://{proxy}/echo"), None, "ws").await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        common::WEBSOCKET_CLIENT_ECHOED
    );
    let (_forward, local) = start_forward(&proxy, "tcp").await;
    echo_through(TcpStream::connect(local).await.unwrap(), 4 << 20).await;
}

/// Our SDK through Piko's Go server: a `Listener` whose streams are echoed, reached with our
/// `Dialer`; and `listen_and_forward` to an echo service, reached with Piko's Go `Dialer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_sdk_works_through_a_go_server() {
    let Some(go) = built() else {
        return;
    };
    let (_server, admin, upstream, proxy) = start_go_server(&go.piko).await;
    let upstream = piko::Upstream::new(format!("http://{upstream}"));

    let mut listener = upstream.listen("sdk-listener").await.unwrap();
    go_server_routes(&admin, "sdk-listener").await;
    tokio::spawn(async move {
        while let Ok(stream) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    let dialer = piko::Dialer::new(format!("http://{proxy}"));
    let tunnel = dialer.dial("sdk-listener").await.unwrap();
    echo_through(tunnel, 4 << 20).await;

    let service = echo_service().await.to_string();
    let _forwarder = upstream
        .listen_and_forward("sdk-forward", service)
        .await
        .unwrap();
    go_server_routes(&admin, "sdk-forward").await;
    let url = format!("http://{proxy}");
    go_dial(
        go,
        &[
            "-url",
            &url,
            "-endpoint",
            "sdk-forward",
            "-bytes",
            "4194304",
        ],
    )
    .await;
}
