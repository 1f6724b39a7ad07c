//! The `piko` binary end to end: a server process, an agent process in front of a local HTTP
//! service, and curl as the client.

mod common;

use std::{net::SocketAddr, process::Stdio};

use common::{PATIENCE, Process, TempFile, peak_rss_kib, start_server};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    process::Command,
};

/// A minimal keep-alive HTTP/1.1 service: answers `hello from <path>`, or echoes a request body
/// (streamed back as it arrives) when there is one.
async fn local_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_connection(tcp));
        }
    });
    addr
}

async fn serve_connection(mut tcp: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end + 4);
        let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        if length == 0 {
            let body = if path == "/xff" {
                // What the service sees as the request's route.
                let xff = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-forwarded-for:"));
                xff.unwrap_or("none").trim().to_owned()
            } else {
                format!("hello from {path}")
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if tcp.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
        if tcp.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut left = length;
        let first = buf.len().min(left);
        if tcp.write_all(&buf[..first]).await.is_err() {
            return;
        }
        buf.drain(..first);
        left -= first;
        let mut chunk = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = match tcp.read(&mut chunk[..left.min(64 * 1024)]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if tcp.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    }
}

async fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_processes_tunnel_curl_requests() {
    let service = local_service().await;
    let (mut server, admin, upstream, proxy) = start_server(&[]).await;
    let connect_url = format!("http://{upstream}");
    let mut agent = Process::start(&[
        "agent",
        "http",
        "my-endpoint",
        &service.port().to_string(),
        "--connect.url",
        &connect_url,
    ]);
    let connected = server.wait_log("upstream connected").await;
    assert_eq!(connected["endpoint-id"], "my-endpoint");
    assert_eq!(connected["subsystem"], "upstream");

    let (status, body) = curl(&[
        "-H",
        "x-piko-endpoint: my-endpoint",
        "-H",
        "authorization: Bearer s3cret",
        &format!("http://{proxy}/hello?x=1"),
    ])
    .await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "hello from /hello?x=1")
    );
    // The agent logs the request too, in its own subsystem.
    let agent_record = agent.wait_log("request").await;
    assert_eq!(agent_record["subsystem"], "proxy.http.access");
    assert_eq!(agent_record["request"]["path"], "/hello");
    // The service sees the client, then the server it came through.
    let (status, body) = curl(&[
        "-H",
        "x-piko-endpoint: my-endpoint",
        "-H",
        "x-forwarded-for: 203.0.113.7",
        &format!("http://{proxy}/xff"),
    ])
    .await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "203.0.113.7, 127.0.0.1, 127.0.0.1")
    );
    // The access log: Piko's record, written once the response was sent, credentials redacted.
    let logged = server.wait_log("request").await;
    assert_eq!(logged["subsystem"], "proxy.access");
    assert_eq!(logged["level"], "info");
    let record = &logged["request"];
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], "/hello");
    assert_eq!(record["status"], 200);
    assert_eq!(record["proto"], "HTTP/1.1");
    assert_eq!(
        record["request_headers"]["Authorization"],
        serde_json::json!(["[redacted]"])
    );
    assert_eq!(
        record["request_headers"]["X-Piko-Endpoint"],
        serde_json::json!(["my-endpoint"])
    );
    assert!(
        record["duration"]
            .as_str()
            .is_some_and(|d| d.ends_with('s')),
        "{record}"
    );
    let (status, body) = curl(&[
        "--resolve",
        &format!(
            "my-endpoint.example.com:{}:127.0.0.1",
            proxy.rsplit_once(':').unwrap().1
        ),
        &format!(
            "http://my-endpoint.example.com:{}/by-host",
            proxy.rsplit_once(':').unwrap().1
        ),
    ])
    .await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "hello from /by-host")
    );
    // HTTP/2 with prior knowledge (h2c) reaches the same HTTP/1.1 upstream.
    let h2_url = format!("http://{proxy}/h2");
    let (status, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "x-piko-endpoint: my-endpoint",
        &h2_url,
    ])
    .await;
    assert_eq!((status.as_str(), body.as_str()), ("200", "hello from /h2"));
    let (status, body) =
        curl(&["-H", "x-piko-endpoint: nobody", &format!("http://{proxy}/")]).await;
    assert_eq!(status, "502");
    assert_eq!(body, "{\"error\":\"no available upstreams\"}\n");
    let (status, _) = curl(&[&format!("http://{admin}/ready")]).await;
    assert_eq!(status, "200");

    // The agent drains and exits 0 on SIGTERM; the server forgets it.
    assert_eq!(agent.terminate().await, 0);
    server.wait_log("upstream disconnected").await;
    let (status, _) = curl(&[
        "-H",
        "x-piko-endpoint: my-endpoint",
        &format!("http://{proxy}/"),
    ])
    .await;
    assert_eq!(status, "502");

    assert_eq!(server.terminate().await, 0);
    server.wait_log("shutdown complete").await;
}

#[tokio::test]
async fn bad_flags_and_addresses_fail_clearly() {
    let piko = env!("CARGO_BIN_EXE_piko");
    let output = Command::new(piko)
        .args(["server", "--no-such-flag"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));

    let output = Command::new(piko)
        .args(["agent", "http", "e", "not an addr"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "config: listener: e: invalid addr: not an addr"
    );

    let output = Command::new(piko)
        .args(["server", "--proxy.timeout", "10"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));

    let output = Command::new(piko).arg("--version").output().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("piko version {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_stay_small_and_agents_come_back() {
    let service = local_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&["--proxy.timeout", "60s"]).await;
    let connect_url = format!("http://{upstream}");
    let port = service.port().to_string();
    let agent_args = [
        "agent",
        "http",
        "big",
        port.as_str(),
        "--connect.url",
        connect_url.as_str(),
        "--timeout",
        "60s",
    ];
    let mut agent = Process::start(&agent_args);
    server.wait_log("upstream connected").await;

    // 128 MiB up and the same 128 MiB back down, in one request.
    let dir = std::env::temp_dir().join(format!("piko-tunnel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let upload = dir.join("upload");
    let payload: Vec<u8> = (0..128u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &payload).unwrap();
    let download = dir.join("download");
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "-H",
            "x-piko-endpoint: big",
            "-H",
            "expect:",
            "--data-binary",
        ])
        .arg(format!("@{}", upload.display()))
        .arg("-o")
        .arg(&download)
        .args(["-w", "%{http_code}", &format!("http://{proxy}/echo")])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        std::fs::read(&download).unwrap() == payload,
        "128 MiB came back altered"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let server_peak = peak_rss_kib(server.child.id().unwrap());
    let agent_peak = peak_rss_kib(agent.child.id().unwrap());
    println!("peak RSS: server {server_peak} KiB, agent {agent_peak} KiB");
    assert!(
        server_peak <= 64 * 1024,
        "server peaked at {server_peak} KiB"
    );
    assert!(agent_peak <= 64 * 1024, "agent peaked at {agent_peak} KiB");

    // Kill the agent outright: requests fail with 502; a new agent serves again without help.
    agent.child.kill().await.unwrap();
    server.wait_log("upstream disconnected").await;
    let (status, _) = curl(&["-H", "x-piko-endpoint: big", &format!("http://{proxy}/")]).await;
    assert_eq!(status, "502");
    let _agent = Process::start(&agent_args);
    server.wait_log("upstream connected").await;
    let (status, body) = curl(&[
        "-H",
        "x-piko-endpoint: big",
        &format!("http://{proxy}/back"),
    ])
    .await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "hello from /back")
    );
}

/// A config file in a fresh temporary directory, removed when dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_start_serves_every_listener_of_its_file() {
    let service = local_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let port = service.port();
    let file = TempFile::new(
        "agent.yaml",
        &format!(
            "connect:\n  url: ${{PIKO_TEST_URL}}\n  timeout: 10s\nlisteners:\n  - endpoint_id: one\n    addr: \"{port}\"\n    timeout: 10s\n  - endpoint_id: two\n    addr: 127.0.0.1:{port}\n    protocol: http\n    timeout: 10s\n"
        ),
    );
    let url = format!("http://{upstream}");
    let _agent = Process::start_with_env(
        &[
            "agent",
            "start",
            "--config.path",
            file.path(),
            "--config.expand-env",
        ],
        &[("PIKO_TEST_URL", &url)],
    );
    let mut endpoints = vec![
        server.wait_log("upstream connected").await["endpoint-id"]
            .as_str()
            .unwrap()
            .to_owned(),
        server.wait_log("upstream connected").await["endpoint-id"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    endpoints.sort();
    assert_eq!(endpoints, ["one", "two"]);
    for endpoint in ["one", "two"] {
        let header = format!("x-piko-endpoint: {endpoint}");
        let (status, body) = curl(&["-H", &header, &format!("http://{proxy}/{endpoint}")]).await;
        assert_eq!(
            (status.as_str(), body),
            ("200", format!("hello from /{endpoint}"))
        );
    }
}

#[tokio::test]
async fn flags_override_the_file_which_overrides_defaults() {
    let piko = env!("CARGO_BIN_EXE_piko");
    // The file's zero grace period is invalid...
    let file = TempFile::new("server.yaml", "grace_period: 0s\nproxy:\n  timeout: 5s\n");
    let output = Command::new(piko)
        .args(["server", "--config.path", file.path()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "config: missing grace period"
    );
    // ...and a flag overrides it: the server starts.
    let mut server = Process::start(&[
        "server",
        "--config.path",
        file.path(),
        "--grace-period",
        "1m",
        "--proxy.bind-addr",
        "127.0.0.1:0",
        "--upstream.bind-addr",
        "127.0.0.1:0",
        "--admin.bind-addr",
        "127.0.0.1:0",
        "--cluster.gossip.bind-addr",
        "127.0.0.1:0",
    ]);
    server.wait_log("starting proxy server").await;
    assert_eq!(server.terminate().await, 0);

    // Security keys refuse to start rather than serve without them.
    let file = TempFile::new(
        "auth.yaml",
        "upstream:\n  auth:\n    jwks:\n      endpoint: file:///missing/jwks.json\n",
    );
    let output = Command::new(piko)
        .args(["server", "--config.path", file.path()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "config: upstream: auth: jwks: /missing/jwks.json: No such file or directory (os error 2)"
    );

    // A typo names the key and its line.
    let file = TempFile::new("typo.yaml", "proxy:\n  bind_adr: \":8000\"\n");
    let output = Command::new(piko)
        .args(["server", "--config.path", file.path()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stdout);
    assert!(
        message.contains("line 2") && message.contains("bind_adr"),
        "{message}"
    );

    // An agent file without listeners, or with a listener missing its timeout.
    let file = TempFile::new("agent.yaml", "listeners: []\n");
    let output = Command::new(piko)
        .args(["agent", "start", "--config.path", file.path()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "no listeners configured"
    );
    let file = TempFile::new(
        "agent.yaml",
        "listeners:\n  - endpoint_id: e\n    addr: \"3000\"\n",
    );
    let output = Command::new(piko)
        .args(["agent", "start", "--config.path", file.path()])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "config: listener: e: missing timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopping_lets_requests_in_flight_finish() {
    // A local service that holds its one response until the test releases it.
    let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = service.local_addr().unwrap().port().to_string();
    let (arrived, request_arrived) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut tcp, _) = service.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            head.extend_from_slice(&chunk[..n]);
        }
        arrived.send(()).unwrap();
        released.await.unwrap();
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nfinished")
            .await
            .unwrap();
    });
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let url = format!("http://{upstream}");
    let mut agent = Process::start(&["agent", "http", "e", &port, "--connect.url", &url]);
    server.wait_log("upstream connected").await;
    let slow_url = format!("http://{proxy}/slow");
    let slow = tokio::spawn(async move { curl(&["-H", "x-piko-endpoint: e", &slow_url]).await });
    request_arrived.await.unwrap();

    // SIGTERM with the request in flight: the agent drains rather than dropping it.
    let pid = agent.child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    agent.wait_log("received shutdown signal").await;
    release.send(()).unwrap();
    let (status, body) = slow.await.unwrap();
    assert_eq!((status.as_str(), body.as_str()), ("200", "finished"));
    let exit = tokio::time::timeout(PATIENCE, agent.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    // And the server stopped routing to it.
    server.wait_log("upstream disconnected").await;
}

#[tokio::test]
async fn text_logs_for_terminals() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_piko"))
        .args([
            "server",
            "--log.format",
            "text",
            "--proxy.bind-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--upstream.bind-addr",
            "127.0.0.1:0",
            "--admin.bind-addr",
            "127.0.0.1:0",
            "--cluster.gossip.bind-addr",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (ts, rest) = first.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{first}");
    assert!(
        rest.starts_with("INFO  server: starting piko server node-id="),
        "{first}"
    );
}

#[tokio::test]
async fn log_subsystems_are_logged_at_every_level() {
    let mut server = Process::start(&[
        "server",
        "--proxy.bind-addr",
        "127.0.0.1:0",
        "--upstream.bind-addr",
        "127.0.0.1:0",
        "--admin.bind-addr",
        "127.0.0.1:0",
        "--cluster.gossip.bind-addr",
        "127.0.0.1:0",
        "--log.level",
        "warn",
        "--log.subsystems",
        "proxy",
        "--proxy.http.read-timeout",
        "1m",
        "--proxy.http.write-timeout",
        "0",
        "--proxy.http.idle-timeout=90s",
    ]);
    let allowed = |line: &Value| {
        line["level"] == "warn" || line["level"] == "error" || line["subsystem"] == "proxy"
    };
    // The admin and upstream ports' info lines come first, and are left out.
    loop {
        let line = tokio::time::timeout(PATIENCE, server.logs.recv())
            .await
            .expect("no proxy log line")
            .expect("server exited");
        assert!(allowed(&line), "{line}");
        if line["msg"] == "starting proxy server" {
            break;
        }
    }
    assert_eq!(server.terminate().await, 0);
    while let Some(line) = server.logs.recv().await {
        assert!(allowed(&line), "{line}");
    }
}

/// `{family: type}` and `[[sample, labels, value]]` of Prometheus text, read by Prometheus's
/// Python parser (Debian's python3-prometheus-client).
async fn parse_metrics(text: &str) -> Value {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    samples += [[s.name, s.labels, s.value] for s in family.samples]
print(json.dumps({"families": families, "samples": samples}))
"#;
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (apt-get install python3-prometheus-client)");
    let mut stdin = python.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = python.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused:\n{text}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_metrics_when_enabled() {
    let service = local_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let connect_url = format!("http://{upstream}");
    let mut agent = Process::start(&[
        "agent",
        "http",
        "metered",
        &service.port().to_string(),
        "--connect.url",
        &connect_url,
        "--server.enabled",
        "--server.bind-addr",
        "127.0.0.1:0",
    ]);
    let metrics_addr = agent.wait_log("starting metrics server").await["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    server.wait_log("upstream connected").await;
    for _ in 0..2 {
        let (status, _) = curl(&[
            "-H",
            "x-piko-endpoint: metered",
            &format!("http://{proxy}/hello"),
        ])
        .await;
        assert_eq!(status, "200");
    }
    let (status, text) = curl(&[&format!("http://{metrics_addr}/metrics")]).await;
    assert_eq!(status, "200");
    let parsed = parse_metrics(&text).await;
    for (family, kind) in [
        ("piko_agent_requests_in_flight", "gauge"),
        ("piko_agent_requests", "counter"),
        ("piko_agent_request_latency_seconds", "histogram"),
        ("piko_agent_request_size_bytes", "histogram"),
        ("piko_agent_response_size_bytes", "histogram"),
    ] {
        assert_eq!(parsed["families"][family], kind, "{family}: {parsed}");
    }
    let requests = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s[0] == "piko_agent_requests_total"
                && s[1]["endpoint"] == "metered"
                && s[1]["status"] == "200"
                && s[1]["method"] == "GET"
        })
        .map(|s| s[2].as_f64().unwrap());
    assert_eq!(requests, Some(2.0), "{parsed}");
    // Nothing else is served there.
    let (status, _) = curl(&[&format!("http://{metrics_addr}/health")]).await;
    assert_eq!(status, "404");
}
