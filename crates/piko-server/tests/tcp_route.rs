//! The proxy port's TCP route: SDK dialers through a server node to SDK listeners.

mod common;

use std::time::Duration;

use common::{start_node, wait_upstreams};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Echoes every connection of `listener` back to its sender until the sender's end.
async fn echo(mut listener: piko::Listener) {
    while let Ok(stream) = listener.accept().await {
        tokio::spawn(async move {
            let (mut reader, mut writer) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_exactly_both_ways() {
    let node = start_node().await;
    let upstream = piko::Upstream::new(format!("http://{}", node.upstream));
    tokio::spawn(echo(upstream.listen("echo").await.unwrap()));
    wait_upstreams(&node, "echo", 1).await;

    let tunnel = piko::Dialer::new(format!("http://{}", node.proxy))
        .dial("echo")
        .await
        .unwrap();
    let payload: Vec<u8> = (0..64u32 << 20).map(|i| (i % 253) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(tunnel);
    let sent = payload.clone();
    let send = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        // Half-close: the echo sees the end and closes, after echoing everything.
        writer.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(payload.len());
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut received))
        .await
        .expect("echo never ended")
        .unwrap();
    send.await.unwrap();
    assert_eq!(received.len(), payload.len());
    assert!(received == payload, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_request_still_gets_its_reply() {
    let node = start_node().await;
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("count")
        .await
        .unwrap();
    // Reads everything the client sends, then answers with how much it got.
    tokio::spawn(async move {
        while let Ok(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await.unwrap();
                let reply = format!("got {} bytes", request.len());
                stream.write_all(reply.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    wait_upstreams(&node, "count", 1).await;
    let mut tunnel = piko::Dialer::new(format!("http://{}", node.proxy))
        .dial("count")
        .await
        .unwrap();
    tunnel.write_all(&[7u8; 100_000]).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_string(&mut reply))
        .await
        .expect("no reply after half-close")
        .unwrap();
    assert_eq!(reply, "got 100000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_before_the_upgrade() {
    let node = start_node().await;
    let dialer = piko::Dialer::new(format!("http://{}", node.proxy));
    let err = dialer.dial("nobody").await.unwrap_err();
    assert_eq!(err.to_string(), "502: no available upstreams");

    // Not a WebSocket handshake: gorilla's plain-text 400, and the upstream never sees a stream.
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("e")
        .await
        .unwrap();
    wait_upstreams(&node, "e", 1).await;
    let mut tcp = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    tcp.write_all(b"GET /_piko/v1/tcp/e HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.ends_with("Bad Request"), "{response}");
    // The next stream the upstream sees is a real tunnel's: the refused one never reached it.
    let dialer_next = tokio::spawn(async move {
        let mut tunnel = dialer.dial("e").await.unwrap();
        tunnel.write_all(b"real").await.unwrap();
        tunnel.shutdown().await.unwrap();
        tunnel
    });
    let mut stream = listener.accept().await.unwrap();
    let mut first = Vec::new();
    stream.read_to_end(&mut first).await.unwrap();
    assert_eq!(first, b"real");
    drop(dialer_next.await.unwrap());

    // A trailing slash is redirected, as Piko's router does.
    let mut tcp = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    tcp.write_all(b"GET /_piko/v1/tcp/e/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 301"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("location: /_piko/v1/tcp/e\r\n"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_style_client_gets_piko_s_first_end_closes_both() {
    let node = start_node().await;
    let mut listener = piko::Upstream::new(format!("http://{}", node.upstream))
        .listen("e")
        .await
        .unwrap();
    wait_upstreams(&node, "e", 1).await;
    // A plain WebSocket client, without the half-close header, as Piko's Go Dialer connects.
    let url = format!("ws://{}/_piko/v1/tcp/e", node.proxy);
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(!response.headers().contains_key("x-piko-half-close"));
    let mut stream = listener.accept().await.unwrap();
    // Message boundaries mean nothing; empty messages are skipped.
    for part in [&b"hel"[..], b"", b"lo"] {
        ws.send(Message::binary(part.to_vec())).await.unwrap();
    }
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");
    stream.write_all(b"bye").await.unwrap();
    // The upstream ending its side ends the client's connection, after its last bytes.
    stream.shutdown().await.unwrap();
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = ws.next().await {
            received.extend_from_slice(&message.into_data());
        }
    })
    .await;
    assert!(ended.is_ok(), "the client's connection was kept open");
    assert_eq!(received, b"bye");
}
