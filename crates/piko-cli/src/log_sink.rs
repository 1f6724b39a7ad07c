//! Where log lines go on their way to stderr: a buffer in memory that a background thread writes
//! out a moment after its first line arrives, all the lines of that moment in one write. A line
//! then costs the request path that logs it a copy rather than a system call (the access log
//! writes one line per request). [`flush`] writes what is left before the process exits.
//!
//! Memory stays bounded: a line that finds the buffer past [`HIGH_WATER`] writes the buffer
//! itself, so a stderr that blocks slows the loggers down, as direct writes did, instead of
//! letting lines pile up.

use std::{
    io::Write,
    sync::{
        Condvar, Mutex, MutexGuard, Once, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// How long the first line of a batch waits for others: short enough to read as immediate.
const GATHER: Duration = Duration::from_millis(20);

/// A buffer this full is written at once, by the line that filled it.
const HIGH_WATER: usize = 256 * 1024;

/// A written batch's buffer is kept for the next batch unless it grew past this.
const KEPT_CAPACITY: usize = 1024 * 1024;

struct Sink {
    /// Lines not written yet.
    pending: Mutex<Vec<u8>>,
    /// Signalled when `pending` stops being empty.
    filled: Condvar,
    /// Held while a batch is taken and written, so that batches reach stderr in order; holds the
    /// buffer the next batch is swapped into.
    writing: Mutex<Vec<u8>>,
}

static SINK: Sink = Sink {
    pending: Mutex::new(Vec::new()),
    filled: Condvar::new(),
    writing: Mutex::new(Vec::new()),
};

/// Starts the writer thread, once.
static WRITER: Once = Once::new();

/// The writer thread runs; without it, each line is written by its logger.
static BATCHING: AtomicBool = AtomicBool::new(false);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding a lock leaves plain bytes behind: still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn start_writer() {
    let started = thread::Builder::new()
        .name("log-writer".into())
        .spawn(|| SINK.run());
    match started {
        Ok(_) => BATCHING.store(true, Ordering::Release),
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "log writer thread not started: {err}");
        }
    }
}

/// Queues one line (its newline included) for stderr.
pub(crate) fn write_line(line: &[u8]) {
    WRITER.call_once(start_writer);
    let mut pending = lock(&SINK.pending);
    let was_empty = pending.is_empty();
    pending.extend_from_slice(line);
    let full = pending.len() >= HIGH_WATER;
    drop(pending);
    if full || !BATCHING.load(Ordering::Acquire) {
        SINK.write_out();
    } else if was_empty {
        SINK.filled.notify_one();
    }
}

/// Writes every queued line to stderr now.
pub(crate) fn flush() {
    SINK.write_out();
}

impl Sink {
    /// The writer thread: waits for a first line, lets others join it, writes them all.
    fn run(&self) -> ! {
        loop {
            let mut pending = lock(&self.pending);
            while pending.is_empty() {
                pending = self
                    .filled
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            drop(pending);
            thread::sleep(GATHER);
            self.write_out();
        }
    }

    fn write_out(&self) {
        let mut batch = lock(&self.writing);
        std::mem::swap(&mut *batch, &mut *lock(&self.pending));
        if batch.is_empty() {
            return;
        }
        // A failing stderr (closed, full disk) loses the lines, as a direct write would.
        let _ = std::io::stderr().lock().write_all(&batch);
        batch.clear();
        if batch.capacity() > KEPT_CAPACITY {
            *batch = Vec::new();
        }
    }
}
