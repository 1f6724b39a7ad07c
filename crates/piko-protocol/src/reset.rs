//! Closing a TCP connection with a reset that arrives after everything written before it.
//!
//! A relay passes a failure on as a reset (a close with zero linger), so that its peer sees the
//! connection broken rather than a clean end that looks like a complete reply. But such a close
//! also throws away the socket's send queue: bytes the relay already wrote, which the kernel had
//! not yet delivered. On a slow link the reply before the failure would arrive cut short, with
//! nothing to tell the cut from the failure. So the reset waits, within a bound, until the peer
//! has acknowledged every byte.

use std::{io, time::Duration};

use tokio::{net::TcpStream, time::Instant};

/// How long the send queue may stay without shrinking before the reset goes anyway: a peer that
/// stopped reading (or a link that died silently) holds the socket this long at most.
pub const DELIVERY_STALL_LIMIT: Duration = Duration::from_secs(10);

/// The kernel says nothing when its send queue empties: it is asked again after this pause,
/// doubled each time up to [`LONGEST_PAUSE`] (a queue that drains in a moment is seen in a
/// moment; a slow one is not asked about a thousand times a second).
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Sets `tcp` to close with a reset once the peer has acknowledged every byte written to it (or
/// stopped acknowledging for [`DELIVERY_STALL_LIMIT`]); dropping `tcp` then sends the reset.
pub async fn reset_after_delivery(tcp: &TcpStream) {
    await_delivery(tcp, DELIVERY_STALL_LIMIT).await;
    let _ = tcp.set_zero_linger();
}

/// Waits until the peer has acknowledged every byte written to `tcp`, the connection is gone, or
/// the queue has not shrunk for `stall_limit`.
async fn await_delivery(tcp: &TcpStream, stall_limit: Duration) {
    let Ok(mut queued) = unacknowledged(tcp) else {
        return;
    };
    let mut progress_at = Instant::now();
    let mut pause = FIRST_PAUSE;
    while queued > 0 {
        // A connection the peer reset, or that the kernel gave up on, keeps its count forever;
        // it no longer has a peer address.
        if tcp.peer_addr().is_err() || progress_at.elapsed() >= stall_limit {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
        let Ok(now) = unacknowledged(tcp) else {
            return;
        };
        if now < queued {
            progress_at = Instant::now();
        }
        queued = now;
    }
}

/// Bytes written to `tcp` that its peer has not acknowledged yet (sent or not).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn unacknowledged(tcp: &TcpStream) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ on a socket) writes one int through its argument, which points
    // at a live `c_int`; the descriptor is `tcp`'s and stays open for the call.
    let result = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Elsewhere the queue cannot be read: the reset goes at once.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unacknowledged(_tcp: &TcpStream) -> io::Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpSocket},
    };

    const PATIENCE: Duration = Duration::from_secs(20);

    /// A connected pair whose receiving end (`reader`) has a small receive buffer, so that what
    /// `writer` writes waits in its send queue until `reader` reads.
    async fn pair_with_small_receiver() -> (TcpStream, TcpStream) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = TcpSocket::new_v4().unwrap();
        writer.set_send_buffer_size(1 << 20).unwrap();
        let (writer, accepted) = tokio::join!(writer.connect(addr), listener.accept());
        (writer.unwrap(), accepted.unwrap().0)
    }

    /// Everything `tcp` yields until it ends, and how it ended.
    async fn read_to_end(tcp: &mut TcpStream) -> (usize, io::Result<()>) {
        let mut total = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) => return (total, Ok(())),
                Ok(n) => total += n,
                Err(err) => return (total, Err(err)),
            }
        }
    }

    #[tokio::test]
    async fn the_reset_arrives_after_every_byte_written_before_it() {
        const WRITTEN: usize = 256 * 1024;
        let (mut writer, mut reader) = pair_with_small_receiver().await;
        writer.write_all(&vec![7u8; WRITTEN]).await.unwrap();
        // Most of it is still queued: the reader has not read anything.
        assert!(unacknowledged(&writer).unwrap() > 0);
        let closed = tokio::spawn(async move {
            reset_after_delivery(&writer).await;
        });
        let (received, ended) = tokio::time::timeout(PATIENCE, read_to_end(&mut reader))
            .await
            .unwrap();
        closed.await.unwrap();
        assert_eq!(received, WRITTEN);
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn a_peer_that_stopped_reading_is_reset_after_the_stall_limit() {
        let (writer, _reader) = pair_with_small_receiver().await;
        let mut writer = writer;
        writer.write_all(&vec![7u8; 256 * 1024]).await.unwrap();
        let limit = Duration::from_millis(200);
        let started = Instant::now();
        tokio::time::timeout(PATIENCE, await_delivery(&writer, limit))
            .await
            .expect("the wait outlived its bound");
        assert!(started.elapsed() >= limit);
        assert!(unacknowledged(&writer).unwrap() > 0);
    }

    #[tokio::test]
    async fn a_peer_that_reset_is_not_waited_for() {
        let (mut writer, reader) = pair_with_small_receiver().await;
        writer.write_all(&vec![7u8; 256 * 1024]).await.unwrap();
        reader.set_zero_linger().unwrap();
        drop(reader);
        // The queue never drains now; the wait ends because the connection is gone.
        tokio::time::timeout(PATIENCE, await_delivery(&writer, Duration::from_secs(3600)))
            .await
            .expect("waited for a peer that reset");
    }

    #[tokio::test]
    async fn an_idle_connection_is_reset_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let client = client.unwrap();
        let (mut server, _) = accepted.unwrap();
        assert_eq!(unacknowledged(&client).unwrap(), 0);
        reset_after_delivery(&client).await;
        drop(client);
        let mut byte = [0u8; 1];
        let err = server.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
