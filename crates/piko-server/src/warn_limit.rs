//! Rate limits for warnings that peers can cause at will (a refused token, an unknown endpoint, a
//! client that stops sending): each such warning is logged at most [`PER_SECOND`] times a second
//! from one place in the code, so that a flood of bad requests cannot flood the log (or fill a
//! disk). The next line logged says how many were left out (`suppressed`).

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// Lines a call site may log per second.
pub(crate) const PER_SECOND: u64 = 5;

/// The state of one call site: the second it last logged in, lines logged in that second, and
/// lines suppressed since it last logged.
#[derive(Debug)]
pub(crate) struct WarnLimit {
    second: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnLimit {
    pub(crate) const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log now, and if so, how many lines were suppressed before this one.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(seconds_since_start())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        // Racing callers may let a line or two more through in a second: a bound, not a count.
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Whole seconds since the first call, counted from 1 (0 marks a call site that never logged).
fn seconds_since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

/// `tracing::warn!`, at most [`PER_SECOND`] lines a second from this call site, each with a
/// `suppressed` field counting the lines left out before it.
macro_rules! warn_limited {
    ($($field:tt)+) => {{
        static LIMIT: $crate::warn_limit::WarnLimit = $crate::warn_limit::WarnLimit::new();
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(suppressed, $($field)+);
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_limit_and_counted() {
        let limit = WarnLimit::new();
        let admitted: Vec<_> = (0..100).filter_map(|_| limit.admit_at(1)).collect();
        assert_eq!(admitted, vec![0; PER_SECOND as usize]);
        // The next second's first line says how many were left out.
        assert_eq!(limit.admit_at(2), Some(100 - PER_SECOND));
        assert_eq!(limit.admit_at(2), Some(0));
    }
}
