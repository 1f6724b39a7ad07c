//! Arbitrary bytes as what a WebSocket peer sends, read through `piko_protocol::WsByteStream`'s
//! frame parser over an in-memory pipe on a current-thread runtime.
//!
//! Input: one options byte (bit 0: half-close mode; bit 1: read through the multiplexer's
//! `Transport` side instead of `AsyncRead`; bit 2: the peer vanishes instead of closing its
//! write side; bit 3: we write a reply and shut down afterwards; bits 4-5: read buffer size;
//! bit 6: we are the client, so the peer's frames must be unmasked), then the peer's bytes (at
//! most 64 KiB).
//!
//! Checks: reading ends (EOF or an error) within 5 s; it never yields more bytes than the
//! client sent; once it has reported the end, a further read reports it again rather than
//! yielding data.

#![no_main]

use std::{future::poll_fn, pin::Pin, sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use piko_mux::Transport;
use piko_protocol::WsByteStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const MAX_INPUT: usize = 64 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, wire)) = data.split_first() else {
        return;
    };
    if wire.len() > MAX_INPUT {
        return;
    }
    let half_close = options & 0x1 != 0;
    let as_transport = options & 0x2 != 0;
    let client_vanishes = options & 0x4 != 0;
    let reply = options & 0x8 != 0;
    let read_size = [1, 7, 4096, 64 * 1024][usize::from((options >> 4) & 0x3)];
    let client_role = options & 0x40 != 0;

    runtime().block_on(async {
        // Room for everything both ways, so no write ever waits on a reader that is not reading.
        let (mut client, server) = tokio::io::duplex(4 * MAX_INPUT + 4096);
        client.write_all(wire).await.expect("the pipe has room");
        let client = if client_vanishes {
            drop(client);
            None
        } else {
            client
                .shutdown()
                .await
                .expect("closing the pipe's write side");
            Some(client)
        };
        let stream = if client_role {
            WsByteStream::client(server, &[])
        } else {
            WsByteStream::server(server, &[])
        };
        let mut stream = if half_close {
            stream.half_closing()
        } else {
            stream
        };
        let read = async {
            let total = if as_transport {
                read_as_transport(&mut stream).await
            } else {
                read_as_bytes(&mut stream, read_size).await
            };
            assert!(
                total <= wire.len(),
                "read {total} bytes out of {} sent",
                wire.len()
            );
            if reply {
                // Whatever the state of the connection, writing fails or succeeds: no panic.
                let _ = stream.write_all(b"reply").await;
                let _ = stream.shutdown().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("reading a finite input ends");
        drop(client);
    });
});

/// Reads until EOF or an error; the bytes read.
async fn read_as_bytes(stream: &mut WsByteStream<DuplexStream>, read_size: usize) -> usize {
    let mut buf = vec![0; read_size];
    let mut total = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(_) => return total,
        }
    }
    // The end stays the end.
    assert!(
        matches!(stream.read(&mut buf).await, Ok(0) | Err(_)),
        "data after the end of the stream"
    );
    total
}

/// Reads as the multiplexer's reader task does, until 0 or an error; the bytes read.
async fn read_as_transport(stream: &mut WsByteStream<DuplexStream>) -> usize {
    let mut total = 0;
    loop {
        let mut consumed = 0;
        let result = poll_fn(|cx| {
            Pin::new(&mut *stream).poll_read_with(cx, &mut |chunk| consumed += chunk.len())
        })
        .await;
        match result {
            Ok(0) => {
                assert_eq!(consumed, 0, "bytes passed with the end of stream");
                break;
            }
            Ok(n) => {
                assert_eq!(n, consumed, "the count is what was passed");
                total += n;
            }
            Err(_) => return total,
        }
    }
    let mut consumed = 0;
    let again = poll_fn(|cx| {
        Pin::new(&mut *stream).poll_read_with(cx, &mut |chunk| consumed += chunk.len())
    })
    .await;
    assert!(
        matches!(again, Ok(0) | Err(_)) && consumed == 0,
        "data after the end of the stream"
    );
    total
}
