//! A service that writes its reply and then resets its connection, behind real processes: the
//! reply arrives, and then the failure shows (a reset TCP tunnel, a cut HTTP body), never a clean
//! end that looks like a complete reply.

mod common;

use std::net::SocketAddr;

use common::{PATIENCE, agent_http, start_agent_tcp, start_forward, start_server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A service that reads a request (up to its blank line, or any bytes), writes `reply` and resets
/// the connection (a zero-linger close).
async fn reply_then_reset(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = tcp.read(&mut request).await;
                let _ = tcp.write_all(reply).await;
                let _ = tcp.set_zero_linger();
            });
        }
    });
    addr
}

/// Everything read from `tcp` until its end, and how it ended.
async fn read_until_end(tcp: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(err) => return Err(err),
            }
        }
    })
    .await
    .expect("the connection never ended");
    (received, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_tunnel_s_client_gets_the_reply_then_the_reset() {
    let service = reply_then_reset(b"reply").await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "db", &service.to_string()).await;
    let (_forward, local) = start_forward(&proxy, "db").await;

    for _ in 0..3 {
        let mut client = TcpStream::connect(local).await.unwrap();
        client.write_all(b"request").await.unwrap();
        let (received, ended) = read_until_end(&mut client).await;
        assert_eq!(received, b"reply");
        let err = ended.expect_err("a reset tunnel ended as if its reply were complete");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_gets_the_bytes_before_the_reset_then_a_cut_body() {
    // The head promises 100 bytes; the service sends 10 and resets.
    let service =
        reply_then_reset(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = agent_http("web", &service.to_string(), &upstream, &[]);
    server.wait_log("upstream connected").await;

    for _ in 0..3 {
        let mut client = TcpStream::connect(&proxy).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: web.example.com\r\n\r\n")
            .await
            .unwrap();
        let (received, ended) = read_until_end(&mut client).await;
        let text = String::from_utf8_lossy(&received);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head: {text:?} {ended:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-length: 100"), "{head}");
        // What the service sent arrives; the rest never does, and the connection ends.
        assert_eq!(body, "0123456789");
    }
}
