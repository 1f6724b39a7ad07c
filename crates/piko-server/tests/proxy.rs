//! A server node on real sockets, with SDK listeners as upstreams and raw HTTP/1.1 clients.

mod common;

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use common::{start_node, start_node_with, wait_upstreams};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_server::{Config, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

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

    // The TCP route opens its stream before the upgrade: no upstream is a JSON 502.
    let (status, _, body) =
        raw_request(node.proxy, &get("localhost", "/_piko/v1/tcp/db", "")).await;
    assert_eq!(status, 502);
    assert_eq!(body, b"{\"error\":\"no available upstreams\"}\n");

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
    node.task.await.unwrap().unwrap();
    let config = Config {
        proxy_bind_addr: ports.0.to_string(),
        upstream_bind_addr: ports.1.to_string(),
        admin_bind_addr: ports.2.to_string(),
        gossip_bind_addr: "127.0.0.1:0".into(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_relayed_end_to_end() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let node = start_node().await;
    let listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("ws")
        .await
        .unwrap();
    tokio::spawn(common::serve_websocket_echo(listener));
    wait_upstreams(&node, "ws", 1).await;
    let tcp = TcpStream::connect(node.proxy).await.unwrap();
    let (mut client, response) = tokio_tungstenite::client_async("ws://ws.example.com/chat", tcp)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "the tunnel"] {
        client.send(Message::text(text)).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 1 << 20];
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap().into_data().as_ref(),
        &big[..]
    );
    // Metered as Piko meters it: once the tunnel is over, as a 200 (Go's reverse proxy writes
    // the 101 past gin's response writer), in flight until then.
    let counted = "piko_proxy_requests_total{status=\"200\",method=\"GET\"} 1\n";
    let (_, metrics) = common::get(node.admin, "/metrics", "admin").await;
    assert!(!metrics.contains(counted), "counted while open");
    assert!(
        metrics.contains("piko_proxy_requests_in_flight 1\n"),
        "{metrics}"
    );
    client.close(None).await.unwrap();
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = common::get(node.admin, "/metrics", "admin").await;
        // Counted and no longer in flight: two updates, which a scrape may fall between.
        if metrics.contains(counted) && metrics.contains("piko_proxy_requests_in_flight 0\n") {
            assert!(
                metrics.contains(
                    "piko_proxy_route_duration_seconds_count{route=\"upgrade\",outcome=\"success\"} 1\n"
                ),
                "{metrics}"
            );
            let bytes_in: f64 = metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix("piko_proxy_bytes_total{route=\"upgrade\",direction=\"in\"} ")
                })
                .unwrap()
                .parse()
                .unwrap();
            assert!(bytes_in > f64::from(1 << 20), "{metrics}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_as_they_are_sent() {
    let node = start_node().await;
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("sse")
        .await
        .unwrap();
    let (next_event, mut events) = tokio::sync::mpsc::channel::<&'static str>(1);
    tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut request = vec![0u8; 1024];
        let _ = stream.read(&mut request).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        while let Some(event) = events.recv().await {
            let data = format!("data: {event}\n\n");
            stream
                .write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
                .await
                .unwrap();
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        stream.shutdown().await.unwrap();
    });
    wait_upstreams(&node, "sse", 1).await;
    let mut tcp = TcpStream::connect(node.proxy).await.unwrap();
    tcp.write_all(&get("sse.example.com", "/events", ""))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for event in ["one", "two", "three"] {
        next_event.send(event).await.unwrap();
        // Each event reaches the client before the next one is even produced.
        let wanted = format!("data: {event}");
        tokio::time::timeout(Duration::from_secs(10), async {
            while !String::from_utf8_lossy(&seen).contains(&wanted) {
                let mut chunk = [0u8; 1024];
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed early");
                seen.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("event {event} was held back"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_504_after_the_proxy_timeout() {
    let node = start_node_with(piko_server::proxy::Config {
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let _accepts = common::silent_upstream(&node, "slow").await;
    let (status, head, body) = raw_request(node.proxy, &get("slow.example.com", "/", "")).await;
    assert_eq!(status, 504, "{head}");
    assert_eq!(body, b"{\"error\":\"upstream timeout\"}\n");
    // With a request body, the wait starts once the body is sent; then it is bounded too.
    let post = b"POST / HTTP/1.1\r\nhost: slow.example.com\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    let (status, head, _) = raw_request(node.proxy, post).await;
    assert_eq!(status, 504, "{head}");
    // An upload the upstream stops taking (it never reads) is not "still in progress" forever.
    let tcp = TcpStream::connect(node.proxy).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    let big = vec![b'x'; 8 << 20];
    let head = format!(
        "POST / HTTP/1.1\r\nhost: slow.example.com\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    // Blocks once the relay stops reading; fails when the server closes after its 504.
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&big).await
    });
    let mut response = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut response))
        .await
        .expect("a stalled upload waited forever")
        .unwrap();
    sender.abort();
    assert_eq!(&response, b"HTTP/1.1 504");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let mut node = start_node().await;
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("e")
        .await
        .unwrap();
    let (answer, answer_now) = tokio::sync::oneshot::channel::<()>();
    let (got_request, request_arrived) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut request = vec![0u8; 1024];
        let _ = stream.read(&mut request).await.unwrap();
        got_request.send(()).unwrap();
        answer_now.await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        // Keep the listener (and its session) alive while the server drains it.
        let _ = listener.accept().await;
    });
    wait_upstreams(&node, "e", 1).await;
    let proxy = node.proxy;
    let request =
        tokio::spawn(async move { raw_request(proxy, &get("e.example.com", "/slow", "")).await });
    request_arrived.await.unwrap();
    // Shut down with the request in flight: /ready turns 503 and no new connection is accepted,
    // but the request completes.
    node.stop.take().unwrap().send(()).unwrap();
    let mut ready = 200;
    for _ in 0..100 {
        match TcpStream::connect(node.admin).await {
            Ok(mut tcp) => {
                tcp.write_all(&get("x", "/ready", "")).await.unwrap();
                let mut response = Vec::new();
                let _ = tcp.read_to_end(&mut response).await;
                ready = String::from_utf8_lossy(&response)[9..12]
                    .parse()
                    .unwrap_or(0);
                if ready == 503 {
                    break;
                }
            }
            Err(_) => break,
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(ready, 503, "/ready did not turn 503 during shutdown");
    answer.send(()).unwrap();
    let (status, head, body) = request.await.unwrap();
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"done");
    tokio::time::timeout(Duration::from_secs(10), node.task)
        .await
        .expect("shutdown hung")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_request_heads_are_refused() {
    let node = start_node_with(piko_server::proxy::Config {
        read_header_timeout: Some(Duration::from_millis(300)),
        max_header_bytes: 16 * 1024,
        ..Default::default()
    })
    .await;
    let big = format!("x-big: {}\r\n", "a".repeat(64 * 1024));
    let (status, _, _) = raw_request(node.proxy, &get("e.example.com", "/", &big)).await;
    assert_eq!(status, 431);

    // A client that never finishes its headers is cut off rather than holding a connection.
    let mut slow = TcpStream::connect(node.proxy).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: e.example.com\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
        .await
        .expect("a stalled request head kept its connection")
        .ok();

    // Nor can one that connects and never sends a byte.
    let mut silent = TcpStream::connect(node.proxy).await.unwrap();
    let mut nothing = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut nothing))
        .await
        .expect("a silent connection was kept")
        .ok();

    // Everyone else is still served.
    let (status, _, _) = raw_request(node.proxy, &get("e.example.com", "/", "")).await;
    assert_eq!(status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_the_grace_period() {
    let config = Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        gossip_bind_addr: "127.0.0.1:0".into(),
        proxy: piko_server::proxy::Config {
            timeout: None,
            ..Default::default()
        },
        grace_period: Duration::from_millis(500),
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap();
    let (proxy, upstream) = (server.proxy_addr(), server.upstream_addr());
    let upstreams = server.upstreams();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let mut listener = piko::Upstream::new(format!("http://{upstream}"))
        .listen("stuck")
        .await
        .unwrap();
    let (got_request, request_arrived) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut request = vec![0u8; 1024];
        let _ = stream.read(&mut request).await.unwrap();
        got_request.send(()).unwrap();
        // Never answers, and keeps the stream open.
        let _ = listener.accept().await;
        drop(stream);
    });
    let mut changes = upstreams.subscribe();
    changes
        .wait_for(|_| upstreams.count("stuck") == 1)
        .await
        .unwrap();
    let request =
        tokio::spawn(async move { raw_request(proxy, &get("stuck.example.com", "/", "")).await });
    request_arrived.await.unwrap();
    let started = tokio::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("shutdown ignored its grace period")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "gave up before the grace period"
    );
    request.abort();
}

/// Reads one response with a `content-length` off a keep-alive connection.
async fn read_one_response(tcp: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(deadline, tcp.read(&mut chunk))
            .await
            .expect("response head never came")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("no content-length")
        .trim()
        .parse()
        .unwrap();
    while buffer.len() < head_end + length {
        let n = tokio::time::timeout(deadline, tcp.read(&mut chunk))
            .await
            .expect("response body never came")
            .unwrap();
        assert!(n > 0, "connection closed mid-body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    (head[9..12].parse().unwrap(), buffer[head_end..].to_vec())
}

/// Reads until the server closes the connection (or resets it), within a bound.
async fn await_close(tcp: &mut TcpStream, what: &str) {
    let mut sink = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the connection was never closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_last_until_the_idle_timeout() {
    let idle = Duration::from_millis(1500);
    let node = start_node_with(piko_server::proxy::Config {
        read_header_timeout: Some(Duration::from_millis(200)),
        idle_timeout: Some(idle),
        ..Default::default()
    })
    .await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    tokio::spawn(serve_listener(upstream.listen("e").await.unwrap(), "a"));
    wait_upstreams(&node, "e", 1).await;

    let keep_alive = b"GET /one HTTP/1.1\r\nhost: e.example.com\r\n\r\n";
    let mut tcp = TcpStream::connect(node.proxy).await.unwrap();
    tcp.write_all(keep_alive).await.unwrap();
    assert_eq!(read_one_response(&mut tcp).await.0, 200);
    // Idle for longer than the header timeout, which only starts with a request's first byte.
    tokio::time::sleep(Duration::from_millis(600)).await;
    tcp.write_all(keep_alive).await.unwrap();
    let (status, body) = read_one_response(&mut tcp).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).starts_with("a GET /one"));

    let idle_from = tokio::time::Instant::now();
    await_close(&mut tcp, "idle keep-alive connection").await;
    assert!(
        idle_from.elapsed() >= idle - Duration::from_millis(100),
        "closed after {:?}, before the idle timeout",
        idle_from.elapsed()
    );
}

/// An upstream that answers `/forever` with an endless chunked body, `/tunnel` with an upgrade
/// and then 16 MiB, `/endless-tunnel` with an upgrade and then bytes without end, and anything
/// else with 8 MiB; reports when a write to the proxy failed (its stream was reset).
async fn serve_large_bodies(
    mut listener: piko::Listener,
    write_failed: tokio::sync::mpsc::UnboundedSender<()>,
) {
    while let Ok(mut stream) = listener.accept().await {
        let write_failed = write_failed.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                request.extend_from_slice(&chunk[..n]);
            }
            let block = vec![b'x'; 64 * 1024];
            let written = if request.starts_with(b"GET /endless-tunnel") {
                async {
                    stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: bytes\r\n\r\n")
                        .await?;
                    loop {
                        stream.write_all(&block).await?;
                    }
                }
                .await
            } else if request.starts_with(b"GET /tunnel") {
                async {
                    stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: bytes\r\n\r\n")
                        .await?;
                    for _ in 0..256 {
                        stream.write_all(&block).await?;
                    }
                    stream.shutdown().await
                }
                .await
            } else if request.starts_with(b"GET /forever") {
                async {
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await?;
                    loop {
                        stream.write_all(b"10000\r\n").await?;
                        stream.write_all(&block).await?;
                        stream.write_all(b"\r\n").await?;
                    }
                }
                .await
            } else {
                async {
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8388608\r\n\r\n")
                        .await?;
                    for _ in 0..128 {
                        stream.write_all(&block).await?;
                    }
                    stream.shutdown().await
                }
                .await
            };
            if written.is_err() {
                let _ = write_failed.send(());
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_a_slow_one_is_not() {
    let write_timeout = Duration::from_millis(300);
    let node = start_node_with(piko_server::proxy::Config {
        write_timeout: Some(write_timeout),
        ..Default::default()
    })
    .await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    let (write_failed, mut write_failures) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(serve_large_bodies(
        upstream.listen("big").await.unwrap(),
        write_failed,
    ));
    wait_upstreams(&node, "big", 1).await;

    // Reads 8 MiB at 4 MiB/s: far slower than the proxy writes, so its writes block again and
    // again, but never for the write timeout, and the download lasts several times that timeout.
    let mut slow = TcpStream::connect(node.proxy).await.unwrap();
    slow.write_all(&get("big.example.com", "/sized", ""))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut received = 0usize;
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut chunk))
            .await
            .expect("slow download stalled")
            .expect("slow download was cut");
        if n == 0 {
            break;
        }
        received += n;
        tokio::time::sleep(Duration::from_micros(n as u64 / 4)).await;
    }
    assert!(received > 8 << 20, "got {received} bytes");
    assert!(started.elapsed() > 3 * write_timeout);

    // A client that stops reading an endless response is cut, and the upstream's stream with it.
    let mut stalled = TcpStream::connect(node.proxy).await.unwrap();
    stalled
        .write_all(&get("big.example.com", "/forever", ""))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), write_failures.recv())
        .await
        .expect("the upstream kept writing to a client that stopped reading")
        .unwrap();
    await_close(&mut stalled, "stalled client").await;

    // An upgraded tunnel is not: its client may pause for as long as it likes.
    let mut tunnel = TcpStream::connect(node.proxy).await.unwrap();
    tunnel
        .write_all(&get(
            "big.example.com",
            "/tunnel",
            "upgrade: bytes\r\nconnection: upgrade\r\n",
        ))
        .await
        .unwrap();
    tokio::time::sleep(5 * write_timeout).await;
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut received))
        .await
        .expect("tunnel never ended")
        .expect("tunnel was cut");
    let split = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(received.len() - split, 16 << 20);
    assert!(write_failures.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_must_keep_coming() {
    // The proxy timeout is shorter than the steady upload below: it only counts once the body
    // has been sent.
    let node = start_node_with(piko_server::proxy::Config {
        read_timeout: Some(Duration::from_millis(300)),
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    tokio::spawn(serve_listener(upstream.listen("e").await.unwrap(), "a"));
    wait_upstreams(&node, "e", 1).await;
    let head = |length: usize| {
        format!(
            "POST / HTTP/1.1\r\nhost: e.example.com\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
        )
    };

    // A steady upload that lasts several read timeouts goes through.
    let mut steady = TcpStream::connect(node.proxy).await.unwrap();
    steady.write_all(head(200).as_bytes()).await.unwrap();
    for _ in 0..20 {
        steady.write_all(b"0123456789").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), steady.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&"0123456789".repeat(20)), "{response}");

    // One that stops half way gets 408.
    let mut stalled = head(100).into_bytes();
    stalled.extend_from_slice(b"0123456789");
    let (status, head, body) = raw_request(node.proxy, &stalled).await;
    assert_eq!(status, 408, "{head}");
    assert_eq!(body, b"{\"error\":\"request timeout\"}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_end_with_a_reset_on_shutdown() {
    use futures_util::StreamExt;
    let mut node = start_node().await;
    let tcp = TcpStream::connect(node.upstream).await.unwrap();
    let url = format!("ws://{}/piko/v1/upstream/e", node.upstream);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    wait_upstreams(&node, "e", 1).await;
    node.stop.take().unwrap().send(()).unwrap();
    // GoAway arrives as a binary message; then the connection is reset (a v0.9.0 Go agent exits
    // after a clean close, but reconnects after a reset).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(message)) => assert!(message.is_binary(), "{message:?}"),
                Some(Err(err)) => return Some(err),
                None => return None,
            }
        }
    })
    .await
    .expect("the upstream connection was never closed");
    match ended {
        Some(tokio_tungstenite::tungstenite::Error::Io(err)) => {
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        }
        other => panic!("closed without a reset: {other:?}"),
    }
}

/// With a shutdown delay, a stopping node turns not-ready at once but keeps accepting and
/// serving new connections for the delay: a load balancer that has not noticed yet loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_keeps_serving_for_its_shutdown_delay() {
    let mut node = common::start_node_from(Config {
        shutdown_delay: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("delay")
        .await
        .unwrap();
    tokio::spawn(serve_listener(listener, "delay"));
    wait_upstreams(&node, "delay", 1).await;
    node.stop.take().unwrap().send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (head, _) = common::get(node.admin, "/ready", "admin").await;
        if head.starts_with("HTTP/1.1 503") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never not-ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not ready, and still serving new connections.
    let (head, body) = common::get(node.proxy, "/late", "delay.example.com").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.starts_with("delay GET /late"), "{body}");
    tokio::time::timeout(Duration::from_secs(20), &mut node.task)
        .await
        .expect("the node stops after its delay")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(node.proxy).await.is_err(),
        "still accepting"
    );
}

/// The node-to-node retry mark is the proxy's to give: one an upstream sets never reaches a
/// client (nor makes a relaying node replay the request elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_set_the_retry_mark() {
    let node = start_node().await;
    let listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("marker")
        .await
        .unwrap();
    tokio::spawn(common::serve_fixed_response(
        listener,
        b"HTTP/1.1 200 OK\r\nx-piko-no-upstream: 1\r\ncontent-length: 2\r\n\r\nok",
    ));
    wait_upstreams(&node, "marker", 1).await;
    let (head, body) = common::get(node.proxy, "/", "marker.example.com").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    assert!(
        !head.to_ascii_lowercase().contains("x-piko-no-upstream"),
        "{head}"
    );
}

/// Writes bytes without end on every stream (a TCP route's service); reports when a write failed.
async fn serve_endless_bytes(
    mut listener: piko::Listener,
    write_failed: tokio::sync::mpsc::UnboundedSender<()>,
) {
    while let Ok(mut stream) = listener.accept().await {
        let write_failed = write_failed.clone();
        tokio::spawn(async move {
            let block = vec![b'x'; 64 * 1024];
            while stream.write_all(&block).await.is_ok() {}
            let _ = write_failed.send(());
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_client_that_stops_reading_is_cut_after_the_tunnel_write_timeout() {
    let node = start_node_with(piko_server::proxy::Config {
        tunnel_write_timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    let (write_failed, mut write_failures) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(serve_large_bodies(
        upstream.listen("big").await.unwrap(),
        write_failed.clone(),
    ));
    tokio::spawn(serve_endless_bytes(
        upstream.listen("raw").await.unwrap(),
        write_failed,
    ));
    wait_upstreams(&node, "big", 1).await;
    wait_upstreams(&node, "raw", 1).await;
    let cut_within = Duration::from_secs(20);

    // An upgraded connection whose client reads the 101 and a little more, then nothing.
    let mut upgraded = TcpStream::connect(node.proxy).await.unwrap();
    upgraded
        .write_all(&get(
            "big.example.com",
            "/endless-tunnel",
            "upgrade: bytes\r\nconnection: upgrade\r\n",
        ))
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = upgraded.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 101"), "{:?}", &first[..n]);
    tokio::time::timeout(cut_within, write_failures.recv())
        .await
        .expect("the upstream kept writing to an upgraded client that stopped reading")
        .unwrap();
    await_close(&mut upgraded, "stalled upgraded client").await;

    // The TCP route: a WebSocket client that reads one message, then nothing.
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/_piko/v1/tcp/raw", node.proxy),
        TcpStream::connect(node.proxy).await.unwrap(),
    )
    .await
    .unwrap();
    use futures_util::StreamExt as _;
    assert!(ws.next().await.unwrap().unwrap().is_binary());
    tokio::time::timeout(cut_within, write_failures.recv())
        .await
        .expect("the upstream kept writing to a tunnel client that stopped reading")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_an_upgrade_s_101_is_bounded_by_the_proxy_timeout() {
    let timeout = Duration::from_millis(500);
    let node = start_node_with(piko_server::proxy::Config {
        timeout: Some(timeout),
        ..Default::default()
    })
    .await;
    let _accepts = common::silent_upstream(&node, "silent").await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = raw_request(
        node.proxy,
        &get(
            "silent.example.com",
            "/ws",
            "upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
    )
    .await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"{\"error\":\"upstream timeout\"}\n");
    assert!(started.elapsed() >= timeout);
}
