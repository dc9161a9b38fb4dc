//! The user-facing cache: a cheap handle over the [engine](crate::engine).

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;

use tracing::Instrument;

use crate::builder::CacheBuilder;
use crate::bus::Target;
use crate::engine::{Erased, Inner};
use crate::error::{Error, LoadError};
use crate::invalidation::{BusLink, BusMetrics};
use crate::lookups::{Turn, Waited};
use crate::options::{LoadOptions, SetOptions};
use crate::stats::{Stats, TierStats};
use crate::tier::{Write, storable_ttl};

/// A cache over an ordered list of tiers (fastest first), with promotion of
/// lower-tier hits, one load per key, and fail-safe remote tiers.
///
/// A `Cache` is a cheap handle: clones share the same tiers and loads.
///
/// Use it inside a tokio runtime with timers enabled (`#[tokio::main]`, or a
/// runtime built with `enable_all()`): calls to remote tiers, and waits on
/// another caller's lookup, are bounded by tokio timers.
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
/// - **No stale sets.** A load or promotion that began before an
///   invalidation of its key (`invalidate`, `set`, or a pattern, tag or
///   clear covering it) never writes its value into this instance's first
///   tier afterwards, nor into a remote tier once the invalidation has
///   reached it: remote fills are conditional on the key (and the tier's
///   epoch) being exactly as the load's lookup saw them (see
///   [`Tier::fill`](crate::Tier::fill)). With an invalidation bus, another
///   instance serves an old value only until it applies the message (the
///   propagation window); when the bus may have lost messages, instances
///   flush their first tier, and in strict mode stop serving from it (see
///   [`CacheBuilder::strict_invalidation`]).
/// - **One remote write per invalidation.** The instance that invalidates
///   changes the shared tiers once; the others only drop their first-tier
///   copies and never reload because of it.
/// - **Fail-safe remote tiers.** Every call to a remote tier (Redis) has a
///   timeout; a failure counts as a miss, is logged and counted; after
///   repeated failures a circuit breaker skips the tier for a cool-down, then
///   lets one probe through (a probe whose caller goes away counts as
///   failed). Reads, writes, deletes and publishes alike: a cache call never
///   waits for a reconnect, and with Redis down a miss costs about the
///   loader's time, a `set` microseconds.
/// - **A bad value is about that value.** A value a tier cannot decode, or
///   one too large for it, is a miss for that key and a value error in the
///   stats, never a strike against the tier.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

/// What [`Cache::warm`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WarmReport {
    /// Keys now cached (already there, or loaded).
    pub cached: usize,
    /// Keys whose loader failed.
    pub failed: usize,
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

impl<V> Cache<V>
where
    V: Send + Sync + 'static,
{
    /// Configures a cache.
    pub fn builder() -> CacheBuilder<V> {
        CacheBuilder::new()
    }

    pub(crate) fn from_inner(inner: Inner<V>) -> Self {
        let inner = Arc::new(inner);
        if let Some(link) = &inner.bus {
            link.start(Arc::downgrade(&inner));
        }
        Self { inner }
    }

    /// The value for `key`, from the fastest tier that has it (promoting it
    /// into the faster ones), or `None`. A tier that fails counts as a miss.
    ///
    /// Concurrent misses of one key share one lookup of the lower tiers: the
    /// first caller looks (in its own future: no task) and the others wait
    /// for its value. If it goes away first, another caller looks in its
    /// place; if it stops being polled without going away, the others wait
    /// at most twice the remote tiers' timeouts, then leave it behind and
    /// share a new lookup. A tier that panics panics the `get` that ran the
    /// lookup; the callers waiting on it look again.
    ///
    /// A first-tier hit is answered in the first poll, by a future of three
    /// words whose `poll` inlines into the caller's; the lookup below is
    /// boxed when the first tier misses (one allocation, on a path that
    /// goes to Redis), since carrying its state (over a kilobyte) in every
    /// `get`'s future would cost a hit a third of its time.
    pub fn get<'a>(&'a self, key: &'a str) -> impl Future<Output = Option<Arc<V>>> + Send + 'a {
        Get {
            cache: self,
            key,
            below: None,
        }
    }

    /// [`Cache::get_below_first`], boxed: built in a frame of its own so
    /// that `get`'s (the hit path's) stays small.
    #[inline(never)]
    fn boxed_get_below_first<'a>(&'a self, key: &'a str, first_missed: bool) -> BoxedLookup<'a, V> {
        Box::pin(self.get_below_first(key, first_missed))
    }

    /// A `get`'s lookup past the first tier (which missed when
    /// `first_missed`), shared with concurrent callers of the same key.
    async fn get_below_first(&self, key: &str, mut first_missed: bool) -> Option<Arc<V>> {
        self.inner.revive_bus();
        let span = self.inner.get_span();
        let lookup = async {
            loop {
                match self.inner.lookups.turn(key) {
                    Turn::Lead(leader) => {
                        let found = self.inner.look_below_first(key, first_missed).await;
                        leader.finish(found.as_ref());
                        return found;
                    }
                    Turn::Wait(slot) => match self.inner.lookups.wait(&slot).await {
                        Waited::Found(found) => {
                            self.inner.metrics.shared_lookups.increment();
                            return found;
                        }
                        // The first tier may have the value by now (another
                        // caller's lookup finished meanwhile): ask it again.
                        Waited::Retry => first_missed = false,
                        // Its caller stopped being polled: share a new lookup instead.
                        Waited::Stalled => {
                            self.inner.lookups.detach(key, &slot);
                            first_missed = false;
                        }
                    },
                }
            }
        };
        // Entering a span that nobody records costs every poll a little.
        if span.is_disabled() {
            lookup.await
        } else {
            lookup.instrument(span).await
        }
    }

    /// The value for `key`; on a miss in every tier, runs `loader` (once per
    /// key however many callers wait), stores its value in every tier with
    /// the default TTL, and returns it.
    ///
    /// With [`CacheBuilder::eager_refresh`], an L1 hit late in its TTL also
    /// starts one background reload with `loader`.
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
        self.get_or_load_with(key, LoadOptions::default(), loader)
            .await
    }

    /// [`Cache::get_or_load`], storing the loaded value as `options` say
    /// (TTL, tags) and giving up after the options' timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use perfkit_tiered_cache::{Cache, LoadOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: Cache<String> = Cache::builder().build()?;
    /// let options = LoadOptions::default()
    ///     .tags(["team:7"])
    ///     .timeout(Duration::from_secs(2));
    /// let report = cache
    ///     .get_or_load_with("report:1", options, || async {
    ///         Ok::<_, std::io::Error>("quarterly".to_owned())
    ///     })
    ///     .await?;
    /// assert_eq!(*report, "quarterly");
    /// cache.invalidate_tag("team:7").await;
    /// assert_eq!(cache.get("report:1").await, None);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Cache::get_or_load`], and [`Error::LoadTimeout`].
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: &str,
        options: LoadOptions,
        loader: F,
    ) -> Result<Arc<V>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let erased = move || async move { loader().await.map(Some).map_err(Into::into) };
        match self.load_through(key, erased, options).await? {
            Some(value) => Ok(value),
            None => Err(Error::NotFound),
        }
    }

    /// Like [`Cache::get_or_load`] for a loader that may find nothing
    /// (`Ok(None)`): "not found" is returned, never stored in a tier, and,
    /// with [`CacheBuilder::negative_ttl`], remembered for that long.
    ///
    /// # Errors
    ///
    /// As [`Cache::get_or_load`].
    pub async fn get_or_load_optional<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Option<Arc<V>>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let erased = move || async move { loader().await.map_err(Into::into) };
        self.load_through(key, erased, LoadOptions::default()).await
    }

    async fn load_through<F, Fut>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> Result<Option<Arc<V>>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Erased<V>> + Send + 'static,
    {
        if let Ok(Some(entry)) = self.inner.ask_first(|tier| tier.get_now(key).known()) {
            self.inner.refresh_if_late(key, &entry, loader, options);
            return Ok(Some(entry.value));
        }
        if let Some(negatives) = &self.inner.negatives
            && negatives.contains_key(key)
        {
            self.inner.metrics.negative_hits.increment();
            return Ok(None);
        }
        self.inner.revive_bus();
        let span = self.inner.get_span();
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        let limit = options.timeout.or(self.inner.load_timeout);
        let call = self
            .inner
            .loads
            .run(owned.clone(), move || async move {
                inner.load(&owned, loader, true, &options).await
            })
            .instrument(span);
        let outcome = match limit {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.inner.give_up_load(key, limit);
                    return Err(Error::LoadTimeout(limit));
                }
            },
        };
        match outcome.result {
            Ok(value) => Ok(value),
            Err(perfkit_dedup::Error::Failed(error)) => Err(Error::Load(LoadError::clone(&error))),
            Err(perfkit_dedup::Error::Panicked(message)) => Err(Error::LoaderPanicked(message)),
            Err(_) => Err(Error::LoaderPanicked(Arc::from("unknown failure"))),
        }
    }

    /// Loads every key of `keys` that no tier has, at most `concurrency` at
    /// a time, with `loader(key)`; keys already cached are left as they are.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::num::NonZeroUsize;
    ///
    /// use perfkit_tiered_cache::{Cache, MemoryTier};
    ///
    /// let cache: Cache<String> = Cache::builder().tier(MemoryTier::with_max_entries(1_000)).build()?;
    /// cache.set("user:1", "cached".to_owned()).await;
    /// // Before taking traffic: load the hot keys, four at a time; user:1 is left alone.
    /// let keys = (1..=10).map(|id| format!("user:{id}"));
    /// let concurrency = NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN);
    /// let report = cache
    ///     .warm(keys, concurrency, |key| async move { Ok::<_, std::io::Error>(format!("loaded {key}")) })
    ///     .await;
    /// assert_eq!((report.cached, report.failed), (10, 0));
    /// assert_eq!(cache.get("user:1").await.as_deref().map(String::as_str), Some("cached"));
    /// # Ok(()) }
    /// ```
    pub async fn warm<I, F, Fut, E>(
        &self,
        keys: I,
        concurrency: NonZeroUsize,
        loader: F,
    ) -> WarmReport
    where
        I: IntoIterator<Item = String>,
        F: Fn(String) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.get()));
        let mut tasks = tokio::task::JoinSet::new();
        let mut report = WarmReport::default();
        for key in keys {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let (cache, loader) = (self.clone(), loader.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let for_loader = key.clone();
                cache
                    .get_or_load(&key, move || loader(for_loader))
                    .await
                    .is_ok()
            });
        }
        while let Some(done) = tasks.join_next().await {
            if done.unwrap_or(false) {
                report.cached += 1;
            } else {
                report.failed += 1;
            }
        }
        report
    }

    /// Stores `value` in every tier with the default TTL.
    pub async fn set(&self, key: &str, value: V) {
        self.set_with(key, value, SetOptions::default()).await;
    }

    /// Stores `value` in every tier, as `options` say. A load or promotion of
    /// `key` that began earlier will not overwrite it in L1.
    ///
    /// A TTL under 1 ms means "do not cache": the call removes `key` as
    /// [`Cache::invalidate`] does. A TTL over [`MAX_TTL`](crate::MAX_TTL) is
    /// clamped to it.
    pub async fn set_with(&self, key: &str, value: V, options: SetOptions) {
        let Some(ttl) = storable_ttl(self.inner.ttl_of(&options)) else {
            // Under 1 ms: nothing is cached, and no older value may outlive this write.
            self.invalidate(key).await;
            return;
        };
        let value = Arc::new(value);
        let write = Write {
            key,
            value: &value,
            ttl,
            tags: &options.tags,
        };
        self.inner.write_through(&write).await;
        self.inner.publish(Target::Key(key.to_owned())).await;
    }

    /// Removes `key` from every tier, then tells other instances (with an
    /// invalidation bus) to drop it from their first tier. A load of `key` in
    /// flight is detached: the next `get_or_load` loads afresh instead of
    /// joining it, and the detached load does not write L1.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use perfkit_tiered_cache::{Cache, MemoryTier};
    ///
    /// let cache: Cache<String> = Cache::builder().tier(MemoryTier::with_max_entries(1_000)).build()?;
    /// cache.set("agent:42", "Ada".to_owned()).await;
    /// cache.invalidate("agent:42").await; // after the row changed: the next read loads it again
    /// assert!(cache.get("agent:42").await.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn invalidate(&self, key: &str) {
        self.inner.loads.forget(key);
        self.inner.lookups.forget(key);
        for level in self.inner.levels.iter().skip(1).rev() {
            level.delete(key).await;
        }
        self.inner.delete_from_first(key).await;
        self.inner.publish(Target::Key(key.to_owned())).await;
    }

    /// The same as [`Cache::invalidate`].
    pub async fn remove(&self, key: &str) {
        self.invalidate(key).await;
    }

    /// Removes every key matching `pattern` (a Redis-style glob: `*`, `?`,
    /// `[a-z]`, `\` escapes) from every tier, then tells other instances to
    /// do the same in their first tier. Remote tiers walk their keys with a
    /// cursor in batches (`SCAN MATCH`), never holding every match at once;
    /// the first tier matches locally. Loads and promotions of any key that
    /// began earlier will not refill the first tier. Returns how many
    /// entries the tiers removed (a key held by two tiers counts twice).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use perfkit_tiered_cache::{Cache, MemoryTier};
    ///
    /// let cache: Cache<String> = Cache::builder().tier(MemoryTier::with_max_entries(1_000)).build()?;
    /// for key in ["agent:1", "agent:2", "team:1"] {
    ///     cache.set(key, key.to_owned()).await;
    /// }
    /// cache.invalidate_pattern("agent:*").await; // Redis glob syntax
    /// assert!(cache.get("agent:1").await.is_none() && cache.get("agent:2").await.is_none());
    /// assert!(cache.get("team:1").await.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_pattern(&self, pattern: &str) -> u64 {
        let mut removed = 0;
        for level in self.inner.levels.iter().skip(1).rev() {
            removed += level.delete_matching(pattern).await;
        }
        removed += self.inner.delete_matching_from_first(pattern).await;
        self.inner
            .publish(Target::Pattern(pattern.to_owned()))
            .await;
        removed
    }

    /// Removes every entry written with `tag` from every tier, using each
    /// tier's tag index (never a scan of the keyspace), then removes the same
    /// keys from the tiers that hold untagged promoted copies. Returns how
    /// many distinct keys were removed. Loads and promotions of those keys
    /// that began earlier will not refill L1.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use perfkit_tiered_cache::{Cache, LoadOptions, MemoryTier, SetOptions};
    ///
    /// let cache: Cache<String> = Cache::builder().tier(MemoryTier::with_max_entries(1_000)).build()?;
    /// cache.set_with("team:7", "Core".to_owned(), SetOptions::default().tags(["org:1"])).await;
    /// let member = cache
    ///     .get_or_load_with("member:3", LoadOptions::default().tags(["org:1"]), || async {
    ///         Ok::<_, std::io::Error>("Grace".to_owned())
    ///     })
    ///     .await?;
    /// assert_eq!(*member, "Grace");
    /// // The organisation changed: drop everything tagged with it, wherever it is cached.
    /// cache.invalidate_tag("org:1").await;
    /// assert!(cache.get("team:7").await.is_none() && cache.get("member:3").await.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> usize {
        let levels = &self.inner.levels;
        // Slowest first, so a concurrent miss cannot promote a copy the slower tier still had.
        let mut reported: Vec<std::collections::HashSet<String>> =
            vec![std::collections::HashSet::new(); levels.len()];
        for (index, level) in levels.iter().enumerate().rev() {
            if index == 0 {
                // Loads and promotions that began before the slower tiers
                // dropped the tag must not fill the first tier: their value
                // may be tagged, and not indexed there yet.
                self.inner.generations.bump_all();
            }
            if let Some(keys) = reported.get_mut(index) {
                keys.extend(level.delete_tag(tag).await);
            }
        }
        let all: std::collections::HashSet<&String> = reported.iter().flatten().collect();
        for key in &all {
            for (index, level) in levels.iter().enumerate().skip(1).rev() {
                if !reported.get(index).is_some_and(|keys| keys.contains(*key)) {
                    level.delete(key).await;
                }
            }
            // Always: a promotion that raced the deletes above must not survive.
            self.inner.delete_from_first(key).await;
        }
        self.inner.publish(Target::Tag(tag.to_owned())).await;
        all.len()
    }

    /// Removes every entry from every tier (remote tiers: every key under
    /// their prefix), then tells other instances to empty their first tier.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use perfkit_tiered_cache::{Cache, MemoryTier};
    ///
    /// let cache: Cache<String> = Cache::builder().tier(MemoryTier::with_max_entries(1_000)).build()?;
    /// cache.set("a", "1".to_owned()).await;
    /// cache.clear().await; // every tier, under this cache's prefix only
    /// assert!(cache.get("a").await.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) {
        for level in self.inner.levels.iter().skip(1).rev() {
            level.clear().await;
        }
        self.inner.flush_first_tier().await;
        self.inner.publish(Target::Clear).await;
    }

    /// Counters per tier and for loads, since the cache was built.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let bus = self.inner.bus.as_ref().map(|link| &link.metrics);
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
                    value_errors: level.metrics.value_errors.get(),
                    skipped: level.metrics.skipped.get(),
                    promotions: level.metrics.promotions.get(),
                    breaker_open: level.breaker_open(),
                })
                .collect(),
            loads: self.inner.metrics.loads.get(),
            load_errors: self.inner.metrics.load_errors.get(),
            load_timeouts: self.inner.metrics.load_timeouts.get(),
            refreshes: self.inner.metrics.refreshes.get(),
            negative_hits: self.inner.metrics.negative_hits.get(),
            stale_served: self.inner.metrics.stale_served.get(),
            shared_lookups: self.inner.metrics.shared_lookups.get(),
            invalidations_sent: bus.map_or(0, |m| m.sent.get()),
            publish_errors: bus.map_or(0, |m| m.publish_errors.get()),
            invalidations_received: bus.map_or(0, |m| m.received.get()),
            l1_flushes: bus.map_or(0, BusMetrics::flushes),
            bus_reconnects: bus.map_or(0, |m| m.reconnects.get()),
            bus_up: self.inner.bus.as_ref().map(BusLink::is_up),
        }
    }

    /// The cache's name, as in metrics and spans.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

/// [`Cache::get`]'s future.
struct Get<'a, V> {
    cache: &'a Cache<V>,
    key: &'a str,
    /// The lookup below the first tier, once the first missed.
    below: Option<BoxedLookup<'a, V>>,
}

/// A lookup below the first tier, boxed.
type BoxedLookup<'a, V> = Pin<Box<dyn Future<Output = Option<Arc<V>>> + Send + 'a>>;

impl<V: Send + Sync + 'static> Future for Get<'_, V> {
    type Output = Option<Arc<V>>;

    #[inline]
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // Every field is `Unpin` (references and a box).
        let this = self.get_mut();
        let below = match &mut this.below {
            Some(below) => below,
            None => {
                let (cache, key) = (this.cache, this.key);
                match cache
                    .inner
                    .ask_first(|tier| tier.get_value_now(key).known())
                {
                    Ok(found) => return std::task::Poll::Ready(found),
                    Err(first_missed) => this
                        .below
                        .insert(cache.boxed_get_below_first(key, first_missed)),
                }
            }
        };
        below.as_mut().poll(cx)
    }
}
