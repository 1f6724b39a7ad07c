//! Keep-alive TCP connections to a plain `http` local service, shared by every stream of a
//! listener: a request takes the newest idle connection or dials a new one, and gives it back
//! when its response has ended cleanly.

use std::{
    io,
    sync::Mutex,
    time::{Duration, Instant},
};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle connections to one `host:port`.
#[derive(Debug)]
pub(crate) struct ServicePool {
    host: String,
    port: u16,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    keep_alive: Duration,
}

#[derive(Debug)]
struct Idle {
    tcp: TcpStream,
    since: Instant,
}

impl ServicePool {
    pub(crate) fn new(
        host: String,
        port: u16,
        max_idle: usize,
        idle_timeout: Duration,
        keep_alive: Duration,
    ) -> Self {
        Self {
            host,
            port,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            keep_alive,
        }
    }

    /// The newest idle connection that is still open and within the idle timeout.
    pub(crate) fn take(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Idle { tcp, since }) = idle.pop() {
            if since.elapsed() < self.idle_timeout && still_open(&tcp) {
                return Some(tcp);
            }
        }
        None
    }

    /// Gives back a connection whose last exchange ended cleanly.
    pub(crate) fn put(&self, tcp: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                tcp,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle for longer than the idle timeout, and those the service
    /// closed meanwhile.
    pub(crate) fn close_expired(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|conn| conn.since.elapsed() < self.idle_timeout && still_open(&conn.tcp));
    }

    /// A new connection to the service.
    pub(crate) async fn connect(&self) -> io::Result<TcpStream> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        SockRef::from(&tcp).set_tcp_keepalive(&TcpKeepalive::new().with_time(self.keep_alive))?;
        Ok(tcp)
    }
}

/// Whether an idle connection can take a request: the service has neither closed it nor sent
/// anything unasked (either makes it unusable).
fn still_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncWriteExt, net::TcpListener};

    #[tokio::test]
    async fn closed_and_expired_connections_are_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pool = ServicePool::new(
            "127.0.0.1".into(),
            port,
            2,
            Duration::from_secs(60),
            Duration::from_secs(30),
        );
        let open = pool.connect().await.unwrap();
        let (_kept, _) = listener.accept().await.unwrap();
        let closing = pool.connect().await.unwrap();
        let (mut closed, _) = listener.accept().await.unwrap();
        let open_port = open.local_addr().unwrap().port();
        pool.put(open);
        pool.put(closing);
        // Over the limit: dropped.
        pool.put(pool.connect().await.unwrap());
        closed.shutdown().await.unwrap();
        drop(closed);
        // The pool sees the close once the reactor has: poll until the newest connection
        // (the closed one) is skipped for the open one.
        let deadline = Instant::now() + Duration::from_secs(10);
        let reused = loop {
            let tcp = pool.take().expect("a connection is still open");
            if tcp.local_addr().unwrap().port() == open_port {
                break tcp;
            }
            assert!(
                Instant::now() < deadline,
                "the closed connection is still offered"
            );
            pool.put(tcp);
            tokio::task::yield_now().await;
        };
        assert!(pool.take().is_none());
        pool.put(reused);
        let expiring = ServicePool {
            idle_timeout: Duration::ZERO,
            ..pool
        };
        expiring.close_expired();
        assert!(expiring.take().is_none());
    }
}
