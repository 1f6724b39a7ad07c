//! The limits that keep a node serving under abuse: each is hit, the excess is refused the way a
//! client can tell, and the node goes on serving everyone else.

mod common;

use std::time::Duration;

use common::{Node, exchange, start_node_from};
use piko_server::Config;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Whether the node closed `tcp` without a word (a refused connection).
async fn closed_at_once(tcp: &mut TcpStream) -> bool {
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Polls (bounded) until a new connection to `addr` is served again.
async fn served_again(addr: std::net::SocketAddr) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            if !closed_at_once(&mut tcp).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a freed slot serves a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_connections_beyond_the_limit_are_closed_and_slots_come_back() {
    let mut config = Config::default();
    config.proxy.max_connections = Some(2);
    let node = start_node_from(config).await;

    // Two kept-alive clients hold the two slots.
    let mut first = TcpStream::connect(node.proxy).await.unwrap();
    let mut second = TcpStream::connect(node.proxy).await.unwrap();
    for client in [&mut first, &mut second] {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: e.example.com\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 502"), "served");
    }
    let mut third = TcpStream::connect(node.proxy).await.unwrap();
    assert!(closed_at_once(&mut third).await, "over the limit");

    drop(first);
    served_again(node.proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sessions_hold_their_slot_until_they_end() {
    let mut config = Config::default();
    config.upstream.max_connections = Some(1);
    let node = start_node_from(config).await;
    let listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("e")
        .await
        .unwrap();
    common::wait_upstreams(&node, "e", 1).await;
    // The session left hyper (an upgrade) and still counts.
    let mut other = TcpStream::connect(node.upstream).await.unwrap();
    assert!(closed_at_once(&mut other).await);

    drop(listener);
    common::wait_upstreams(&node, "e", 0).await;
    served_again(node.upstream).await;
}

/// A WebSocket handshake for an upstream of `endpoint`: what the node answered in its first
/// write, and the connection (a registered session lives as long as it).
async fn handshake(node: &Node, endpoint: &str) -> (String, TcpStream) {
    let request = format!(
        "GET /piko/v1/upstream/{endpoint} HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\n\
         upgrade: websocket\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut tcp = TcpStream::connect(node.upstream).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), tcp)
}

/// A WebSocket handshake for an upstream of `endpoint`: the status line and body.
async fn register(node: &Node, endpoint: &str) -> (String, String) {
    let (text, _) = handshake(node, endpoint).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_its_most_upstreams_refuses_more_with_a_retryable_429() {
    let mut config = Config::default();
    config.upstream.max_upstreams_per_endpoint = Some(1);
    let node = start_node_from(config).await;
    let _listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("e")
        .await
        .unwrap();
    common::wait_upstreams(&node, "e", 1).await;

    let (status, body) = register(&node, "e").await;
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests");
    assert_eq!(body, r#"{"error":"too many upstreams for endpoint"}"#);
    // Other endpoints are not affected.
    let (status, _) = register(&node, "f").await;
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_node_serves_on() {
    let node = start_node_from(Config::default()).await;
    for garbage in [
        "NOT HTTP AT ALL\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n",
    ] {
        let mut tcp = TcpStream::connect(node.proxy).await.unwrap();
        tcp.write_all(garbage.as_bytes()).await.unwrap();
        let mut reply = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut reply)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{garbage:?}: {reply:?}");
    }
    let (head, _) = exchange(
        node.proxy,
        "GET / HTTP/1.1\r\nhost: e.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
}

/// A WebSocket handshake for an upstream of `endpoint`: the status line, and the connection.
async fn register_and_hold(node: &Node, endpoint: &str) -> (String, TcpStream) {
    let (text, tcp) = handshake(node, endpoint).await;
    (text.lines().next().unwrap_or_default().to_owned(), tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_never_exceed_the_upstream_limit() {
    let mut config = Config::default();
    config.upstream.max_upstreams_per_endpoint = Some(5);
    let node = std::sync::Arc::new(start_node_from(config).await);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let agents: Vec<_> = (0..50)
        .map(|_| {
            let (node, start) = (node.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                register_and_hold(&node, "e").await
            })
        })
        .collect();
    let mut held = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for agent in agents {
        let (status, tcp) = agent.await.unwrap();
        match status.as_str() {
            "HTTP/1.1 101 Switching Protocols" => accepted += 1,
            "HTTP/1.1 429 Too Many Requests" => refused += 1,
            other => panic!("unexpected answer: {other}"),
        }
        held.push(tcp);
    }
    assert_eq!((accepted, refused), (5, 45));
    common::wait_upstreams(&node, "e", 5).await;
    // A session's end gives its place back.
    drop(held);
    common::wait_upstreams(&node, "e", 0).await;
    let (status, _tcp) = register_and_hold(&node, "e").await;
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_an_endpoint_s_limit_get_a_retryable_503() {
    let mut config = Config::default();
    config.proxy.max_requests_per_endpoint = Some(2);
    // Long enough that the held requests are still in flight when the third one comes, on a
    // loaded machine too.
    config.proxy.timeout = Some(Duration::from_secs(5));
    let node = start_node_from(config).await;
    // An upstream that takes requests and never answers: each stays in flight until the proxy
    // timeout.
    let mut accepts = common::silent_upstream(&node, "e").await;
    let request = "GET / HTTP/1.1\r\nhost: e.example.com\r\nconnection: close\r\n\r\n";
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let proxy = node.proxy;
            tokio::spawn(async move { exchange(proxy, request).await })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), accepts.recv())
            .await
            .expect("the upstream never got the request")
            .unwrap();
    }
    let (head, body) = exchange(node.proxy, request).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(
        body,
        "{\"error\":\"too many requests in flight for endpoint\"}\n"
    );
    // Another endpoint has its own places.
    let (head, _) = exchange(
        node.proxy,
        "GET / HTTP/1.1\r\nhost: other.example.com\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    for request in in_flight {
        let (head, _) = request.await.unwrap();
        assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    }
    // Finished requests give their places back.
    let (head, _) = exchange(node.proxy, request).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
}
