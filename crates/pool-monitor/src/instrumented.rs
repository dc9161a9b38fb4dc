//! sqlx's pool with the figures it lacks: acquire time, waiters, timeouts
//! and usage time.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram, counter, histogram};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

use crate::error::ConfigError;
use crate::snapshot::{Gauges, PoolSnapshot, PoolSource};

/// A sqlx [`Pool`] whose acquires are timed and counted: how long each
/// waited (histogram), how many are waiting now (a count that a cancelled
/// acquire leaves, too), how many timed out, and how long each connection
/// was held. sqlx's pool alone says only its size and its idle count.
///
/// Queries run unchanged: [`acquire`](Self::acquire) gives a [`Held`]
/// connection that dereferences to the database's connection type.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use perfkit_pool_monitor::{InstrumentedPool, PoolSource};
///
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let pool = InstrumentedPool::builder(pool).name("main").build()?;
/// let mut connection = pool.acquire().await?;
/// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *connection).await?;
/// drop(connection);
/// println!("{:?}", pool.snapshot()); // size, idle, in use, waiting
/// # Ok(()) }
/// ```
pub struct InstrumentedPool<DB: Database> {
    pool: Pool<DB>,
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    waiting: AtomicI64,
    metrics: PoolMetrics,
    /// Connections held longer than this are reported (off when `None`).
    leak_threshold: Option<Duration>,
    /// The connections lent out, when leaks are watched.
    lent: Mutex<HashMap<u64, Lent>>,
    next_id: AtomicU64,
}

/// A connection lent out: since when, and in which span.
struct Lent {
    acquired: Instant,
    span: tracing::Span,
    reported: bool,
}

struct PoolMetrics {
    acquire: Histogram,
    usage: Histogram,
    timeouts: Counter,
    gauges: Gauges,
}

impl PoolMetrics {
    fn new(pool: &str) -> Self {
        Self {
            acquire: histogram!("perfkit_pool_acquire_seconds", "pool" => pool.to_owned()),
            usage: histogram!("perfkit_pool_usage_seconds", "pool" => pool.to_owned()),
            timeouts: counter!("perfkit_pool_acquire_timeouts_total", "pool" => pool.to_owned()),
            gauges: Gauges::new(pool),
        }
    }
}

/// Configures an [`InstrumentedPool`]: `InstrumentedPool::builder(pool)…build()?`.
#[must_use]
pub struct InstrumentedPoolBuilder<DB: Database> {
    pool: Pool<DB>,
    name: String,
    leak_threshold: Option<Duration>,
}

impl<DB: Database> InstrumentedPoolBuilder<DB> {
    /// The `pool` label of its metrics. Default: `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Reports a connection held longer than `threshold`: one `WARN` in the
    /// span it was acquired in, with how long it has been held, and one
    /// `INFO` when it comes back. Checked at each [`PoolMonitor`](crate::PoolMonitor)
    /// sample, or by [`InstrumentedPool::check_leaks`]. Default: off (each
    /// acquire then registers nothing).
    pub fn leak_threshold(mut self, threshold: Duration) -> Self {
        self.leak_threshold = Some(threshold);
        self
    }

    /// The instrumented pool. Metric handles are taken from the recorder
    /// installed now.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyName`] for a blank name, [`ConfigError::Zero`]
    /// for a zero leak threshold.
    pub fn build(self) -> Result<InstrumentedPool<DB>, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self
            .leak_threshold
            .is_some_and(|threshold| threshold.is_zero())
        {
            return Err(ConfigError::Zero("leak_threshold"));
        }
        Ok(InstrumentedPool {
            pool: self.pool,
            shared: Arc::new(Shared {
                metrics: PoolMetrics::new(&self.name),
                name: Arc::from(self.name),
                waiting: AtomicI64::new(0),
                leak_threshold: self.leak_threshold,
                lent: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        })
    }
}

impl<DB: Database> InstrumentedPool<DB> {
    /// A builder around `pool`, with the defaults each setter names.
    pub fn builder(pool: Pool<DB>) -> InstrumentedPoolBuilder<DB> {
        InstrumentedPoolBuilder {
            pool,
            name: "default".to_owned(),
            leak_threshold: None,
        }
    }

    /// A connection, timed from the call to the hand-over. While it waits it
    /// counts as waiting; dropping the future (a timeout around it, an
    /// aborted task) takes it off the count.
    ///
    /// # Errors
    ///
    /// sqlx's: `PoolTimedOut` (also counted), `PoolClosed`, a connect error.
    pub async fn acquire(&self) -> Result<Held<DB>, sqlx::Error> {
        let started = Instant::now();
        let waiting = Waiting::enter(&self.shared);
        let acquired = self.pool.acquire().await;
        drop(waiting);
        match acquired {
            Ok(connection) => {
                self.shared
                    .metrics
                    .acquire
                    .record(started.elapsed().as_secs_f64());
                let acquired = Instant::now();
                let id = self.shared.leak_threshold.map(|_| {
                    let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                    self.shared.lent().insert(
                        id,
                        Lent {
                            acquired,
                            span: tracing::Span::current(),
                            reported: false,
                        },
                    );
                    id
                });
                Ok(Held {
                    connection,
                    acquired,
                    id,
                    shared: Arc::clone(&self.shared),
                })
            }
            Err(error) => {
                if matches!(error, sqlx::Error::PoolTimedOut) {
                    self.shared.metrics.timeouts.increment(1);
                }
                Err(error)
            }
        }
    }

    /// The pool itself, for what needs it (`&PgPool` as an executor).
    /// Acquires made through it are not counted.
    #[must_use]
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Callers waiting in [`acquire`](Self::acquire) now.
    #[must_use]
    pub fn waiting(&self) -> u64 {
        u64::try_from(self.shared.waiting.load(Ordering::Acquire).max(0)).unwrap_or(0)
    }

    /// Reports the connections held past the leak threshold that were not
    /// reported yet (one `WARN` each, in the span each was acquired in);
    /// returns how many it reported. A no-op without a threshold.
    pub fn check_leaks(&self) -> usize {
        let Some(threshold) = self.shared.leak_threshold else {
            return 0;
        };
        let mut reported = 0;
        for lent in self.shared.lent().values_mut() {
            let held = lent.acquired.elapsed();
            if lent.reported || held < threshold {
                continue;
            }
            lent.reported = true;
            reported += 1;
            tracing::warn!(
                parent: &lent.span,
                pool = &*self.shared.name,
                span = lent.span.metadata().map_or("none", |span| span.name()),
                held_ms = held.as_secs_f64() * 1_000.0,
                threshold_ms = threshold.as_secs_f64() * 1_000.0,
                "connection held past the leak threshold"
            );
        }
        reported
    }

    /// Takes a snapshot and sets the gauges from it
    /// (`perfkit_pool_connections{state}`, `perfkit_pool_waiting`).
    pub fn publish(&self) -> PoolSnapshot {
        let snapshot = self.snapshot();
        self.shared.metrics.gauges.set(&snapshot);
        snapshot
    }
}

impl<DB: Database> PoolSource for InstrumentedPool<DB> {
    fn snapshot(&self) -> PoolSnapshot {
        let mut snapshot = self.pool.snapshot();
        snapshot.waiting = Some(self.waiting());
        snapshot
    }

    /// Checks for leaks ([`check_leaks`](Self::check_leaks)).
    fn sampled(&self) {
        self.check_leaks();
    }
}

impl Shared {
    fn lent(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lent>> {
        self.lent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<DB: Database> Clone for InstrumentedPool<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<DB: Database> fmt::Debug for InstrumentedPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedPool")
            .field("name", &self.shared.name)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// Counts one caller as waiting while it lives.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.waiting.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection from an [`InstrumentedPool`]: it dereferences to the
/// database's connection (`&mut *held` is a `&mut PgConnection`), and goes
/// back to the pool when dropped, its usage time recorded.
pub struct Held<DB: Database> {
    connection: PoolConnection<DB>,
    acquired: Instant,
    /// Its entry among the lent connections, when leaks are watched.
    id: Option<u64>,
    shared: Arc<Shared>,
}

impl<DB: Database> Held<DB> {
    /// How long it has been held.
    #[must_use]
    pub fn held_for(&self) -> std::time::Duration {
        self.acquired.elapsed()
    }
}

impl<DB: Database> Deref for Held<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.connection
    }
}

impl<DB: Database> DerefMut for Held<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.connection
    }
}

impl<DB: Database> Drop for Held<DB> {
    fn drop(&mut self) {
        let held = self.acquired.elapsed();
        self.shared.metrics.usage.record(held.as_secs_f64());
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

impl<DB: Database> fmt::Debug for Held<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("pool", &self.shared.name)
            .field("held_for", &self.held_for())
            .finish_non_exhaustive()
    }
}
