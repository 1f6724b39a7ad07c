//! TCP tunnels end to end: `piko forward` → `piko server` → `piko agent tcp` → a local service,
//! all real processes, with clients no one here wrote (redis-cli against redis-server).

mod common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use common::{PATIENCE, Process, echo_service, start_agent_tcp, start_forward, start_server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};

/// Sends `data`, half-closes, and returns everything received until the other side's end.
async fn exchange(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = tcp.into_split();
    let data = data.to_vec();
    let send = tokio::spawn(async move {
        writer.write_all(&data).await?;
        writer.shutdown().await
    });
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_to_end(&mut received))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no end"))??;
    send.await.unwrap()?;
    Ok(received)
}

/// A port free right now, for a service that must be told its port.
fn reserve_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_reaches_redis_server_through_the_tunnel() {
    let port = reserve_port();
    let _redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is installed (apt-get install redis-server)");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "redis", &port.to_string()).await;
    let (_forward, local) = start_forward(&proxy, "redis").await;

    let cli = async |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &local.port().to_string()])
            .args(args)
            .output()
            .await
            .expect("redis-cli is installed (apt-get install redis-tools)");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(cli(&["PING"]).await, "PONG");
    let big = "x".repeat(100_000);
    assert_eq!(cli(&["SET", "greeting", "hello"]).await, "OK");
    assert_eq!(cli(&["SET", "big", &big]).await, "OK");
    assert_eq!(cli(&["GET", "greeting"]).await, "hello");
    assert_eq!(cli(&["STRLEN", "big"]).await, "100000");
    for _ in 0..3 {
        cli(&["INCR", "counter"]).await;
    }
    assert_eq!(cli(&["GET", "counter"]).await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_exact_in_bulk_and_under_concurrency() {
    let service = echo_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "echo", &service.to_string()).await;
    let (_forward, local) = start_forward(&proxy, "echo").await;

    // 64 MiB each way, byte for byte; the half-close ends the echo after its last byte.
    let payload: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    let echoed = exchange(local, &payload).await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");

    // 500 connections at once, each with its own bytes.
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..500u32 {
        clients.spawn(async move {
            let data: Vec<u8> = format!("connection {i} ").repeat(64).into_bytes();
            (exchange(local, &data).await, data)
        });
    }
    let mut done = 0;
    while let Some(joined) = clients.join_next().await {
        let (echoed, data) = joined.unwrap();
        assert_eq!(echoed.unwrap(), data);
        done += 1;
    }
    assert_eq!(done, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_close_promptly_and_a_restarted_agent_serves_again() {
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let (mut forward, local) = start_forward(&proxy, "svc").await;

    // No upstream: the forwarder says why and closes the connection.
    let received = exchange(local, b"hello").await;
    assert!(received.is_err() || received.unwrap().is_empty());
    let line = forward.wait_log("failed to dial endpoint").await;
    assert_eq!(line["error"], "502: no available upstreams", "{line}");

    // An upstream whose local service is down: the connection closes, nothing hangs.
    let down = reserve_port();
    let mut agent = start_agent_tcp(&mut server, &upstream, "svc", &down.to_string()).await;
    let received = exchange(local, b"hello").await;
    assert!(received.is_err() || received.unwrap().is_empty());
    agent.wait_log("failed to dial upstream").await;
    assert_eq!(agent.terminate().await, 0);
    server.wait_log("upstream disconnected").await;

    // A new agent in front of a working service: new connections work without help.
    let service = echo_service().await;
    let _agent = start_agent_tcp(&mut server, &upstream, "svc", &service.to_string()).await;
    assert_eq!(exchange(local, b"back").await.unwrap(), b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_files_declare_tcp_listeners_and_forwarded_ports() {
    let service = echo_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    // Two TCP listeners for two endpoints, and two forwarded ports, one per endpoint.
    let mut listeners = String::new();
    for endpoint in ["echo-a", "echo-b"] {
        listeners.push_str(&format!(
            "  - endpoint_id: {endpoint}\n    addr: \"{service}\"\n    protocol: tcp\n    timeout: 5s\n"
        ));
    }
    let agent_file = common::TempFile::new(
        "agent.yaml",
        &format!("connect:\n  url: http://{upstream}\nlisteners:\n{listeners}"),
    );
    let _agent = Process::start(&["agent", "start", "--config.path", agent_file.path()]);
    server.wait_log("upstream connected").await;
    server.wait_log("upstream connected").await;
    let forward_file = common::TempFile::new(
        "forward.yaml",
        &format!(
            "connect:\n  url: http://{proxy}\nports:\n  - addr: 127.0.0.1:0\n    endpoint_id: echo-a\n  - addr: 127.0.0.1:0\n    endpoint_id: echo-b\n"
        ),
    );
    let mut forward = Process::start(&["forward", "start", "--config.path", forward_file.path()]);
    for _ in 0..2 {
        let line = forward.wait_log("starting tcp forwarder").await;
        let local: SocketAddr = line["addr"].as_str().unwrap().parse().unwrap();
        let endpoint = line["endpoint-id"].as_str().unwrap();
        assert_eq!(
            exchange(local, endpoint.as_bytes()).await.unwrap(),
            endpoint.as_bytes()
        );
    }
    assert_eq!(forward.terminate().await, 0);

    // Validation, with Piko's messages.
    let piko = env!("CARGO_BIN_EXE_piko");
    for (text, message) in [
        ("ports: []\n", "no ports configured"),
        (
            "ports:\n  - endpoint_id: e\n",
            "config: port: e: missing addr",
        ),
        (
            "ports:\n  - addr: \"3000\"\n",
            "config: port: : missing endpoint id",
        ),
        (
            "ports:\n  - addr: nowhere\n    endpoint_id: e\n",
            "config: port: e: invalid addr",
        ),
        (
            "connect:\n  url: ftp://piko\nports:\n  - addr: \"3000\"\n    endpoint_id: e\n",
            "config: connect: invalid url: scheme must be http or https",
        ),
    ] {
        let file = common::TempFile::new("bad.yaml", text);
        let output = Command::new(piko)
            .args(["forward", "start", "--config.path", file.path()])
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            message,
            "{text}"
        );
    }
}
