//! The WebSocket byte stream on real loopback sockets: against hand-written frames (streaming,
//! fragments, control frames, every protocol error), against tungstenite in both roles, and
//! carrying multiplexer sessions. (Gorilla peers, in both roles, are in the Go interop tests.)

use futures_util::{SinkExt, StreamExt};
use piko_protocol::{HandshakeError, WsByteStream, client_handshake};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role as TungsteniteRole},
};

/// A frame, its payload masked with `key` when there is one (as a client sends it).
fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => frame.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match key {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

/// A client's frame, masked with a key that changes every byte.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some([0x5a, 0xc3, 0x01, 0xff]))
}

/// A connected pair of loopback sockets.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// A server-side byte stream and the raw client socket talking to it.
async fn server_and_raw_client() -> (WsByteStream<TcpStream>, TcpStream) {
    let (raw, server) = socket_pair().await;
    (WsByteStream::server(server, &[]), raw)
}

/// Reads one frame the stream wrote (unmasked, short): opcode and payload.
async fn read_server_frame(raw: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "a server's frame is unmasked");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    raw.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

#[tokio::test]
async fn reads_concatenate_messages_and_fragments() {
    let (mut server, mut raw) = server_and_raw_client().await;
    let payload: Vec<u8> = (0..20_000).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::new();
    // A 12-byte message, then one message in three fragments (as gorilla sends large writes),
    // with a ping in between fragments, as RFC 6455 allows.
    wire.extend(client_frame(true, 2, &payload[..12]));
    wire.extend(client_frame(false, 2, &payload[12..4096]));
    wire.extend(client_frame(true, 9, b"are you there"));
    wire.extend(client_frame(false, 0, &payload[4096..9000]));
    wire.extend(client_frame(true, 0, &payload[9000..]));
    raw.write_all(&wire).await.unwrap();
    let mut got = vec![0u8; payload.len()];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, payload);

    // The ping was answered, before anything else: a server pong with the same payload.
    server.write_all(b"x").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(
        read_server_frame(&mut raw).await,
        (0xa, b"are you there".to_vec())
    );
    assert_eq!(read_server_frame(&mut raw).await, (0x2, b"x".to_vec()));
}

/// One message of 64 MiB, written as it would stream from a Go `Dialer`'s single `Write`: read
/// as it arrives, all of it, through a buffer far smaller than the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_any_size_streams_through() {
    let (mut server, raw) = server_and_raw_client().await;
    const LEN: usize = 64 << 20;
    let key = [7, 1, 9, 3];
    let writer = tokio::spawn(async move {
        let mut raw = raw;
        let mut header = frame(true, 2, &[], Some(key));
        header[1] = 0x80 | 127;
        header.splice(2..2, (LEN as u64).to_be_bytes());
        raw.write_all(&header).await.unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for start in (0..LEN).step_by(chunk.len()) {
            for (i, byte) in chunk.iter_mut().enumerate() {
                *byte = (((start + i) % 251) as u8) ^ key[(start + i) % 4];
            }
            raw.write_all(&chunk).await.unwrap();
        }
        raw
    });
    let mut buf = vec![0u8; 100_003];
    let mut total = 0;
    while total < LEN {
        let n = server.read(&mut buf).await.unwrap();
        assert!(n > 0, "ended after {total} bytes");
        for (i, byte) in buf[..n].iter().enumerate() {
            assert_eq!(*byte, ((total + i) % 251) as u8, "byte {}", total + i);
        }
        total += n;
    }
    drop(writer.await.unwrap());
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test]
async fn text_message_is_an_error_closed_with_1003() {
    let (mut server, mut raw) = server_and_raw_client().await;
    raw.write_all(&client_frame(true, 1, b"hello"))
        .await
        .unwrap();
    let err = server.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(
        read_server_frame(&mut raw).await,
        (0x8, 1003u16.to_be_bytes().to_vec())
    );
}

/// Every frame RFC 6455 forbids is a read error, answered with close status 1002; reading again
/// reports the error again.
#[tokio::test]
async fn bad_frames_close_with_1002() {
    let masked = Some([1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked from a client", frame(true, 2, b"x", None)),
        ("reserved bits", {
            let mut f = client_frame(true, 2, b"x");
            f[0] |= 0x40;
            f
        }),
        ("unknown opcode", client_frame(true, 3, b"x")),
        ("control over 125 bytes", client_frame(true, 9, &[0; 126])),
        ("fragmented control", client_frame(false, 9, b"x")),
        ("continuation without start", client_frame(true, 0, b"x")),
        ("new message inside a message", {
            let mut f = client_frame(false, 2, b"x");
            f.extend(client_frame(true, 2, b"y"));
            f
        }),
        ("one-byte close", frame(true, 8, &[3], masked)),
    ];
    for (what, wire) in cases {
        let (mut server, mut raw) = server_and_raw_client().await;
        raw.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        let err = loop {
            match server.read(&mut buf).await {
                Ok(0) => panic!("{what}: read ended cleanly"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}");
        assert!(got.len() <= 1, "{what}: {got:?}");
        assert!(server.read(&mut buf).await.is_err(), "{what}: error again");
        assert_eq!(
            read_server_frame(&mut raw).await,
            (0x8, 1002u16.to_be_bytes().to_vec()),
            "{what}"
        );
    }

    // A client refuses a masked frame from its server.
    let (ours, mut raw) = socket_pair().await;
    let mut client = WsByteStream::client(ours, &[]);
    raw.write_all(&frame(true, 2, b"x", masked)).await.unwrap();
    let err = client.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn abrupt_close_and_close_frame_are_end_of_stream() {
    let (mut server, mut raw) = server_and_raw_client().await;
    raw.write_all(&client_frame(true, 2, b"last"))
        .await
        .unwrap();
    drop(raw);
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last");

    // A close frame is the end, and is answered with the same status.
    let (mut server, mut raw) = server_and_raw_client().await;
    raw.write_all(&client_frame(true, 8, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
    assert_eq!(
        read_server_frame(&mut raw).await,
        (0x8, 1001u16.to_be_bytes().to_vec())
    );
}

/// With half-close an empty message ends one direction only.
#[tokio::test]
async fn half_close_ends_one_direction() {
    let (mut server, mut raw) = server_and_raw_client().await;
    server = server.half_closing();
    raw.write_all(&client_frame(true, 2, b"request"))
        .await
        .unwrap();
    raw.write_all(&client_frame(true, 2, b"")).await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"request");
    server.write_all(b"reply").await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(read_server_frame(&mut raw).await, (0x2, b"reply".to_vec()));
    assert_eq!(read_server_frame(&mut raw).await, (0x2, Vec::new()));
}

/// Our client against tungstenite's server, and our server against tungstenite's client: each
/// write arrives as one binary message (masked by our client, unmasked by our server), messages
/// and fragments read as one stream, and pings are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_peers_in_both_roles() {
    for our_role in ["client", "server"] {
        let (ours, theirs) = socket_pair().await;
        let (mut ours, their_role) = if our_role == "client" {
            (WsByteStream::client(ours, &[]), TungsteniteRole::Server)
        } else {
            (WsByteStream::server(ours, &[]), TungsteniteRole::Client)
        };
        let mut theirs = WebSocketStream::from_raw_socket(theirs, their_role, None).await;

        let big: Vec<u8> = (0..300_000).map(|i| (i % 251) as u8).collect();
        ours.write_all(b"one").await.unwrap();
        ours.write_all(&big).await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(
            theirs.next().await.unwrap().unwrap(),
            Message::binary(&b"one"[..])
        );
        // Over 256 KiB: more than one message, the bytes in order.
        let mut got = Vec::new();
        while got.len() < big.len() {
            match theirs.next().await.unwrap().unwrap() {
                Message::Binary(data) => got.extend_from_slice(&data),
                other => panic!("{our_role}: {other:?}"),
            }
        }
        assert!(got == big, "{our_role}: bytes differ");

        theirs.send(Message::Ping("hi".into())).await.unwrap();
        theirs.send(Message::binary(big.clone())).await.unwrap();
        let mut back = vec![0u8; big.len()];
        ours.read_exact(&mut back).await.unwrap();
        assert!(back == big, "{our_role}: bytes back differ");
        // The pong went out when it was read; tungstenite hands it to its reader.
        ours.write_all(b"after").await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(
            theirs.next().await.unwrap().unwrap(),
            Message::Pong("hi".into())
        );
        assert_eq!(
            theirs.next().await.unwrap().unwrap(),
            Message::binary(&b"after"[..])
        );

        // Our close: tungstenite sees a close frame; its reply ends our reading.
        ours.shutdown().await.unwrap();
        assert!(matches!(
            theirs.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
        theirs.flush().await.unwrap();
        drop(theirs);
        assert_eq!(ours.read(&mut [0u8; 8]).await.unwrap(), 0, "{our_role}");
    }
}

/// The client handshake against tungstenite's server handshake; a frame the server sends right
/// behind its 101 is not lost.
#[tokio::test]
async fn the_client_handshake_keeps_what_follows_the_101() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ws.send(Message::binary(&b"right away"[..])).await.unwrap();
        ws
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let uri = format!("ws://{addr}/piko/v1/upstream/e").parse().unwrap();
    let (mut client, _) = client_handshake(tcp, &uri, &Default::default())
        .await
        .unwrap();
    let _server = server.await.unwrap();
    let mut got = [0u8; 10];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"right away");
}

/// A refusal's status and body come back for the caller to report.
#[tokio::test]
async fn a_refused_handshake_returns_the_status_and_body() {
    let (client, mut raw) = socket_pair().await;
    let server = tokio::spawn(async move {
        let mut request = vec![0u8; 4096];
        let _ = raw.read(&mut request).await.unwrap();
        let body = br#"{"error": "unauthorized"}"#;
        let head = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        raw.write_all(body).await.unwrap();
        raw
    });
    let uri = "ws://piko.example.com/piko/v1/upstream/e".parse().unwrap();
    match client_handshake(client, &uri, &Default::default()).await {
        Err(HandshakeError::Refused { status, body, .. }) => {
            assert_eq!(status, 401);
            assert_eq!(body, br#"{"error": "unauthorized"}"#);
        }
        other => panic!("{other:?}"),
    }
    drop(server.await.unwrap());
}

/// Two multiplexer sessions over a real WebSocket, each side using the byte stream as an
/// in-place transport: many streams and a few MiB each way arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_sessions_over_the_websocket_transport() {
    use piko_mux::{Config, Session};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // Our client sends nothing before the 101, so tungstenite keeps nothing unread.
        let tcp = tokio_tungstenite::accept_async(tcp)
            .await
            .unwrap()
            .into_inner();
        WsByteStream::server(tcp, &[])
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let uri = format!("ws://{addr}/").parse().unwrap();
    let (client, _) = client_handshake(tcp, &uri, &Default::default())
        .await
        .unwrap();
    let client = Session::client_transport(client, Config::default());
    let server = Session::server_transport(accept.await.unwrap(), Config::default());
    tokio::spawn(async move {
        while let Ok(stream) = client.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(stream);
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let stream = server.open().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let payload: Vec<u8> = (0..1000 + i * 40_000).map(|b| (b % 251) as u8).collect();
            let (mut rd, mut wr) = tokio::io::split(stream);
            let expected = payload.clone();
            let writer = tokio::spawn(async move {
                wr.write_all(&payload).await.unwrap();
                wr.shutdown().await.unwrap();
                wr
            });
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            assert!(got == expected, "stream {i}: echo differs");
            drop(writer.await.unwrap());
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}
