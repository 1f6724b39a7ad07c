//! The session handle and the three tasks that drive a session: the reader (applies inbound
//! frames), the writer (batches all queued output into as few writes as possible) and the timer
//! (keep-alive, open and close deadlines).

use std::{
    future::poll_fn,
    io,
    pin::{Pin, pin},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll as TaskPoll},
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Notify, watch},
    time::{Instant, timeout},
};

use crate::{
    config::Config,
    error::{Error, SessionEnd},
    frame::FrameDecoder,
    state::{Effects, IDLE_BUFFER_MAX, Poll, Role, State},
    stream::Stream,
    transport::{Io, Transport},
};

/// How long the writer must have been idle before it releases its large buffers: long enough
/// that a busy session never frees and regrows them between batches.
const IDLE_SHRINK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Control frames queued (mostly ping replies and window updates) above which the reader stops
/// reading until the writer catches up: a peer that sends but never reads cannot grow it.
const MAX_CONTROL_BACKLOG: usize = 64 * 1024;

#[derive(Clone, Debug, Default)]
struct Status {
    remote_go_away: bool,
    /// This side sent GoAway(0).
    local_go_away: bool,
    end: Option<SessionEnd>,
    /// The writer task has finished: everything queued before the end was written (or the
    /// transport failed).
    flushed: bool,
}

/// State shared by the session handle, its streams and its tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    state: Mutex<State>,
    writer: Notify,
    timer: Notify,
    accept: Notify,
    open: Notify,
    drained: Notify,
    /// Notified when the last stream leaves the table.
    idle: Notify,
    status: watch::Sender<Status>,
}

impl Shared {
    /// Runs `f` under the lock, then delivers the wake-ups it asked for.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let (result, status, became_idle) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let before = state.num_streams();
            let result = f(&mut state, &mut fx);
            let became_idle = before > 0 && state.num_streams() == 0;
            let status = fx.status.then(|| (state.remote_go_away, state.end.clone()));
            (result, status, became_idle)
        };
        fx.wake_all();
        if became_idle {
            self.idle.notify_waiters();
        }
        if fx.writer {
            self.writer.notify_one();
        }
        if fx.timer {
            self.timer.notify_one();
        }
        if fx.accept {
            self.accept.notify_waiters();
        }
        if fx.open {
            self.open.notify_waiters();
        }
        if let Some((remote_go_away, end)) = status {
            self.status.send_modify(|status| {
                status.remote_go_away = remote_go_away;
                status.end = end;
            });
        }
        result
    }

    pub(crate) fn terminate(&self, end: SessionEnd) {
        let reason = end.to_string();
        if self.with_state(|state, fx| state.terminate(end, fx)) {
            tracing::debug!(%reason, "mux session ended");
        }
    }
}

/// A yamux session over one connection.
///
/// Cloning gives another handle to the same session. Dropping every handle closes the session,
/// like dropping a socket; streams still held then fail with [`SessionEnd::LocalClose`].
///
/// The session runs on three tokio tasks spawned by [`Session::client`] / [`Session::server`],
/// so it must be created inside a tokio runtime.
#[derive(Clone, Debug)]
pub struct Session {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.terminate(SessionEnd::LocalClose);
    }
}

impl Session {
    /// Starts the client side of a session (odd stream IDs), as Piko's agent and SDK are.
    pub fn client<T>(io: T, config: Config) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(Io::new(io), config, Role::Client)
    }

    /// Starts the server side of a session (even stream IDs), as Piko's server is.
    pub fn server<T>(io: T, config: Config) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(Io::new(io), config, Role::Server)
    }

    /// [`Session::client`] over a [`Transport`] that reads and writes in place.
    pub fn client_transport<T: Transport>(transport: T, config: Config) -> Self {
        Self::start(transport, config, Role::Client)
    }

    /// [`Session::server`] over a [`Transport`] that reads and writes in place.
    pub fn server_transport<T: Transport>(transport: T, config: Config) -> Self {
        Self::start(transport, config, Role::Server)
    }

    fn start<T: Transport>(transport: T, config: Config, role: Role) -> Self {
        let state = State::new(role, &config, Instant::now());
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            writer: Notify::new(),
            timer: Notify::new(),
            accept: Notify::new(),
            open: Notify::new(),
            drained: Notify::new(),
            idle: Notify::new(),
            status: watch::Sender::new(Status::default()),
        });
        let transport = Arc::new(SharedTransport(Mutex::new(Box::pin(transport))));
        tokio::spawn(read_loop(shared.clone(), transport.clone()));
        let writer = shared.clone();
        tokio::spawn(async move {
            write_loop(writer.clone(), transport).await;
            writer.status.send_modify(|status| status.flushed = true);
        });
        tokio::spawn(timer_loop(shared.clone()));
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Opens a stream. The SYN is queued at once and data may be written before the peer ACKs.
    ///
    /// Waits while [`Config::max_unacked_opens`] opens are un-ACKed.
    ///
    /// # Errors
    /// [`Error::RemoteGoAway`] once the peer sent GoAway(0); [`Error::SessionEnded`];
    /// [`Error::StreamIdsExhausted`].
    pub async fn open(&self) -> Result<Stream, Error> {
        let shared = self.shared();
        loop {
            let mut notified = pin!(shared.open.notified());
            notified.as_mut().enable();
            let opened = shared.with_state(|state, fx| {
                state.open(Instant::now(), shared.config.stream_open_timeout, fx)
            });
            if let Poll::Ready(result) = opened {
                return result.map(|id| Stream::new(id, shared.clone()));
            }
            notified.await;
        }
    }

    /// Accepts the next stream opened by the peer, sending its ACK.
    ///
    /// Cancel-safe: a stream is taken from the queue only when this returns it.
    ///
    /// # Errors
    /// [`Error::LocalGoAway`] after [`Session::go_away`]; [`Error::SessionEnded`].
    pub async fn accept(&self) -> Result<Stream, Error> {
        let shared = self.shared();
        loop {
            let mut notified = pin!(shared.accept.notified());
            notified.as_mut().enable();
            if let Poll::Ready(result) = shared.with_state(State::accept) {
                return result.map(|id| Stream::new(id, shared.clone()));
            }
            notified.await;
        }
    }

    /// Sends GoAway(0): the peer may open no more streams. Streams already open continue;
    /// streams the application has not accepted yet are reset, and [`Session::accept`] fails.
    pub fn go_away(&self) {
        self.shared().with_state(State::go_away);
        self.shared()
            .status
            .send_if_modified(|status| !std::mem::replace(&mut status.local_go_away, true));
    }

    /// Resolves once this side has sent GoAway(0) (see [`Session::go_away`]), whoever called
    /// it, or the session has ended.
    pub async fn local_go_away(&self) {
        let mut status = self.shared().status.subscribe();
        let _ = status
            .wait_for(|s| s.local_go_away || s.end.is_some())
            .await;
    }

    /// Ends the session: queued output is flushed (bounded by the write timeout), the transport is
    /// shut down, every stream fails.
    pub fn close(&self) {
        self.shared().terminate(SessionEnd::LocalClose);
    }

    /// [`Session::close`], then waits until the output queued before it has been written (bounded
    /// by the write timeout) and the transport shut down: a process about to exit calls this so
    /// the last bytes its streams wrote are not lost.
    pub async fn close_and_flush(&self) {
        self.close();
        let mut status = self.shared().status.subscribe();
        let _ = status.wait_for(|s| s.flushed).await;
    }

    /// Waits until the session ends and says why. Returns at once if it already ended.
    pub async fn closed(&self) -> SessionEnd {
        let mut status = self.shared().status.subscribe();
        let status = status
            .wait_for(|s| s.end.is_some())
            .await
            .expect("sender lives in self");
        status.end.clone().expect("waited for end")
    }

    /// Resolves as soon as the peer sends GoAway(0) (it accepts no new streams; existing streams
    /// continue), so the application can stop routing to it or reconnect at once.
    ///
    /// # Errors
    /// The session ended first, without a GoAway(0).
    pub async fn remote_go_away(&self) -> Result<(), SessionEnd> {
        let mut status = self.shared().status.subscribe();
        let status = status
            .wait_for(|s| s.remote_go_away || s.end.is_some())
            .await
            .expect("sender lives in self");
        match &status.end {
            Some(end) if !status.remote_go_away => Err(end.clone()),
            _ => Ok(()),
        }
    }

    /// Why the session ended, if it has.
    pub fn end_reason(&self) -> Option<SessionEnd> {
        self.shared().with_state(|state, _| state.end.clone())
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.end_reason().is_some()
    }

    /// Whether this side sent GoAway(0).
    pub fn is_local_go_away(&self) -> bool {
        self.shared().status.borrow().local_go_away
    }

    /// Whether the peer sent GoAway(0).
    pub fn is_remote_go_away(&self) -> bool {
        self.shared().with_state(|state, _| state.remote_go_away)
    }

    /// Streams the session is tracking: open, queued for accept, or half-closed and detached.
    pub fn num_streams(&self) -> usize {
        self.shared().with_state(|state, _| state.num_streams())
    }

    /// Waits until the session tracks no stream (every stream finished both ways or was reset),
    /// or the session ended. With [`Session::go_away`] this drains a session gracefully.
    pub async fn streams_closed(&self) {
        let shared = self.shared();
        loop {
            let mut idle = pin!(shared.idle.notified());
            idle.as_mut().enable();
            if shared.with_state(|state, _| state.num_streams() == 0 || state.end.is_some()) {
                return;
            }
            tokio::select! {
                _ = idle => {}
                _ = self.closed() => return,
            }
        }
    }
}

/// The transport, shared by the reader and writer tasks. It is locked only for the duration of
/// one poll, never across an await.
struct SharedTransport<T>(Mutex<Pin<Box<T>>>);

impl<T: Transport> SharedTransport<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pin<Box<T>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poll_read_with(
        &self,
        cx: &mut Context<'_>,
        consume: &mut dyn FnMut(&[u8]),
    ) -> TaskPoll<io::Result<usize>> {
        self.lock().as_mut().poll_read_with(cx, consume)
    }

    /// Writes some of the two buffers.
    fn poll_write_step(
        &self,
        cx: &mut Context<'_>,
        first: &mut BytesMut,
        second: &mut BytesMut,
    ) -> TaskPoll<io::Result<()>> {
        self.lock().as_mut().poll_write_bufs(cx, first, second)
    }
}

/// Applies every byte of `input`; the control backlog afterwards.
fn apply(
    decoder: &mut FrameDecoder,
    mut input: &[u8],
    state: &mut State,
    fx: &mut Effects,
) -> Result<usize, SessionEnd> {
    loop {
        match decoder.decode(input) {
            Ok((None, 0)) => return Ok(state.control_backlog()),
            Ok((part, used)) => {
                input = &input[used..];
                if let Some(part) = part {
                    state.on_part(part, fx)?;
                }
            }
            Err(err) => return Err(SessionEnd::Protocol(err.into())),
        }
    }
}

async fn read_loop<T: Transport>(shared: Arc<Shared>, transport: Arc<SharedTransport<T>>) {
    let mut ended = shared.status.subscribe();
    let mut decoder = FrameDecoder::new();
    loop {
        let mut applied = Ok(0);
        let read = poll_fn(|cx| {
            transport.poll_read_with(cx, &mut |input| {
                if applied.is_ok() {
                    applied = shared.with_state(|state, fx| apply(&mut decoder, input, state, fx));
                }
            })
        });
        let result = tokio::select! {
            biased;
            result = read => result,
            _ = ended.wait_for(|s| s.end.is_some()) => return,
        };
        match result {
            Ok(0) => return shared.terminate(SessionEnd::PeerClosed),
            Ok(_) => {}
            Err(err) => return shared.terminate(SessionEnd::Io(Arc::new(err))),
        }
        match applied {
            Err(end) => return shared.terminate(end),
            Ok(backlog) if backlog > MAX_CONTROL_BACKLOG => loop {
                let mut drained = pin!(shared.drained.notified());
                drained.as_mut().enable();
                if shared.with_state(|state, _| state.control_backlog()) <= MAX_CONTROL_BACKLOG {
                    break;
                }
                tokio::select! {
                    _ = drained => {}
                    _ = ended.wait_for(|s| s.end.is_some()) => return,
                }
            },
            Ok(_) => {}
        }
    }
}

async fn write_loop<T: Transport>(shared: Arc<Shared>, transport: Arc<SharedTransport<T>>) {
    let write_timeout = shared.config.write_timeout;
    let mut control = BytesMut::new();
    let mut out = BytesMut::new();
    let mut unflushed = false;
    loop {
        let (has_output, end) = shared.with_state(|state, fx| {
            (
                state.take_output(&mut control, &mut out, fx),
                state.end.clone(),
            )
        });
        if !has_output {
            if unflushed {
                unflushed = false;
                let flush = poll_fn(|cx| transport.lock().as_mut().poll_flush(cx));
                match timeout(write_timeout, flush).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return shared.terminate(SessionEnd::Io(Arc::new(err))),
                    Err(_) => return shared.terminate(SessionEnd::WriteTimeout),
                }
            }
            if let Some(end) = end {
                if matches!(end, SessionEnd::LocalClose | SessionEnd::Protocol(_)) {
                    let shutdown = poll_fn(|cx| transport.lock().as_mut().poll_shutdown(cx));
                    let _ = timeout(write_timeout, shutdown).await;
                }
                return;
            }
            if timeout(IDLE_SHRINK_AFTER, shared.writer.notified())
                .await
                .is_err()
            {
                for buf in [&mut control, &mut out] {
                    if buf.capacity() > IDLE_BUFFER_MAX {
                        *buf = BytesMut::new();
                    }
                }
                shared.with_state(|state, _| state.shrink_idle_buffers());
                shared.writer.notified().await;
            }
            continue;
        }
        // The timeout bounds each step, not the batch: a batch of a megabyte on a slow uplink may
        // rightly take longer than the timeout, but a connection that takes nothing for that long
        // is dead (Go's yamux applies its timeout per frame for the same reason).
        while !control.is_empty() || !out.is_empty() {
            let step = poll_fn(|cx| transport.poll_write_step(cx, &mut control, &mut out));
            match timeout(write_timeout, step).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return shared.terminate(SessionEnd::Io(Arc::new(err))),
                Err(_) => return shared.terminate(SessionEnd::WriteTimeout),
            }
        }
        unflushed = true;
        control.clear();
        out.clear();
        shared.drained.notify_waiters();
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    let mut ended = shared.status.subscribe();
    loop {
        let notified = shared.timer.notified();
        let deadline = shared.with_state(|state, _| state.next_deadline());
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ended.wait_for(|s| s.end.is_some()) => return,
            _ = notified => continue,
            _ = sleep => {}
        }
        let config = &shared.config;
        if let Err(end) = shared.with_state(|state, fx| state.on_timer(Instant::now(), config, fx))
        {
            return shared.terminate(end);
        }
    }
}
