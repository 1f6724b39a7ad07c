//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`); not part of the API.
//!
//! [`session_script`] drives the session state machine directly, without tasks or I/O: a script
//! of bytes both feeds the peer's input and plays the application, and the window accounting is
//! checked after every step. Driving `State` rather than a whole `Session` keeps every run
//! deterministic (no scheduler, no clock), so a crash replays exactly.

use std::{task::Waker, time::Duration};

use bytes::BytesMut;
use tokio::{io::ReadBuf, time::Instant};

use crate::{
    config::{Config, INITIAL_STREAM_WINDOW},
    error::SessionEnd,
    frame::{Flags, FrameDecoder, FrameType, HEADER_LEN, Header, Part},
    state::{Effects, Poll, Role, State},
};

/// Payload bytes a script may make up for its Data frames and writes, so one input stays fast.
const SYNTHESIZED_BUDGET: usize = 4 << 20;

/// Steps one script may take.
const MAX_STEPS: usize = 20_000;

/// Runs `script` against a fresh session state; panics on any broken rule.
///
/// The first two bytes choose the role and the settings; then each step is one byte naming an
/// action, followed by the bytes that action takes (see [`Action`]). Input that runs out ends the
/// script.
pub fn session_script(script: &[u8]) {
    let mut input = Script { bytes: script };
    let (role, config) = config_from(&mut input);
    let mut run = Run::new(role, config);
    let mut steps = 0;
    while let Some(action) = input.next_byte() {
        steps += 1;
        if steps > MAX_STEPS {
            break;
        }
        run.step(Action::from_byte(action), &mut input);
        run.check("after a step");
    }
}

/// What a script does in one step.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// `len: u8`, then `len` raw bytes from the peer.
    RawInput,
    /// A well-formed frame from the peer (see [`Run::peer_frame`]), split in two chunks.
    PeerFrame,
    Open,
    Accept,
    /// `handle: u8, size: u8`.
    Read,
    /// `handle: u8, size: u8, pieces: u8`.
    Write,
    /// `handle: u8`.
    Shutdown,
    /// `handle: u8`.
    Reset,
    /// `handle: u8`: the application drops its handle.
    Release,
    /// The writer task takes the queued output, which must be whole, valid frames.
    TakeOutput,
    /// `advance: u8`, then the timer task runs.
    Timer,
    GoAway,
    ShrinkIdle,
    Close,
}

impl Action {
    fn from_byte(byte: u8) -> Self {
        // Input frames are what a peer controls: give them the most weight.
        match byte % 20 {
            0..=2 => Self::RawInput,
            3..=7 => Self::PeerFrame,
            8 => Self::Open,
            9 => Self::Accept,
            10 | 11 => Self::Read,
            12 => Self::Write,
            13 => Self::Shutdown,
            14 => Self::Reset,
            15 => Self::Release,
            16 => Self::TakeOutput,
            17 => Self::Timer,
            18 => Self::GoAway,
            // Rare: a closed session has little left to explore.
            _ if byte >= 200 => Self::Close,
            _ => Self::ShrinkIdle,
        }
    }
}

struct Script<'a> {
    bytes: &'a [u8],
}

impl<'a> Script<'a> {
    fn next_byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    /// A byte, or 0 once the script has run out (the step then does its smallest version).
    fn byte(&mut self) -> u8 {
        self.next_byte().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(len.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }
}

fn config_from(input: &mut Script<'_>) -> (Role, Config) {
    let first = input.byte();
    let second = input.byte();
    let role = if first & 0x80 != 0 {
        Role::Client
    } else {
        Role::Server
    };
    let receive_window = [
        INITIAL_STREAM_WINDOW,
        INITIAL_STREAM_WINDOW + 1,
        2 * INITIAL_STREAM_WINDOW,
        // Below the initial window: the session must use the initial one.
        1024,
    ][usize::from(first & 0x3)];
    let config = Config {
        receive_window,
        accept_backlog: [0, 1, 3, 256][usize::from((first >> 2) & 0x3)],
        max_unacked_opens: [0, 1, 3, 256][usize::from((first >> 4) & 0x3)],
        keep_alive_interval: (first & 0x40 != 0).then(|| Duration::from_secs(30)),
        max_pending_output: [1, 100, 16 * 1024, 1 << 20][usize::from(second & 0x3)],
        // Both orders of the two deadlines: a stream may be detached before its open is ACKed.
        stream_open_timeout: Duration::from_secs(75),
        stream_close_timeout: if second & 0x4 != 0 {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(300)
        },
        ..Config::default()
    };
    (role, config)
}

struct Run {
    state: State,
    config: Config,
    role: Role,
    decoder: FrameDecoder,
    /// Payload of the current inbound Data frame already charged to its stream, not yet applied.
    in_flight: u32,
    /// The peer's input is no longer read (the session ended, as its reader task would).
    reader_done: bool,
    /// Streams the application holds a handle of.
    handles: Vec<u32>,
    now: Instant,
    synthesized: usize,
    out_control: BytesMut,
    out_streams: BytesMut,
}

impl Run {
    fn new(role: Role, config: Config) -> Self {
        let now = Instant::now();
        Self {
            state: State::new(role, &config, now),
            config,
            role,
            decoder: FrameDecoder::new(),
            in_flight: 0,
            reader_done: false,
            handles: Vec::new(),
            now,
            synthesized: 0,
            out_control: BytesMut::new(),
            out_streams: BytesMut::new(),
        }
    }

    fn check(&self, when: &str) {
        if let Err(broken) = self.state.check_invariants(self.in_flight) {
            panic!("invariant broken {when}: {broken}");
        }
    }

    /// Runs `f` as the session does: under the lock, then delivering the wake-ups.
    fn with_state<R>(&mut self, f: impl FnOnce(&mut State, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let result = f(&mut self.state, &mut fx);
        fx.wake_all();
        result
    }

    fn terminate(&mut self, end: SessionEnd) {
        self.with_state(|state, fx| state.terminate(end, fx));
        self.reader_done = true;
    }

    fn handle(&self, byte: u8) -> Option<u32> {
        if self.handles.is_empty() {
            return None;
        }
        Some(self.handles[usize::from(byte) % self.handles.len()])
    }

    fn synthesize(&mut self, len: usize) -> Vec<u8> {
        let len = len.min(SYNTHESIZED_BUDGET.saturating_sub(self.synthesized));
        self.synthesized += len;
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn step(&mut self, action: Action, input: &mut Script<'_>) {
        match action {
            Action::RawInput => {
                let len = usize::from(input.byte());
                let bytes = input.take(len);
                self.receive(bytes);
            }
            Action::PeerFrame => {
                let wire = self.peer_frame(input);
                let split = usize::from(input.byte()).min(wire.len());
                self.receive(&wire[..split]);
                self.receive(&wire[split..]);
            }
            Action::Open => {
                let (now, timeout) = (self.now, self.config.stream_open_timeout);
                if let Poll::Ready(Ok(id)) = self.with_state(|s, fx| s.open(now, timeout, fx)) {
                    assert!(
                        self.role_owns(id),
                        "opened stream {id} has the peer's parity"
                    );
                    self.handles.push(id);
                }
            }
            Action::Accept => {
                if let Poll::Ready(Ok(id)) = self.with_state(State::accept) {
                    assert!(!self.role_owns(id), "accepted stream {id} has our parity");
                    assert!(!self.handles.contains(&id), "stream {id} accepted twice");
                    self.handles.push(id);
                }
            }
            Action::Read => {
                let (handle, size) = (input.byte(), usize::from(input.byte()) * 64 + 1);
                if let Some(id) = self.handle(handle) {
                    let mut buf = vec![0; size];
                    let mut dst = ReadBuf::new(&mut buf);
                    self.with_state(|s, fx| s.poll_read(id, Waker::noop(), &mut dst, fx));
                }
            }
            Action::Write => {
                let (handle, size) = (input.byte(), usize::from(input.u16()) * 8);
                let pieces = usize::from(input.byte() % 4) + 1;
                if let Some(id) = self.handle(handle) {
                    let data = self.synthesize(size);
                    let bufs: Vec<&[u8]> =
                        data.chunks(data.len().div_ceil(pieces).max(1)).collect();
                    self.with_state(|s, fx| {
                        if let Poll::Ready(Ok(sent)) = s.poll_write(id, Waker::noop(), &bufs, fx) {
                            assert!(sent <= data.len(), "wrote more than it was given");
                        }
                    });
                }
            }
            Action::Shutdown => {
                if let Some(id) = self.handle(input.byte()) {
                    let _ = self.with_state(|s, fx| s.shutdown(id, fx));
                }
            }
            Action::Reset => {
                if let Some(id) = self.handle(input.byte()) {
                    self.with_state(|s, fx| s.reset(id, fx));
                }
            }
            Action::Release => {
                if let Some(id) = self.handle(input.byte()) {
                    self.handles.retain(|&held| held != id);
                    let (now, timeout) = (self.now, self.config.stream_close_timeout);
                    self.with_state(|s, fx| s.release(id, now, timeout, fx));
                }
            }
            Action::TakeOutput => self.take_output(),
            Action::Timer => {
                self.now += Duration::from_secs(u64::from(input.byte()));
                let now = self.now;
                let config = self.config.clone();
                if let Err(end) = self.with_state(|s, fx| s.on_timer(now, &config, fx)) {
                    self.terminate(end);
                }
            }
            Action::GoAway => self.with_state(State::go_away),
            Action::ShrinkIdle => self.state.shrink_idle_buffers(),
            Action::Close => self.terminate(SessionEnd::LocalClose),
        }
    }

    fn role_owns(&self, id: u32) -> bool {
        match self.role {
            Role::Client => !id.is_multiple_of(2),
            Role::Server => id.is_multiple_of(2),
        }
    }

    /// A frame as a peer would send it, chosen by the script: `type, flags, id, length` bytes,
    /// with a made-up payload for Data frames. The payload is cut in half when the flags byte's
    /// top bit is set (and when the budget runs out), so the frame continues in later input and
    /// the application acts while it is arriving.
    fn peer_frame(&mut self, input: &mut Script<'_>) -> Vec<u8> {
        let ty = input.byte();
        let flags_byte = input.byte();
        let flags = Flags::from_bits(u16::from(flags_byte & 0x1f));
        let id_byte = input.byte();
        let stream_id = match id_byte {
            // Stream IDs the script has seen, so frames reach live streams often.
            0..=127 => self
                .handle(id_byte)
                .unwrap_or_else(|| u32::from(id_byte % 8)),
            128..=247 => u32::from(id_byte % 16),
            _ => input.u32(),
        };
        let length = match input.byte() % 8 {
            0 => 0,
            1 | 2 => u32::from(input.byte()),
            3 => u32::from(input.u16()),
            4 => INITIAL_STREAM_WINDOW,
            5 => INITIAL_STREAM_WINDOW + 1,
            6 => self.config.receive_window,
            _ => input.u32(),
        };
        let header = match ty % 4 {
            0 => Header::data(stream_id, flags, length),
            1 => Header::window_update(stream_id, flags, length),
            2 => Header::ping(flags, length),
            _ => Header::go_away(length % 4),
        };
        let mut wire = header.encode().to_vec();
        if header.ty == FrameType::Data {
            let sent = if flags_byte & 0x80 != 0 {
                length / 2
            } else {
                length
            };
            wire.extend(self.synthesize(sent as usize));
        }
        wire
    }

    /// Applies `bytes` from the peer as the reader task does, checking after every part.
    fn receive(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !self.reader_done {
            let (part, used) = match self.decoder.decode(rest) {
                Ok(decoded) => decoded,
                Err(err) => return self.terminate(SessionEnd::Protocol(err.into())),
            };
            rest = &rest[used..];
            let Some(part) = part else {
                if used == 0 {
                    break;
                }
                continue;
            };
            let applied = self.with_state(|s, fx| s.on_part(part, fx));
            match part {
                Part::DataStart(header) if applied.is_ok() => self.in_flight = header.length,
                Part::Payload(piece) => self.in_flight -= piece.len() as u32,
                Part::DataEnd(_) => self.in_flight = 0,
                _ => {}
            }
            if let Err(end) = applied {
                self.terminate(end);
            }
            self.check("after an inbound part");
        }
    }

    /// Takes the output as the writer task does: it must be whole frames that decode.
    fn take_output(&mut self) {
        let (mut control, mut out) = (
            std::mem::take(&mut self.out_control),
            std::mem::take(&mut self.out_streams),
        );
        control.clear();
        out.clear();
        if self.with_state(|s, fx| s.take_output(&mut control, &mut out, fx)) {
            for queue in [&control, &out] {
                self.check_output(queue);
            }
        }
        self.out_control = control;
        self.out_streams = out;
    }

    /// Walks a queue taken by the writer: whole frames, back to back, with nothing left over
    /// (a queue swapped out mid-frame would interleave with the next batch's frames).
    fn check_output(&self, queue: &[u8]) {
        let mut rest = queue;
        while !rest.is_empty() {
            let raw: &[u8; HEADER_LEN] = rest
                .get(..HEADER_LEN)
                .and_then(|raw| raw.try_into().ok())
                .unwrap_or_else(|| panic!("output ends inside a frame header: {rest:?}"));
            let header = Header::decode(raw)
                .unwrap_or_else(|err| panic!("our own output does not decode: {err}"));
            let frame_len = HEADER_LEN + header.payload_len();
            assert!(
                frame_len <= rest.len(),
                "output ends inside the payload of {header:?}"
            );
            if header.flags.contains(Flags::SYN) && header.ty != FrameType::Ping {
                assert!(
                    self.role_owns(header.stream_id),
                    "we opened stream {} of the peer's parity",
                    header.stream_id
                );
            }
            rest = &rest[frame_len..];
        }
    }
}
