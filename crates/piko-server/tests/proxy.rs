//! A server node on real sockets, with SDK listeners as upstreams and raw HTTP/1.1 clients.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_server::{Config, Server, Upstreams};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

struct Node {
    proxy: SocketAddr,
    upstream: SocketAddr,
    admin: SocketAddr,
    upstreams: std::sync::Arc<Upstreams>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_node() -> Node {
    let config = Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        grace_period: Duration::from_secs(10),
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = (
        server.proxy_addr(),
        server.upstream_addr(),
        server.admin_addr(),
        server.upstreams(),
    );
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Node {
        proxy: node.0,
        upstream: node.1,
        admin: node.2,
        upstreams: node.3,
        stop: Some(stop),
        task,
    }
}

/// Waits (bounded) until the node has `count` upstreams for `endpoint`.
async fn wait_upstreams(node: &Node, endpoint: &str, count: usize) {
    let mut changes = node.upstreams.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| node.upstreams.count(endpoint) == count),
    )
    .await
    .unwrap_or_else(|_| panic!("{endpoint} never had {count} upstreams"))
    .unwrap();
}

/// An upstream HTTP service on an SDK listener: answers every request with its own name, the
/// request line, the headers it got and the request body.
async fn serve_listener(mut listener: piko::Listener, name: &'static str) {
    while let Ok(stream) = listener.accept().await {
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<Incoming>| async move {
                    let mut text = format!("{name} {} {}\n", request.method(), request.uri());
                    let mut headers: Vec<_> = request
                        .headers()
                        .iter()
                        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                        .collect();
                    headers.sort();
                    text.extend(headers);
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    text.push('\n');
                    let mut out = text.into_bytes();
                    out.extend_from_slice(&body);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(out))))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Sends a raw HTTP/1.1 request and returns (status, headers, body) once the server closes.
async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
        .await
        .expect("response never completed")
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end")
        + 4;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, response[split..].to_vec())
}

fn get(host: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

/// Removes chunked framing from a body (the proxy relays the upstream's framing as it is).
fn dechunk(body: &[u8], head: &str) -> Vec<u8> {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_vec();
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_upstream_by_host_or_header() {
    let node = start_node().await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    tokio::spawn(serve_listener(
        upstream.listen("my-endpoint").await.unwrap(),
        "a",
    ));
    wait_upstreams(&node, "my-endpoint", 1).await;

    let (status, head, body) = raw_request(
        node.proxy,
        &get(
            "my-endpoint.piko.example.com:9000",
            "/foo/bar?a=b",
            "x-forwarded-for: 203.0.113.7\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let body = String::from_utf8(dechunk(&body, &head)).unwrap();
    assert!(body.starts_with("a GET /foo/bar?a=b\n"), "{body}");
    assert!(
        body.contains("host: my-endpoint.piko.example.com:9000\n"),
        "{body}"
    );
    assert!(body.contains("x-piko-forward: true\n"), "{body}");
    assert!(
        body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("connection: close\n"), "{body}");

    let (status, _, body) = raw_request(
        node.proxy,
        &get("localhost", "/x", "x-piko-endpoint: my-endpoint\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("a GET /x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let node = start_node().await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    tokio::spawn(serve_listener(upstream.listen("e").await.unwrap(), "a"));
    wait_upstreams(&node, "e", 1).await;
    let payload: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nhost: e.example.com\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    request.extend_from_slice(&payload);
    let (status, head, body) = raw_request(node.proxy, &request).await;
    assert_eq!(status, 200, "{head}");
    let body = dechunk(&body, &head);
    let split = body.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    assert!(
        body[split..] == payload[..],
        "request body was not relayed intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_piko_s() {
    let node = start_node().await;
    let (status, head, body) = raw_request(node.proxy, &get("nobody.example.com", "/", "")).await;
    assert_eq!(status, 502);
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.contains("x-content-type-options: nosniff\r\n"),
        "{head}"
    );
    assert_eq!(body, b"{\"error\":\"no available upstreams\"}\n");

    let (status, _, body) = raw_request(node.proxy, &get("localhost", "/", "")).await;
    assert_eq!(status, 400);
    assert_eq!(body, b"{\"error\":\"missing endpoint id\"}");

    // The upstream port's handshake checks (gorilla's statuses) and unknown routes.
    let upgrade = |extra: &str| {
        format!("GET /piko/v1/upstream/e HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n")
            .into_bytes()
    };
    let (status, head, body) = raw_request(node.upstream, &upgrade("")).await;
    assert_eq!(status, 400);
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    assert_eq!(body, b"Bad Request");
    let (status, _, _) = raw_request(node.upstream, &get("x", "/elsewhere", "")).await;
    assert_eq!(status, 404);
    let long = format!("/piko/v1/upstream/{}", "a".repeat(300));
    let (status, _, _) = raw_request(node.upstream, &get("x", &long, "")).await;
    assert_eq!(status, 400);

    let (status, _, _) = raw_request(node.admin, &get("x", "/health", "")).await;
    assert_eq!(status, 200);
    let (status, _, _) = raw_request(node.admin, &get("x", "/ready", "")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_served_round_robin_and_dropped_at_once_on_go_away() {
    let node = start_node().await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    let first = upstream.listen("e").await.unwrap();
    tokio::spawn(serve_listener(upstream.listen("e").await.unwrap(), "b"));
    let (closer, close) = tokio::sync::oneshot::channel::<()>();
    let first_task = tokio::spawn(async move {
        let mut first = first;
        let mut close = close;
        loop {
            tokio::select! {
                _ = &mut close => { first.close(); return first; }
                accepted = first.accept() => {
                    let Ok(stream) = accepted else { return first };
                    let service = hyper::service::service_fn(|_request: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"a"))))
                    });
                    tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                }
            }
        }
    });
    wait_upstreams(&node, "e", 2).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, head, body) = raw_request(node.proxy, &get("e.example.com", "/", "")).await;
        assert_eq!(status, 200);
        seen.push(dechunk(&body, &head)[0]);
    }
    assert_eq!(seen.iter().filter(|&&c| c == b'a').count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|&&c| c == b'b').count(), 2, "{seen:?}");
    assert_ne!(seen[0], seen[1]);

    // A GoAway from the first upstream takes it out of routing before any request fails on it.
    closer.send(()).unwrap();
    let _first = first_task.await.unwrap();
    wait_upstreams(&node, "e", 1).await;
    for _ in 0..3 {
        let (status, head, body) = raw_request(node.proxy, &get("e.example.com", "/", "")).await;
        assert_eq!(status, 200);
        assert_eq!(dechunk(&body, &head)[0], b'b');
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_reconnect_after_the_server_restarts() {
    let mut node = start_node().await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream))
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    tokio::spawn(serve_listener(upstream.listen("e").await.unwrap(), "a"));
    wait_upstreams(&node, "e", 1).await;

    // Restart on the same ports: the listener reconnects with no help.
    let ports = (node.proxy, node.upstream, node.admin);
    node.stop.take().unwrap().send(()).unwrap();
    node.task.await.unwrap();
    let config = Config {
        proxy_bind_addr: ports.0.to_string(),
        upstream_bind_addr: ports.1.to_string(),
        admin_bind_addr: ports.2.to_string(),
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let upstreams = server.upstreams();
    tokio::spawn(server.run(std::future::pending()));
    let mut changes = upstreams.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| upstreams.count("e") == 1),
    )
    .await
    .expect("listener did not reconnect")
    .unwrap();
    let (status, _, body) = raw_request(ports.0, &get("e.example.com", "/", "")).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("a GET /"));
}
