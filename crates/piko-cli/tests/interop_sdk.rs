//! Our server and CLI against Piko's Go wire code (`interop/cmd/sdk-peer`: gorilla WebSocket
//! through Piko's adapter, Piko's yamux fork), playing the Go SDK's roles: a `Listener` served
//! by `net/http` behind our server; a `Dialer` through our server to our `piko agent tcp`; and
//! our `piko forward` through our server to a `ListenAndForward`. The Go TCP roles close a
//! connection at its first end, as Piko does; and the same roles with a token over TLS. (Piko's
//! own module cannot be fetched here: see `interop/README.md`.)
//!
//! Needs `go`. Without it the tests print why and pass, unless `PIKO_REQUIRE_INTEROP=1`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
};

use common::{
    PATIENCE, Process, echo_service, pki::Pki, start_agent_tcp, start_forward, start_server,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

/// Builds the Go peer once per test binary; `None` (after printing why) when Go is unavailable
/// and interop is optional.
fn sdk_peer() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-peer");
        let status = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg("./cmd/sdk-peer")
            .current_dir(&root)
            .env("GOFLAGS", "-mod=readonly")
            .env("GOTOOLCHAIN", "local")
            .status();
        match status {
            Ok(status) if status.success() => Ok(out),
            Ok(status) => Err(format!("go build of interop/cmd/sdk-peer failed: {status}")),
            Err(err) => Err(format!("cannot run go: {err}")),
        }
    });
    match built {
        Ok(path) => Some(path.clone()),
        Err(why) if std::env::var("PIKO_REQUIRE_INTEROP").is_ok_and(|v| v == "1") => {
            panic!("interop required (PIKO_REQUIRE_INTEROP=1) but unavailable: {why}")
        }
        Err(why) => {
            eprintln!("skipping Go interop test: {why}");
            None
        }
    }
}

/// A Go upstream of `endpoint` on the server's upstream port, once it has connected.
async fn go_upstream(peer: &Path, args: &[&str], upstream: &str, endpoint: &str) -> Child {
    go_upstream_at(
        peer,
        args,
        &format!("ws://{upstream}/piko/v1/upstream/{endpoint}"),
    )
    .await
}

/// A Go upstream connecting to `url`, once it has connected.
async fn go_upstream_at(peer: &Path, args: &[&str], url: &str) -> Child {
    let mut child = Command::new(peer)
        .args(args)
        .args(["-url", url])
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

/// Runs the Go `Dialer` role with `args` and asserts that its echo checked.
async fn go_dial(peer: &Path, args: &[&str]) {
    let output = tokio::time::timeout(
        PATIENCE,
        Command::new(peer)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_http_listener_serves_behind_our_server() {
    let Some(peer) = sdk_peer() else {
        return;
    };
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _go_upstream = go_upstream(&peer, &["-mode", "http"], &upstream, "go-http").await;
    server.wait_log("upstream connected").await;
    for (args, expected) in [
        (vec!["-H", "x-piko-endpoint: go-http"], "GET /hello?x=1 "),
        (
            vec!["-H", "x-piko-endpoint: go-http", "--data-binary", "payload"],
            "POST /hello?x=1 payload",
        ),
    ] {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .arg(format!("http://{proxy}/hello?x=1"))
            .output()
            .await
            .expect("curl is installed");
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_dialer_reaches_our_tcp_agent() {
    let Some(peer) = sdk_peer() else {
        return;
    };
    let service = echo_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "echo", &service.to_string()).await;
    let url = format!("ws://{proxy}/_piko/v1/tcp/echo");
    go_dial(&peer, &["-bytes", "8388608", "-url", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_forward_reaches_a_go_listen_and_forward() {
    let Some(peer) = sdk_peer() else {
        return;
    };
    let service = echo_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let service = service.to_string();
    let args = ["-mode", "forward", "-addr", service.as_str()];
    let _go_upstream = go_upstream(&peer, &args, &upstream, "go-echo").await;
    server.wait_log("upstream connected").await;
    let (_forward, local) = start_forward(&proxy, "go-echo").await;

    // The Go side closes at the first end, so read everything back before ending ours.
    let payload: Vec<u8> = (0..4u32 << 20).map(|i| (i % 241) as u8).collect();
    let tcp = TcpStream::connect(local).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    let sent = payload.clone();
    let send = tokio::spawn(async move { writer.write_all(&sent).await.map(|()| writer) });
    let mut echoed = vec![0u8; payload.len()];
    tokio::time::timeout(PATIENCE, reader.read_exact(&mut echoed))
        .await
        .expect("echo through the Go upstream hung")
        .unwrap();
    assert!(echoed == payload, "echoed bytes differ");
    drop(send.await.unwrap().unwrap());
}

/// The Go SDK's roles with a token, over TLS verified with a given CA: a Go `Listener` registers
/// over `wss://` and serves curl's `https` requests; a Go `Dialer` reaches our TCP agent (itself
/// connected over TLS with a token). Without its token the Go upstream gets Piko's 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_roles_with_a_token_over_tls() {
    let Some(peer) = sdk_peer() else {
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
    let listener_url = format!("wss://{upstream}/piko/v1/upstream/go-http");

    let refused = tokio::time::timeout(
        PATIENCE,
        Command::new(&peer)
            .args(["-mode", "http", "-ca", &ca, "-url", &listener_url])
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

    let _go_upstream = go_upstream_at(
        &peer,
        &["-mode", "http", "-ca", &ca, "-token", &token],
        &listener_url,
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
    let upstream_url = format!("https://{upstream}");
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
    let url = format!("wss://{proxy}/_piko/v1/tcp/echo");
    go_dial(
        &peer,
        &[
            "-bytes", "1048576", "-ca", &ca, "-token", &token, "-url", &url,
        ],
    )
    .await;
}
