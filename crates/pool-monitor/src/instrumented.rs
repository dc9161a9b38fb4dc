//! sqlx's pool with the figures it lacks: acquire time, waiters, timeouts
//! and usage time.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

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
/// let pool = InstrumentedPool::new(pool, "main")?;
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

impl<DB: Database> InstrumentedPool<DB> {
    /// Instruments `pool` under `name` (the `pool` label of its metrics).
    /// Metric handles are taken from the recorder installed now.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyName`] for a blank name.
    pub fn new(pool: Pool<DB>, name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        Ok(Self {
            pool,
            shared: Arc::new(Shared {
                metrics: PoolMetrics::new(&name),
                name: Arc::from(name),
                waiting: AtomicI64::new(0),
            }),
        })
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
                Ok(Held {
                    connection,
                    acquired: Instant::now(),
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
        self.shared
            .metrics
            .usage
            .record(self.acquired.elapsed().as_secs_f64());
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
