//! What every instrumented pool shares: acquire and usage timing, waiters,
//! timeouts, and the connections lent out for leak detection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};

use crate::error::ConfigError;
use crate::snapshot::Gauges;

/// One pool's instrumentation.
pub(crate) struct Instrumentation {
    pub(crate) name: Arc<str>,
    /// Times acquires and leases (a counter read: cheaper than the OS clock
    /// on the acquire path).
    clock: quanta::Clock,
    waiting: AtomicI64,
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
            waiting: AtomicI64::new(0),
            leak_threshold,
            lent: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }))
    }

    /// Callers waiting in an acquire now (deadpool counts its own).
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn waiting(&self) -> u64 {
        u64::try_from(self.waiting.load(Ordering::Acquire).max(0)).unwrap_or(0)
    }

    /// Counts the caller as waiting until the guard is dropped (by the
    /// acquire's end, or by its cancellation).
    pub(crate) fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    /// Now, in the instrumentation's clock (raw ticks).
    pub(crate) fn now(&self) -> u64 {
        self.clock.raw()
    }

    fn since(&self, start: u64) -> Duration {
        Duration::from_nanos(self.clock.delta_as_nanos(start, self.clock.raw()))
    }

    /// An acquire that began at `started` (from [`now`](Self::now)) got its
    /// connection: its time is recorded and the lease begins (registered for
    /// leak detection). One clock read ends the acquire and starts the lease.
    pub(crate) fn lease(self: &Arc<Self>, started: u64) -> Lease {
        let acquired = self.clock.raw();
        let waited = self.clock.delta_as_nanos(started, acquired);
        #[allow(clippy::cast_precision_loss)]
        self.acquire.record(waited as f64 / 1e9);
        let id = self.leak_threshold.map(|_| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.lent().insert(
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
            shared: Arc::clone(self),
        }
    }

    /// An acquire gave up waiting.
    pub(crate) fn timed_out(&self) {
        self.timeouts.increment(1);
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

/// Counts one caller as waiting while it lives.
pub(crate) struct Waiting<'a>(&'a Instrumentation);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
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
