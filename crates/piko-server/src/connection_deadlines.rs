//! Deadlines of one client connection:
//!
//! - **header read**: once the first byte of a request head has arrived (from accept, for the
//!   first request), the head must be complete within the limit (no slow loris);
//! - **idle**: a keep-alive connection with no request in flight is closed after the limit
//!   (gracefully: an HTTP/2 client gets GOAWAY);
//! - **write stall**: a client that acknowledges none of the bytes sent to it for the limit is
//!   cut. Like a read stall of a request body (see `request_body_idle`), this bounds *no
//!   progress*, not the exchange's length: a download or an event stream may last hours. The
//!   kernel enforces it (`TCP_USER_TIMEOUT`), because only it sees acknowledgements: a slow
//!   reader behind a large send buffer leaves writes blocked for long stretches while making
//!   steady progress.
//!
//! The first two are enforced by a watchdog in the connection's task. The connection's reads and
//! its requests record what happens in a few atomics (on state changes only, never per byte); the
//! watchdog computes the deadline that applies now and keeps a single timer armed, moved only
//! when a deadline comes earlier (a later one is picked up when the timer fires). Upgraded
//! connections leave hyper, and with it the watchdog, and their write stall limit is lifted: like
//! Go, which clears deadlines on a hijacked connection, tunnels are not cut for being quiet.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The limits; `None` disables one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    /// From the first byte of a request head (from accept for the first request) to its end.
    pub(crate) header_read: Option<Duration>,
    /// How long a connection may wait for its next request.
    pub(crate) idle: Option<Duration>,
    /// How long bytes sent to a client may stay unacknowledged.
    pub(crate) write_stall: Option<Duration>,
}

/// What the watchdog decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Idle too long: close gracefully.
    Idle,
    /// A request head arrived too slowly: cut.
    HeaderRead,
}

/// What a connection's I/O, requests and watchdog share. Times are milliseconds since `origin`,
/// plus one, so that zero means "not set".
#[derive(Debug)]
pub(crate) struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Set once a request has been received: the idle limit applies from then on.
    served: AtomicBool,
    http2: AtomicBool,
    idle_since: AtomicU64,
    head_started: AtomicU64,
    /// HTTP/2 requests end in their own tasks; the watchdog must hear that the connection idles.
    watchdog: AtomicWaker,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(1),
            // The first request's head is timed from accept, as Go does.
            head_started: AtomicU64::new(1),
            watchdog: AtomicWaker::new(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn at(&self, mark: u64) -> Instant {
        self.origin + Duration::from_millis(mark.saturating_sub(1))
    }

    /// A request head has been parsed. The returned guard marks the end of the exchange when it
    /// is dropped (with the response body).
    pub(crate) fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        if http2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        InFlight {
            activity: self.clone(),
        }
    }

    fn request_finished(&self) {
        // The idle mark is written before the count drops (and published by the release), so a
        // watchdog that sees no request in flight on another thread (HTTP/2) never pairs that
        // with the previous idle mark.
        self.idle_since.store(self.now(), Ordering::Relaxed);
        if self.in_flight.fetch_sub(1, Ordering::Release) == 1 && self.http2.load(Ordering::Relaxed)
        {
            self.watchdog.wake();
        }
    }

    /// The client opened with HTTP/2's preface: from here its silence is bounded by the idle
    /// limit (an h2c client such as a gRPC channel may connect well before its first call).
    fn http2_started(&self) {
        self.http2.store(true, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    /// Bytes arrived from the client.
    fn read_progress(&self) {
        // On HTTP/1.1, bytes on an idle connection are the next request's head. (On HTTP/2 they
        // may be pings or settings: only the idle limit applies there.)
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
        }
    }

    /// The deadline that applies in the current state, and what its expiry means.
    fn deadline(&self, limits: &Deadlines) -> Option<(Instant, Expired)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            return limits
                .header_read
                .map(|limit| (self.at(head) + limit, Expired::HeaderRead));
        }
        if !self.served.load(Ordering::Relaxed) {
            return None;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        limits
            .idle
            .map(|limit| (self.at(since) + limit, Expired::Idle))
    }
}

/// Marks one exchange as in flight until it is dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.request_finished();
    }
}

/// A response body that keeps its exchange in flight until hyper is done with it.
#[derive(Debug)]
pub(crate) struct TrackedBody {
    body: piko_http::body::Body,
    _in_flight: InFlight,
}

impl TrackedBody {
    pub(crate) fn new(body: piko_http::body::Body, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = piko_http::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How an HTTP/2 connection with prior knowledge starts.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection's socket, reporting progress to its [`Activity`].
#[derive(Debug)]
pub(crate) struct WatchedIo<T> {
    io: T,
    activity: Arc<Activity>,
    /// How many of the connection's first bytes matched the HTTP/2 preface; `None` once decided.
    preface_matched: Option<usize>,
}

impl<T> WatchedIo<T> {
    pub(crate) fn new(io: T, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            preface_matched: Some(0),
        }
    }

    /// The socket, for an upgraded connection leaving hyper.
    pub(crate) fn into_inner(self) -> T {
        self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(matched) = self.preface_matched {
                // The preface may arrive over several reads.
                let new = &buf.filled()[before..];
                let expected = &HTTP2_PREFACE[matched..];
                let n = new.len().min(expected.len());
                self.preface_matched = if new[..n] != expected[..n] {
                    None
                } else if matched + n == HTTP2_PREFACE.len() {
                    self.activity.http2_started();
                    None
                } else {
                    Some(matched + n)
                };
            }
            self.activity.read_progress();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Drives `connection` until it finishes (`Ok`) or a deadline expires (`Err`).
pub(crate) async fn watch<F: Future>(
    mut connection: Pin<&mut F>,
    activity: &Activity,
    limits: &Deadlines,
) -> Result<F::Output, Expired> {
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut armed: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = connection.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        activity.watchdog.register(cx.waker());
        loop {
            let Some((deadline, expired)) = activity.deadline(limits) else {
                // Nothing to enforce; a timer still armed is rechecked when it fires.
                if armed.is_none() {
                    return Poll::Pending;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    armed = None;
                }
                return Poll::Pending;
            };
            if armed.is_none_or(|at| deadline < at) {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired for the deadline it was armed with; the one that applies now may
            // have moved later since.
            armed = None;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(expired));
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Deadlines = Deadlines {
        header_read: Some(Duration::from_secs(10)),
        idle: Some(Duration::from_secs(300)),
        write_stall: Some(Duration::from_secs(10)),
    };

    #[tokio::test(start_paused = true)]
    async fn deadline_follows_the_connection_state() {
        let activity = Activity::new();
        let start = Instant::now();
        // First request: its head is timed from accept.
        let (at, expired) = activity.deadline(&LIMITS).unwrap();
        assert_eq!(
            (at, expired),
            (start + Duration::from_secs(10), Expired::HeaderRead)
        );

        tokio::time::advance(Duration::from_secs(2)).await;
        let in_flight = activity.request_started(false);
        assert_eq!(activity.deadline(&LIMITS), None, "busy");
        activity.read_progress();
        assert_eq!(activity.deadline(&LIMITS), None, "a body is not a head");

        tokio::time::advance(Duration::from_secs(3)).await;
        drop(in_flight);
        let (at, expired) = activity.deadline(&LIMITS).unwrap();
        assert_eq!(
            (at, expired),
            (start + Duration::from_secs(305), Expired::Idle)
        );

        // The next head's first byte starts the header clock, however long the idle was.
        tokio::time::advance(Duration::from_secs(60)).await;
        activity.read_progress();
        let (at, expired) = activity.deadline(&LIMITS).unwrap();
        assert_eq!(
            (at, expired),
            (start + Duration::from_secs(75), Expired::HeaderRead)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.read_progress();
        assert_eq!(
            activity.deadline(&LIMITS).unwrap().0,
            at,
            "not extended by more bytes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_idles_before_its_first_request() {
        let activity = Activity::new();
        let start = Instant::now();
        activity.http2_started();
        activity.read_progress();
        let (at, expired) = activity.deadline(&LIMITS).unwrap();
        assert_eq!(
            (at, expired),
            (start + Duration::from_secs(300), Expired::Idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_http2_preface_is_recognised_across_reads_and_only_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let start = Instant::now();
        for (parts, http2) in [
            (&[&HTTP2_PREFACE[..5], &HTTP2_PREFACE[5..]][..], true),
            (&[&HTTP2_PREFACE[..14]][..], false),
            (&[b"GET / HTTP/1.1\r\n".as_slice()][..], false),
        ] {
            let activity = Activity::new();
            let (mut client, server) = tokio::io::duplex(64);
            let mut watched = WatchedIo::new(server, activity.clone());
            for part in parts {
                client.write_all(part).await.unwrap();
                let mut buf = [0u8; 64];
                let _ = watched.read(&mut buf).await.unwrap();
            }
            let expected = if http2 {
                (start + Duration::from_secs(300), Expired::Idle)
            } else {
                (start + Duration::from_secs(10), Expired::HeaderRead)
            };
            assert_eq!(activity.deadline(&LIMITS).unwrap(), expected, "{parts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn http2_bytes_between_requests_are_not_a_head() {
        let activity = Activity::new();
        let start = Instant::now();
        drop(activity.request_started(true));
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.read_progress();
        let (at, expired) = activity.deadline(&LIMITS).unwrap();
        assert_eq!(
            (at, expired),
            (start + Duration::from_secs(300), Expired::Idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_fires_at_the_current_deadline() {
        let activity = Activity::new();
        let limits = Deadlines {
            header_read: None,
            ..LIMITS
        };
        drop(activity.request_started(false));
        let start = Instant::now();
        let never = std::pin::pin!(std::future::pending::<()>());
        let watched = watch(never, &activity, &limits);
        tokio::pin!(watched);
        // A request in the middle moves the idle deadline later; the timer follows.
        tokio::select! {
            _ = watched.as_mut() => panic!("expired early"),
            () = tokio::time::sleep(Duration::from_secs(200)) => {}
        }
        drop(activity.request_started(false));
        assert_eq!(watched.await, Err(Expired::Idle));
        assert_eq!(start.elapsed(), Duration::from_secs(500));
    }
}
