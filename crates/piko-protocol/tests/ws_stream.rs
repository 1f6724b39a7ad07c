//! The WebSocket byte stream against hand-written WebSocket frames on a real loopback socket.

use piko_protocol::{WsByteStream, websocket_config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{WebSocketStream, accept_async_with_config, tungstenite::protocol::Role};

/// A client frame (masked with the all-zero key, which leaves the payload as is).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A server-side byte stream and the raw client socket talking to it.
async fn server_and_raw_client() -> (WsByteStream<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://{addr}/"),
            TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .unwrap();
        ws.into_inner()
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let ws = accept_async_with_config(tcp, Some(websocket_config(256 * 1024)))
        .await
        .unwrap();
    (WsByteStream::new(ws), client.await.unwrap())
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

    // The ping was answered: an unmasked server pong frame with the same payload.
    server.write_all(b"x").await.unwrap();
    server.flush().await.unwrap();
    let mut pong = [0u8; 15];
    raw.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong[..2], &[0x8a, 13]);
    assert_eq!(&pong[2..], b"are you there");
}

#[tokio::test]
async fn text_message_is_an_error() {
    let (mut server, mut raw) = server_and_raw_client().await;
    raw.write_all(&client_frame(true, 1, b"hello"))
        .await
        .unwrap();
    let err = server.read(&mut [0u8; 16]).await.unwrap_err();
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

    let (mut server, mut raw) = server_and_raw_client().await;
    raw.write_all(&client_frame(true, 8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(server.read(&mut [0u8; 16]).await.unwrap(), 0);
}

#[tokio::test]
async fn each_write_is_one_binary_message() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept_async_with_config(tcp, None).await.unwrap()
    });
    let (client, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/"),
        TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    let server = accept.await.unwrap();
    let mut client = WsByteStream::new(client);
    client.write_all(b"one").await.unwrap();
    client.write_all(b"two").await.unwrap();
    client.flush().await.unwrap();
    drop(client);
    // Reading the raw messages back needs a message-level reader.
    let mut server: WebSocketStream<TcpStream> =
        WebSocketStream::from_raw_socket(server.into_inner(), Role::Server, None).await;
    use futures_util::StreamExt;
    let first = server.next().await.unwrap().unwrap();
    let second = server.next().await.unwrap().unwrap();
    assert_eq!(first.into_data().as_ref(), b"one");
    assert_eq!(second.into_data().as_ref(), b"two");
}

/// Two multiplexer sessions over a real WebSocket, each side using the byte stream as an
/// in-place transport: many streams and a few MiB each way arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_sessions_over_the_websocket_transport() {
    use piko_mux::{Config, Session};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = websocket_config(256 * 1024);
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept_async_with_config(tcp, Some(config)).await.unwrap()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/"), tcp, Some(config))
            .await
            .unwrap();
    let client = Session::client_transport(WsByteStream::new(client), Config::default());
    let server =
        Session::server_transport(WsByteStream::new(accept.await.unwrap()), Config::default());
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
