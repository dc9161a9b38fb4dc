//! A pool's state at one instant.

use metrics::{Gauge, gauge};
use serde::Serialize;

/// A pool's connections at one instant, consistent with itself: every
/// figure is clamped so that none is negative and none exceeds `max`
/// (a pool's counters are read one after the other and can tear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// The most connections the pool opens.
    pub max: u32,
    /// The fewest it keeps open.
    pub min: u32,
    /// Connections open now.
    pub size: u32,
    /// Open and not lent out.
    pub idle: u32,
    /// Lent out.
    pub in_use: u32,
    /// Callers waiting for a connection, where the pool or the
    /// instrumentation knows it.
    pub waiting: Option<u64>,
}

impl PoolSnapshot {
    /// A snapshot from raw readings, clamped: `size ≤ max`, `idle ≤ size`,
    /// `in_use = size − idle`.
    #[must_use]
    pub fn clamped(max: u32, min: u32, size: i64, idle: i64, waiting: Option<i64>) -> Self {
        let clamp =
            |value: i64, high: u32| u32::try_from(value.clamp(0, i64::from(high))).unwrap_or(high);
        let size = clamp(size, max);
        let idle = clamp(idle, size);
        Self {
            max,
            min: min.min(max),
            size,
            idle,
            in_use: size - idle,
            waiting: waiting.map(|waiting| u64::try_from(waiting.max(0)).unwrap_or(0)),
        }
    }

    /// `in_use / max`, 0 for a pool of no connections.
    #[must_use]
    pub fn utilization(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            f64::from(self.in_use) / f64::from(self.max)
        }
    }
}

/// A pool's gauges: `perfkit_pool_connections{pool,state}` and
/// `perfkit_pool_waiting{pool}`.
pub(crate) struct Gauges {
    idle: Gauge,
    in_use: Gauge,
    total: Gauge,
    max: Gauge,
    waiting: Gauge,
}

impl Gauges {
    pub(crate) fn new(pool: &str) -> Self {
        let state = |state: &'static str| gauge!("perfkit_pool_connections", "pool" => pool.to_owned(), "state" => state);
        Self {
            idle: state("idle"),
            in_use: state("in_use"),
            total: state("total"),
            max: state("max"),
            waiting: gauge!("perfkit_pool_waiting", "pool" => pool.to_owned()),
        }
    }

    pub(crate) fn set(&self, snapshot: &PoolSnapshot) {
        self.idle.set(f64::from(snapshot.idle));
        self.in_use.set(f64::from(snapshot.in_use));
        self.total.set(f64::from(snapshot.size));
        self.max.set(f64::from(snapshot.max));
        if let Some(waiting) = snapshot.waiting {
            #[allow(clippy::cast_precision_loss)]
            self.waiting.set(waiting as f64);
        }
    }
}

/// Anything that can say how its connections are: sqlx's `Pool`, an
/// [`InstrumentedPool`](crate::InstrumentedPool), or a pool of your own.
pub trait PoolSource: Send + Sync {
    /// The pool's state now.
    fn snapshot(&self) -> PoolSnapshot;

    /// The acquires counted since the source was built, where it counts
    /// them (the instrumented pools do): a [`PoolMonitor`](crate::PoolMonitor)
    /// takes the difference between two samples for the conditions on
    /// acquire time and timeouts. `None` by default.
    fn acquires(&self) -> Option<crate::AcquireTotals> {
        None
    }

    /// Called by a [`PoolMonitor`](crate::PoolMonitor) after each of its
    /// samples, for periodic work of the source's own (an
    /// `InstrumentedPool` checks for leaks). Does nothing by default.
    fn sampled(&self) {}
}

#[cfg(feature = "sqlx")]
impl<DB: sqlx::Database> PoolSource for sqlx::Pool<DB> {
    /// sqlx does not count its waiters: `waiting` is `None` (an
    /// [`InstrumentedPool`](crate::InstrumentedPool) counts them).
    fn snapshot(&self) -> PoolSnapshot {
        let options = self.options();
        PoolSnapshot::clamped(
            options.get_max_connections(),
            options.get_min_connections(),
            i64::from(self.size()),
            i64::try_from(self.num_idle()).unwrap_or(i64::MAX),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_readings_are_clamped_into_a_consistent_snapshot() {
        let snapshot = PoolSnapshot::clamped(10, 2, 12, 14, Some(-3));
        assert_eq!((snapshot.size, snapshot.idle, snapshot.in_use), (10, 10, 0));
        assert_eq!(snapshot.waiting, Some(0));
        let snapshot = PoolSnapshot::clamped(10, 20, -1, 3, None);
        assert_eq!(
            (snapshot.min, snapshot.size, snapshot.idle, snapshot.in_use),
            (10, 0, 0, 0)
        );
        let snapshot = PoolSnapshot::clamped(4, 0, 3, 1, Some(5));
        assert_eq!((snapshot.in_use, snapshot.waiting), (2, Some(5)));
        assert!((snapshot.utilization() - 0.5).abs() < f64::EPSILON);
        assert!(PoolSnapshot::clamped(0, 0, 0, 0, None).utilization().abs() < f64::EPSILON);
    }
}
