//! The cache's engine: the tiers, loads, lookups and generations behind a
//! [`Cache`](crate::Cache) handle, and how a lookup, a load, a fill and an
//! invalidation go through them.

use crate::error::LoadError;
use crate::generations::{Generations, Lease};
use crate::invalidation::BusLink;
use crate::jitter::Jitter;
use crate::level::Level;
use crate::lookups::Lookups;
use crate::metrics::CacheMetrics;
use crate::options::{LoadOptions, SetOptions};
use crate::tier::{Entry, MIN_TTL, Tier, Version, Write, storable_ttl};
use perfkit_dedup::Group;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Inner<V> {
    pub(crate) name: Box<str>,
    pub(crate) levels: Box<[Level<V>]>,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) promote: bool,
    /// Loads (and eager refreshes); `None`: an optional loader found nothing.
    pub(crate) loads: Group<String, Option<Arc<V>>, LoadError>,
    /// `get`'s shared lookups of the tiers below the first.
    pub(crate) lookups: Lookups<V>,
    pub(crate) generations: Generations,
    pub(crate) metrics: CacheMetrics,
    pub(crate) jitter: Option<Jitter>,
    pub(crate) negatives: Option<moka::sync::Cache<String, ()>>,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) serve_stale: bool,
    /// The default per-caller load timeout.
    pub(crate) load_timeout: Option<Duration>,
    pub(crate) bus: Option<BusLink>,
}

/// What the remote tiers saw during a lookup, by level index (`None`: the
/// lookup failed there). Empty, and unallocated, for a two-tier cache's `get`.
pub(crate) type Seen = Vec<(usize, Option<Version>)>;

/// How a fill of one tier went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    Done,
    /// The key changed since the lookup: faster tiers must not be filled either.
    Refused,
    /// Not attempted (the tier's lookup failed).
    Skipped,
}

/// A loader with its error already erased, as the load flights run it.
pub(crate) type Erased<V> = Result<Option<V>, Box<dyn std::error::Error + Send + Sync + 'static>>;

impl<V> Inner<V>
where
    V: Send + Sync + 'static,
{
    /// The `cache.get` span of a lookup that goes past the first tier.
    pub(crate) fn get_span(&self) -> tracing::Span {
        tracing::debug_span!(
            "cache.get",
            cache.name = &*self.name,
            cache.hit = tracing::field::Empty,
            cache.tier = tracing::field::Empty,
            cache.loaded = tracing::field::Empty,
        )
    }

    /// Subscribes to the invalidation bus again if its task died with the
    /// runtime that ran it (one atomic load otherwise).
    #[inline]
    pub(crate) fn revive_bus(&self) {
        if let Some(link) = &self.bus {
            link.revive();
        }
    }

    /// Asks the first tier at once, with `ask` (`get_now`, or
    /// `get_value_now` when only the value is needed), counting a hit or a
    /// miss. `Ok(found)` is the answer; `Err(asked)` means go on to the lower
    /// tiers, `asked` telling whether the first tier was asked (and missed),
    /// as opposed to not able to answer at once or skipped (strict mode).
    #[inline]
    pub(crate) fn ask_first<T>(
        &self,
        ask: impl FnOnce(&dyn Tier<V>) -> Option<Option<T>>,
    ) -> Result<Option<T>, bool> {
        if self.first_tier_suspect() {
            return Err(false);
        }
        let first = self.levels.first().ok_or(false)?;
        let found = ask(&*first.tier).ok_or(false)?;
        if found.is_some() {
            first.metrics.hits.increment();
        } else {
            first.metrics.misses.increment();
            if self.levels.len() > 1 {
                return Err(true);
            }
        }
        Ok(found)
    }

    /// A `get`'s lookup past the first tier (which missed when
    /// `first_missed`), with its promotion.
    pub(crate) async fn look_below_first(&self, key: &str, first_missed: bool) -> Option<Arc<V>> {
        let lease = self.generations.lease(key);
        // A value filled into the first tier since it missed is in the lower
        // tiers too (they are filled first): no second look.
        let start = usize::from(first_missed);
        let mut seen = Seen::new();
        self.lookup_below_first(key, lease, start, &mut seen, false)
            .await
            .map(|entry| entry.value)
    }

    /// Looks in the tiers from `start` down, promoting a hit into the faster
    /// tiers. With `start` 0, a first tier that answers at once was already
    /// asked (and counted): it is asked again silently, since a fill may have
    /// landed since (a load must not run for a value that just arrived).
    ///
    /// What each remote tier saw is recorded in `seen` (by level index) when
    /// a fill may follow: for a load, every remote tier; otherwise the
    /// remote tiers a promotion could fill (all but the last).
    pub(crate) async fn lookup_below_first(
        &self,
        key: &str,
        lease: Lease,
        mut start: usize,
        seen: &mut Seen,
        for_load: bool,
    ) -> Option<Entry<V>> {
        let span = tracing::Span::current();
        if start > 0 {
            // Already asked.
        } else if self.first_tier_suspect() {
            // Strict mode with the invalidation bus down: skip the first tier.
            start = 1;
        } else if let Some(first) = self.levels.first()
            && let Some(found) = first.tier.get_now(key).known()
        {
            if let Some(entry) = found {
                span.record("cache.hit", true);
                span.record("cache.tier", first.name());
                return Some(entry);
            }
            start = 1;
        }
        let last = self.levels.len().saturating_sub(1);
        for (index, level) in self.levels.iter().enumerate().skip(start) {
            let found = if for_load || index < last {
                let (found, version) = level.lookup(key).await;
                seen.push((index, version));
                found
            } else {
                level.get(key).await
            };
            match found {
                Some(entry) => {
                    level.metrics.hits.increment();
                    span.record("cache.hit", true);
                    span.record("cache.tier", level.name());
                    if self.promote {
                        self.promote(key, &entry, index, lease, seen).await;
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
    pub(crate) async fn promote(
        &self,
        key: &str,
        entry: &Entry<V>,
        found_at: usize,
        lease: Lease,
        seen: &Seen,
    ) {
        let ttl = entry.ttl();
        if ttl.is_some_and(|left| left < MIN_TTL) {
            return;
        }
        let write = Write {
            key,
            value: &entry.value,
            ttl,
            tags: &entry.tags,
        };
        if let Some(levels) = self.levels.get(..found_at) {
            for (index, level) in levels.iter().enumerate().rev() {
                match self.fill_level(level, index, &write, lease, seen).await {
                    Fill::Done => level.metrics.promotions.increment(),
                    Fill::Refused => return,
                    Fill::Skipped => {}
                }
            }
        }
    }

    /// A fill of one tier under `lease`: refused once the key was written or
    /// removed in this instance (or, with an invalidation bus, in another).
    /// Synchronous tiers check and write atomically; remote ones write only
    /// if the key is still as their lookup saw it (`seen`).
    pub(crate) async fn fill_level(
        &self,
        level: &Level<V>,
        index: usize,
        write: &Write<'_, V>,
        lease: Lease,
        seen: &Seen,
    ) -> Fill {
        let mut done = false;
        let current = self
            .generations
            .if_current(lease, || done = level.tier.set_now(write));
        if !current {
            return Fill::Refused;
        }
        if done {
            return Fill::Done;
        }
        match seen.iter().find(|(at, _)| *at == index) {
            Some((_, Some(version))) => match level.fill(write, version).await {
                Some(true) => Fill::Done,
                Some(false) => Fill::Refused,
                // This tier does not take the value; the faster ones may.
                None => Fill::Skipped,
            },
            // The lookup failed there (or never looked): leave the tier alone.
            _ => Fill::Skipped,
        }
    }

    /// What every tier holds for `key` now, for a reload's fills.
    pub(crate) async fn versions(&self, key: &str) -> Seen {
        let mut seen = Seen::new();
        for (index, level) in self.levels.iter().enumerate() {
            seen.push((index, level.lookup(key).await.1));
        }
        seen
    }

    /// The flight of a load: look in every tier (unless refreshing), else
    /// run the loader and fill every tier, unless the key was written or
    /// removed meanwhile.
    pub(crate) async fn load<F, Fut>(
        &self,
        key: &str,
        loader: F,
        look_first: bool,
        options: &LoadOptions,
    ) -> Result<Option<Arc<V>>, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Erased<V>>,
    {
        let lease = self.generations.lease(key);
        let mut seen = Seen::new();
        if look_first {
            if let Some(entry) = self
                .lookup_below_first(key, lease, 0, &mut seen, true)
                .await
            {
                return Ok(Some(entry.value));
            }
        } else {
            seen = self.versions(key).await;
        }
        let span = tracing::Span::current();
        self.metrics.loads.increment();
        let started = Instant::now();
        let loaded = loader().await;
        self.metrics
            .load_seconds
            .record(started.elapsed().as_secs_f64());
        span.record("cache.loaded", true);
        match loaded {
            Ok(Some(value)) => {
                let value = Arc::new(value);
                // A jittered TTL under 1 ms: the value is returned, not cached.
                let Some(ttl) = storable_ttl(self.ttl_of(&options.store)) else {
                    return Ok(Some(value));
                };
                let write = Write {
                    key,
                    value: &value,
                    ttl,
                    tags: &options.store.tags,
                };
                for (index, level) in self.levels.iter().enumerate().rev() {
                    // Refused once the key was written or removed: stop filling.
                    let fill = self.fill_level(level, index, &write, lease, &seen).await;
                    if fill == Fill::Refused {
                        break;
                    }
                }
                Ok(Some(value))
            }
            Ok(None) => {
                if let Some(negatives) = &self.negatives {
                    self.generations
                        .if_current(lease, || negatives.insert(key.to_owned(), ()));
                }
                Ok(None)
            }
            Err(error) => {
                self.metrics.load_errors.increment();
                if self.serve_stale
                    && let Some(stale) = self
                        .levels
                        .first()
                        .and_then(|first| first.tier.get_stale(key))
                {
                    self.metrics.stale_served.increment();
                    tracing::warn!(cache.name = &*self.name, %error, "load failed; serving the stale value");
                    return Ok(Some(stale.value));
                }
                Err(LoadError::from(error))
            }
        }
    }

    /// Eager refresh: an L1 hit past the configured fraction of the TTL it
    /// was written with starts one background reload (none while one runs).
    pub(crate) fn refresh_if_late<F, Fut>(
        self: &Arc<Self>,
        key: &str,
        entry: &Entry<V>,
        loader: F,
        options: LoadOptions,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Erased<V>> + Send + 'static,
    {
        let Some(fraction) = self.eager_refresh else {
            return;
        };
        let (Some(expires_at), Some(written_ttl)) = (entry.expires_at, entry.written_ttl) else {
            return;
        };
        let left = expires_at.saturating_duration_since(Instant::now());
        if left.as_secs_f64() > written_ttl.as_secs_f64() * (1.0 - fraction)
            || self.loads.is_in_flight(key)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.metrics.refreshes.increment();
        let inner = Arc::clone(self);
        let owned = key.to_owned();
        let limit = options.timeout.or(self.load_timeout);
        runtime.spawn(async move {
            let flight = Arc::clone(&inner);
            let key = owned.clone();
            let reload = inner.loads.run(owned.clone(), move || async move {
                flight.load(&key, loader, false, &options).await
            });
            match limit {
                None => drop(reload.await),
                Some(limit) => {
                    if tokio::time::timeout(limit, reload).await.is_err() {
                        inner.give_up_load(&owned, limit);
                    }
                }
            }
        });
    }

    /// A caller's load timeout passed: new callers must not join that load
    /// (it goes on for the callers still waiting, each until its own
    /// timeout, and is dropped when none is left).
    pub(crate) fn give_up_load(&self, key: &str, limit: Duration) {
        self.loads.forget(key);
        self.metrics.load_timeouts.increment();
        tracing::warn!(cache.name = &*self.name, timeout = ?limit, "load timed out; the next call loads afresh");
    }

    /// The TTL a write with `options` gets: its own or the default, jittered.
    pub(crate) fn ttl_of(&self, options: &SetOptions) -> Option<Duration> {
        let ttl = options.ttl.unwrap_or(self.default_ttl);
        match (&self.jitter, ttl) {
            (Some(jitter), Some(ttl)) => Some(jitter.apply(ttl)),
            (_, ttl) => ttl,
        }
    }

    pub(crate) fn forget_negative(&self, key: &str) {
        if let Some(negatives) = &self.negatives {
            negatives.invalidate(key);
        }
    }

    pub(crate) fn forget_negatives(&self) {
        if let Some(negatives) = &self.negatives {
            negatives.invalidate_all();
        }
    }

    /// Removes the keys matching `pattern` from the first tier under a new
    /// epoch: loads and promotions of any key that began earlier will not
    /// write it back. Returns how many entries it removed.
    pub(crate) async fn delete_matching_from_first(&self, pattern: &str) -> u64 {
        self.generations.bump_all();
        self.forget_negatives();
        match self.levels.first() {
            Some(first) => first.delete_matching(pattern).await,
            None => 0,
        }
    }

    /// Removes `key` from the first tier under a generation bump (and
    /// forgets a remembered "not found"): loads and promotions that began
    /// earlier will not write it back.
    pub(crate) async fn delete_from_first(&self, key: &str) {
        let Some(first) = self.levels.first() else {
            return;
        };
        let mut deleted = false;
        self.generations.bump_then(key, || {
            self.forget_negative(key);
            deleted = first.tier.delete_now(key);
        });
        if !deleted {
            first.delete(key).await;
        }
    }

    /// A `set`: slower tiers first, then the first tier atomically with a
    /// generation bump, so fills that began earlier are refused.
    pub(crate) async fn write_through(&self, write: &Write<'_, V>) {
        for level in self.levels.iter().skip(1).rev() {
            level.set(write).await;
        }
        if let Some(first) = self.levels.first() {
            let mut done = false;
            self.generations.bump_then(write.key, || {
                self.forget_negative(write.key);
                done = first.tier.set_now(write);
            });
            if !done {
                first.set(write).await;
            }
        }
    }
}
