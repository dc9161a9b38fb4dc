//! What every instrumented pool shares: acquire and usage timing, waiters,
//! timeouts, and the connections lent out for leak detection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};

use crate::acquires::{AcquireTotals, WaitHistogram};
use crate::error::ConfigError;
use crate::snapshot::Gauges;

/// One pool's instrumentation.
pub(crate) struct Instrumentation {
    pub(crate) name: Arc<str>,
    /// Times acquires and leases (a counter read: cheaper than the OS clock
    /// on the acquire path).
    clock: quanta::Clock,
    /// Acquires begun. Waiting = begun − got a connection (`waits`) −
    /// `failed`: one atomic increment when an acquire begins and one when
    /// it ends, the second also counting its wait time.
    begun: AtomicU64,
    /// Acquires that ended without a connection: errors, timeouts,
    /// cancellations.
    failed: AtomicU64,
    /// Acquires that got a connection, by wait time.
    waits: WaitHistogram,
    /// Acquires that timed out (also in `failed`).
    timed_out: AtomicU64,
    acquire: Histogram,
    usage: Histogram,
    timeouts: Counter,
    pub(crate) gauges: Gauges,
    /// Connections held longer than this are reported (off when `None`).
    leak_threshold: Option<Duration>,
    /// The connections lent out, when leaks are watched.
    lent: Mutex<HashMap<u64, Lent>>,
    next_id: AtomicU64,
}

/// A connection lent out: since when, and in which span.
struct Lent {
    /// Raw clock ticks.
    acquired: u64,
    span: tracing::Span,
    reported: bool,
}

impl Instrumentation {
    /// Metric handles are taken from the recorder installed now.
    pub(crate) fn new(
        name: String,
        leak_threshold: Option<Duration>,
    ) -> Result<Arc<Self>, ConfigError> {
        if name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if leak_threshold.is_some_and(|threshold| threshold.is_zero()) {
            return Err(ConfigError::Zero("leak_threshold"));
        }
        let pool = || name.clone();
        Ok(Arc::new(Self {
            clock: quanta::Clock::new(),
            acquire: histogram!("perfkit_pool_acquire_seconds", "pool" => pool()),
            usage: histogram!("perfkit_pool_usage_seconds", "pool" => pool()),
            timeouts: counter!("perfkit_pool_acquire_timeouts_total", "pool" => pool()),
            gauges: Gauges::new(&name),
            name: Arc::from(name),
            begun: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            waits: WaitHistogram::new(),
            timed_out: AtomicU64::new(0),
            leak_threshold,
            lent: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }))
    }

    /// Callers waiting in an acquire now.
    #[cfg_attr(not(any(feature = "sqlx", feature = "bb8")), allow(dead_code))]
    pub(crate) fn waiting(&self) -> u64 {
        // The ends first: an acquire's begin is counted before its end, so
        // the difference never goes below the true count of that moment.
        let ended = self
            .waits
            .count()
            .wrapping_add(self.failed.load(Ordering::Acquire));
        self.begun.load(Ordering::Acquire).saturating_sub(ended)
    }

    /// The acquires counted so far.
    pub(crate) fn totals(&self) -> AcquireTotals {
        self.waits.totals(self.timed_out.load(Ordering::Acquire))
    }

    /// Begins an acquire: the caller counts as waiting until the acquire
    /// ends ([`Acquiring::leased`], [`Acquiring::failed`]) or is dropped
    /// (cancelled).
    pub(crate) fn begin(&self) -> Acquiring<'_> {
        self.begun.fetch_add(1, Ordering::AcqRel);
        Acquiring {
            shared: self,
            started: self.clock.raw(),
            ended: false,
        }
    }

    fn since(&self, start: u64) -> Duration {
        Duration::from_nanos(self.clock.delta_as_nanos(start, self.clock.raw()))
    }

    /// Reports the connections held past the leak threshold that were not
    /// reported yet; returns how many it reported.
    pub(crate) fn check_leaks(&self) -> usize {
        let Some(threshold) = self.leak_threshold else {
            return 0;
        };
        let mut reported = 0;
        let mut lent_out = self.lent();
        for lent in lent_out.values_mut() {
            let held = self.since(lent.acquired);
            if lent.reported || held < threshold {
                continue;
            }
            lent.reported = true;
            reported += 1;
            tracing::warn!(
                parent: &lent.span,
                pool = &*self.name,
                span = lent.span.metadata().map_or("none", |span| span.name()),
                held_ms = held.as_secs_f64() * 1_000.0,
                threshold_ms = threshold.as_secs_f64() * 1_000.0,
                "connection held past the leak threshold"
            );
        }
        reported
    }

    fn lent(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lent>> {
        self.lent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An acquire under way: the caller counts as waiting while it lives.
pub(crate) struct Acquiring<'a> {
    shared: &'a Instrumentation,
    /// Raw clock ticks.
    started: u64,
    ended: bool,
}

impl Acquiring<'_> {
    /// The acquire got its connection: its wait is recorded and the lease
    /// begins (registered for leak detection). One clock read ends the
    /// acquire and starts the lease.
    pub(crate) fn leased(mut self, shared: &Arc<Instrumentation>) -> Lease {
        self.ended = true;
        let acquired = shared.clock.raw();
        let waited = shared.clock.delta_as_nanos(self.started, acquired);
        shared.waits.record(waited);
        #[allow(clippy::cast_precision_loss)]
        shared.acquire.record(waited as f64 / 1e9);
        let id = shared.leak_threshold.map(|_| {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            shared.lent().insert(
                id,
                Lent {
                    acquired,
                    span: tracing::Span::current(),
                    reported: false,
                },
            );
            id
        });
        Lease {
            acquired,
            id,
            shared: Arc::clone(shared),
        }
    }

    /// The acquire ended without a connection; `timed_out` when it gave up
    /// waiting (counted as a timeout too).
    pub(crate) fn failed(mut self, timed_out: bool) {
        self.ended = true;
        if timed_out {
            self.shared.timed_out.fetch_add(1, Ordering::AcqRel);
            self.shared.timeouts.increment(1);
        }
        self.shared.failed.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // Cancelled: a timeout around it, an aborted task.
            self.shared.failed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A connection's time out of the pool: its usage is recorded when it ends,
/// and a connection reported as leaked says that it came back.
pub(crate) struct Lease {
    /// Raw clock ticks.
    acquired: u64,
    id: Option<u64>,
    shared: Arc<Instrumentation>,
}

impl Lease {
    pub(crate) fn held_for(&self) -> Duration {
        self.shared.since(self.acquired)
    }

    pub(crate) fn pool(&self) -> &str {
        &self.shared.name
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let held = self.shared.since(self.acquired);
        self.shared.usage.record(held.as_secs_f64());
        let lent = self.id.and_then(|id| self.shared.lent().remove(&id));
        if let Some(lent) = lent.filter(|lent| lent.reported) {
            tracing::info!(
                parent: &lent.span,
                pool = &*self.shared.name,
                held_ms = held.as_secs_f64() * 1_000.0,
                "connection reported as held too long is back"
            );
        }
    }
}
