//! Latencies as a log-linear histogram of microseconds: exact below 256 µs, then 128 buckets per
//! power of two (under 1 % error). Its size depends on the slowest latency seen, never on the
//! number of requests, so a run of any length costs a few kilobytes per client.

use std::time::Duration;

/// Buckets per power of two, as a power of two itself.
const SUB_BITS: u32 = 7;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Values below this have a bucket each.
const EXACT: u64 = SUB_BUCKETS * 2;

#[derive(Clone, Debug, Default)]
pub(super) struct Histogram {
    /// Counts per bucket, grown to the highest bucket used.
    counts: Vec<u64>,
    total: u64,
    max_micros: u64,
}

impl Histogram {
    pub(super) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let index = bucket(micros);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
        self.max_micros = self.max_micros.max(micros);
    }

    pub(super) fn merge(&mut self, other: &Self) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_micros = self.max_micros.max(other.max_micros);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The latency `quantile` (0 to 1) of the recorded ones were at most: the nearest-rank
    /// value, to within its bucket's width.
    pub(super) fn quantile(&self, quantile: f64) -> Duration {
        // Nearest rank: the smallest value with at least this many at or below it.
        let rank = ((quantile * self.total as f64).ceil() as u64).clamp(1, self.total.max(1));
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bounds(index);
                let middle = low.saturating_add((width - 1) / 2);
                return Duration::from_micros(middle.min(self.max_micros));
            }
        }
        self.max()
    }

    pub(super) fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros)
    }
}

fn bucket(micros: u64) -> usize {
    if micros < EXACT {
        return micros as usize;
    }
    let power = u64::from(micros.ilog2());
    let shift = power - u64::from(SUB_BITS);
    let sub = (micros >> shift) - SUB_BUCKETS;
    (EXACT + (shift - 1) * SUB_BUCKETS + sub) as usize
}

/// A bucket's lowest value and its width.
fn bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < EXACT {
        return (index, 1);
    }
    let shift = (index - EXACT) / SUB_BUCKETS + 1;
    let sub = (index - EXACT) % SUB_BUCKETS;
    ((SUB_BUCKETS + sub) << shift, 1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous = 0;
        for micros in (0..100_000).chain([u64::MAX / 2, u64::MAX]) {
            let index = bucket(micros);
            assert!(index >= previous, "{micros}");
            let (low, width) = bounds(index);
            assert!(
                low <= micros && micros - low < width,
                "{micros} in {low}+{width}"
            );
            assert!(width == 1 || width * 128 <= low, "{micros}: width {width}");
            previous = index;
        }
    }

    #[test]
    fn quantiles_are_nearest_rank_within_a_bucket() {
        let mut latency = Histogram::default();
        assert!(latency.is_empty());
        for micros in 1..=200 {
            latency.record(Duration::from_micros(micros));
        }
        assert_eq!(latency.quantile(0.5), Duration::from_micros(100));
        assert_eq!(latency.quantile(0.999), Duration::from_micros(200));
        assert_eq!(latency.quantile(0.0), Duration::from_micros(1));

        let mut slow = Histogram::default();
        slow.record(Duration::from_secs(3));
        latency.merge(&slow);
        assert_eq!(latency.max(), Duration::from_secs(3));
        assert_eq!(latency.quantile(0.5), Duration::from_micros(101));
        let p100 = latency.quantile(1.0).as_secs_f64();
        assert!((p100 - 3.0).abs() < 3.0 / 128.0, "{p100}");
    }
}
