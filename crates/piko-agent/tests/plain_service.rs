//! HTTP/1.1 semantics through a server and an agent in front of a plain `http` service that
//! answers in every framing: lengths, chunks with trailers, until close, no body (HEAD, 204, 304),
//! informational responses, a silent service, a service that resets mid-body, one that closes
//! idle connections. Requests go over one keep-alive client connection, and the service's
//! connections are reused.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

mod common;

use piko_agent::{AgentMetrics, HttpConfig, Target};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The test service: counts the connections it accepted and those that ended (the agent closed
/// them, or the service did); answers by path.
async fn service() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (accepts, ends) = (accepted.clone(), ended.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepts.fetch_add(1, Ordering::SeqCst);
            let ends = ends.clone();
            tokio::spawn(async move {
                serve(tcp).await;
                ends.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, ended)
}

/// Reads until `buf` holds a whole head; returns it (lowercased) and removes it from `buf`.
async fn read_head(io: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n == name).then_some(v.trim())
    })
}

async fn fill(io: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>, at_least: usize) -> bool {
    while buf.len() < at_least {
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// A request body, decoded (content-length or chunked; trailers dropped).
async fn read_body(io: &mut TcpStream, buf: &mut Vec<u8>, head: &str) -> Option<Vec<u8>> {
    if field(head, "transfer-encoding") == Some("chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    break end;
                }
                if !fill(io, buf, buf.len() + 1).await {
                    return None;
                }
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16).ok()?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers end with an empty line.
                while !buf.starts_with(b"\r\n") {
                    let end = loop {
                        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                            break end;
                        }
                        if !fill(io, buf, buf.len() + 1).await {
                            return None;
                        }
                    };
                    buf.drain(..end + 2);
                    if !fill(io, buf, 2).await {
                        return None;
                    }
                }
                buf.drain(..2);
                return Some(body);
            }
            if !fill(io, buf, size + 2).await {
                return None;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    let length: usize = field(head, "content-length").map_or(0, |v| v.parse().unwrap());
    if !fill(io, buf, length).await {
        return None;
    }
    Some(buf.drain(..length).collect())
}

async fn serve(mut tcp: TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut tcp, &mut buf).await {
        let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
        let Some(body) = read_body(&mut tcp, &mut buf, &head).await else {
            return;
        };
        let reply: Vec<u8> = match path.as_str() {
            "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-kind: length\r\n\r\nhello".to_vec(),
            "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n3\r\nabc\r\n4;e=1\r\ndefg\r\n0\r\nx-sum: 7\r\n\r\n".to_vec(),
            "/until-close" => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
                    .await;
                return;
            }
            "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/not-modified" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\n\r\n".to_vec(),
            "/hints" => b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            "/hop" => b"HTTP/1.1 200 OK\r\nconnection: x-private\r\nx-private: 1\r\nkeep-alive: timeout=5\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "/silent" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            "/cut" => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst bytes")
                    .await;
                // RST rather than FIN: the body is cut.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                return;
            }
            "/stall" => {
                // A stream of events that goes quiet: the connection is held until the agent
                // lets go of it.
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nevent\n\r\n")
                    .await;
                let mut rest = [0u8; 1];
                let _ = tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut rest)).await;
                return;
            }
            "/close-after" => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Closes the idle connection it just offered for reuse.
                return;
            }
            _ => {
                // Echo: what the service saw.
                let seen = format!(
                    "method={} path={} host={} xff={} connection={} secret={} te={} body={}",
                    head.split_whitespace().next().unwrap_or("?"),
                    path,
                    field(&head, "host").unwrap_or("-"),
                    field(&head, "x-forwarded-for").unwrap_or("-"),
                    field(&head, "connection").unwrap_or("-"),
                    field(&head, "x-secret").unwrap_or("-"),
                    field(&head, "transfer-encoding").unwrap_or("-"),
                    String::from_utf8_lossy(&body),
                );
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{seen}", seen.len())
                    .into_bytes()
            }
        };
        let reply = if head.starts_with("head ") {
            // The head only: a body would be the start of the next response.
            let end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            &reply[..end + 4]
        } else {
            &reply[..]
        };
        if tcp.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// A server and an agent for `service`; the proxy's address and the agent's metrics.
async fn tunnel(service: SocketAddr) -> (SocketAddr, Arc<AgentMetrics>) {
    tunnel_with(service, Duration::from_secs(90)).await
}

async fn tunnel_with(
    service: SocketAddr,
    idle_conn_timeout: Duration,
) -> (SocketAddr, Arc<AgentMetrics>) {
    let metrics = Arc::new(AgentMetrics::new());
    let target = Target::parse(&service.to_string()).unwrap();
    let config = HttpConfig {
        timeout: Duration::from_millis(500),
        idle_conn_timeout,
        metrics: Some(metrics.clone()),
        ..HttpConfig::new(target)
    };
    (common::tunnel("svc", config).await, metrics)
}

/// One response read from a client connection: status, head (lowercased) and raw body bytes,
/// read by its framing (`None` for a body cut short).
async fn response(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (u16, String, Option<Vec<u8>>) {
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(tcp, buf))
        .await
        .expect("a response in time")
        .expect("a response head");
    let status = head[9..12].parse().unwrap();
    if head_request || status == 204 || status == 304 {
        return (status, head, Some(Vec::new()));
    }
    if field(&head, "transfer-encoding") == Some("chunked") {
        // Raw chunked bytes, up to the end of the trailers: the last chunk is the first
        // "0\r\n" line (the test's chunks never end in a zero), then fields up to an empty line.
        let end = loop {
            let last = (buf.starts_with(b"0\r\n")).then_some(0).or_else(|| {
                buf.windows(5)
                    .position(|w| w == b"\r\n0\r\n")
                    .map(|p| p + 2)
            });
            if let Some(last) = last
                && let Some(end) = buf[last + 1..].windows(4).position(|w| w == b"\r\n\r\n")
            {
                break last + 1 + end + 4;
            }
            if !fill(tcp, buf, buf.len() + 1).await {
                return (status, head, None);
            }
        };
        return (status, head, Some(buf.drain(..end).collect()));
    }
    match field(&head, "content-length") {
        Some(length) => {
            let length: usize = length.parse().unwrap();
            if !fill(tcp, buf, length).await {
                return (status, head, None);
            }
            (status, head, Some(buf.drain(..length).collect()))
        }
        None => {
            let mut rest = std::mem::take(buf);
            let cut = tcp.read_to_end(&mut rest).await.is_err();
            (status, head, (!cut).then_some(rest))
        }
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: svc.example.com\r\n{extra}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_is_relayed_over_kept_alive_connections() {
    let (service, accepted, _) = service().await;
    let (proxy, metrics) = tunnel(service).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();

    tcp.write_all(&get("/length", "")).await.unwrap();
    let (status, head, body) = response(&mut tcp, &mut buf, false).await;
    assert_eq!((status, body.unwrap()), (200, b"hello".to_vec()));
    assert_eq!(field(&head, "x-kind"), Some("length"));

    tcp.write_all(b"HEAD /length HTTP/1.1\r\nhost: svc.example.com\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = response(&mut tcp, &mut buf, true).await;
    assert_eq!((status, field(&head, "content-length")), (200, Some("5")));

    tcp.write_all(&get("/chunked", "te: trailers\r\n"))
        .await
        .unwrap();
    let (status, head, body) = response(&mut tcp, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(field(&head, "transfer-encoding"), Some("chunked"));
    let body = String::from_utf8(body.unwrap()).unwrap();
    assert!(body.contains("abc") && body.contains("defg"), "{body:?}");
    assert!(body.contains("x-sum: 7"), "trailers arrive: {body:?}");

    for (path, expected) in [("/no-content", 204), ("/not-modified", 304)] {
        tcp.write_all(&get(path, "")).await.unwrap();
        let (status, _, body) = response(&mut tcp, &mut buf, false).await;
        assert_eq!((status, body.unwrap()), (expected, Vec::new()), "{path}");
    }

    tcp.write_all(&get("/hints", "")).await.unwrap();
    let (status, _, body) = response(&mut tcp, &mut buf, false).await;
    assert_eq!((status, body.unwrap()), (200, b"ok".to_vec()));

    tcp.write_all(&get("/hop", "")).await.unwrap();
    let (status, head, _) = response(&mut tcp, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(
        field(&head, "x-private"),
        None,
        "named by connection: {head}"
    );
    assert_eq!(field(&head, "keep-alive"), None, "{head}");

    // The request as the service sees it: hop-by-hop headers (and those `Connection` names)
    // dropped, the server added to X-Forwarded-For, the client's Host kept.
    tcp.write_all(&get(
        "/echo?q=1",
        "connection: x-secret\r\nx-secret: 1\r\nkeep-alive: 5\r\nx-forwarded-for: 10.0.0.1\r\n",
    ))
    .await
    .unwrap();
    let (_, _, body) = response(&mut tcp, &mut buf, false).await;
    let seen = String::from_utf8(body.unwrap()).unwrap();
    assert_eq!(
        seen,
        "method=get path=/echo?q=1 host=svc.example.com xff=10.0.0.1, 127.0.0.1, 127.0.0.1 \
         connection=- secret=- te=- body="
    );

    // Everything so far went over one connection to the service.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Request bodies, by length and chunked; hop-by-hop request headers dropped.
    tcp.write_all(
        b"POST /echo HTTP/1.1\r\nhost: svc.example.com\r\nconnection: x-secret\r\nx-secret: 1\r\ncontent-length: 4\r\n\r\nping",
    )
    .await
    .unwrap();
    let (_, _, body) = response(&mut tcp, &mut buf, false).await;
    let seen = String::from_utf8(body.unwrap()).unwrap();
    assert!(
        seen.contains("method=post path=/echo host=svc.example.com"),
        "{seen}"
    );
    assert!(seen.contains("xff=127.0.0.1, 127.0.0.1"), "{seen}");
    assert!(
        seen.contains("connection=-") && seen.ends_with("body=ping"),
        "{seen}"
    );
    tcp.write_all(
        b"PUT /echo HTTP/1.1\r\nhost: svc.example.com\r\ntransfer-encoding: chunked\r\n\r\n2\r\npi\r\n3\r\nng!\r\n0\r\nx-t: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, _, body) = response(&mut tcp, &mut buf, false).await;
    let seen = String::from_utf8(body.unwrap()).unwrap();
    assert!(
        seen.contains("te=chunked") && seen.ends_with("body=ping!"),
        "{seen}"
    );

    // Requests with a body take hyper's client and its own pool: one more connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // A body that ends with the service's connection: the server frames it for its client.
    tcp.write_all(&get("/until-close", "")).await.unwrap();
    let (status, _, body) = response(&mut tcp, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), b"D\r\nuntil the end\r\n0\r\n\r\n");

    let text = metrics.render().unwrap();
    for line in [
        r#"piko_agent_requests_total{status="200",method="GET",endpoint="svc"} 6"#,
        r#"piko_agent_requests_total{status="200",method="HEAD",endpoint="svc"} 1"#,
        r#"piko_agent_requests_total{status="204",method="GET",endpoint="svc"} 1"#,
        r#"piko_agent_requests_total{status="304",method="GET",endpoint="svc"} 1"#,
        r#"piko_agent_requests_total{status="200",method="POST",endpoint="svc"} 1"#,
        r#"piko_agent_requests_total{status="200",method="PUT",endpoint="svc"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_answered_or_cut_as_the_service_failed() {
    let (service, accepted, _) = service().await;
    let (proxy, _) = tunnel(service).await;

    // A silent service: 504 after the agent's timeout, with Piko's error.
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(&get("/silent", "")).await.unwrap();
    let (status, _, body) = response(&mut tcp, &mut buf, false).await;
    assert_eq!(status, 504);
    assert_eq!(body.unwrap(), b"{\"error\":\"upstream timeout\"}\n");

    // A body cut by a reset: the client gets what was sent, then a cut connection.
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(&get("/cut", "")).await.unwrap();
    let head = read_head(&mut tcp, &mut buf).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut rest = buf.clone();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("the connection ends");
    assert_eq!(
        rest, b"first bytes",
        "the bytes before the reset, and no more"
    );

    // A service that closes connections after answering: each request still succeeds (a
    // closed idle connection is never used, or the request is retried on a new one).
    let before = accepted.load(Ordering::SeqCst);
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..5 {
        tcp.write_all(&get("/close-after", "")).await.unwrap();
        let (status, _, body) = response(&mut tcp, &mut buf, false).await;
        assert_eq!((status, body.unwrap()), (200, b"ok".to_vec()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst) - before, 5);

    // Nothing listens: 502.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let (proxy, _) = tunnel(nowhere).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(&get("/length", "")).await.unwrap();
    let (status, _, body) = response(&mut tcp, &mut buf, false).await;
    assert_eq!(status, 502);
    assert_eq!(body.unwrap(), b"{\"error\":\"upstream unreachable\"}\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_service_connections_are_closed_after_the_idle_timeout() {
    let (service, accepted, ended) = service().await;
    let (proxy, _) = tunnel_with(service, Duration::from_millis(200)).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(&get("/length", "")).await.unwrap();
    let (status, _, _) = response(&mut tcp, &mut buf, false).await;
    assert_eq!(status, 200);
    // Kept for reuse: the next request at once takes the same connection.
    tcp.write_all(&get("/length", "")).await.unwrap();
    let (status, _, _) = response(&mut tcp, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(ended.load(Ordering::SeqCst), 0);
    // Then closed by the agent once idle for longer than its timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ended.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request dials a new one.
    tcp.write_all(&get("/length", "")).await.unwrap();
    let (status, _, body) = response(&mut tcp, &mut buf, false).await;
    assert_eq!((status, body.unwrap()), (200, b"hello".to_vec()));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_releases_the_service_connection() {
    let (service, accepted, ended) = service().await;
    let (proxy, _) = tunnel(service).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = Vec::new();
    tcp.write_all(&get("/stall", "")).await.unwrap();
    let head = read_head(&mut tcp, &mut buf).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The client leaves while the service is quiet: the server resets the stream, and the agent
    // closes its connection to the service rather than wait for the service's next write.
    drop(tcp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ended.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service's connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
