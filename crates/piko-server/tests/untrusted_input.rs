//! What clients control cannot grow the node's metrics or crash its connections: methods outside
//! the standard set, declared lengths past any integer, endpoint names past the limit.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{exchange, get, start_node};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// The number of samples `/metrics` serves.
async fn series(node: &common::Node) -> usize {
    let (head, text) = get(node.admin, "/metrics", "admin").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// Sends `count` requests with random methods on one kept-alive connection, half of them to
/// `known` and half to an endpoint nobody serves; each must be answered.
async fn random_methods(proxy: SocketAddr, known: &str, count: usize) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    for n in 0..count {
        let method = format!("M{:016X}", rand::random::<u64>());
        let host = if n % 2 == 0 { known } else { "nobody" };
        write
            .write_all(
                format!("{method} /x HTTP/1.1\r\nhost: {host}.example.com\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut status = String::new();
        read.read_line(&mut status).await.unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.1 502"),
            "{method}: {status:?}"
        );
        let mut length = 0;
        loop {
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_methods_add_no_metric_series() {
    let node = start_node().await;
    common::fixed_upstream(
        &node,
        "e",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;

    // One of each kind first: the series a random method creates, if any, exist from here on.
    random_methods(node.proxy, "e", 2).await;
    let before = series(&node).await;
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(random_methods(node.proxy, "e", 1250)))
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let after = series(&node).await;
    assert_eq!(
        after, before,
        "5,000 random methods changed the number of series"
    );
    let (_, text) = get(node.admin, "/metrics", "admin").await;
    assert!(
        text.contains(r#"piko_proxy_requests_total{status="200",method="OTHER"}"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_past_any_integer_is_answered() {
    let node = start_node().await;
    common::fixed_upstream(
        &node,
        "e",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .await;
    // The metrics' request-size sum used to overflow on it (a panic in the test profile, a
    // silent wrap in release).
    let (head, body) = tokio::time::timeout(
        Duration::from_secs(10),
        exchange(
            node.proxy,
            "POST /x HTTP/1.1\r\nhost: e.example.com\r\ncontent-length: 18446744073709551613\r\nconnection: close\r\n\r\nabc",
        ),
    )
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_id_past_the_limit_is_refused_before_routing() {
    let node = start_node().await;
    let long = "a".repeat(257);
    for request in [
        format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-piko-endpoint: {long}\r\nconnection: close\r\n\r\n"
        ),
        format!("GET / HTTP/1.1\r\nhost: {long}.example.com\r\nconnection: close\r\n\r\n"),
    ] {
        let (head, body) = exchange(node.proxy, &request).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert_eq!(body, r#"{"error":"endpoint id too long"}"#);
    }
    // 256 bytes is still a name.
    let (head, _) = exchange(
        node.proxy,
        &format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-piko-endpoint: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(256)
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
}
