//! `proxy.http.read_timeout`, applied as a bound on a request body's *silence*: a client that
//! stops sending the rest of its body for the limit fails its request, however long a steady
//! upload takes. (Go's read timeout is a deadline for the whole request, which cuts large
//! uploads.)
//!
//! Only time spent waiting on the client counts: the relay polls the body when it can send more
//! to the upstream, so a slow upstream never makes the client look idle.

use std::{
    fmt,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

/// The client sent nothing of its request body for the read timeout.
#[derive(Debug)]
pub(crate) struct RequestBodyIdle;

impl fmt::Display for RequestBodyIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body idle for longer than the read timeout")
    }
}

impl std::error::Error for RequestBodyIdle {}

/// Whether `error` (or one of its causes) is a [`RequestBodyIdle`].
pub(crate) fn caused_by_idle_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<RequestBodyIdle>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// When the relay last took a piece of the request body from the client (its last piece, once
/// the body is complete): the wait for the response counts from there, so an upload that takes
/// longer than `proxy.timeout` is not answered with 504 while it still progresses, and one that
/// stopped moving (the client or the upstream stalled) is.
#[derive(Debug)]
pub(crate) struct BodyProgress {
    origin: Instant,
    /// Milliseconds from `origin` to the last frame taken.
    last_frame_ms: AtomicU64,
}

impl BodyProgress {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            last_frame_ms: AtomicU64::new(0),
        })
    }

    fn frame_taken(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_frame_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last frame was taken (the request's start if none was).
    pub(crate) fn last_frame(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_frame_ms.load(Ordering::Relaxed))
    }
}

/// A request body that fails with [`RequestBodyIdle`] once the client has been silent too long.
pub(crate) struct IdleLimitedBody {
    body: Incoming,
    /// Body bytes taken from the client, for the metrics (none for an empty body).
    bytes_taken: Option<Counter>,
    limit: Option<Duration>,
    /// Absent for a body that was empty from the start.
    progress: Option<Arc<BodyProgress>>,
    /// Since when the relay has been waiting on the client; `None` while frames flow.
    waiting_since: Option<Instant>,
    /// Created at the first wait only: most requests have no body, or one that arrives at once.
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl IdleLimitedBody {
    /// The body, and what tells how it progresses (`None`: it was empty, so it ended already).
    pub(crate) fn new(
        body: Incoming,
        limit: Option<Duration>,
        bytes_taken: &Counter,
    ) -> (Self, Option<Arc<BodyProgress>>) {
        let progress = (!body.is_end_stream()).then(BodyProgress::new);
        let body = Self {
            bytes_taken: progress.as_ref().map(|_| bytes_taken.clone()),
            body,
            limit,
            progress: progress.clone(),
            waiting_since: None,
            timer: None,
            armed: None,
        };
        (body, progress)
    }

    /// Called while the client owes us bytes: `Ready` once it has owed them too long.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let deadline = *self.waiting_since.get_or_insert_with(Instant::now) + limit;
        loop {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            // A later deadline is picked up when the armed one fires (fewer timer moves).
            if self.armed.is_none_or(|at| deadline < at) {
                timer.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed = None;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
        }
    }
}

impl Body for IdleLimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting_since = None;
                if let Some(progress) = &this.progress {
                    progress.frame_taken();
                }
                if let (Some(bytes_taken), Some(data)) = (
                    &this.bytes_taken,
                    frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()),
                ) {
                    bytes_taken.inc_by(data.len() as u64);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => match this.poll_silence(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(RequestBodyIdle)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
