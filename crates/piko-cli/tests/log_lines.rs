//! The lifecycle log lines of Piko's Appendix C, with their subsystems and fields, in the order
//! a server and an agent write them: operators' log-based alerts keep matching.

mod common;

use common::{Process, start_server};
use serde_json::Value;

/// The next line with `msg`, checked for its subsystem and fields.
async fn expect(process: &mut Process, subsystem: &str, msg: &str, fields: &[&str]) -> Value {
    let line = process.wait_log(msg).await;
    assert_eq!(line["subsystem"], subsystem, "{line}");
    for field in fields {
        assert!(!line[*field].is_null(), "{msg}: no {field}: {line}");
    }
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_lifecycle_lines() {
    let (mut server, _admin, upstream, _proxy) =
        start_server(&["--cluster.node-id", "node-a"]).await;
    let url = format!("http://{upstream}");
    let mut agent = Process::start(&[
        "agent",
        "http",
        "my-endpoint",
        "3000",
        "--connect.url",
        &url,
    ]);
    let started = expect(&mut agent, "main", "starting piko agent", &["version"]).await;
    assert_eq!(started["level"], "info");
    expect(
        &mut agent,
        "proxy.http",
        "starting reverse proxy",
        &["endpoint-id"],
    )
    .await;
    let connected = expect(
        &mut server,
        "upstream",
        "upstream connected",
        &["endpoint-id", "client-ip", "tenant-id"],
    )
    .await;
    assert_eq!(connected["endpoint-id"], "my-endpoint");

    assert_eq!(agent.terminate().await, 0);
    expect(&mut agent, "main", "received shutdown signal", &["signal"]).await;
    expect(
        &mut server,
        "upstream",
        "upstream disconnected",
        &["endpoint-id", "client-ip", "tenant-id"],
    )
    .await;

    assert_eq!(server.terminate().await, 0);
    expect(&mut server, "main", "received shutdown signal", &["signal"]).await;
    for msg in [
        "starting shutdown",
        "shutdown proxy server",
        "shutdown upstream server",
        "shutdown admin server",
        "shutdown complete",
    ] {
        expect(&mut server, "server", msg, &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_s_first_lines_name_the_node_and_its_ports() {
    let mut server = Process::start(&[
        "server",
        "--cluster.node-id",
        "node-b",
        "--proxy.bind-addr",
        "127.0.0.1:0",
        "--upstream.bind-addr",
        "127.0.0.1:0",
        "--admin.bind-addr",
        "127.0.0.1:0",
        "--cluster.gossip.bind-addr",
        "127.0.0.1:0",
    ]);
    let line = expect(&mut server, "server", "starting piko server", &["version"]).await;
    assert_eq!(line["node-id"], "node-b");
    for (subsystem, msg) in [
        ("admin", "starting admin server"),
        ("upstream", "starting upstream server"),
        ("proxy", "starting proxy server"),
    ] {
        expect(&mut server, subsystem, msg, &["addr"]).await;
    }
    assert_eq!(server.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_start_up_is_logged_as_failed_to_run() {
    // The admin port is taken: the server fails once logging is up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let mut server = Process::start(&[
        "server",
        "--proxy.bind-addr",
        "127.0.0.1:0",
        "--upstream.bind-addr",
        "127.0.0.1:0",
        "--admin.bind-addr",
        &taken,
        "--cluster.gossip.bind-addr",
        "127.0.0.1:0",
    ]);
    let line = server.wait_log("failed to run server").await;
    assert_eq!(line["level"], "error");
    assert!(
        line["error"].as_str().unwrap().contains(&taken),
        "names the address: {line}"
    );
    let status = tokio::time::timeout(common::PATIENCE, server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

/// The messages a server logs up to its proxy port's start line.
async fn start_up_messages(server: &mut Process) -> Vec<String> {
    let mut messages = Vec::new();
    tokio::time::timeout(common::PATIENCE, async {
        while let Some(line) = server.logs.recv().await {
            let msg = line["msg"].as_str().unwrap_or_default().to_owned();
            let done = msg == "starting proxy server";
            messages.push(msg);
            if done {
                return;
            }
        }
    })
    .await
    .expect("the server never started");
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_gossip_beyond_loopback_is_warned_about_at_start() {
    const WARNING: &str = "gossip listens beyond loopback without cluster.secret: anyone who \
        reaches it can announce a node and receive relayed requests; set cluster.secret \
        (--cluster.secret) on every node";
    let loopback_ports = [
        "--proxy.bind-addr",
        "127.0.0.1:0",
        "--upstream.bind-addr",
        "127.0.0.1:0",
        "--admin.bind-addr",
        "127.0.0.1:0",
    ];
    let start = |extra: &[&str]| {
        let mut args = vec!["server"];
        args.extend_from_slice(&loopback_ports);
        args.extend_from_slice(extra);
        Process::start(&args)
    };
    let mut open = start(&["--cluster.gossip.bind-addr", "0.0.0.0:0"]);
    let line = expect(&mut open, "cluster", WARNING, &["addr"]).await;
    assert_eq!(line["level"], "warn");

    for extra in [
        &[
            "--cluster.gossip.bind-addr",
            "0.0.0.0:0",
            "--cluster.secret",
            "s3cret",
        ][..],
        &["--cluster.gossip.bind-addr", "127.0.0.1:0"][..],
    ] {
        let mut quiet = start(extra);
        let messages = start_up_messages(&mut quiet).await;
        assert!(
            !messages.iter().any(|msg| msg == WARNING),
            "{extra:?}: {messages:?}"
        );
    }
}

/// Log lines are written in batches a moment after they are logged; none is lost when the
/// process stops right after logging them (the access log's last records included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_logged_just_before_sigterm_are_all_written() {
    use std::collections::HashSet;
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

    const REQUESTS: usize = 300;
    let service = common::ok_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = common::agent_http(
        "web",
        &service.to_string(),
        &upstream,
        &["--access-log.disable"],
    );
    server.wait_log("upstream connected").await;

    let mut client = BufReader::new(tokio::net::TcpStream::connect(&proxy).await.unwrap());
    for i in 0..REQUESTS {
        let request = format!("GET /{i} HTTP/1.1\r\nhost: web.example.com\r\n\r\n");
        client
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            client.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).await.unwrap();
        assert_eq!(body, format!("ok /{i}").as_bytes());
    }
    // The last answer is in: stop at once.
    assert_eq!(server.terminate().await, 0);
    let mut logged = HashSet::new();
    while let Some(line) = server.logs.recv().await {
        if line["msg"] == "request" {
            logged.insert(line["request"]["path"].as_str().unwrap().to_owned());
        }
    }
    let missing: Vec<usize> = (0..REQUESTS)
        .filter(|i| !logged.contains(&format!("/{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "requests without a log line: {missing:?}"
    );
}

/// A second SIGTERM during the drain exits at once, and says so: the line is written before the
/// process ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_its_line_written() {
    use tokio::io::AsyncWriteExt as _;

    // A service that takes requests and never answers, so the drain has a request to wait for.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    let (accepted, mut accepts) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
            let _ = accepted.send(()).await;
        }
    });
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = common::agent_http("slow", &service.to_string(), &upstream, &[]);
    server.wait_log("upstream connected").await;
    let mut client = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: slow.example.com\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(common::PATIENCE, accepts.recv())
        .await
        .expect("the request never reached the service");

    server.signal("TERM").await;
    server.wait_log("received shutdown signal").await;
    assert_eq!(server.terminate().await, 1);
    server
        .wait_log("received second shutdown signal; exiting now")
        .await;
}
