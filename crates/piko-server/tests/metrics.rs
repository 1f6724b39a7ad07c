//! The admin port's `/metrics`, read by Prometheus's own Python parser: every family of Piko's
//! (spec §10.2) with its type and labels, and values that follow the traffic.

mod common;

use std::{process::Stdio, time::Duration};

use common::{get, start_node, wait_upstreams};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};

/// Parses Prometheus text with `prometheus_client.parser` (Debian's python3-prometheus-client)
/// into `{family: {"type": ..., "samples": [[name, labels, value], ...]}}`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(out))
"#;

async fn parse(text: &str) -> Value {
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (apt-get install python3-prometheus-client)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let output = python.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused the text (is python3-prometheus-client installed?):\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The value of the sample `name` with exactly `labels`.
fn sample(families: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| {
            s[0] == name
                && s[1].as_object().is_some_and(|l| {
                    l.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(v))
                })
        })
        .and_then(|s| s[2].as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_piko_s_names_and_follow_the_traffic() {
    let node = start_node().await;
    common::fixed_upstream(
        &node,
        "e",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    for _ in 0..2 {
        let (head, body) = get(node.proxy, "/x", "e.example.com").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "hello");
    }
    let (head, _) = get(node.proxy, "/x", "nobody.example.com").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // A request with a body: its bytes are counted coming in.
    let mut tcp = TcpStream::connect(node.proxy).await.unwrap();
    tcp.write_all(
        b"POST /x HTTP/1.1\r\nhost: e.example.com\r\ncontent-length: 4\r\nconnection: close\r\n\r\nabcd",
    )
    .await
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let (head, text) = get(node.admin, "/metrics", "admin").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        !text.contains("# EOF"),
        "OpenMetrics terminator in Prometheus text"
    );
    let families = parse(&text).await;

    for (family, kind) in [
        ("piko_proxy_requests_in_flight", "gauge"),
        ("piko_proxy_requests", "counter"),
        ("piko_proxy_request_latency_seconds", "histogram"),
        ("piko_proxy_request_size_bytes", "histogram"),
        ("piko_proxy_response_size_bytes", "histogram"),
        ("piko_upstreams_connected_upstreams", "gauge"),
        ("piko_upstreams_registered_endpoints", "gauge"),
        ("piko_upstreams_upstream_requests", "counter"),
        ("piko_cluster_nodes", "gauge"),
        ("piko_gossip_connections_inbound", "counter"),
        ("piko_gossip_connections_outbound", "counter"),
        ("piko_gossip_stream_bytes_inbound", "counter"),
        ("piko_gossip_stream_bytes_outbound", "counter"),
        ("piko_gossip_packet_bytes_inbound", "counter"),
        ("piko_gossip_packet_bytes_outbound", "counter"),
        ("piko_gossip_digest_entries_inbound", "counter"),
        ("piko_gossip_digest_entries_outbound", "counter"),
        ("piko_gossip_delta_entries_inbound", "counter"),
        ("piko_gossip_delta_entries_outbound", "counter"),
        ("piko_proxy_route_duration_seconds", "histogram"),
        ("piko_proxy_bytes", "counter"),
        ("piko_proxy_active_streams", "gauge"),
        ("piko_upstreams_connects", "counter"),
    ] {
        assert_eq!(families[family]["type"], kind, "{family} in {families}");
    }
    let requests = |status: &str| {
        sample(
            &families,
            "piko_proxy_requests",
            "piko_proxy_requests_total",
            &[("status", status), ("method", "GET")],
        )
    };
    assert_eq!(requests("200"), Some(2.0), "{families}");
    assert_eq!(
        sample(
            &families,
            "piko_proxy_requests",
            "piko_proxy_requests_total",
            &[("status", "200"), ("method", "POST")],
        ),
        Some(1.0)
    );
    assert_eq!(requests("502"), Some(1.0), "{families}");
    let latency_count = sample(
        &families,
        "piko_proxy_request_latency_seconds",
        "piko_proxy_request_latency_seconds_count",
        &[("status", "200"), ("method", "GET")],
    );
    assert_eq!(latency_count, Some(2.0));
    let response_sizes = sample(
        &families,
        "piko_proxy_response_size_bytes",
        "piko_proxy_response_size_bytes_sum",
        &[],
    );
    // Three 5-byte bodies and one JSON error.
    let error_body = br#"{"error":"no available upstreams"}"#.len() as f64 + 1.0;
    assert_eq!(response_sizes, Some(15.0 + error_body));
    let gauge = |family: &str| sample(&families, family, family, &[]);
    assert_eq!(gauge("piko_upstreams_connected_upstreams"), Some(1.0));
    assert_eq!(gauge("piko_upstreams_registered_endpoints"), Some(1.0));
    assert_eq!(gauge("piko_proxy_requests_in_flight"), Some(0.0));
    assert_eq!(
        sample(
            &families,
            "piko_upstreams_upstream_requests",
            "piko_upstreams_upstream_requests_total",
            &[]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &families,
            "piko_cluster_nodes",
            "piko_cluster_nodes",
            &[("status", "active")]
        ),
        Some(1.0)
    );
    let routed = |outcome: &str| {
        sample(
            &families,
            "piko_proxy_route_duration_seconds",
            "piko_proxy_route_duration_seconds_count",
            &[("route", "http"), ("outcome", outcome)],
        )
    };
    assert_eq!(routed("success"), Some(3.0), "{families}");
    assert_eq!(routed("no_upstream"), Some(1.0), "{families}");
    assert_eq!(
        sample(
            &families,
            "piko_proxy_bytes",
            "piko_proxy_bytes_total",
            &[("route", "http"), ("direction", "out")]
        ),
        Some(15.0 + error_body)
    );
    assert_eq!(
        sample(
            &families,
            "piko_proxy_bytes",
            "piko_proxy_bytes_total",
            &[("route", "http"), ("direction", "in")]
        ),
        Some(4.0)
    );
    assert_eq!(gauge("piko_proxy_active_streams"), Some(0.0));
    assert_eq!(
        sample(
            &families,
            "piko_upstreams_connects",
            "piko_upstreams_connects_total",
            &[]
        ),
        Some(1.0)
    );
}

/// A TCP tunnel counts as Piko counts it, once it is over (status 200, its lifetime), and the
/// operator metrics follow its bytes, its stream and its upstream's departure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_counted_when_they_end() {
    let node = start_node().await;
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("echo")
        .await
        .unwrap();
    let (close_listener, closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let accept = async {
            while let Ok(mut stream) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err()
                            || stream.flush().await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            _ = closed => {}
        }
        listener.close();
        // Keep the listener until the server closes the session.
        let _ = listener.accept().await;
    });
    wait_upstreams(&node, "echo", 1).await;
    let scrape = async || {
        let (_, text) = get(node.admin, "/metrics", "admin").await;
        parse(&text).await
    };
    let tunnels = |families: &Value| {
        sample(
            families,
            "piko_proxy_requests",
            "piko_proxy_requests_total",
            &[("status", "200"), ("method", "GET")],
        )
    };

    let mut tunnel = piko::Dialer::new(format!("http://{}", node.proxy))
        .dial("echo")
        .await
        .unwrap();
    tunnel.write_all(b"hello").await.unwrap();
    tunnel.flush().await.unwrap();
    let mut echoed = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut echoed))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(&echoed, b"hello");
    let open = scrape().await;
    assert_eq!(tunnels(&open), None, "counted before it ended: {open}");
    let gauge = |families: &Value, family: &str| sample(families, family, family, &[]);
    assert_eq!(gauge(&open, "piko_proxy_requests_in_flight"), Some(1.0));
    assert_eq!(gauge(&open, "piko_proxy_active_streams"), Some(1.0));

    drop(tunnel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let families = scrape().await;
        if tunnels(&families) == Some(1.0)
            && gauge(&families, "piko_proxy_active_streams") == Some(0.0)
        {
            break families;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted: {families}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(gauge(&ended, "piko_proxy_requests_in_flight"), Some(0.0));
    assert_eq!(
        sample(
            &ended,
            "piko_proxy_route_duration_seconds",
            "piko_proxy_route_duration_seconds_count",
            &[("route", "tcp"), ("outcome", "success")]
        ),
        Some(1.0)
    );
    for direction in ["in", "out"] {
        assert_eq!(
            sample(
                &ended,
                "piko_proxy_bytes",
                "piko_proxy_bytes_total",
                &[("route", "tcp"), ("direction", direction)]
            ),
            Some(5.0),
            "{direction}"
        );
    }

    close_listener.send(()).unwrap();
    wait_upstreams(&node, "echo", 0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let families = scrape().await;
        let left = sample(
            &families,
            "piko_upstreams_disconnects",
            "piko_upstreams_disconnects_total",
            &[("reason", "agent_go_away")],
        );
        if left == Some(1.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{families}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_abandoned_by_its_client_leaves_the_in_flight_gauge() {
    let node = start_node().await;
    let _accepts = common::silent_upstream(&node, "silent").await;
    let in_flight = async || {
        let (_, text) = get(node.admin, "/metrics", "admin").await;
        let families = parse(&text).await;
        sample(
            &families,
            "piko_proxy_requests_in_flight",
            "piko_proxy_requests_in_flight",
            &[],
        )
        .unwrap()
    };
    let mut client = TcpStream::connect(node.proxy).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: silent.example.com\r\n\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight().await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    while in_flight().await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an abandoned request stayed in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
