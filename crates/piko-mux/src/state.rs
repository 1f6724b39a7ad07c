//! The session's shared state: the stream table, the output queues and the session-level flags,
//! behind one mutex.
//!
//! Everything that touches the protocol happens here, synchronously, under the lock: the reader
//! task applies inbound frames, stream handles queue outbound frames, the timer task expires
//! deadlines. None of it awaits or does I/O, so the lock is only ever held for a few hundred
//! nanoseconds. Wake-ups are collected in [`Effects`] and delivered after the lock is released.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    task::Waker,
    time::Duration,
};

use bytes::{BufMut, BytesMut};
use tokio::time::Instant;

use crate::{
    config::{Config, INITIAL_STREAM_WINDOW},
    error::{Error, ProtocolError, SessionEnd, StreamError},
    frame::{Flags, FrameType, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, Header, Part},
    id_hash::BuildIdHasher,
};

/// Capacity above which an empty output buffer is released once the session has been idle.
pub(crate) const IDLE_BUFFER_MAX: usize = 8 * 1024;

/// Which IDs this side allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Odd IDs from 1 (Piko's agent and SDK).
    Client,
    /// Even IDs from 2 (Piko's server).
    Server,
}

impl Role {
    fn owns(self, id: u32) -> bool {
        match self {
            Self::Client => id % 2 == 1,
            Self::Server => id.is_multiple_of(2),
        }
    }
}

/// Who holds a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// Opened by the peer, waiting in the accept queue.
    Queued,
    /// A [`Stream`](crate::Stream) handle exists.
    Live,
    /// The handle was dropped after shutdown; waiting for the peer's FIN until the deadline.
    Detached(Instant),
}

#[derive(Debug)]
struct StreamState {
    holder: Holder,
    opened_locally: bool,
    /// Locally opened: the peer ACKed. Remotely opened: we ACKed (the application accepted).
    acked: bool,
    local_fin: bool,
    remote_fin: bool,
    reset: Option<StreamError>,
    send_window: u32,
    /// Credit the peer still has.
    recv_window: u32,
    /// Bytes the application consumed that were not yet granted back to the peer.
    recv_consumed: u32,
    /// A ring: appends never move unread bytes, unlike a buffer consumed from the front.
    recv_buf: VecDeque<u8>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl StreamState {
    fn new(holder: Holder, opened_locally: bool, receive_window: u32) -> Self {
        Self {
            holder,
            opened_locally,
            acked: false,
            local_fin: false,
            remote_fin: false,
            reset: None,
            send_window: INITIAL_STREAM_WINDOW,
            recv_window: receive_window,
            recv_consumed: 0,
            recv_buf: VecDeque::new(),
            read_waker: None,
            write_waker: None,
        }
    }

    fn wake_all(&mut self, fx: &mut Effects) {
        fx.wake(self.read_waker.take());
        fx.wake(self.write_waker.take());
    }

    fn finished(&self) -> bool {
        self.reset.is_some() || (self.local_fin && self.remote_fin)
    }
}

/// Wake-ups owed once the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Most operations wake one or two tasks: keep those inline, off the allocator.
    wakers_inline: [Option<Waker>; 2],
    wakers_spill: Vec<Waker>,
    pub(crate) writer: bool,
    pub(crate) timer: bool,
    pub(crate) accept: bool,
    pub(crate) open: bool,
    pub(crate) status: bool,
}

impl Effects {
    pub(crate) fn wake(&mut self, waker: Option<Waker>) {
        let Some(waker) = waker else { return };
        match self.wakers_inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(waker),
            None => self.wakers_spill.push(waker),
        }
    }

    fn wake_many(&mut self, wakers: &mut Vec<Waker>) {
        if self.wakers_spill.is_empty() {
            std::mem::swap(&mut self.wakers_spill, wakers);
        } else {
            self.wakers_spill.append(wakers);
        }
    }

    /// Wakes everything collected.
    pub(crate) fn wake_all(&mut self) {
        for waker in self.wakers_inline.iter_mut().filter_map(Option::take) {
            waker.wake();
        }
        for waker in self.wakers_spill.drain(..) {
            waker.wake();
        }
    }
}

/// Outcome of a poll-style operation on the state.
pub(crate) enum Poll<T> {
    Ready(T),
    /// The caller's waker was stored; it is woken when progress is possible.
    Pending,
}

#[derive(Debug)]
pub(crate) struct State {
    role: Role,
    receive_window: u32,
    accept_backlog: usize,
    max_unacked_opens: usize,
    max_pending_output: usize,
    streams: HashMap<u32, StreamState, BuildIdHasher>,
    next_id: u32,
    accept_queue: VecDeque<u32>,
    /// Open deadlines of un-ACKed local opens.
    unacked: BTreeSet<(Instant, u32)>,
    /// Close deadlines of detached streams.
    detached: BTreeSet<(Instant, u32)>,
    /// Stream frames, in order: SYN, data, FIN and RST of one stream must not overtake each other.
    out: BytesMut,
    /// Session frames and window grants: they may overtake stream data, so a ping reply or a
    /// window update never waits behind a megabyte of queued payload.
    control: BytesMut,
    /// The writer task is parked and must be notified when output is queued.
    writer_idle: bool,
    /// Streams waiting for `out` to drain below `max_pending_output`.
    blocked_writers: Vec<Waker>,
    next_ping_id: u32,
    /// Outstanding keep-alive ping and the deadline for its reply.
    ping: Option<(u32, Instant)>,
    next_ping_at: Option<Instant>,
    /// Stream of the Data frame whose payload is arriving.
    inbound: u32,
    pub(crate) end: Option<SessionEnd>,
    pub(crate) local_go_away: bool,
    pub(crate) remote_go_away: bool,
}

impl State {
    pub(crate) fn new(role: Role, config: &Config, now: Instant) -> Self {
        Self {
            role,
            receive_window: config.effective_receive_window(),
            accept_backlog: config.accept_backlog,
            max_unacked_opens: config.max_unacked_opens.max(1),
            max_pending_output: config.max_pending_output.max(1),
            streams: HashMap::default(),
            next_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            accept_queue: VecDeque::new(),
            unacked: BTreeSet::new(),
            detached: BTreeSet::new(),
            out: BytesMut::new(),
            control: BytesMut::new(),
            writer_idle: false,
            blocked_writers: Vec::new(),
            next_ping_id: 0,
            ping: None,
            next_ping_at: config.keep_alive_interval.map(|interval| now + interval),
            inbound: 0,
            end: None,
            local_go_away: false,
            remote_go_away: false,
        }
    }

    pub(crate) fn num_streams(&self) -> usize {
        self.streams.len()
    }

    /// Window delta announced at open/accept when we grant more than the implied initial window.
    fn extra_window(&self) -> u32 {
        self.receive_window - INITIAL_STREAM_WINDOW
    }

    fn push_out(&mut self, header: Header, payload: &[&[u8]], fx: &mut Effects) {
        self.out.put_slice(&header.encode());
        for chunk in payload {
            self.out.put_slice(chunk);
        }
        self.wake_writer(fx);
    }

    fn push_control(&mut self, header: Header, fx: &mut Effects) {
        self.control.put_slice(&header.encode());
        self.wake_writer(fx);
    }

    fn wake_writer(&mut self, fx: &mut Effects) {
        if self.writer_idle {
            self.writer_idle = false;
            fx.writer = true;
        }
    }

    // ---- writer task ------------------------------------------------------------------------

    /// Moves all queued output into the writer's buffers (which must be empty), or marks the
    /// writer idle and returns false when there is none.
    pub(crate) fn take_output(
        &mut self,
        control: &mut BytesMut,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> bool {
        if self.control.is_empty() && self.out.is_empty() {
            self.writer_idle = true;
            return false;
        }
        std::mem::swap(&mut self.control, control);
        std::mem::swap(&mut self.out, out);
        fx.wake_many(&mut self.blocked_writers);
        true
    }

    /// Releases large empty output buffers: called once the session has been idle for a while,
    /// so an idle upstream stays within its memory budget without reallocating under load.
    pub(crate) fn shrink_idle_buffers(&mut self) {
        for buf in [&mut self.control, &mut self.out] {
            if buf.is_empty() && buf.capacity() > IDLE_BUFFER_MAX {
                *buf = BytesMut::new();
            }
        }
        // A stream keeps the ring it grew to while busy; an idle one gives it back.
        for stream in self.streams.values_mut() {
            if stream.recv_buf.is_empty() && stream.recv_buf.capacity() > IDLE_BUFFER_MAX {
                stream.recv_buf = VecDeque::new();
            }
        }
    }

    /// Bytes of control frames queued; the reader stops reading while a peer that never reads
    /// makes us queue more and more replies.
    pub(crate) fn control_backlog(&self) -> usize {
        self.control.len()
    }

    // ---- opening and accepting --------------------------------------------------------------

    pub(crate) fn open(
        &mut self,
        now: Instant,
        open_timeout: Duration,
        fx: &mut Effects,
    ) -> Poll<Result<u32, Error>> {
        if let Some(end) = &self.end {
            return Poll::Ready(Err(Error::SessionEnded(end.clone())));
        }
        if self.remote_go_away {
            return Poll::Ready(Err(Error::RemoteGoAway));
        }
        if self.unacked.len() >= self.max_unacked_opens {
            return Poll::Pending;
        }
        let id = self.next_id;
        let Some(next) = id.checked_add(2) else {
            return Poll::Ready(Err(Error::StreamIdsExhausted));
        };
        self.next_id = next;
        self.streams.insert(
            id,
            StreamState::new(Holder::Live, true, self.receive_window),
        );
        let extra = self.extra_window();
        self.push_out(Header::window_update(id, Flags::SYN, extra), &[], fx);
        let deadline = now + open_timeout;
        if self
            .unacked
            .first()
            .is_none_or(|&(first, _)| deadline < first)
        {
            fx.timer = true;
        }
        self.unacked.insert((deadline, id));
        Poll::Ready(Ok(id))
    }

    pub(crate) fn accept(&mut self, fx: &mut Effects) -> Poll<Result<u32, Error>> {
        let extra = self.extra_window();
        while let Some(id) = self.accept_queue.pop_front() {
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            if stream.holder != Holder::Queued {
                continue;
            }
            stream.holder = Holder::Live;
            stream.acked = true;
            // The peer was granted the implied initial window until now; the rest comes with
            // the ACK.
            stream.recv_window += extra;
            self.push_out(Header::window_update(id, Flags::ACK, extra), &[], fx);
            return Poll::Ready(Ok(id));
        }
        if let Some(end) = &self.end {
            return Poll::Ready(Err(Error::SessionEnded(end.clone())));
        }
        if self.local_go_away {
            return Poll::Ready(Err(Error::LocalGoAway));
        }
        Poll::Pending
    }

    // ---- stream handles ---------------------------------------------------------------------

    pub(crate) fn poll_read(
        &mut self,
        id: u32,
        waker: &Waker,
        dst: &mut tokio::io::ReadBuf<'_>,
        fx: &mut Effects,
    ) -> Poll<Result<(), StreamError>> {
        let half_window = self.receive_window / 2;
        let stream = self
            .streams
            .get_mut(&id)
            .expect("live stream is in the table");
        // Bytes the peer sent before its RST are read first; the reset is reported after them.
        if let Some(err) = &stream.reset
            && (stream.recv_buf.is_empty() || !matches!(err, StreamError::ResetByPeer))
        {
            return Poll::Ready(Err(err.clone()));
        }
        if stream.recv_buf.is_empty() {
            if stream.remote_fin {
                return Poll::Ready(Ok(()));
            }
            if let Some(end) = &self.end {
                return Poll::Ready(Err(StreamError::SessionEnded(end.clone())));
            }
            stream.read_waker = Some(waker.clone());
            return Poll::Pending;
        }
        let copied = stream.recv_buf.len().min(dst.remaining());
        let (front, back) = stream.recv_buf.as_slices();
        let from_front = front.len().min(copied);
        dst.put_slice(&front[..from_front]);
        dst.put_slice(&back[..copied - from_front]);
        stream.recv_buf.drain(..copied);
        stream.recv_consumed += copied as u32;
        if stream.recv_consumed >= half_window
            && !stream.remote_fin
            && stream.reset.is_none()
            && self.end.is_none()
        {
            let delta = std::mem::take(&mut stream.recv_consumed);
            stream.recv_window += delta;
            self.push_control(Header::window_update(id, Flags::NONE, delta), fx);
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_write(
        &mut self,
        id: u32,
        waker: &Waker,
        bufs: &[&[u8]],
        fx: &mut Effects,
    ) -> Poll<Result<usize, StreamError>> {
        if let Some(end) = &self.end {
            return Poll::Ready(Err(StreamError::SessionEnded(end.clone())));
        }
        let stream = self
            .streams
            .get_mut(&id)
            .expect("live stream is in the table");
        if let Some(err) = &stream.reset {
            return Poll::Ready(Err(err.clone()));
        }
        if stream.local_fin {
            return Poll::Ready(Err(StreamError::WriteAfterShutdown));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if stream.send_window == 0 {
            stream.write_waker = Some(waker.clone());
            return Poll::Pending;
        }
        if self.out.len() >= self.max_pending_output {
            if !self.blocked_writers.iter().any(|w| w.will_wake(waker)) {
                self.blocked_writers.push(waker.clone());
            }
            return Poll::Pending;
        }
        let room = self.max_pending_output - self.out.len();
        // One frame per call, at most the send window, and a bounded bite of the output queue so
        // one bulk writer cannot crowd out the others.
        let mut left = total
            .min(stream.send_window as usize)
            .min(room.max(16 * 1024));
        let mut chunks: [&[u8]; 8] = [&[]; 8];
        let mut used = 0;
        let mut sent = 0;
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            if left == 0 || used == chunks.len() {
                break;
            }
            let take = buf.len().min(left);
            chunks[used] = &buf[..take];
            used += 1;
            left -= take;
            sent += take;
        }
        stream.send_window -= sent as u32;
        self.push_out(
            Header::data(id, Flags::NONE, sent as u32),
            &chunks[..used],
            fx,
        );
        Poll::Ready(Ok(sent))
    }

    pub(crate) fn shutdown(&mut self, id: u32, fx: &mut Effects) -> Result<(), StreamError> {
        if let Some(end) = &self.end {
            return Err(StreamError::SessionEnded(end.clone()));
        }
        let stream = self
            .streams
            .get_mut(&id)
            .expect("live stream is in the table");
        if let Some(err) = &stream.reset {
            return Err(err.clone());
        }
        if stream.local_fin {
            return Ok(());
        }
        stream.local_fin = true;
        self.push_out(Header::window_update(id, Flags::FIN, 0), &[], fx);
        Ok(())
    }

    pub(crate) fn reset(&mut self, id: u32, fx: &mut Effects) {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("live stream is in the table");
        if stream.reset.is_some() {
            // Whatever the peer sent before its own RST is no longer wanted.
            stream.recv_buf = VecDeque::new();
            return;
        }
        if stream.finished() {
            return;
        }
        stream.reset = Some(StreamError::ResetLocally);
        stream.recv_buf = VecDeque::new();
        stream.wake_all(fx);
        self.forget_unacked(id, fx);
        if self.end.is_none() {
            self.push_out(Header::window_update(id, Flags::RST, 0), &[], fx);
        }
    }

    /// The handle of stream `id` was dropped.
    pub(crate) fn release(
        &mut self,
        id: u32,
        now: Instant,
        close_timeout: Duration,
        fx: &mut Effects,
    ) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.finished() || self.end.is_some() {
            self.streams.remove(&id);
            self.forget_unacked(id, fx);
            return;
        }
        if stream.local_fin {
            // Sending RST now would make a Go peer discard response bytes it has buffered but not
            // read yet; wait for its FIN instead, granting window so it is never stuck.
            let deadline = now + close_timeout;
            stream.holder = Holder::Detached(deadline);
            stream.recv_consumed += stream.recv_buf.len() as u32;
            stream.recv_buf = VecDeque::new();
            stream.read_waker = None;
            stream.write_waker = None;
            self.grant_consumed(id, fx);
            if self
                .detached
                .first()
                .is_none_or(|&(first, _)| deadline < first)
            {
                fx.timer = true;
            }
            self.detached.insert((deadline, id));
            return;
        }
        self.streams.remove(&id);
        self.forget_unacked(id, fx);
        self.push_out(Header::window_update(id, Flags::RST, 0), &[], fx);
    }

    fn grant_consumed(&mut self, id: u32, fx: &mut Effects) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.recv_consumed == 0 || stream.remote_fin {
            return;
        }
        let delta = std::mem::take(&mut stream.recv_consumed);
        stream.recv_window += delta;
        self.push_control(Header::window_update(id, Flags::NONE, delta), fx);
    }

    fn forget_unacked(&mut self, id: u32, fx: &mut Effects) {
        let before = self.unacked.len();
        self.unacked.retain(|&(_, unacked)| unacked != id);
        if self.unacked.len() != before {
            fx.open = true;
        }
    }

    // ---- inbound frames ---------------------------------------------------------------------

    /// Applies one piece of inbound input.
    ///
    /// # Errors
    /// The session must end: a protocol violation, or a GoAway with a non-zero code.
    pub(crate) fn on_part(&mut self, part: Part<'_>, fx: &mut Effects) -> Result<(), SessionEnd> {
        match part {
            Part::Control(header) => match header.ty {
                FrameType::Ping => self.on_ping(header, fx),
                FrameType::GoAway => self.on_go_away(header, fx),
                _ => {
                    self.on_stream_open_flags(header, fx)?;
                    if header.length > 0
                        && let Some(stream) = self.streams.get_mut(&header.stream_id)
                    {
                        stream.send_window = stream.send_window.saturating_add(header.length);
                        fx.wake(stream.write_waker.take());
                    }
                    self.on_stream_close_flags(header, fx);
                    Ok(())
                }
            },
            Part::DataStart(header) => {
                self.on_stream_open_flags(header, fx)?;
                let id = header.stream_id;
                // The payload goes only to a stream it was charged to. A frame for an ID of ours
                // not opened yet must not fill the stream we open while it arrives: its length
                // was never checked against a window. ID 0 is never a stream.
                self.inbound = 0;
                if let Some(stream) = self.streams.get_mut(&id) {
                    if header.length > stream.recv_window {
                        return Err(ProtocolError::WindowExceeded {
                            stream_id: id,
                            len: header.length,
                            window: stream.recv_window,
                        }
                        .into());
                    }
                    stream.recv_window -= header.length;
                    self.inbound = id;
                }
                Ok(())
            }
            Part::Payload(data) => {
                self.on_payload(data, fx);
                Ok(())
            }
            Part::DataEnd(header) => {
                if self
                    .streams
                    .get(&header.stream_id)
                    .is_some_and(|s| matches!(s.holder, Holder::Detached(_)))
                {
                    self.grant_consumed(header.stream_id, fx);
                }
                self.on_stream_close_flags(header, fx);
                Ok(())
            }
        }
    }

    fn on_ping(&mut self, header: Header, fx: &mut Effects) -> Result<(), SessionEnd> {
        if header.stream_id != 0 {
            return Err(ProtocolError::BadStreamId(header.stream_id).into());
        }
        if header.flags.contains(Flags::SYN) {
            self.push_control(Header::ping(Flags::ACK, header.length), fx);
        } else if header.flags.contains(Flags::ACK)
            && self.ping.is_some_and(|(id, _)| id == header.length)
        {
            self.ping = None;
            fx.timer = true;
        }
        Ok(())
    }

    fn on_go_away(&mut self, header: Header, fx: &mut Effects) -> Result<(), SessionEnd> {
        if header.stream_id != 0 {
            return Err(ProtocolError::BadStreamId(header.stream_id).into());
        }
        if header.length != GO_AWAY_NORMAL {
            return Err(SessionEnd::GoAway(header.length));
        }
        if !self.remote_go_away {
            self.remote_go_away = true;
            fx.open = true;
            fx.status = true;
        }
        Ok(())
    }

    /// SYN and ACK, which take effect before a frame's window delta or data.
    fn on_stream_open_flags(&mut self, header: Header, fx: &mut Effects) -> Result<(), SessionEnd> {
        let id = header.stream_id;
        if header.flags.contains(Flags::SYN) {
            if id == 0 {
                return Err(ProtocolError::BadStreamId(0).into());
            }
            if self.role.owns(id) {
                return Err(ProtocolError::WrongParity(id).into());
            }
            if self.streams.contains_key(&id) {
                return Err(ProtocolError::DuplicateStream(id).into());
            }
            if self.local_go_away
                || self.end.is_some()
                || self.accept_queue.len() >= self.accept_backlog
            {
                // Refused: the stream is never created, so its data is discarded as late. The
                // RST goes with the control frames, whose backlog pauses the reader, so a SYN
                // flood cannot grow our output faster than the peer reads it.
                self.push_control(Header::window_update(id, Flags::RST, 0), fx);
                return Ok(());
            }
            self.streams.insert(
                id,
                StreamState::new(Holder::Queued, false, INITIAL_STREAM_WINDOW),
            );
            self.accept_queue.push_back(id);
            fx.accept = true;
        }
        if header.flags.contains(Flags::ACK)
            && let Some(stream) = self.streams.get_mut(&id)
            && stream.opened_locally
            && !stream.acked
        {
            stream.acked = true;
            self.unacked.retain(|&(_, unacked)| unacked != id);
            fx.open = true;
        }
        Ok(())
    }

    /// A piece of the current Data frame's payload (already counted against the window).
    fn on_payload(&mut self, data: &[u8], fx: &mut Effects) {
        let id = self.inbound;
        // Frames for a stream we reset or forgot are late, not wrong: dropped.
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        match stream.holder {
            _ if stream.reset.is_some() || stream.remote_fin => {}
            // Discarded, and granted back once the frame is complete.
            Holder::Detached(_) => stream.recv_consumed += data.len() as u32,
            Holder::Queued | Holder::Live => {
                stream.recv_buf.extend(data);
                fx.wake(stream.read_waker.take());
            }
        }
    }

    /// FIN and RST, which take effect after a frame's data.
    fn on_stream_close_flags(&mut self, header: Header, fx: &mut Effects) {
        let id = header.stream_id;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if header.flags.contains(Flags::FIN) && !stream.remote_fin {
            stream.remote_fin = true;
            fx.wake(stream.read_waker.take());
        }
        if header.flags.contains(Flags::RST) && stream.reset.is_none() {
            // The unread bytes stay: they arrived before the RST, so the reader gets them first
            // (a reply written just before a reset is not lost).
            stream.reset = Some(StreamError::ResetByPeer);
            stream.wake_all(fx);
        }
        if stream.finished() {
            match stream.holder {
                Holder::Detached(deadline) => {
                    self.streams.remove(&id);
                    self.detached.remove(&(deadline, id));
                }
                // Never accepted: the peer gave the stream up before anyone read it, and serving
                // its bytes now would run a request its client has abandoned (and may retry).
                Holder::Queued if stream.reset.is_some() => {
                    self.streams.remove(&id);
                    self.accept_queue.retain(|&queued| queued != id);
                }
                Holder::Queued | Holder::Live => {}
            }
            // A peer that resets or finishes a stream we opened has answered our SYN: its open
            // slot is free again.
            self.forget_unacked(id, fx);
        }
    }

    // ---- timers -----------------------------------------------------------------------------

    /// The earliest instant at which [`State::on_timer`] has work.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let ping = match self.ping {
            Some((_, deadline)) => Some(deadline),
            None => self.next_ping_at,
        };
        [
            ping,
            self.unacked.first().map(|d| d.0),
            self.detached.first().map(|d| d.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expires deadlines up to `now`.
    ///
    /// # Errors
    /// The keep-alive reply is overdue.
    pub(crate) fn on_timer(
        &mut self,
        now: Instant,
        config: &Config,
        fx: &mut Effects,
    ) -> Result<(), SessionEnd> {
        if let Some((_, deadline)) = self.ping {
            if deadline <= now {
                return Err(SessionEnd::KeepAliveTimeout);
            }
        } else if let (Some(at), Some(interval)) = (self.next_ping_at, config.keep_alive_interval)
            && at <= now
        {
            let id = self.next_ping_id;
            self.next_ping_id = self.next_ping_id.wrapping_add(1);
            self.ping = Some((id, now + config.keep_alive_timeout));
            self.next_ping_at = Some(now + interval);
            self.push_control(Header::ping(Flags::SYN, id), fx);
        }
        while let Some(&(deadline, id)) = self.unacked.first() {
            if deadline > now {
                break;
            }
            self.unacked.pop_first();
            fx.open = true;
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            if stream.reset.is_some() {
                continue;
            }
            if let Holder::Detached(deadline) = stream.holder {
                // Nobody is left to tell: forget it now rather than at its close deadline.
                self.detached.remove(&(deadline, id));
                self.streams.remove(&id);
            } else {
                stream.reset = Some(StreamError::OpenTimeout);
                stream.recv_buf = VecDeque::new();
                stream.wake_all(fx);
            }
            self.push_out(Header::window_update(id, Flags::RST, 0), &[], fx);
        }
        while let Some(&(deadline, id)) = self.detached.first() {
            if deadline > now {
                break;
            }
            self.detached.pop_first();
            if self.streams.remove(&id).is_some() {
                self.push_out(Header::window_update(id, Flags::RST, 0), &[], fx);
            }
        }
        Ok(())
    }

    // ---- session level ----------------------------------------------------------------------

    pub(crate) fn go_away(&mut self, fx: &mut Effects) {
        if self.local_go_away || self.end.is_some() {
            return;
        }
        self.local_go_away = true;
        self.push_control(Header::go_away(GO_AWAY_NORMAL), fx);
        // Streams the application will now never accept.
        while let Some(id) = self.accept_queue.pop_front() {
            if self
                .streams
                .get(&id)
                .is_some_and(|s| s.holder == Holder::Queued)
            {
                self.streams.remove(&id);
                self.push_out(Header::window_update(id, Flags::RST, 0), &[], fx);
            }
        }
        fx.accept = true;
    }

    /// Ends the session; false if it had already ended.
    pub(crate) fn terminate(&mut self, end: SessionEnd, fx: &mut Effects) -> bool {
        if self.end.is_some() {
            return false;
        }
        if matches!(end, SessionEnd::Protocol(_)) {
            self.push_control(Header::go_away(GO_AWAY_PROTOCOL_ERROR), fx);
        }
        self.end = Some(end);
        for stream in self.streams.values_mut() {
            stream.wake_all(fx);
        }
        self.streams.retain(|_, s| s.holder == Holder::Live);
        self.accept_queue.clear();
        self.unacked.clear();
        self.detached.clear();
        fx.wake_many(&mut self.blocked_writers);
        self.wake_writer(fx);
        fx.writer = true;
        fx.timer = true;
        fx.accept = true;
        fx.open = true;
        fx.status = true;
        true
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl State {
    /// Checks the receive-window accounting of every stream; a description of the first broken
    /// rule otherwise. `inbound_in_flight` is how much of the Data frame now arriving (on
    /// `self.inbound`) was charged against its window but has not been applied yet.
    ///
    /// While the peer can still send on a stream, every byte of the window it was granted is
    /// in exactly one place: still the peer's to use, buffered for the reader, consumed by the
    /// reader but not granted back yet, or in flight. A stream whose sums drift either lets a
    /// peer buffer more than the window (memory) or stalls it forever (lost credit).
    pub(crate) fn check_invariants(&self, inbound_in_flight: u32) -> Result<(), String> {
        for (&id, stream) in &self.streams {
            let granted = if stream.opened_locally || stream.acked {
                self.receive_window
            } else {
                INITIAL_STREAM_WINDOW
            };
            if stream.recv_buf.len() > granted as usize {
                return Err(format!(
                    "stream {id} buffers {} bytes, more than its window of {granted}",
                    stream.recv_buf.len()
                ));
            }
            if matches!(stream.holder, Holder::Detached(_)) && !stream.recv_buf.is_empty() {
                return Err(format!("detached stream {id} keeps unread bytes"));
            }
            if stream.reset.is_some() || stream.remote_fin {
                continue;
            }
            let in_flight = if id == self.inbound {
                inbound_in_flight
            } else {
                0
            };
            let accounted = u64::from(stream.recv_window)
                + stream.recv_buf.len() as u64
                + u64::from(stream.recv_consumed)
                + u64::from(in_flight);
            if accounted != u64::from(granted) {
                return Err(format!(
                    "stream {id} ({:?}, opened locally: {}, acked: {}): window {} + buffered {} \
                     + consumed {} + in flight {in_flight} = {accounted}, granted {granted}",
                    stream.holder,
                    stream.opened_locally,
                    stream.acked,
                    stream.recv_window,
                    stream.recv_buf.len(),
                    stream.recv_consumed,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn window_accounting_holds_through_a_scripted_exchange() {
        let config = Config {
            receive_window: 2 * INITIAL_STREAM_WINDOW,
            ..Config::default()
        };
        let now = Instant::now();
        let mut state = State::new(Role::Server, &config, now);
        let mut fx = Effects::default();
        let check = |state: &State, in_flight| {
            state
                .check_invariants(in_flight)
                .unwrap_or_else(|broken| panic!("{broken}"));
        };

        // The peer opens stream 1 and sends 10 bytes in two pieces while it is queued.
        let syn = Header::window_update(1, Flags::SYN, 0);
        state.on_part(Part::Control(syn), &mut fx).unwrap();
        check(&state, 0);
        let data = Header::data(1, Flags::NONE, 10);
        state.on_part(Part::DataStart(data), &mut fx).unwrap();
        check(&state, 10);
        state.on_part(Part::Payload(b"hello"), &mut fx).unwrap();
        check(&state, 5);
        state.on_part(Part::Payload(b"world"), &mut fx).unwrap();
        check(&state, 0);
        state.on_part(Part::DataEnd(data), &mut fx).unwrap();
        check(&state, 0);

        // Accepting grants the larger window; reading moves bytes to "consumed".
        assert!(matches!(state.accept(&mut fx), Poll::Ready(Ok(1))));
        check(&state, 0);
        let mut buf = [0u8; 4];
        let mut dst = tokio::io::ReadBuf::new(&mut buf);
        let read = state.poll_read(1, Waker::noop(), &mut dst, &mut fx);
        assert!(matches!(read, Poll::Ready(Ok(()))));
        assert_eq!(dst.filled(), b"hell");
        check(&state, 0);

        // A stream of our own, shut down and dropped: detached, still accounted for.
        let Poll::Ready(Ok(own)) = state.open(now, Duration::from_secs(75), &mut fx) else {
            panic!("open failed");
        };
        check(&state, 0);
        state.shutdown(own, &mut fx).unwrap();
        state.release(own, now, Duration::from_secs(300), &mut fx);
        check(&state, 0);
        fx.wake_all();

        // A Data frame for an ID of ours not opened yet, opened while its payload arrives: the
        // payload, never charged to a window, is dropped rather than buffered.
        let early = Header::data(4, Flags::NONE, 6);
        state.on_part(Part::DataStart(early), &mut fx).unwrap();
        let Poll::Ready(Ok(4)) = state.open(now, Duration::from_secs(75), &mut fx) else {
            panic!("open did not take ID 4");
        };
        check(&state, 0);
        state.on_part(Part::Payload(b"sneaky"), &mut fx).unwrap();
        state.on_part(Part::DataEnd(early), &mut fx).unwrap();
        check(&state, 0);
        assert!(state.streams[&4].recv_buf.is_empty());

        // And the check does catch a stream whose credit went missing.
        state
            .streams
            .get_mut(&1)
            .expect("stream 1 is live")
            .recv_window -= 1;
        let broken = state.check_invariants(0).unwrap_err();
        assert!(broken.starts_with("stream 1 "), "{broken}");
    }
}
