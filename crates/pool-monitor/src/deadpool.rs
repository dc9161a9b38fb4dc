//! deadpool's managed pools (deadpool-redis, deadpool-postgres, …).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Manager, Object, Pool, PoolError};

use crate::acquires::AcquireTotals;
use crate::error::ConfigError;
use crate::instrument::{Instrumentation, Lease};
use crate::snapshot::{PoolSnapshot, PoolSource};

fn count(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl<M, W> PoolSource for Pool<M, W>
where
    M: Manager,
    W: From<Object<M>>,
{
    /// From deadpool's `status()` (eventually consistent, hence clamped):
    /// idle is what it calls available; it counts its own waiters.
    fn snapshot(&self) -> PoolSnapshot {
        let status = self.status();
        PoolSnapshot::clamped(
            u32::try_from(status.max_size).unwrap_or(u32::MAX),
            0,
            count(status.size),
            count(status.available),
            Some(count(status.waiting)),
        )
    }
}

/// A deadpool managed pool whose `get`s are timed and counted: acquire time,
/// timeouts (deadpool's `PoolError::Timeout`, which it does not count),
/// usage time and leaks, as [`InstrumentedPool`](crate::InstrumentedPool)
/// does for sqlx. deadpool counts its waiters itself.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use perfkit_pool_monitor::InstrumentedDeadpool;
///
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
/// let pool = InstrumentedDeadpool::builder(pool).name("cache").build()?;
/// let mut connection = pool.get().await?;
/// let _: () = redis::cmd("PING").query_async(&mut *connection).await?;
/// # Ok(()) }
/// ```
pub struct InstrumentedDeadpool<M: Manager, W: From<Object<M>> = Object<M>> {
    pool: Pool<M, W>,
    shared: Arc<Instrumentation>,
}

/// Configures an [`InstrumentedDeadpool`].
#[must_use]
pub struct InstrumentedDeadpoolBuilder<M: Manager, W: From<Object<M>>> {
    pool: Pool<M, W>,
    name: String,
    leak_threshold: Option<Duration>,
}

impl<M: Manager, W: From<Object<M>>> InstrumentedDeadpoolBuilder<M, W> {
    /// The `pool` label of its metrics. Default: `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// As [`InstrumentedPoolBuilder::leak_threshold`](crate::InstrumentedPoolBuilder::leak_threshold).
    /// Default: off.
    pub fn leak_threshold(mut self, threshold: Duration) -> Self {
        self.leak_threshold = Some(threshold);
        self
    }

    /// The instrumented pool.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyName`], [`ConfigError::Zero`] for a zero leak
    /// threshold.
    pub fn build(self) -> Result<InstrumentedDeadpool<M, W>, ConfigError> {
        Ok(InstrumentedDeadpool {
            pool: self.pool,
            shared: Instrumentation::new(self.name, self.leak_threshold)?,
        })
    }
}

impl<M: Manager, W: From<Object<M>>> InstrumentedDeadpool<M, W> {
    /// A builder around `pool`, with the defaults each setter names.
    pub fn builder(pool: Pool<M, W>) -> InstrumentedDeadpoolBuilder<M, W> {
        InstrumentedDeadpoolBuilder {
            pool,
            name: "default".to_owned(),
            leak_threshold: None,
        }
    }

    /// An object from the pool, timed; a `Timeout` is counted.
    ///
    /// # Errors
    ///
    /// deadpool's [`PoolError`].
    pub async fn get(&self) -> Result<Lent<W>, PoolError<M::Error>> {
        let acquiring = self.shared.begin();
        match self.pool.get().await {
            Ok(object) => Ok(Lent {
                object,
                lease: acquiring.leased(&self.shared),
            }),
            Err(error) => {
                acquiring.failed(matches!(error, PoolError::Timeout(_)));
                Err(error)
            }
        }
    }

    /// The pool itself. Gets made through it are not timed.
    #[must_use]
    pub fn pool(&self) -> &Pool<M, W> {
        &self.pool
    }

    /// Reports objects held past the leak threshold (see
    /// [`InstrumentedPool::check_leaks`](crate::InstrumentedPool::check_leaks)).
    pub fn check_leaks(&self) -> usize {
        self.shared.check_leaks()
    }

    /// Takes a snapshot and sets the gauges from it.
    pub fn publish(&self) -> PoolSnapshot {
        let snapshot = self.snapshot();
        self.shared.gauges.set(&snapshot);
        snapshot
    }
}

impl<M: Manager, W: From<Object<M>>> PoolSource for InstrumentedDeadpool<M, W> {
    fn snapshot(&self) -> PoolSnapshot {
        self.pool.snapshot()
    }

    fn acquires(&self) -> Option<AcquireTotals> {
        Some(self.shared.totals())
    }

    fn sampled(&self) {
        self.check_leaks();
    }
}

impl<M: Manager, W: From<Object<M>>> Clone for InstrumentedDeadpool<M, W> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Manager, W: From<Object<M>>> fmt::Debug for InstrumentedDeadpool<M, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedDeadpool")
            .field("name", &self.shared.name)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// An object from an [`InstrumentedDeadpool`]: it dereferences to the
/// pool's object (`&mut *lent` is what `pool.get()` would have given), and
/// goes back when dropped, its usage time recorded.
pub struct Lent<W> {
    object: W,
    lease: Lease,
}

impl<W> Lent<W> {
    /// How long it has been held.
    #[must_use]
    pub fn held_for(&self) -> Duration {
        self.lease.held_for()
    }
}

impl<W> Deref for Lent<W> {
    type Target = W;

    fn deref(&self) -> &W {
        &self.object
    }
}

impl<W> DerefMut for Lent<W> {
    fn deref_mut(&mut self) -> &mut W {
        &mut self.object
    }
}

impl<W> fmt::Debug for Lent<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent")
            .field("pool", &self.lease.pool())
            .field("held_for", &self.held_for())
            .finish_non_exhaustive()
    }
}
