//! Reconnect backoff: Piko's policy (spec §5.7.1): the first wait is the minimum, each next one
//! doubles up to the maximum, and each is stretched by a random 0-10 % so that agents cut off
//! together do not reconnect in lockstep.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::random_range(1.0..1.1))
    }

    /// Back to the minimum, after a connection that lived long enough to count as healthy.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next_wait()).collect();
        let bases = [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000];
        for (wait, base) in waits.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *wait >= base && *wait < base.mul_f64(1.1),
                "{wait:?} not in [{base:?}, +10%)"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() < Duration::from_millis(110));
    }
}
