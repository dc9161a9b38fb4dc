//! sqlx's pool with the figures it lacks: acquire time, waiters, timeouts
//! and usage time.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

use crate::acquires::AcquireTotals;
use crate::error::ConfigError;
use crate::instrument::{Instrumentation, Lease};
use crate::snapshot::{PoolSnapshot, PoolSource};

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
    shared: Arc<Instrumentation>,
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
        Ok(InstrumentedPool {
            pool: self.pool,
            shared: Instrumentation::new(self.name, self.leak_threshold)?,
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
        let acquiring = self.shared.begin();
        match self.pool.acquire().await {
            Ok(connection) => Ok(Held {
                connection,
                lease: acquiring.leased(&self.shared),
            }),
            Err(error) => {
                acquiring.failed(matches!(error, sqlx::Error::PoolTimedOut));
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
        self.shared.waiting()
    }

    /// Reports the connections held past the leak threshold that were not
    /// reported yet (one `WARN` each, in the span each was acquired in);
    /// returns how many it reported. A no-op without a threshold.
    pub fn check_leaks(&self) -> usize {
        self.shared.check_leaks()
    }

    /// Takes a snapshot and sets the gauges from it
    /// (`perfkit_pool_connections{state}`, `perfkit_pool_waiting`).
    pub fn publish(&self) -> PoolSnapshot {
        let snapshot = self.snapshot();
        self.shared.gauges.set(&snapshot);
        snapshot
    }
}

impl<DB: Database> PoolSource for InstrumentedPool<DB> {
    fn snapshot(&self) -> PoolSnapshot {
        let mut snapshot = self.pool.snapshot();
        snapshot.waiting = Some(self.waiting());
        snapshot
    }

    fn acquires(&self) -> Option<AcquireTotals> {
        Some(self.shared.totals())
    }

    /// Checks for leaks ([`check_leaks`](Self::check_leaks)).
    fn sampled(&self) {
        self.check_leaks();
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

/// A connection from an [`InstrumentedPool`]: it dereferences to the
/// database's connection (`&mut *held` is a `&mut PgConnection`), and goes
/// back to the pool when dropped, its usage time recorded.
pub struct Held<DB: Database> {
    connection: PoolConnection<DB>,
    lease: Lease,
}

impl<DB: Database> Held<DB> {
    /// How long it has been held.
    #[must_use]
    pub fn held_for(&self) -> Duration {
        self.lease.held_for()
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

impl<DB: Database> fmt::Debug for Held<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("pool", &self.lease.pool())
            .field("held_for", &self.held_for())
            .finish_non_exhaustive()
    }
}
