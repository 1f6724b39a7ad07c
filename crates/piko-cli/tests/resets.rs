//! A service that writes its reply and then resets its connection, behind real processes: the
//! reply arrives, and then the failure shows (a reset TCP tunnel, a cut HTTP body), never a clean
//! end that looks like a complete reply. The same holds the other way (a client that resets
//! after its upload), on slow links (a reset does not throw away what is still queued), and for
//! what a side sent just before its reset while bytes were still going to it.

mod common;

use std::{io, net::SocketAddr, time::Duration};

use common::{PATIENCE, agent_http, start_agent_tcp, start_forward, start_server};
use piko_protocol::reset_after_delivery;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
};

/// Large enough that, read slowly, most of it waits in queues along the way when the reset
/// comes.
const LONG: usize = 2 << 20;

/// A receive buffer this small keeps the sender's queue full while its reader is slow.
const SMALL_RECEIVE_BUFFER: u32 = 8 * 1024;

/// `LONG` bytes of a pattern that shows a gap or a reordering.
fn long_payload() -> Vec<u8> {
    (0..LONG).map(|i| (i % 251) as u8).collect()
}

/// A service that reads a request (up to its blank line, or any bytes), writes `reply` and resets
/// the connection (a zero-linger close).
async fn reply_then_reset(reply: &'static [u8]) -> SocketAddr {
    reply_then_reset_with_buffer(reply, None).await
}

/// [`reply_then_reset`], its connections' receive buffer set to `receive_buffer`.
async fn reply_then_reset_with_buffer(
    reply: &'static [u8],
    receive_buffer: Option<u32>,
) -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
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

/// Everything read from `tcp` until its end, and how it ended; a slow reader pauses after each
/// read.
async fn read_slowly_until_end(tcp: &mut TcpStream, slow: bool) -> (Vec<u8>, io::Result<()>) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(err) => return Err(err),
            }
            if slow {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .await
    .expect("the connection never ended");
    (received, ended)
}

/// A connection to `addr` with a small receive buffer.
async fn connect_with_small_buffer(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_RECEIVE_BUFFER).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Everything read from `tcp` until its end, and how it ended.
async fn read_until_end(tcp: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    read_slowly_until_end(tcp, false).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_a_long_reply_whole_then_the_reset() {
    // The service writes the long reply and resets once it has all left its own socket.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 64];
                let _ = tcp.read(&mut request).await;
                let _ = tcp.write_all(&long_payload()).await;
                reset_after_delivery(&tcp).await;
            });
        }
    });
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "long", &service.to_string()).await;
    let (_forward, local) = start_forward(&proxy, "long").await;

    let mut client = connect_with_small_buffer(local).await;
    client.write_all(b"request").await.unwrap();
    let (received, ended) = read_slowly_until_end(&mut client, true).await;
    // Every byte the service wrote, in order: none was dropped from a queue by the reset.
    assert_eq!(received.len(), LONG, "{ended:?}");
    assert!(received == long_payload(), "the reply arrived altered");
    assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_gets_a_whole_upload_then_the_reset() {
    // The service reads slowly and reports what it got and how its connection ended.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SMALL_RECEIVE_BUFFER).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let service = listener.local_addr().unwrap();
    let (report, mut reports) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let _ = report
                    .send(read_slowly_until_end(&mut tcp, true).await)
                    .await;
            });
        }
    });
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "upload", &service.to_string()).await;
    let (_forward, local) = start_forward(&proxy, "upload").await;

    let mut client = TcpStream::connect(local).await.unwrap();
    client.write_all(&long_payload()).await.unwrap();
    // The client resets once its own socket has delivered the upload.
    reset_after_delivery(&client).await;
    drop(client);
    let (received, ended) = tokio::time::timeout(PATIENCE, reports.recv())
        .await
        .expect("the service never saw its connection end")
        .unwrap();
    assert_eq!(received.len(), LONG, "{ended:?}");
    assert!(received == long_payload(), "the upload arrived altered");
    assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_uploading_gets_the_service_s_answer_then_the_reset() {
    // The service refuses the upload at its first byte: it answers ERR and resets while the
    // upload is still coming (its small receive buffer is full: the agent is in a write to it).
    let service = reply_then_reset_with_buffer(b"ERR", Some(SMALL_RECEIVE_BUFFER)).await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = start_agent_tcp(&mut server, &upstream, "refuse", &service.to_string()).await;
    let (_forward, local) = start_forward(&proxy, "refuse").await;

    for _ in 0..5 {
        // The upload fits in the client's send buffer: written at once, the socket is then only
        // read, so the reset shows there (a writer could take the error first).
        const UPLOAD: usize = 256 * 1024;
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(2 * UPLOAD as u32).unwrap();
        let mut client = socket.connect(local).await.unwrap();
        client.write_all(&vec![0u8; UPLOAD]).await.unwrap();
        let (received, ended) = read_until_end(&mut client).await;
        assert_eq!(received, b"ERR", "{ended:?}");
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_an_upgraded_connection_resets_the_service_s() {
    // A service that accepts any upgrade, then reports what came through and how it ended.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    let (report, mut reports) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tcp.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: raw\r\n\r\n")
                    .await;
                let _ = report
                    .send(read_slowly_until_end(&mut tcp, false).await)
                    .await;
            });
        }
    });
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = agent_http("raw", &service.to_string(), &upstream, &[]);
    server.wait_log("upstream connected").await;

    let mut client = TcpStream::connect(&proxy).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: raw.example.com\r\nconnection: upgrade\r\nupgrade: raw\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    client.write_all(b"partial").await.unwrap();
    reset_after_delivery(&client).await;
    drop(client);
    let (received, ended) = tokio::time::timeout(PATIENCE, reports.recv())
        .await
        .expect("the service never saw its connection end")
        .unwrap();
    assert_eq!(received, b"partial");
    // Not a clean end: the service must not take a broken exchange for a finished one.
    assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
}
