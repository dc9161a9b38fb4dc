//! The user-facing cache.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use perfkit_dedup::Group;
use tracing::Instrument;

use crate::builder::CacheBuilder;
use crate::error::{Error, LoadError};
use crate::generations::{Generations, Lease};
use crate::level::Level;
use crate::metrics::CacheMetrics;
use crate::stats::{Stats, TierStats};
use crate::tier::{Entry, Write};

/// A cache over an ordered list of tiers (fastest first), with promotion of
/// lower-tier hits, one load per key, and fail-safe remote tiers.
///
/// A `Cache` is a cheap handle: clones share the same tiers and loads.
///
/// # Guarantees
///
/// - **One load per key per instance.** However `get_or_load`, `get` and
///   `set` calls arrive, concurrent `get_or_load` calls for a key run the
///   loader once and share its outcome; `get` never loads.
/// - **Loader errors are shared, never cached.** Every caller waiting on a
///   failed load gets the same [`Error::Load`]; the next call loads again.
/// - **Promotion.** A hit at tier *i* is written into tiers `0..i` with the
///   TTL it has left there (entries without TTL stay without), unless
///   disabled with [`CacheBuilder::promote`].
/// - **No stale L1 fill within an instance.** A load or promotion that began
///   before a `set` or `remove` of its key never writes L1 afterwards. (The
///   same guarantee for shared tiers and across instances comes with
///   invalidation over pub/sub.)
/// - **Fail-safe remote tiers.** Every call to a remote tier (Redis) has a
///   timeout; a failure counts as a miss, is logged and counted; after
///   repeated failures a circuit breaker skips the tier for a cool-down, then
///   lets one probe through. A cache call therefore never waits for a
///   reconnect: with Redis down, a miss costs about the loader's time.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

pub(crate) struct Inner<V> {
    pub(crate) name: Box<str>,
    pub(crate) levels: Box<[Level<V>]>,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) promote: bool,
    pub(crate) loads: Group<String, Arc<V>, LoadError>,
    pub(crate) lookups: Group<String, Option<Entry<V>>, std::convert::Infallible>,
    pub(crate) generations: Generations,
    pub(crate) metrics: CacheMetrics,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V: Send + Sync + 'static> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tiers: Vec<&str> = self
            .inner
            .levels
            .iter()
            .map(|level| level.tier.name())
            .collect();
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("tiers", &tiers)
            .field("default_ttl", &self.inner.default_ttl)
            .finish_non_exhaustive()
    }
}

/// How a [`Cache::set_with`] writes.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SetOptions {
    ttl: Option<Option<Duration>>,
}

impl SetOptions {
    /// Expire after `ttl` (instead of the cache's default TTL).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(Some(ttl));
        self
    }

    /// Never expire (instead of the cache's default TTL).
    pub fn no_ttl(mut self) -> Self {
        self.ttl = Some(None);
        self
    }
}

impl<V> Cache<V>
where
    V: Send + Sync + 'static,
{
    /// Configures a cache.
    pub fn builder() -> CacheBuilder<V> {
        CacheBuilder::new()
    }

    pub(crate) fn from_inner(inner: Inner<V>) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The value for `key`, from the fastest tier that has it (promoting it
    /// into the faster ones), or `None`. A tier that fails counts as a miss.
    /// Concurrent misses of one key share one lookup of the lower tiers.
    pub async fn get(&self, key: &str) -> Option<Arc<V>> {
        if let Some(found) = self.inner.get_first(key) {
            return found;
        }
        let span = tracing::debug_span!(
            "cache.get",
            cache.name = &*self.inner.name,
            cache.hit = tracing::field::Empty,
            cache.tier = tracing::field::Empty,
        );
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        let outcome = self
            .inner
            .lookups
            .run(owned.clone(), move || async move {
                let lease = inner.generations.lease(&owned);
                Ok(inner.lookup_below_first(&owned, lease).await)
            })
            .instrument(span)
            .await;
        outcome.result.ok().flatten().map(|entry| entry.value)
    }

    /// The value for `key`; on a miss in every tier, runs `loader` (once per
    /// key however many callers wait), stores its value in every tier with
    /// the default TTL, and returns it.
    ///
    /// # Errors
    ///
    /// [`Error::Load`] when the loader fails (shared with every waiting
    /// caller, not cached), [`Error::LoaderPanicked`] when it panics.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, loader: F) -> Result<Arc<V>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        if let Some(Some(value)) = self.inner.get_first(key) {
            return Ok(value);
        }
        let span = tracing::debug_span!(
            "cache.get",
            cache.name = &*self.inner.name,
            cache.hit = tracing::field::Empty,
            cache.tier = tracing::field::Empty,
            cache.loaded = tracing::field::Empty,
        );
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        let outcome = self
            .inner
            .loads
            .run(owned.clone(), move || async move {
                inner.load(&owned, loader).await
            })
            .instrument(span)
            .await;
        match outcome.result {
            Ok(value) => Ok(value),
            Err(perfkit_dedup::Error::Failed(error)) => Err(Error::Load(LoadError::clone(&error))),
            Err(perfkit_dedup::Error::Panicked(message)) => Err(Error::LoaderPanicked(message)),
            Err(_) => Err(Error::LoaderPanicked(Arc::from("unknown failure"))),
        }
    }

    /// Stores `value` in every tier with the default TTL.
    pub async fn set(&self, key: &str, value: V) {
        self.set_with(key, value, SetOptions::default()).await;
    }

    /// Stores `value` in every tier, as `options` say. A load or promotion of
    /// `key` that began earlier will not overwrite it in L1.
    pub async fn set_with(&self, key: &str, value: V, options: SetOptions) {
        let value = Arc::new(value);
        let ttl = options.ttl.unwrap_or(self.inner.default_ttl);
        let write = Write {
            key,
            value: &value,
            ttl,
            tags: &[],
        };
        self.inner.write_through(&write).await;
    }

    /// Removes `key` from every tier. A load of `key` in flight is detached:
    /// the next `get_or_load` loads afresh instead of joining it.
    pub async fn remove(&self, key: &str) {
        self.inner.loads.forget(key);
        let first = self.inner.levels.first();
        for level in self.inner.levels.iter().skip(1).rev() {
            level.delete(key).await;
        }
        if let Some(first) = first {
            let mut deleted = false;
            self.inner
                .generations
                .bump_then(key, || deleted = first.tier.delete_now(key));
            if !deleted {
                first.delete(key).await;
            }
        }
    }

    /// Removes every entry from every tier (remote tiers: every key under their prefix).
    pub async fn clear(&self) {
        for level in self.inner.levels.iter().rev() {
            level.clear().await;
        }
    }

    /// Counters per tier and for loads, since the cache was built.
    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            tiers: self
                .inner
                .levels
                .iter()
                .map(|level| TierStats {
                    name: level.name().to_owned(),
                    hits: level.metrics.hits.get(),
                    misses: level.metrics.misses.get(),
                    errors: level.metrics.errors.get(),
                    skipped: level.metrics.skipped.get(),
                    promotions: level.metrics.promotions.get(),
                    breaker_open: level.breaker_open(),
                })
                .collect(),
            loads: self.inner.metrics.loads.get(),
            load_errors: self.inner.metrics.load_errors.get(),
        }
    }

    /// The cache's name, as in metrics and spans.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

impl<V> Inner<V>
where
    V: Send + Sync + 'static,
{
    /// The synchronous first-tier lookup: `Some(Some(v))` hit, `Some(None)`
    /// miss there (go on), `None` when the first tier cannot answer at once.
    fn get_first(&self, key: &str) -> Option<Option<Arc<V>>> {
        let first = self.levels.first()?;
        match first.tier.get_now(key)? {
            Some(entry) => {
                first.metrics.hits.increment();
                Some(Some(entry.value))
            }
            None if self.levels.len() == 1 => {
                first.metrics.misses.increment();
                Some(None)
            }
            None => {
                first.metrics.misses.increment();
                None
            }
        }
    }

    /// Looks in every tier below the first (after a silent second look at
    /// the first, which a concurrent fill may have just written), promoting
    /// a hit into the faster tiers.
    async fn lookup_below_first(&self, key: &str, lease: Lease) -> Option<Entry<V>> {
        let span = tracing::Span::current();
        if let Some(first) = self.levels.first()
            && let Some(Some(entry)) = first.tier.get_now(key)
        {
            span.record("cache.hit", true);
            span.record("cache.tier", first.name());
            return Some(entry);
        }
        for (index, level) in self.levels.iter().enumerate().skip(1) {
            match level.get(key).await {
                Some(entry) => {
                    level.metrics.hits.increment();
                    span.record("cache.hit", true);
                    span.record("cache.tier", level.name());
                    if self.promote {
                        self.promote(key, &entry, index, lease).await;
                    }
                    return Some(entry);
                }
                None => level.metrics.misses.increment(),
            }
        }
        span.record("cache.hit", false);
        None
    }

    /// Writes a hit from tier `found_at` into the faster tiers, with the TTL
    /// it has left, unless its key was written or removed meanwhile.
    async fn promote(&self, key: &str, entry: &Entry<V>, found_at: usize, lease: Lease) {
        let ttl = entry.ttl();
        if ttl == Some(Duration::ZERO) {
            return;
        }
        let write = Write {
            key,
            value: &entry.value,
            ttl,
            tags: &[],
        };
        if let Some(levels) = self.levels.get(..found_at) {
            for level in levels.iter().rev() {
                if self.fill_level(level, &write, lease).await {
                    level.metrics.promotions.increment();
                }
            }
        }
    }

    /// A fill of one tier under `lease`: refused once the key was written or
    /// removed. Synchronous tiers check and write atomically.
    async fn fill_level(&self, level: &Level<V>, write: &Write<'_, V>, lease: Lease) -> bool {
        let mut done = false;
        let current = self
            .generations
            .if_current(lease, || done = level.tier.set_now(write));
        if !current {
            return false;
        }
        if !done {
            level.set(write).await;
        }
        true
    }

    /// The flight of a `get_or_load`: look in every tier, else load and fill.
    async fn load<F, Fut, E>(&self, key: &str, loader: F) -> Result<Arc<V>, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let lease = self.generations.lease(key);
        if let Some(entry) = self.lookup_below_first(key, lease).await {
            return Ok(entry.value);
        }
        let span = tracing::Span::current();
        self.metrics.loads.increment();
        let started = Instant::now();
        // Erased at once: `E` need not be `Send`, the boxed error is.
        let loaded = loader().await.map_err(Into::into);
        self.metrics
            .load_seconds
            .record(started.elapsed().as_secs_f64());
        span.record("cache.loaded", true);
        match loaded {
            Ok(value) => {
                let value = Arc::new(value);
                let write = Write {
                    key,
                    value: &value,
                    ttl: self.default_ttl,
                    tags: &[],
                };
                for level in self.levels.iter().rev() {
                    if !self.generations.is_current(lease) {
                        break;
                    }
                    self.fill_level(level, &write, lease).await;
                }
                Ok(value)
            }
            Err(error) => {
                self.metrics.load_errors.increment();
                Err(LoadError::from(error))
            }
        }
    }

    /// A `set`: slower tiers first, then the first tier atomically with a
    /// generation bump, so fills that began earlier are refused.
    async fn write_through(&self, write: &Write<'_, V>) {
        for level in self.levels.iter().skip(1).rev() {
            level.set(write).await;
        }
        if let Some(first) = self.levels.first() {
            let mut done = false;
            self.generations
                .bump_then(write.key, || done = first.tier.set_now(write));
            if !done {
                first.set(write).await;
            }
        }
    }
}
