//! The [`Tier`] trait: one level of the cache.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::TierError;

/// The future a tier operation returns. Boxed: tiers are kept as trait
/// objects, and a network round trip dwarfs one allocation. The in-process
/// hit path avoids it through [`Tier::get_now`].
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TierError>> + Send + 'a>>;

/// A value found in a tier, with when it expires there.
#[derive(Debug)]
#[non_exhaustive]
pub struct Entry<V> {
    /// The value, shared: in-process tiers hand out the `Arc` they hold.
    pub value: Arc<V>,
    /// When the entry expires in the tier it was read from; `None` when it
    /// has no TTL.
    pub expires_at: Option<Instant>,
    /// The TTL the entry was written with, when the tier knows it (eager
    /// refresh measures how much of it has passed).
    pub written_ttl: Option<Duration>,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            expires_at: self.expires_at,
            written_ttl: self.written_ttl,
        }
    }
}

impl<V> Entry<V> {
    /// An entry expiring at `expires_at` (`None`: no TTL).
    #[must_use]
    pub fn new(value: Arc<V>, expires_at: Option<Instant>) -> Self {
        Self {
            value,
            expires_at,
            written_ttl: None,
        }
    }

    /// Records the TTL the entry was written with.
    #[must_use]
    pub fn with_written_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.written_ttl = ttl;
        self
    }

    /// The time left before the entry expires (zero once past), or `None`
    /// when it has no TTL.
    #[must_use]
    pub fn ttl(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// `ttl` capped by a tier's `max_ttl`; an entry without TTL gets the cap.
pub(crate) fn capped_ttl(ttl: Option<Duration>, max_ttl: Option<Duration>) -> Option<Duration> {
    match (ttl, max_ttl) {
        (Some(ttl), Some(max)) => Some(ttl.min(max)),
        (ttl, max) => ttl.or(max),
    }
}

/// A write into a tier: what [`Tier::set`] receives.
#[derive(Debug)]
#[non_exhaustive]
pub struct Write<'a, V> {
    /// The cache key (without any tier prefix).
    pub key: &'a str,
    /// The value.
    pub value: &'a Arc<V>,
    /// How long the entry lives, or `None` for no TTL. Already capped by the
    /// tier's own maximum and jittered, when configured.
    pub ttl: Option<Duration>,
    /// Tags the entry can be invalidated by.
    pub tags: &'a [String],
}

/// One level of a [`Cache`](crate::Cache): an in-process map, Redis, or
/// anything you plug in.
///
/// Tiers are ordered from the fastest (index 0, usually [`MemoryTier`]) to
/// the slowest. A tier never decides cache policy (promotion, loading,
/// fail-safe): it stores and returns entries, and reports failures as
/// [`TierError`]s, which the cache turns into misses. Remote tiers are wrapped
/// by the cache in a timeout and a circuit breaker (see
/// [`Tier::is_remote`]).
///
/// [`MemoryTier`]: crate::MemoryTier
///
/// # Implementing a tier
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
///
/// use perfkit_tiered_cache::{Entry, Tier, TierFuture, Write};
///
/// /// A third tier that only remembers values, forever (think: a local disk).
/// #[derive(Default)]
/// struct Archive(Mutex<HashMap<String, Arc<String>>>);
///
/// impl Tier<String> for Archive {
///     fn name(&self) -> &str {
///         "archive"
///     }
///     fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<String>>> {
///         let found = self.0.lock().unwrap().get(key).cloned();
///         Box::pin(async move { Ok(found.map(|value| Entry::new(value, None))) })
///     }
///     fn set<'a>(&'a self, write: &'a Write<'a, String>) -> TierFuture<'a, ()> {
///         self.0.lock().unwrap().insert(write.key.to_owned(), Arc::clone(write.value));
///         Box::pin(async { Ok(()) })
///     }
///     fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
///         self.0.lock().unwrap().remove(key);
///         Box::pin(async { Ok(()) })
///     }
///     fn clear(&self) -> TierFuture<'_, ()> {
///         self.0.lock().unwrap().clear();
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait Tier<V>: Send + Sync + 'static {
    /// The tier's name in metrics, spans and stats (`"l1"`, `"redis"`, ...).
    fn name(&self) -> &str;

    /// Whether the tier lives across a network: the cache then bounds every
    /// call with a timeout and a circuit breaker. Default: `false`.
    fn is_remote(&self) -> bool {
        false
    }

    /// Answers a lookup without awaiting, when the tier can (an in-process
    /// map): `Some(Some(entry))` for a hit, `Some(None)` for a miss, `None`
    /// for "ask [`Tier::get`]". This is what keeps a warm L1 hit free of
    /// allocations. Default: `None`.
    fn get_now(&self, key: &str) -> Option<Option<Entry<V>>> {
        let _ = key;
        None
    }

    /// [`Tier::get_now`] for a caller that needs only the value (a plain
    /// [`Cache::get`](crate::Cache::get)): an in-process tier can skip
    /// building the entry's expiry. Default: derived from [`Tier::get_now`].
    fn get_value_now(&self, key: &str) -> Option<Option<Arc<V>>> {
        self.get_now(key)
            .map(|found| found.map(|entry| entry.value))
    }

    /// Stores a value without awaiting, when the tier can (an in-process
    /// map); returns whether it did. The cache uses it to make L1 writes
    /// atomic with respect to `set` and `remove` of the same key, so a load
    /// that began earlier never overwrites them. Default: `false`.
    fn set_now(&self, write: &Write<'_, V>) -> bool {
        let _ = write;
        false
    }

    /// Removes `key` without awaiting, when the tier can; returns whether it
    /// did. Default: `false`.
    fn delete_now(&self, key: &str) -> bool {
        let _ = key;
        false
    }

    /// Keeps entries for `grace` past their TTL, invisible to lookups, as a
    /// fallback for when a reload fails (see [`Tier::get_stale`]). Returns
    /// whether the tier can. Called once, when the cache is built. Default:
    /// `false`.
    fn keep_stale_for(&mut self, grace: Duration) -> bool {
        let _ = grace;
        false
    }

    /// The entry for `key` even if its TTL has passed (within the grace set
    /// by [`Tier::keep_stale_for`]). Default: `None`.
    fn get_stale(&self, key: &str) -> Option<Entry<V>> {
        let _ = key;
        None
    }

    /// Looks `key` up: `Ok(None)` is a miss.
    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<V>>>;

    /// Stores a value.
    fn set<'a>(&'a self, write: &'a Write<'a, V>) -> TierFuture<'a, ()>;

    /// Removes `key`; removing a missing key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()>;

    /// Removes every entry written with `tag` and returns their keys (the
    /// cache then removes those keys from the other tiers, where promoted
    /// copies carry no tags). Tiers that keep no tag index remove nothing.
    /// Default: `Ok(vec![])`.
    fn delete_tag<'a>(&'a self, tag: &'a str) -> TierFuture<'a, Vec<String>> {
        let _ = tag;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Removes every entry of this tier (for a prefixed tier, every key under its prefix).
    fn clear(&self) -> TierFuture<'_, ()>;
}
