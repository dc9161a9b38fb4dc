//! How acquires went: counts and wait times an instrumented pool keeps, and
//! their difference over a monitor's sampling interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Waits shorter than 2^`FIRST_POWER` ns (about 1 µs) share the first bucket.
const FIRST_POWER: u32 = 10;
/// Waits of 2^`LAST_POWER` ns (about 137 s) and longer share the last ones.
const LAST_POWER: u32 = 37;
/// Buckets per power of two: a bucket spans at most 1/8 of its lower bound.
const SUB_BUCKETS: u32 = 8;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
const BUCKETS: usize = 1 + ((LAST_POWER - FIRST_POWER + 1) * SUB_BUCKETS) as usize;

/// The bucket of a wait of `nanos`.
fn bucket(nanos: u64) -> usize {
    if nanos < 1 << FIRST_POWER {
        return 0;
    }
    let power = (63 - nanos.leading_zeros()).min(LAST_POWER);
    let sub = if power == LAST_POWER && nanos >= 1 << (LAST_POWER + 1) {
        SUB_BUCKETS - 1
    } else {
        // The 3 bits after the leading one.
        u32::try_from((nanos >> (power - SUB_BITS)) & u64::from(SUB_BUCKETS - 1)).unwrap_or(0)
    };
    1 + ((power - FIRST_POWER) * SUB_BUCKETS + sub) as usize
}

/// The upper bound of a bucket, in nanoseconds.
fn upper_bound(bucket: usize) -> u64 {
    if bucket == 0 {
        return 1 << FIRST_POWER;
    }
    let index = u32::try_from(bucket - 1).unwrap_or(u32::MAX);
    let power = FIRST_POWER + index / SUB_BUCKETS;
    let sub = u64::from(index % SUB_BUCKETS);
    (u64::from(SUB_BUCKETS) + sub + 1) << (power - SUB_BITS)
}

/// Wait times of acquires that got a connection, counted in buckets
/// (one atomic increment per acquire, no lock).
#[cfg_attr(
    not(any(feature = "sqlx", feature = "deadpool", feature = "bb8")),
    allow(dead_code)
)]
pub(crate) struct WaitHistogram {
    buckets: Box<[AtomicU64]>,
}

#[cfg_attr(
    not(any(feature = "sqlx", feature = "deadpool", feature = "bb8")),
    allow(dead_code)
)]
impl WaitHistogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn record(&self, nanos: u64) {
        if let Some(count) = self.buckets.get(bucket(nanos)) {
            count.fetch_add(1, Ordering::Release);
        }
    }

    /// Acquires recorded so far.
    pub(crate) fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|count| count.load(Ordering::Acquire))
            .fold(0, u64::wrapping_add)
    }

    pub(crate) fn totals(&self, timeouts: u64) -> AcquireTotals {
        AcquireTotals {
            buckets: self
                .buckets
                .iter()
                .map(|count| count.load(Ordering::Acquire))
                .collect(),
            timeouts,
        }
    }
}

/// What an instrumented pool has counted since it was built: acquires that
/// got a connection (with a histogram of their waits) and acquires that
/// timed out. [`since`](Self::since) gives what happened between two of
/// these, as a [`PoolMonitor`](crate::PoolMonitor) does at every sample.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcquireTotals {
    buckets: Vec<u64>,
    timeouts: u64,
}

impl AcquireTotals {
    /// Acquires that got a connection.
    #[must_use]
    pub fn acquired(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0, |sum, count| sum.wrapping_add(*count))
    }

    /// Acquires that timed out.
    #[must_use]
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// What happened since `earlier` (totals of the same pool, taken
    /// before): its acquires, its timeouts, its 99th percentile wait.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> AcquireWindow {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, now)| now.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        let acquired = counts
            .iter()
            .fold(0, |sum: u64, count| sum.saturating_add(*count));
        AcquireWindow {
            acquired,
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            p99: quantile(&counts, acquired, 0.99),
        }
    }
}

/// The smallest bucket bound that at least `q` of the `total` waits are
/// under.
fn quantile(counts: &[u64], total: u64, q: f64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0_u64;
    for (bucket, count) in counts.iter().enumerate() {
        seen = seen.saturating_add(*count);
        if seen >= rank {
            return Some(Duration::from_nanos(upper_bound(bucket)));
        }
    }
    None
}

/// Acquires over an interval (a monitor's sampling interval): how many got
/// a connection, how many timed out, and how long the slowest 1 % waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct AcquireWindow {
    /// Acquires that got a connection.
    pub acquired: u64,
    /// Acquires that timed out.
    pub timeouts: u64,
    /// The 99th percentile of the waits of the acquires that got a
    /// connection, rounded up to its bucket's bound (at most 12.5 % over);
    /// `None` without any. Serialized in seconds.
    #[serde(serialize_with = "seconds")]
    pub p99: Option<Duration>,
}

impl AcquireWindow {
    /// Timeouts over all acquires that ended (0 without any).
    #[must_use]
    pub fn timeout_rate(&self) -> f64 {
        let ended = self.acquired.saturating_add(self.timeouts);
        if ended == 0 {
            0.0
        } else {
            #[allow(clippy::cast_precision_loss)]
            let rate = self.timeouts as f64 / ended as f64;
            rate
        }
    }
}

fn seconds<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serializer.serialize_some(&duration.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_bound_their_waits_within_an_eighth() {
        let mut last = 0;
        for nanos in [
            0,
            1,
            1_023,
            1_024,
            1_100,
            2_047,
            2_048,
            50_000,
            999_999,
            1 << 36,
            u64::MAX,
        ] {
            let index = bucket(nanos);
            assert!(index >= last, "{nanos}");
            assert!(index < BUCKETS, "{nanos}");
            last = index;
            if (1 << FIRST_POWER..1 << (LAST_POWER + 1)).contains(&nanos) {
                let bound = upper_bound(index);
                assert!(bound > nanos, "{nanos} → {bound}");
                assert!(bound - nanos <= nanos / 8 + 1, "{nanos} → {bound}");
            }
        }
        for index in 1..BUCKETS {
            assert!(upper_bound(index) > upper_bound(index - 1));
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_totals_with_its_p99() {
        let histogram = WaitHistogram::new();
        for _ in 0..50 {
            histogram.record(5_000);
        }
        let earlier = histogram.totals(1);
        for _ in 0..98 {
            histogram.record(100_000);
        }
        histogram.record(9_000_000);
        histogram.record(9_000_000);
        let window = histogram.totals(3).since(&earlier);
        assert_eq!((window.acquired, window.timeouts), (100, 2));
        let p99 = window.p99.unwrap();
        assert!(
            p99 >= Duration::from_millis(9) && p99 <= Duration::from_micros(10_125),
            "{p99:?}"
        );
        assert!((window.timeout_rate() - 2.0 / 102.0).abs() < 1e-9);
        assert_eq!(histogram.count(), 150);
        let idle = histogram.totals(3).since(&histogram.totals(3));
        assert_eq!(
            (idle.acquired, idle.p99, idle.timeout_rate()),
            (0, None, 0.0)
        );
    }
}
