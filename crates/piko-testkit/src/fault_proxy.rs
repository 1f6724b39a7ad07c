//! A TCP proxy that misbehaves on demand, for putting real faults between real processes: delay,
//! drop, reset, stall. The fault in force can change at any moment and applies to open
//! connections at once.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does to the bytes it relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass both ways.
    Pass,
    /// Every chunk waits this long before it is passed on.
    Delay(Duration),
    /// Bytes are read and thrown away, both ways: a black hole that keeps connections open.
    Drop,
    /// Connections are reset: open ones at once, new ones as soon as they are accepted.
    Reset,
    /// Nothing more is read, either way: once the buffers fill, both peers see a zero window.
    Stall,
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// `pass`, `delay=<ms>ms`, `drop`, `reset` or `stall`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('=') {
            Some(("delay", ms)) => ms
                .strip_suffix("ms")
                .and_then(|ms| ms.parse().ok())
                .map(|ms| Self::Delay(Duration::from_millis(ms)))
                .ok_or_else(|| format!("bad delay: {ms} (want e.g. 50ms)")),
            None if text == "pass" => Ok(Self::Pass),
            None if text == "drop" => Ok(Self::Drop),
            None if text == "reset" => Ok(Self::Reset),
            None if text == "stall" => Ok(Self::Stall),
            _ => Err(format!(
                "unknown fault: {text} (pass, delay=<n>ms, drop, reset, stall)"
            )),
        }
    }
}

/// A running fault proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` and relays each connection to `upstream`, passing bytes until told
    /// otherwise.
    ///
    /// # Errors
    /// `listen` cannot be bound.
    pub async fn start(listen: &str, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (fault, faults) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(relay(client, upstream, faults.clone()));
            }
        });
        Ok(Self {
            addr,
            fault,
            accepted,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` from now on, to open connections too.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection both ways under the faults in force, until both directions end or a
/// fault or failure resets it.
async fn relay(client: TcpStream, upstream: SocketAddr, mut faults: watch::Receiver<Fault>) {
    if *faults.borrow_and_update() == Fault::Reset {
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Each direction watches the faults itself: a reset aborts both sockets from either.
    tokio::join!(
        pipe(client_read, server_write, faults.clone()),
        pipe(server_read, client_write, faults),
    );
}

/// One direction. Returns once its reader ended (passed on as a half-close), or after a failure
/// or a reset, having set both sockets to close abortively.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut faults: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let fault = *faults.borrow_and_update();
        match fault {
            Fault::Reset => break,
            Fault::Stall => {
                if faults.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Pass | Fault::Delay(_) | Fault::Drop => {}
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
                Err(_) => break,
            },
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let fault = *faults.borrow();
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::Drop => continue,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = from.as_ref().set_zero_linger();
    let _ = to.as_ref().set_zero_linger();
    // Dropping a write half would send a FIN ahead of the reset; the socket closes, abortively,
    // once the read half is dropped too.
    to.forget();
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = tcp.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn echo_once(tcp: &mut TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
        tcp.write_all(data).await?;
        let mut got = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        Ok(got)
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says_to_open_connections() {
        let proxy = FaultProxy::start("127.0.0.1:0", echo_server().await)
            .await
            .unwrap();
        let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo_once(&mut tcp, b"pass").await.unwrap(), b"pass");

        proxy.set(Fault::Delay(Duration::from_millis(200)));
        let started = tokio::time::Instant::now();
        assert_eq!(echo_once(&mut tcp, b"slow").await.unwrap(), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(400));

        proxy.set(Fault::Stall);
        assert_eq!(
            echo_once(&mut tcp, b"held").await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        // What was held goes on once the stall ends.
        proxy.set(Fault::Pass);
        let mut held = [0u8; 4];
        tcp.read_exact(&mut held).await.unwrap();
        assert_eq!(&held, b"held");

        proxy.set(Fault::Reset);
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
            .await
            .unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(proxy.accepted(), 1);
    }
}
