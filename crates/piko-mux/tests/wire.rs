//! Frame-level behaviour: a hand-driven raw peer on the other end of an in-memory pipe checks
//! exactly what the session puts on the wire and how it reacts to what it receives.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use piko_mux::{
    Config, Error, ProtocolError, Session, SessionEnd,
    frame::{Flags, FrameDecoder, FrameType, Header, Part},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A whole frame, reassembled from the decoder's parts.
#[derive(Debug)]
struct Frame {
    header: Header,
    payload: Vec<u8>,
}

/// The far end of a session, speaking raw frames.
struct RawPeer {
    io: DuplexStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl RawPeer {
    async fn send(&mut self, header: Header, payload: &[u8]) {
        self.io.write_all(&header.encode()).await.unwrap();
        self.io.write_all(payload).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        let mut frame: Option<Frame> = None;
        loop {
            let mut used = 0;
            let mut done = None;
            loop {
                let (part, n) = self.decoder.decode(&self.buf[used..]).unwrap();
                used += n;
                let Some(part) = part else {
                    if n == 0 {
                        break;
                    }
                    continue;
                };
                match part {
                    Part::Control(header) => {
                        done = Some(Frame {
                            header,
                            payload: Vec::new(),
                        });
                        break;
                    }
                    Part::DataStart(header) => {
                        frame = Some(Frame {
                            header,
                            payload: Vec::new(),
                        })
                    }
                    Part::Payload(data) => frame.as_mut().unwrap().payload.extend_from_slice(data),
                    Part::DataEnd(_) => {
                        done = frame.take();
                        break;
                    }
                }
            }
            self.buf.advance(used);
            if done.is_some() {
                return done;
            }
            let n = tokio::time::timeout(Duration::from_secs(600), self.io.read_buf(&mut self.buf))
                .await
                .expect("peer read timed out")
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    /// The next frame that is not a keep-alive ping.
    async fn recv_non_ping(&mut self) -> Option<Frame> {
        loop {
            let frame = self.recv().await?;
            if frame.header.ty != FrameType::Ping {
                return Some(frame);
            }
        }
    }

    /// Collects data payload for `id` until `len` bytes arrived.
    async fn recv_data(&mut self, id: u32, len: usize) -> Vec<u8> {
        let mut data = Vec::new();
        while data.len() < len {
            let frame = self
                .recv_non_ping()
                .await
                .expect("eof while waiting for data");
            if frame.header.ty == FrameType::Data && frame.header.stream_id == id {
                data.extend_from_slice(&frame.payload);
            }
        }
        data
    }
}

fn no_keep_alive() -> Config {
    Config {
        keep_alive_interval: None,
        ..Config::default()
    }
}

fn pair(config: Config, client: bool) -> (Session, RawPeer) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let session = if client {
        Session::client(ours, config)
    } else {
        Session::server(ours, config)
    };
    (
        session,
        RawPeer {
            io: theirs,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(),
        },
    )
}

#[tokio::test]
async fn client_ids_are_odd_and_server_ids_even() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    for expected in [1, 3, 5] {
        let stream = client.open().await.unwrap();
        assert_eq!(stream.id(), expected);
        let syn = peer.recv().await.unwrap();
        assert_eq!(syn.header, Header::window_update(expected, Flags::SYN, 0));
        std::mem::forget(stream);
    }
    let (server, mut peer) = pair(no_keep_alive(), false);
    for expected in [2, 4] {
        let stream = server.open().await.unwrap();
        assert_eq!(stream.id(), expected);
        assert_eq!(
            peer.recv().await.unwrap().header.encode()[..4],
            [0, 1, 0, 1]
        );
        std::mem::forget(stream);
    }
}

#[tokio::test]
async fn ack_is_sent_when_the_application_accepts() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.send(Header::data(2, Flags::NONE, 5), b"hello").await;
    // Nothing may be sent before accept: a ping round trip proves the session processed both.
    peer.send(Header::ping(Flags::SYN, 77), &[]).await;
    assert_eq!(
        peer.recv().await.unwrap().header,
        Header::ping(Flags::ACK, 77)
    );
    let mut stream = client.accept().await.unwrap();
    assert_eq!(
        peer.recv().await.unwrap().header.encode(),
        [0, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0]
    );
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
}

#[tokio::test]
async fn syn_beyond_the_accept_backlog_is_reset() {
    let config = Config {
        accept_backlog: 4,
        ..no_keep_alive()
    };
    let (client, mut peer) = pair(config, true);
    for id in (2..=10).step_by(2) {
        peer.send(Header::window_update(id, Flags::SYN, 0), &[])
            .await;
    }
    let rst = peer.recv().await.unwrap();
    assert_eq!(rst.header, Header::window_update(10, Flags::RST, 0));
    for id in [2, 4, 6, 8] {
        assert_eq!(client.accept().await.unwrap().id(), id);
    }
}

#[tokio::test]
async fn opener_waits_when_too_many_opens_are_unacked() {
    let config = Config {
        max_unacked_opens: 3,
        ..no_keep_alive()
    };
    let (server, mut peer) = pair(config, false);
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(server.open().await.unwrap());
        peer.recv().await.unwrap();
    }
    let fourth = tokio::spawn({
        let server = server.clone();
        async move { server.open().await.map(|s| s.id()) }
    });
    tokio::task::yield_now().await;
    assert!(!fourth.is_finished());
    peer.send(Header::window_update(2, Flags::ACK, 0), &[])
        .await;
    assert_eq!(fourth.await.unwrap().unwrap(), 8);
}

#[tokio::test(start_paused = true)]
async fn unacked_open_resets_only_that_stream() {
    let (server, mut peer) = pair(no_keep_alive(), false);
    let mut stale = server.open().await.unwrap();
    let fresh = server.open().await.unwrap();
    peer.recv().await.unwrap();
    peer.recv().await.unwrap();
    peer.send(Header::window_update(fresh.id(), Flags::ACK, 0), &[])
        .await;
    let mut buf = [0u8; 1];
    let err = stale.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(
        peer.recv().await.unwrap().header,
        Header::window_update(2, Flags::RST, 0)
    );
    assert!(!server.is_closed());
    drop(fresh);
}

#[tokio::test]
async fn writes_never_exceed_the_peer_window() {
    let (server, mut peer) = pair(no_keep_alive(), false);
    let mut stream = server.open().await.unwrap();
    peer.recv().await.unwrap();
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn(async move {
        stream.write_all(&payload).await.unwrap();
        stream
    });
    let first = peer.recv_data(2, 256 * 1024).await;
    assert_eq!(
        first.len(),
        256 * 1024,
        "more than the initial window was sent"
    );
    // No more data until a grant: a ping round trip shows nothing else was queued.
    peer.send(Header::ping(Flags::SYN, 1), &[]).await;
    assert_eq!(peer.recv().await.unwrap().header.ty, FrameType::Ping);
    peer.send(Header::window_update(2, Flags::NONE, 100), &[])
        .await;
    let next = peer.recv_data(2, 100).await;
    assert_eq!(next.len(), 100);
    peer.send(Header::window_update(2, Flags::NONE, 1024 * 1024), &[])
        .await;
    let rest = peer.recv_data(2, 1024 * 1024 - 256 * 1024 - 100).await;
    assert_eq!(
        [first, next, rest].concat(),
        (0..1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
    );
    writer.await.unwrap();
}

#[tokio::test]
async fn larger_receive_window_is_announced_and_enforced() {
    let config = Config {
        receive_window: 1024 * 1024,
        ..no_keep_alive()
    };
    let (server, mut peer) = pair(config, false);
    let _stream = server.open().await.unwrap();
    let syn = peer.recv().await.unwrap();
    assert_eq!(syn.header, Header::window_update(2, Flags::SYN, 768 * 1024));
    peer.send(Header::window_update(2, Flags::ACK, 0), &[])
        .await;
    let big = vec![7u8; 1024 * 1024];
    peer.send(Header::data(2, Flags::NONE, big.len() as u32), &big)
        .await;
    peer.send(Header::data(2, Flags::NONE, 1), &[1]).await;
    let go_away = peer.recv_non_ping().await.unwrap();
    assert_eq!(go_away.header, Header::go_away(1));
    assert!(matches!(
        server.closed().await,
        SessionEnd::Protocol(ProtocolError::WindowExceeded {
            stream_id: 2,
            len: 1,
            window: 0
        })
    ));
}

#[tokio::test]
async fn window_is_granted_as_the_application_reads() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    let mut stream = client.accept().await.unwrap();
    peer.recv().await.unwrap(); // ACK
    let chunk = vec![1u8; 128 * 1024];
    peer.send(Header::data(2, Flags::NONE, chunk.len() as u32), &chunk)
        .await;
    let mut read = vec![0u8; chunk.len()];
    stream.read_exact(&mut read).await.unwrap();
    let update = peer.recv().await.unwrap();
    assert_eq!(
        update.header,
        Header::window_update(2, Flags::NONE, 128 * 1024)
    );
}

#[tokio::test]
async fn fin_and_rst_are_accepted_on_data_and_window_update_frames() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    peer.send(Header::data(2, Flags::SYN | Flags::FIN, 3), b"abc")
        .await;
    peer.send(Header::window_update(4, Flags::SYN, 0), &[])
        .await;
    peer.send(Header::window_update(4, Flags::FIN, 0), &[])
        .await;
    peer.send(Header::window_update(6, Flags::SYN, 0), &[])
        .await;
    peer.send(Header::data(6, Flags::NONE, 2), b"xy").await;
    let mut two = client.accept().await.unwrap();
    let mut four = client.accept().await.unwrap();
    let mut six = client.accept().await.unwrap();
    let mut got = Vec::new();
    two.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"abc");
    got.clear();
    four.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty());
    peer.send(Header::data(6, Flags::RST, 0), &[]).await;
    let err = six.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn drop_before_shutdown_resets() {
    let (server, mut peer) = pair(no_keep_alive(), false);
    let stream = server.open().await.unwrap();
    peer.recv().await.unwrap();
    drop(stream);
    assert_eq!(
        peer.recv().await.unwrap().header,
        Header::window_update(2, Flags::RST, 0)
    );
    assert_eq!(server.num_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn drop_after_shutdown_never_resets_until_the_close_timeout() {
    let (server, mut peer) = pair(no_keep_alive(), false);
    let mut stream = server.open().await.unwrap();
    peer.recv().await.unwrap();
    peer.send(Header::window_update(2, Flags::ACK, 0), &[])
        .await;
    stream.write_all(b"request").await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    assert_eq!(peer.recv_data(2, 7).await, b"request");
    assert_eq!(
        peer.recv().await.unwrap().header,
        Header::window_update(2, Flags::FIN, 0)
    );
    // The peer keeps sending: we discard it and keep granting window, with no RST.
    let chunk = vec![0u8; 200 * 1024];
    for _ in 0..3 {
        peer.send(Header::data(2, Flags::NONE, chunk.len() as u32), &chunk)
            .await;
    }
    for _ in 0..3 {
        let update = peer.recv().await.unwrap();
        assert_eq!(update.header.ty, FrameType::WindowUpdate);
        assert_eq!(update.header.flags, Flags::NONE);
    }
    assert_eq!(server.num_streams(), 1);
    // Close timeout: RST, then forgotten.
    let rst = peer.recv().await.unwrap();
    assert_eq!(rst.header, Header::window_update(2, Flags::RST, 0));
    assert_eq!(server.num_streams(), 0);

    // And a detached stream whose peer does FIN is forgotten without any RST.
    let mut stream = server.open().await.unwrap();
    peer.recv().await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    assert_eq!(
        peer.recv().await.unwrap().header,
        Header::window_update(4, Flags::FIN, 0)
    );
    peer.send(Header::window_update(4, Flags::FIN, 0), &[])
        .await;
    peer.send(Header::ping(Flags::SYN, 9), &[]).await;
    assert_eq!(
        peer.recv().await.unwrap().header,
        Header::ping(Flags::ACK, 9)
    );
    assert_eq!(server.num_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_pings_and_times_out() {
    let (client, mut peer) = pair(Config::default(), true);
    let ping = peer.recv().await.unwrap();
    assert_eq!(ping.header.ty, FrameType::Ping);
    assert_eq!(ping.header.flags, Flags::SYN);
    peer.send(Header::ping(Flags::ACK, ping.header.length), &[])
        .await;
    let started = tokio::time::Instant::now();
    let second = peer.recv().await.unwrap();
    assert_eq!(second.header.flags, Flags::SYN);
    assert_eq!(started.elapsed().as_secs(), 30);
    // No reply this time.
    assert!(matches!(
        client.closed().await,
        SessionEnd::KeepAliveTimeout
    ));
    assert_eq!(started.elapsed().as_secs(), 40);
}

#[tokio::test]
async fn local_go_away_refuses_new_streams_and_keeps_old_ones() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    let mut old = client.accept().await.unwrap();
    peer.recv().await.unwrap();
    client.go_away();
    assert_eq!(peer.recv().await.unwrap().header, Header::go_away(0));
    assert!(matches!(client.accept().await, Err(Error::LocalGoAway)));
    peer.send(Header::window_update(4, Flags::SYN, 0), &[])
        .await;
    assert_eq!(
        peer.recv().await.unwrap().header,
        Header::window_update(4, Flags::RST, 0)
    );
    peer.send(Header::data(2, Flags::FIN, 2), b"hi").await;
    let mut got = Vec::new();
    old.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hi");
    old.write_all(b"bye").await.unwrap();
    assert_eq!(peer.recv_data(2, 3).await, b"bye");
}

#[tokio::test]
async fn remote_go_away_is_reported_at_once() {
    let (server, mut peer) = pair(no_keep_alive(), false);
    let mut old = server.open().await.unwrap();
    peer.recv().await.unwrap();
    let watcher = tokio::spawn({
        let server = server.clone();
        async move { server.remote_go_away().await }
    });
    peer.send(Header::go_away(0), &[]).await;
    watcher.await.unwrap().unwrap();
    assert!(server.is_remote_go_away());
    assert!(matches!(server.open().await, Err(Error::RemoteGoAway)));
    old.write_all(b"still here").await.unwrap();
    assert_eq!(peer.recv_data(2, 10).await, b"still here");
    assert!(!server.is_closed());
}

#[tokio::test]
async fn go_away_with_error_code_ends_the_session() {
    let (server, mut peer) = pair(no_keep_alive(), false);
    peer.send(Header::go_away(2), &[]).await;
    assert!(matches!(server.closed().await, SessionEnd::GoAway(2)));
    assert!(server.remote_go_away().await.is_err());
}

#[tokio::test]
async fn protocol_violations_get_go_away_protocol_error() {
    let mut unknown_type = Header::ping(Flags::SYN, 1).encode();
    unknown_type[1] = 4;
    let mut bad_version = Header::ping(Flags::SYN, 1).encode();
    bad_version[0] = 1;
    let own_parity = Header::window_update(1, Flags::SYN, 0).encode();
    for raw in [unknown_type, bad_version, own_parity] {
        let (client, mut peer) = pair(no_keep_alive(), true);
        peer.send_raw(&raw).await;
        assert_eq!(peer.recv().await.unwrap().header, Header::go_away(1));
        assert!(
            peer.recv().await.is_none(),
            "connection closed after go away"
        );
        assert!(matches!(client.closed().await, SessionEnd::Protocol(_)));
    }
}

#[tokio::test]
async fn end_reasons() {
    let (server, peer) = pair(no_keep_alive(), false);
    drop(peer);
    assert!(matches!(server.closed().await, SessionEnd::PeerClosed));
    assert!(matches!(
        server.open().await,
        Err(Error::SessionEnded(SessionEnd::PeerClosed))
    ));

    let (server, mut peer) = pair(no_keep_alive(), false);
    let mut stream = server.open().await.unwrap();
    server.close();
    assert!(matches!(server.closed().await, SessionEnd::LocalClose));
    let err = stream.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    // The SYN queued before close is still flushed, then the connection ends.
    assert_eq!(peer.recv().await.unwrap().header.flags, Flags::SYN);
    assert!(peer.recv().await.is_none());

    // Dropping the last handle closes the session and its connection.
    let (server, mut peer) = pair(no_keep_alive(), false);
    drop(server);
    assert!(peer.recv().await.is_none());
}

#[tokio::test]
async fn pings_are_answered_while_the_application_reads_nothing() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    let _stream = client.accept().await.unwrap();
    assert_eq!(peer.recv().await.unwrap().header.flags, Flags::ACK);
    // A full window the application never reads.
    let window = vec![9u8; 256 * 1024];
    peer.send(Header::data(2, Flags::NONE, window.len() as u32), &window)
        .await;
    for opaque in 0..3 {
        peer.send(Header::ping(Flags::SYN, opaque), &[]).await;
        assert_eq!(
            peer.recv().await.unwrap().header,
            Header::ping(Flags::ACK, opaque)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn write_timeout_is_per_step_not_per_batch() {
    let config = Config {
        write_timeout: Duration::from_secs(10),
        ..no_keep_alive()
    };
    let (ours, theirs) = tokio::io::duplex(1024);
    let server = Session::server(ours, config);
    let mut peer = RawPeer {
        io: theirs,
        buf: BytesMut::new(),
        decoder: FrameDecoder::new(),
    };
    let mut stream = server.open().await.unwrap();
    peer.send(Header::window_update(2, Flags::ACK, 0), &[])
        .await;
    stream.write_all(&vec![1u8; 64 * 1024]).await.unwrap();
    // A slow reader: 1 KiB every 5 s. The batch takes minutes, but every step progresses.
    let mut got = 0;
    while got < 64 * 1024 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut chunk = [0u8; 1024];
        let n = peer.io.read(&mut chunk).await.unwrap();
        got += n.saturating_sub(if got == 0 { 24 } else { 0 });
        assert!(
            !server.is_closed(),
            "slow but live reader timed out: {:?}",
            server.end_reason()
        );
    }
    // A reader that stops: the session fails after the write timeout.
    stream.write_all(&vec![2u8; 64 * 1024]).await.unwrap();
    assert!(matches!(server.closed().await, SessionEnd::WriteTimeout));
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_cannot_grow_our_ping_replies() {
    let (ours, theirs) = tokio::io::duplex(16 * 1024);
    let _client = Session::client(ours, no_keep_alive());
    let mut peer = RawPeer {
        io: theirs,
        buf: BytesMut::new(),
        decoder: FrameDecoder::new(),
    };
    let pings: Vec<u8> = (0..100_000u32)
        .flat_map(|id| Header::ping(Flags::SYN, id).encode())
        .collect();
    // We stop reading once replies back up, so the flood cannot be written in full. (Within the
    // write timeout: after it, a peer that reads nothing is cut off.)
    let mut sent = 0;
    let flood = tokio::time::timeout(Duration::from_secs(5), async {
        while sent < pings.len() {
            sent += peer.io.write(&pings[sent..]).await.unwrap();
        }
    })
    .await;
    assert!(
        flood.is_err(),
        "1.2 MB of pings were accepted without the replies being read"
    );
    assert!(
        sent < 256 * 1024,
        "{sent} bytes of pings accepted while no reply was read"
    );
    // Once the peer reads, every ping is answered, in order.
    let (mut rd, mut wr) = tokio::io::split(peer.io);
    let writer = tokio::spawn(async move { wr.write_all(&pings[sent..]).await.unwrap() });
    let mut reply = [0u8; 12];
    for id in 0..100_000u32 {
        rd.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, Header::ping(Flags::ACK, id).encode());
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn a_stream_reset_while_queued_is_never_accepted_even_if_its_id_returns() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    peer.send(Header::window_update(2, Flags::SYN, 0), &[])
        .await;
    peer.send(Header::window_update(2, Flags::RST, 0), &[])
        .await;
    peer.send(Header::data(2, Flags::SYN, 3), b"new").await;
    let mut stream = client.accept().await.unwrap();
    assert_eq!(stream.id(), 2);
    let mut got = [0u8; 3];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"new");
    // No second handle for the same stream: the next accept waits (GoAway ends it).
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.accept().await.map(|s| s.id()) }
    });
    client.go_away();
    assert!(matches!(second.await.unwrap(), Err(Error::LocalGoAway)));
    stream.write_all(b"ok").await.unwrap();
    // On the wire: exactly one ACK for stream 2 (and our GoAway) before the data.
    let mut acks = 0;
    loop {
        let frame = peer.recv().await.unwrap();
        match frame.header.ty {
            FrameType::WindowUpdate if frame.header.flags == Flags::ACK => acks += 1,
            FrameType::Data => {
                assert_eq!(frame.payload, b"ok");
                break;
            }
            FrameType::GoAway => assert_eq!(frame.header, Header::go_away(0)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acks, 1);
}

#[tokio::test]
async fn an_open_refused_by_the_peer_frees_its_slot() {
    let config = Config {
        max_unacked_opens: 1,
        ..no_keep_alive()
    };
    let (server, mut peer) = pair(config, false);
    let refused = server.open().await.unwrap();
    assert_eq!(peer.recv().await.unwrap().header.flags, Flags::SYN);
    peer.send(Header::window_update(refused.id(), Flags::RST, 0), &[])
        .await;
    // The only open slot is free again at once, not after the 75 s open timeout.
    let next = tokio::time::timeout(Duration::from_secs(5), server.open()).await;
    assert!(next.expect("slot never freed").is_ok());
}

/// Encodes frames back to back, as one write (and so, here, one read of the session's).
fn frames(frames: &[(Header, &[u8])]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (header, payload) in frames {
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// Waits until the session has processed everything sent before: a ping's answer.
async fn round_trip(peer: &mut RawPeer, nonce: u32) {
    peer.send(Header::ping(Flags::SYN, nonce), &[]).await;
    loop {
        let frame = peer.recv().await.unwrap();
        if frame.header == Header::ping(Flags::ACK, nonce) {
            return;
        }
    }
}

#[tokio::test]
async fn bytes_before_a_reset_are_read_before_the_reset() {
    let (server, mut peer) = pair(no_keep_alive(), false);
    let mut separate = server.open().await.unwrap();
    let mut same_frame = server.open().await.unwrap();
    for _ in 0..2 {
        assert_eq!(peer.recv().await.unwrap().header.flags, Flags::SYN);
    }
    // A reply, then an RST on its own frame; and a reply carrying the RST flag itself.
    peer.send_raw(&frames(&[
        (Header::data(2, Flags::ACK, 5), b"reply"),
        (Header::window_update(2, Flags::RST, 0), b""),
        (Header::data(4, Flags::ACK | Flags::RST, 4), b"last"),
    ]))
    .await;
    round_trip(&mut peer, 1).await;
    for (stream, expected) in [(&mut separate, &b"reply"[..]), (&mut same_frame, b"last")] {
        let mut got = Vec::new();
        let err = stream.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(got, expected);
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        // Writing after a reset fails at once.
        assert!(stream.write_all(b"x").await.is_err());
    }
}

#[tokio::test]
async fn a_stream_reset_while_queued_is_dropped_with_its_bytes() {
    let (client, mut peer) = pair(no_keep_alive(), true);
    // The peer gave stream 2 up before it was accepted (its client went away): serving it now
    // would run an abandoned request. Stream 4 is still wanted.
    peer.send_raw(&frames(&[
        (Header::data(2, Flags::SYN, 7), b"request"),
        (Header::window_update(2, Flags::RST, 0), b""),
        (Header::data(4, Flags::SYN, 4), b"next"),
    ]))
    .await;
    round_trip(&mut peer, 1).await;
    let mut stream = client.accept().await.unwrap();
    assert_eq!(stream.id(), 4);
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"next");
    // Only stream 4 was acknowledged.
    assert_eq!(
        peer.recv().await.unwrap().header.encode(),
        [0, 1, 0, 2, 0, 0, 0, 4, 0, 0, 0, 0]
    );
}
