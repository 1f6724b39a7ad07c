//! Forwarding an endpoint's connections to a local TCP address: what `piko agent tcp` and
//! [`Upstream::listen_and_forward`](crate::Upstream::listen_and_forward) do.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

use crate::{Error, Listener};

/// Why [`forward_connection`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The local address could not be reached.
    #[error("dial {addr}: {source}")]
    Dial {
        /// The address dialed.
        addr: String,
        /// Why it failed.
        source: io::Error,
    },
    /// Copying failed part way (a connection was reset).
    #[error("relay: {0}")]
    Relay(io::Error),
}

/// Connects to `addr` (within `dial_timeout`, if any) and copies bytes between it and `conn`
/// until both directions have ended: each side's end reaches the other as a half-close, so a
/// client that finishes sending still gets its reply. Returns the bytes sent each way
/// (to `addr`, from `addr`).
///
/// # Errors
/// The dial failed (then `conn` is shut down, so its peer sees the connection end without
/// data), or a copy failed: a side was reset. Bytes read before the failure have been passed on,
/// `conn` is dropped unfinished (a stream dropped before its shutdown is reset) and the local
/// connection is reset once it has what was written to it, so that neither peer mistakes the
/// failure for a clean end.
pub async fn forward_connection<S>(
    mut conn: S,
    addr: &str,
    dial_timeout: Option<Duration>,
) -> Result<(u64, u64), ForwardError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let dial = TcpStream::connect(addr);
    let dialed = match dial_timeout {
        Some(limit) => tokio::time::timeout(limit, dial)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "dial timed out"))),
        None => dial.await,
    };
    let mut local = match dialed {
        Ok(local) => local,
        Err(source) => {
            let _ = conn.shutdown().await;
            return Err(ForwardError::Dial {
                addr: addr.to_owned(),
                source,
            });
        }
    };
    let _ = local.set_nodelay(true);
    piko_protocol::enable_keepalive(&local);
    match piko_protocol::relay(&mut conn, &mut local).await {
        Ok(copied) => Ok(copied),
        Err(err) => {
            // The tunnel's side is reset at once (dropped unfinished), the local side once it
            // has been delivered what was written to it.
            drop(conn);
            piko_protocol::reset_after_delivery(&local).await;
            Err(ForwardError::Relay(err))
        }
    }
}

/// Forwards every connection of a listener to a local address; made by
/// [`Upstream::listen_and_forward`](crate::Upstream::listen_and_forward).
#[derive(Debug)]
pub struct Forwarder {
    task: tokio::task::JoinHandle<Result<(), Error>>,
    close: tokio::sync::watch::Sender<bool>,
}

impl Forwarder {
    pub(crate) fn start(mut listener: Listener, addr: String) -> Self {
        let (close, mut closed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let result = loop {
                let stream = tokio::select! {
                    _ = closed.wait_for(|closed| *closed) => {
                        listener.close();
                        break Ok(());
                    }
                    accepted = listener.accept() => match accepted {
                        Ok(stream) => stream,
                        Err(Error::Closed) => break Ok(()),
                        Err(err) => break Err(err),
                    },
                    // Reap finished connections as we go.
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let addr = addr.clone();
                connections.spawn(async move {
                    match forward_connection(stream, &addr, None).await {
                        Ok(_) => {}
                        Err(ForwardError::Dial { source, .. }) => {
                            tracing::warn!(subsystem = "client", addr, error = %source, "failed to dial upstream");
                        }
                        Err(err) => {
                            tracing::debug!(subsystem = "client", addr, error = %err, "forwarded connection ended with an error");
                        }
                    }
                });
            };
            // Connections in flight run to their end, as with Piko's Go SDK.
            while connections.join_next().await.is_some() {}
            result
        });
        Self { task, close }
    }

    /// Stops accepting (the server is told with GoAway); connections in flight continue.
    pub fn close(&self) {
        let _ = self.close.send(true);
    }

    /// Waits until the forwarder has stopped and its connections have ended.
    ///
    /// # Errors
    /// The listener failed for good (a reconnect refused with a non-retryable status).
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.unwrap_or(Ok(()))
    }
}
