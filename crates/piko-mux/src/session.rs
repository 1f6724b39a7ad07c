//! The session handle and the three tasks that drive a session: the reader (applies inbound
//! frames), the writer (batches all queued output into as few writes as possible) and the timer
//! (keep-alive, open and close deadlines).

use std::{
    io::IoSlice,
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{Notify, watch},
    time::{Instant, timeout},
};

use crate::{
    config::Config,
    error::{Error, SessionEnd},
    frame::FrameDecoder,
    state::{Effects, IDLE_BUFFER_MAX, Poll, Role, State},
    stream::Stream,
};

/// Smallest read the reader issues; an idle session holds about this much read buffer.
const MIN_READ: usize = 4 * 1024;
/// Largest read: bulk transfers move this much per syscall.
const MAX_READ: usize = 256 * 1024;
/// Control frames queued (mostly ping replies and window updates) above which the reader stops
/// reading until the writer catches up: a peer that sends but never reads cannot grow it.
const MAX_CONTROL_BACKLOG: usize = 64 * 1024;

#[derive(Clone, Debug, Default)]
struct Status {
    remote_go_away: bool,
    end: Option<SessionEnd>,
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
    status: watch::Sender<Status>,
}

impl Shared {
    /// Runs `f` under the lock, then delivers the wake-ups it asked for.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let (result, status) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let result = f(&mut state, &mut fx);
            let status = fx.status.then(|| Status {
                remote_go_away: state.remote_go_away,
                end: state.end.clone(),
            });
            (result, status)
        };
        fx.wake_all();
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
        if let Some(status) = status {
            self.status.send_replace(status);
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
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(io, config, Role::Client)
    }

    /// Starts the server side of a session (even stream IDs), as Piko's server is.
    pub fn server<T>(io: T, config: Config) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(io, config, Role::Server)
    }

    fn start<T>(io: T, config: Config, role: Role) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let state = State::new(role, &config, Instant::now());
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            writer: Notify::new(),
            timer: Notify::new(),
            accept: Notify::new(),
            open: Notify::new(),
            drained: Notify::new(),
            status: watch::Sender::new(Status::default()),
        });
        let (reader, writer) = tokio::io::split(io);
        tokio::spawn(read_loop(shared.clone(), reader));
        tokio::spawn(write_loop(shared.clone(), writer));
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
    }

    /// Ends the session: queued output is flushed (bounded by the write timeout), the transport is
    /// shut down, every stream fails.
    pub fn close(&self) {
        self.shared().terminate(SessionEnd::LocalClose);
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

    /// Whether the peer sent GoAway(0).
    pub fn is_remote_go_away(&self) -> bool {
        self.shared().with_state(|state, _| state.remote_go_away)
    }

    /// Streams the session is tracking: open, queued for accept, or half-closed and detached.
    pub fn num_streams(&self) -> usize {
        self.shared().with_state(|state, _| state.num_streams())
    }
}

async fn read_loop<R: AsyncRead>(shared: Arc<Shared>, reader: R) {
    let mut reader = pin!(reader);
    let mut ended = shared.status.subscribe();
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::new();
    let mut read_size = MIN_READ;
    loop {
        let applied = shared.with_state(|state, fx| {
            let mut used = 0;
            let result = loop {
                match decoder.decode(&buf[used..]) {
                    Ok(Some((part, n))) => {
                        used += n;
                        if let Err(end) = state.on_part(part, fx) {
                            break Err(end);
                        }
                    }
                    Ok(None) => break Ok(state.control_backlog()),
                    Err(err) => break Err(SessionEnd::Protocol(err.into())),
                }
            };
            buf.advance(used);
            result
        });
        match applied {
            Err(end) => return shared.terminate(end),
            Ok(backlog) if backlog > MAX_CONTROL_BACKLOG => {
                let mut drained = pin!(shared.drained.notified());
                drained.as_mut().enable();
                if shared.with_state(|state, _| state.control_backlog()) > MAX_CONTROL_BACKLOG {
                    tokio::select! {
                        _ = drained => {}
                        _ = ended.wait_for(|s| s.end.is_some()) => return,
                    }
                }
                continue;
            }
            Ok(_) => {}
        }
        if buf.is_empty() && buf.capacity() > 2 * read_size {
            buf = BytesMut::new();
        }
        buf.reserve(read_size);
        let spare = buf.capacity() - buf.len();
        let result = tokio::select! {
            biased;
            result = reader.read_buf(&mut buf) => result,
            _ = ended.wait_for(|s| s.end.is_some()) => return,
        };
        match result {
            Ok(0) => return shared.terminate(SessionEnd::PeerClosed),
            Ok(n) if n == spare => read_size = (read_size * 2).min(MAX_READ),
            Ok(n) if n < read_size / 4 => read_size = (read_size / 2).max(MIN_READ),
            Ok(_) => {}
            Err(err) => return shared.terminate(SessionEnd::Io(Arc::new(err))),
        }
    }
}

async fn write_loop<W: AsyncWrite>(shared: Arc<Shared>, writer: W) {
    let mut writer = pin!(writer);
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
                match timeout(write_timeout, writer.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return shared.terminate(SessionEnd::Io(Arc::new(err))),
                    Err(_) => return shared.terminate(SessionEnd::WriteTimeout),
                }
            }
            if let Some(end) = end {
                if matches!(end, SessionEnd::LocalClose | SessionEnd::Protocol(_)) {
                    let _ = timeout(write_timeout, writer.shutdown()).await;
                }
                return;
            }
            for buf in [&mut control, &mut out] {
                if buf.capacity() > IDLE_BUFFER_MAX {
                    *buf = BytesMut::new();
                }
            }
            shared.writer.notified().await;
            continue;
        }
        match timeout(
            write_timeout,
            write_both(&mut writer, &mut control, &mut out),
        )
        .await
        {
            Ok(Ok(())) => unflushed = true,
            Ok(Err(err)) => return shared.terminate(SessionEnd::Io(Arc::new(err))),
            Err(_) => return shared.terminate(SessionEnd::WriteTimeout),
        }
        control.clear();
        out.clear();
        shared.drained.notify_waiters();
    }
}

/// Writes `first` then `second` with vectored writes: usually one syscall for both.
async fn write_both<W: AsyncWrite + Unpin>(
    writer: &mut W,
    first: &mut BytesMut,
    second: &mut BytesMut,
) -> std::io::Result<()> {
    while !first.is_empty() || !second.is_empty() {
        let slices = [IoSlice::new(first), IoSlice::new(second)];
        let slices = if first.is_empty() {
            &slices[1..]
        } else {
            &slices[..]
        };
        let mut n = writer.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len());
        first.advance(from_first);
        n -= from_first;
        second.advance(n);
    }
    Ok(())
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
