//! `Listener`: the streams a server opens to this upstream, across reconnects.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    time::{Duration, SystemTime},
};

use piko_mux::{Session, SessionEnd, Stream};
use tokio::{sync::mpsc, time::Instant};

use crate::{backoff::Backoff, error::Error, upstream::Upstream};

/// A connection being made in the background, replacing a session the server told to go away:
/// the result, and the backoff it advanced.
struct Reconnecting(Pin<Box<dyn Future<Output = (Connected, Backoff)> + Send>>);

/// A new session and the server it reached.
type Connected = Result<(Session, SocketAddr), Error>;

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reconnecting")
    }
}

/// A session that lived this long was healthy: the next reconnect starts from the minimum
/// backoff again.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// An endpoint registration. Each accepted connection is one proxied request or TCP connection.
///
/// It reconnects by itself after every disconnect it did not cause (Piko v0.9.0's listener gives
/// up after a clean close by the server: spec §5.7.2). When the server says it is going away
/// (GoAway), the new connection is made before the old one is left, so a rolling restart of the
/// server costs no request.
#[derive(Debug)]
pub struct Listener {
    upstream: Upstream,
    endpoint: String,
    session: Session,
    /// Streams from sessions that are going away (see [`Listener::accept`]).
    draining_streams: mpsc::UnboundedReceiver<Stream>,
    draining_tx: mpsc::UnboundedSender<Stream>,
    server: SocketAddr,
    connected_at: Instant,
    backoff: Backoff,
    /// Kept across [`Listener::accept`] calls, which may be cancelled.
    moving: Option<Reconnecting>,
    /// When to look for a renewed token because the current one expires.
    refresh_at: Option<Instant>,
    /// When the token of the current session expires (a token file's JWT only).
    session_expiry: Option<SystemTime>,
    /// The session being replaced because its token expires, and when it does.
    leaving: Option<(Session, SystemTime)>,
    closed: bool,
}

/// How long before its token expires a session is replaced, at most (half the token's remaining
/// life when that is shorter): time for the requests on the old session to finish.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// How often the token file is read again, near its token's expiry, until it has been renewed.
const RENEWAL_CHECK: Duration = Duration::from_secs(1);

/// When to start looking for a renewal of a token that expires at `expires`.
fn refresh_time(expires: Option<SystemTime>) -> Option<Instant> {
    let left = expires?
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    // Past what an instant can hold (an absurd `exp`): never.
    Instant::now().checked_add(left - REFRESH_MARGIN.min(left / 2))
}

/// When to look again for a renewal that has not come yet; none once the token has expired (the
/// server ends the session, and the reconnect reads the file anyway).
fn recheck_time(expires: Option<SystemTime>) -> Option<Instant> {
    let left = expires?
        .duration_since(SystemTime::now())
        .ok()
        .filter(|left| !left.is_zero())?;
    Instant::now().checked_add(RENEWAL_CHECK.min(left))
}

impl Listener {
    pub(crate) fn new(
        upstream: Upstream,
        endpoint: String,
        session: Session,
        server: SocketAddr,
        backoff: Backoff,
    ) -> Self {
        let (draining_tx, draining_streams) = mpsc::unbounded_channel();
        let session_expiry = upstream.renewable_token_expiry();
        Self {
            upstream,
            endpoint,
            session,
            draining_streams,
            draining_tx,
            server,
            connected_at: Instant::now(),
            backoff,
            moving: None,
            refresh_at: refresh_time(session_expiry),
            session_expiry,
            leaving: None,
            closed: false,
        }
    }

    /// The address of the server (or load balancer) the current connection goes to.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    /// The endpoint this listener serves.
    pub fn endpoint_id(&self) -> &str {
        &self.endpoint
    }

    /// The next connection.
    ///
    /// Cancel-safe: a connection is only taken when this returns it.
    ///
    /// # Errors
    /// [`Error::Closed`] after [`Listener::close`] or [`Listener::shutdown`]; a non-retryable
    /// connect error when reconnecting fails for good (for example an expired token).
    pub async fn accept(&mut self) -> Result<Stream, Error> {
        loop {
            if self.closed {
                return Err(Error::Closed);
            }
            tokio::select! {
                // Streams of a session that is going away first, then of the current one, before
                // acting on a GoAway: a stream that came with it is still served.
                biased;
                Some(stream) = self.draining_streams.recv() => return Ok(stream),
                accepted = self.session.accept(), if self.moving.is_none() => match accepted {
                    Ok(stream) => return Ok(stream),
                    Err(_) if self.closed => return Err(Error::Closed),
                    Err(err) => {
                        tracing::warn!(subsystem = "client", endpoint_id = %self.endpoint, error = %err, "disconnected; reconnecting");
                        self.reconnect().await?;
                    }
                },
                _ = self.session.remote_go_away(), if self.moving.is_none() => {
                    // The server is draining: connect again (through the load balancer, to
                    // another node) before leaving this session.
                    tracing::debug!(subsystem = "client", endpoint_id = %self.endpoint, "server going away; reconnecting");
                    self.move_session();
                }
                () = until(self.refresh_at), if self.moving.is_none() => {
                    // The token expires soon: the server would cut this session then. Once the
                    // file holds a renewed token, connect with it before leaving this session;
                    // until then, reconnecting with the same token would gain nothing.
                    let renewed = self.upstream.renewable_token_expiry().is_some_and(|expiry| {
                        expiry > SystemTime::now()
                            && self.session_expiry.is_none_or(|current| expiry > current)
                    });
                    if renewed {
                        tracing::info!(subsystem = "client", endpoint_id = %self.endpoint, "token expiring; reconnecting");
                        self.refresh_at = None;
                        self.leaving = self.session_expiry.map(|expiry| (self.session.clone(), expiry));
                        self.move_session();
                    } else {
                        self.refresh_at = recheck_time(self.session_expiry);
                    }
                }
                (connected, backoff) = async { self.moving.as_mut().expect("guarded").0.as_mut().await }, if self.moving.is_some() => {
                    self.moving = None;
                    self.backoff = backoff;
                    let (session, server) = connected?;
                    // The old session is left to the server, which closes it once its streams
                    // are done (at the token's expiry, or when it has drained); one whose token
                    // expired is retired here if the server keeps it.
                    if let Some((old, expiry)) = self.leaving.take() {
                        tokio::spawn(retire(old, expiry));
                    }
                    self.session = session;
                    self.server = server;
                    self.connected_at = Instant::now();
                    self.note_session_token();
                }
            }
        }
    }

    /// Starts replacing the current session: it keeps delivering the streams the server opens
    /// on it (meanwhile too) until the server closes it, while a new one connects.
    fn move_session(&mut self) {
        let old = self.session.clone();
        let deliver = self.draining_tx.clone();
        tokio::spawn(async move {
            while let Ok(stream) = old.accept().await {
                if deliver.send(stream).is_err() {
                    return;
                }
            }
        });
        self.moving = Some(self.connect_in_background());
    }

    /// [`Listener::connect_again`] as a future that owns what it needs.
    fn connect_in_background(&mut self) -> Reconnecting {
        if self.connected_at.elapsed() >= HEALTHY_AFTER {
            self.backoff.reset();
        }
        let upstream = self.upstream.clone();
        let endpoint = self.endpoint.clone();
        let mut backoff = self.backoff.clone();
        Reconnecting(Box::pin(async move {
            let connected = upstream.connect_with_retry(&endpoint, &mut backoff).await;
            (connected, backoff)
        }))
    }

    async fn reconnect(&mut self) -> Result<(), Error> {
        // A session that dies young (a peer that accepts and then drops us) must not turn into
        // a tight reconnect loop: wait as after a failed attempt.
        if self.connected_at.elapsed() < HEALTHY_AFTER {
            tokio::time::sleep(self.backoff.next_wait()).await;
        }
        self.session = self.connect_again().await?;
        self.note_session_token();
        Ok(())
    }

    /// Records when the token of the session just connected expires, and when to look for its
    /// renewal. (Read just after connecting: a renewal in between is taken for the session's
    /// token, and the session is then replaced when the server ends it, as without a file.)
    fn note_session_token(&mut self) {
        self.session_expiry = self.upstream.renewable_token_expiry();
        self.refresh_at = refresh_time(self.session_expiry);
    }

    async fn connect_again(&mut self) -> Result<Session, Error> {
        if self.connected_at.elapsed() >= HEALTHY_AFTER {
            self.backoff.reset();
        }
        let (session, server) = self
            .upstream
            .connect_with_retry(&self.endpoint, &mut self.backoff)
            .await?;
        self.server = server;
        self.connected_at = Instant::now();
        Ok(session)
    }

    /// Stops listening gracefully: the server is told (GoAway) to send nothing new, connections
    /// already accepted carry on, and [`Listener::accept`] returns [`Error::Closed`].
    pub fn close(&mut self) {
        self.closed = true;
        self.session.go_away();
    }

    /// Stops listening at once: the connection to the server is closed and every accepted
    /// connection fails.
    pub fn shutdown(&mut self) {
        self.closed = true;
        self.session.close();
    }

    /// Ends the listener for good, after [`Listener::close`] and once the accepted connections are
    /// done: closes the connection to the server after every byte they wrote has been sent.
    /// A process that exits right after must call this, or the end of the last responses may be
    /// lost with it.
    pub async fn finish(&mut self) {
        self.closed = true;
        self.session.close_and_flush().await;
    }

    /// Why the current session ended, if it has.
    pub fn end_reason(&self) -> Option<SessionEnd> {
        self.session.end_reason()
    }
}

/// How long after its token's expiry a replaced session is left to the server (which ends it
/// then, its requests given 30 s to finish) before it is ended here: a server with
/// `disable_disconnect_on_expiry` keeps it, and every renewal would leave one more behind.
const RETIRE_AFTER_EXPIRY: Duration = Duration::from_secs(35);

/// Ends a replaced session the server has kept past its token's expiry: GoAway (the server stops
/// routing to it), its streams finish (for as long again at most), then it is closed.
async fn retire(old: Session, expiry: SystemTime) {
    let wait = expiry.duration_since(SystemTime::now()).unwrap_or_default() + RETIRE_AFTER_EXPIRY;
    tokio::select! {
        _ = old.closed() => return,
        () = tokio::time::sleep(wait) => {}
    }
    old.go_away();
    let _ = tokio::time::timeout(RETIRE_AFTER_EXPIRY, old.streams_closed()).await;
    old.close();
}

/// Resolves at `at`; never without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renewal_is_looked_for_before_expiry_and_not_after() {
        let now = Instant::now();
        let in_secs = |secs| Some(SystemTime::now() + Duration::from_secs(secs));
        // A day-long token: looked for 30 s before it expires; a 10 s one: halfway.
        let day = refresh_time(in_secs(86_400)).unwrap() - now;
        assert!(day.abs_diff(Duration::from_secs(86_370)) < Duration::from_millis(100));
        let short = refresh_time(in_secs(10)).unwrap() - now;
        assert!(short.abs_diff(Duration::from_secs(5)) < Duration::from_millis(100));
        // Not renewed yet: the file is read again every second, until the expiry.
        let again = recheck_time(in_secs(10)).unwrap() - now;
        assert!(again.abs_diff(RENEWAL_CHECK) < Duration::from_millis(100));
        let at = Instant::now();
        let last = recheck_time(Some(SystemTime::now() + Duration::from_millis(300))).unwrap() - at;
        assert!(last.abs_diff(Duration::from_millis(300)) < Duration::from_millis(100));
        assert_eq!(
            recheck_time(Some(SystemTime::now() - Duration::from_secs(1))),
            None
        );
        assert_eq!(refresh_time(None), None);
        assert_eq!(recheck_time(None), None);
    }

    /// A replaced session the server keeps past its token's expiry is ended here: GoAway, then
    /// closed once its streams are done; one the server ends is left alone.
    #[tokio::test(start_paused = true)]
    async fn a_replaced_session_is_retired_if_the_server_keeps_it() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let client = Session::client(ours, piko_mux::Config::default());
        let server = Session::server(theirs, piko_mux::Config::default());
        let expired = SystemTime::now() - Duration::from_secs(1);
        let retiring = tokio::spawn(retire(client.clone(), expired));
        // A request still in flight when the time comes.
        let stream = server.open().await.unwrap();
        let accepted = client.accept().await.unwrap();
        server.remote_go_away().await.unwrap();
        assert!(!client.is_closed(), "its stream is still open");
        drop(accepted);
        drop(stream);
        retiring.await.unwrap();
        assert!(client.is_closed());
    }
}
