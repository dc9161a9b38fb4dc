//! bb8's pools (bb8-redis, bb8-postgres, …).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use bb8::{ManageConnection, Pool, PooledConnection, RunError};

use crate::acquires::AcquireTotals;
use crate::error::ConfigError;
use crate::instrument::{Instrumentation, Lease};
use crate::snapshot::{PoolSnapshot, PoolSource};

impl<M: ManageConnection> PoolSource for Pool<M> {
    /// From bb8's `state()` and `config()`. `waiting` is `None`: bb8's own
    /// pending count (gets started minus gets ended) is never decremented
    /// for a get whose caller gave up (a timeout around it, an aborted
    /// task), so it only grows; [`InstrumentedBb8`] counts waiters right.
    fn snapshot(&self) -> PoolSnapshot {
        let state = self.state();
        let config = self.config();
        PoolSnapshot::clamped(
            config.max_size,
            config.min_idle.unwrap_or(0),
            i64::from(state.connections),
            i64::from(state.idle_connections),
            None,
        )
    }
}

/// A bb8 pool whose `get`s are timed and counted: acquire time, waiters (a
/// cancelled get leaves the count, which bb8's own statistics do not),
/// timeouts, usage time and leaks, as [`InstrumentedPool`](crate::InstrumentedPool)
/// does for sqlx.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use perfkit_pool_monitor::{InstrumentedBb8, PoolSource};
///
/// let manager = bb8_redis::RedisConnectionManager::new("redis://127.0.0.1:6379")?;
/// let pool = bb8::Pool::builder().max_size(8).build(manager).await?;
/// let pool = InstrumentedBb8::builder(pool).name("cache").build()?;
/// let mut connection = pool.get().await?;
/// let _: () = redis::cmd("PING").query_async(&mut *connection).await?;
/// drop(connection);
/// println!("{:?}", pool.snapshot());
/// # Ok(()) }
/// ```
pub struct InstrumentedBb8<M: ManageConnection> {
    pool: Pool<M>,
    shared: Arc<Instrumentation>,
}

/// Configures an [`InstrumentedBb8`]: `InstrumentedBb8::builder(pool)…build()?`.
#[must_use]
pub struct InstrumentedBb8Builder<M: ManageConnection> {
    pool: Pool<M>,
    name: String,
    leak_threshold: Option<Duration>,
}

impl<M: ManageConnection> InstrumentedBb8Builder<M> {
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
    pub fn build(self) -> Result<InstrumentedBb8<M>, ConfigError> {
        Ok(InstrumentedBb8 {
            pool: self.pool,
            shared: Instrumentation::new(self.name, self.leak_threshold)?,
        })
    }
}

impl<M: ManageConnection> InstrumentedBb8<M> {
    /// A builder around `pool`, with the defaults each setter names.
    pub fn builder(pool: Pool<M>) -> InstrumentedBb8Builder<M> {
        InstrumentedBb8Builder {
            pool,
            name: "default".to_owned(),
            leak_threshold: None,
        }
    }

    /// A connection, timed from the call to the hand-over; a
    /// `RunError::TimedOut` is counted. While it waits it counts as
    /// waiting; dropping the future takes it off the count.
    ///
    /// # Errors
    ///
    /// bb8's [`RunError`].
    pub async fn get(&self) -> Result<Checkout<'_, M>, RunError<M::Error>> {
        let acquiring = self.shared.begin();
        match self.pool.get().await {
            Ok(connection) => Ok(Checkout {
                connection,
                lease: acquiring.leased(&self.shared),
            }),
            Err(error) => {
                acquiring.failed(matches!(error, RunError::TimedOut));
                Err(error)
            }
        }
    }

    /// The pool itself. Gets made through it are not counted.
    #[must_use]
    pub fn pool(&self) -> &Pool<M> {
        &self.pool
    }

    /// Callers waiting in [`get`](Self::get) now.
    #[must_use]
    pub fn waiting(&self) -> u64 {
        self.shared.waiting()
    }

    /// Reports connections held past the leak threshold (see
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

impl<M: ManageConnection> PoolSource for InstrumentedBb8<M> {
    fn snapshot(&self) -> PoolSnapshot {
        let mut snapshot = self.pool.snapshot();
        snapshot.waiting = Some(self.waiting());
        snapshot
    }

    fn acquires(&self) -> Option<AcquireTotals> {
        Some(self.shared.totals())
    }

    fn sampled(&self) {
        self.check_leaks();
    }
}

impl<M: ManageConnection> Clone for InstrumentedBb8<M> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: ManageConnection> fmt::Debug for InstrumentedBb8<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedBb8")
            .field("name", &self.shared.name)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// A connection from an [`InstrumentedBb8`]: it dereferences to the
/// manager's connection, and goes back to the pool when dropped, its usage
/// time recorded.
pub struct Checkout<'a, M: ManageConnection> {
    connection: PooledConnection<'a, M>,
    lease: Lease,
}

impl<M: ManageConnection> Checkout<'_, M> {
    /// How long it has been held.
    #[must_use]
    pub fn held_for(&self) -> Duration {
        self.lease.held_for()
    }
}

impl<M: ManageConnection> Deref for Checkout<'_, M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.connection
    }
}

impl<M: ManageConnection> DerefMut for Checkout<'_, M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.connection
    }
}

impl<M: ManageConnection> fmt::Debug for Checkout<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkout")
            .field("pool", &self.lease.pool())
            .field("held_for", &self.held_for())
            .finish_non_exhaustive()
    }
}
