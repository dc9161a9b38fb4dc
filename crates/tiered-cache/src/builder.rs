//! Configuration of a [`Cache`].

use std::num::NonZeroU32;
use std::time::Duration;

use perfkit_dedup::Group;

use std::sync::Arc;

use crate::bus::InvalidationBus;
use crate::cache::Cache;
use crate::engine::Inner;
use crate::error::ConfigError;
use crate::generations::Generations;
use crate::invalidation::BusLink;
use crate::jitter::Jitter;
use crate::level::Level;
use crate::lookups::Lookups;
use crate::metrics::CacheMetrics;
use crate::tier::{Tier, ttl_setting_error};
use crate::tiers::memory::MemoryTier;

/// Default [`CacheBuilder::remote_timeout`]: 50 ms.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_millis(50);
/// Default [`CacheBuilder::bulk_timeout`]: 30 s.
const DEFAULT_BULK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`CacheBuilder::circuit_breaker`] threshold.
const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default [`CacheBuilder::circuit_breaker`] cool-down.
const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);

/// Builds a [`Cache`]: tiers fastest first, then policy.
///
/// ```
/// use std::time::Duration;
/// use perfkit_tiered_cache::{Cache, MemoryTier};
///
/// let cache: Cache<String> = Cache::builder()
///     .name("agents")
///     .tier(MemoryTier::with_max_entries(10_000))
///     .default_ttl(Duration::from_secs(300))
///     .build()
///     .expect("valid configuration");
/// ```
#[must_use]
pub struct CacheBuilder<V> {
    name: String,
    tiers: Vec<Box<dyn Tier<V>>>,
    default_ttl: Option<Duration>,
    remote_timeout: Duration,
    bulk_timeout: Duration,
    breaker_failures: NonZeroU32,
    breaker_cool_down: Duration,
    promote: bool,
    jitter: Option<f64>,
    negative_ttl: Option<Duration>,
    eager_refresh: Option<f64>,
    stale_grace: Option<Duration>,
    bus: Option<Arc<dyn InvalidationBus>>,
    strict: Option<Duration>,
    load_timeout: Option<Duration>,
}

impl<V: Send + Sync + 'static> CacheBuilder<V> {
    pub(crate) fn new() -> Self {
        Self {
            name: "default".to_owned(),
            tiers: Vec::new(),
            default_ttl: None,
            remote_timeout: DEFAULT_REMOTE_TIMEOUT,
            bulk_timeout: DEFAULT_BULK_TIMEOUT,
            breaker_failures: NonZeroU32::new(DEFAULT_BREAKER_FAILURES).unwrap_or(NonZeroU32::MIN),
            breaker_cool_down: DEFAULT_BREAKER_COOL_DOWN,
            promote: true,
            jitter: None,
            negative_ttl: None,
            eager_refresh: None,
            stale_grace: None,
            bus: None,
            strict: None,
            load_timeout: None,
        }
    }

    /// Names the cache in metrics (`cache` label) and spans. Default: `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds the next (slower) tier.
    pub fn tier(mut self, tier: impl Tier<V>) -> Self {
        self.tiers.push(Box::new(tier));
        self
    }

    /// The TTL of values stored by `set` and `get_or_load`, between 1 ms
    /// and [`MAX_TTL`](crate::MAX_TTL) (`build` rejects others). Default:
    /// none (entries live until evicted or removed).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The most a call to a remote tier may take before it counts as a
    /// failure (a miss). Default: 50 ms.
    pub fn remote_timeout(mut self, timeout: Duration) -> Self {
        self.remote_timeout = timeout;
        self
    }

    /// The most a remote tier may take for an operation that walks many
    /// keys page by page (`invalidate_tag`, `invalidate_pattern`, `clear`).
    /// Default: 30 s.
    pub fn bulk_timeout(mut self, timeout: Duration) -> Self {
        self.bulk_timeout = timeout;
        self
    }

    /// After `failures` consecutive failures of a remote tier, skip it for
    /// `cool_down`, then let one probe call through. Reads, writes and
    /// deletes share a tier's breaker; publishes to the invalidation bus
    /// have a breaker of their own with the same settings. A probe whose
    /// caller goes away before it answers counts as a failed probe.
    /// Default: 5 failures, 5 s.
    pub fn circuit_breaker(mut self, failures: NonZeroU32, cool_down: Duration) -> Self {
        self.breaker_failures = failures;
        self.breaker_cool_down = cool_down;
        self
    }

    /// How long a `get_or_load` caller waits for its load (its own, or the
    /// one it joined) before it gets [`Error::LoadTimeout`](crate::Error::LoadTimeout).
    /// The load is then detached: the next call starts a new one, and the
    /// old one goes on only while other callers still wait on it (eager
    /// refreshes are bounded the same way). Override per call with
    /// [`LoadOptions::timeout`](crate::LoadOptions::timeout). Default: none,
    /// as moka's `get_with`: a loader that never returns holds its callers
    /// until they are dropped.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = Some(timeout);
        self
    }

    /// Whether a hit in a slower tier is written into the faster ones.
    /// Default: `true`.
    pub fn promote(mut self, promote: bool) -> Self {
        self.promote = promote;
        self
    }

    /// Shortens the TTL of every value written by `set` or a load by a
    /// random part of at most `fraction` of it (`0.1`: up to 10% shorter), so
    /// that entries written together do not expire together. Promotions keep
    /// the TTL they found. Default: none.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.jitter = Some(fraction);
        self
    }

    /// Remembers, for `ttl`, that `get_or_load_optional`'s loader found no
    /// value for a key, so repeated lookups of a missing key do not reach the
    /// loader. Kept in this instance's memory only; `set` and `remove` of the
    /// key forget it. Default: off.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// On a `get_or_load` L1 hit past `fraction` of the TTL the entry was
    /// written with (`0.8`: in its last 20%), starts one background reload so
    /// that callers keep getting hits. At most one reload per key runs at a
    /// time. Default: off.
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.eager_refresh = Some(fraction);
        self
    }

    /// Serve-stale: the first tier keeps values up to `max_stale_age` past
    /// their TTL (invisible to lookups), and a load whose loader fails
    /// answers with that expired value instead of the error. Needs a first
    /// tier that can keep expired entries ([`MemoryTier`] can). Default: off.
    pub fn serve_stale(mut self, max_stale_age: Duration) -> Self {
        self.stale_grace = Some(max_stale_age);
        self
    }

    /// Invalidates other instances through `bus`, and applies theirs: every
    /// `set`, `remove`/`invalidate`, `invalidate_pattern`, `invalidate_tag`
    /// and `clear` is published after this instance has changed its tiers,
    /// and each instance applies the others' to its first tier only (never
    /// to shared tiers, which the sender already changed). When the bus may
    /// have lost messages (disconnected, reconnected, lagging), the first
    /// tier is flushed. Use [`RedisBus`](crate::RedisBus) between processes,
    /// [`LocalBus`](crate::LocalBus) within one. Building the cache then needs
    /// a tokio runtime (the subscription is a task). Default: none.
    pub fn invalidation_bus(mut self, bus: impl InvalidationBus) -> Self {
        self.bus = Some(Arc::new(bus));
        self
    }

    /// Strict mode: once the invalidation bus has been down for `bound`, the
    /// first tier is bypassed (lookups go to the next tier or the loader)
    /// until the bus is back, so no value is served from it that an unseen
    /// invalidation may have made stale for longer than `bound`. Before the
    /// first subscription the bus counts as down. Default: relaxed (the first
    /// tier keeps serving while the bus is down; it is flushed when the bus
    /// goes down and again when it comes back).
    pub fn strict_invalidation(mut self, bound: Duration) -> Self {
        self.strict = Some(bound);
        self
    }

    /// Builds the cache. With no tier added, it gets one [`MemoryTier`] of
    /// 10,000 entries: the embedded default needs no server.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an empty name, two tiers with one name, a zero
    /// duration, a TTL setting outside 1 ms ..= [`MAX_TTL`](crate::MAX_TTL),
    /// or an invalidation bus without a tokio runtime.
    pub fn build(mut self) -> Result<Cache<V>, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.load_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration("load_timeout"));
        }
        for (what, duration) in [
            ("remote_timeout", self.remote_timeout),
            ("bulk_timeout", self.bulk_timeout),
            ("circuit_breaker cool_down", self.breaker_cool_down),
        ] {
            if duration.is_zero() {
                return Err(ConfigError::ZeroDuration(what));
            }
        }
        for (setting, ttl) in [
            ("default_ttl", self.default_ttl),
            ("negative_ttl", self.negative_ttl),
            ("serve_stale", self.stale_grace),
        ] {
            if let Some(error) = ttl.and_then(|ttl| ttl_setting_error(setting, ttl)) {
                return Err(error);
            }
        }
        for (setting, fraction) in [
            ("ttl_jitter", self.jitter),
            ("eager_refresh", self.eager_refresh),
        ] {
            if let Some(value) = fraction
                && !(value > 0.0 && value < 1.0)
            {
                return Err(ConfigError::Fraction {
                    setting,
                    value: value.to_string(),
                });
            }
        }
        if self.tiers.is_empty() {
            self.tiers
                .push(Box::new(MemoryTier::<V>::with_max_entries(10_000)));
        }
        if let Some(grace) = self.stale_grace
            && let Some(first) = self.tiers.first_mut()
            && !first.keep_stale_for(grace)
        {
            return Err(ConfigError::StaleUnsupported(first.name().to_owned()));
        }
        if self.bus.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime);
        }
        if self.strict.is_some() && self.bus.is_none() {
            return Err(ConfigError::StrictWithoutBus);
        }
        let mut names = std::collections::HashSet::new();
        for tier in &self.tiers {
            if !names.insert(tier.name().to_owned()) {
                return Err(ConfigError::DuplicateTierName(tier.name().to_owned()));
            }
        }
        let breaker = (self.breaker_failures, self.breaker_cool_down);
        let levels: Box<[Level<V>]> = self
            .tiers
            .into_iter()
            .map(|tier| {
                let timeouts = (self.remote_timeout, self.bulk_timeout);
                Level::new(tier, &self.name, timeouts, breaker)
            })
            .collect();
        let group_name = format!("cache.{}", self.name);
        // A `get`'s lookup and promotion take at most one timeout per remote
        // call: a caller waiting on another's lookup longer than twice that
        // leaves it behind (its caller is no longer polled).
        let below_first = u32::try_from(levels.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let patience = self
            .remote_timeout
            .saturating_mul(below_first.saturating_mul(2))
            .max(self.remote_timeout);
        let bus = self
            .bus
            .map(|bus| BusLink::new(bus, &self.name, self.strict, self.remote_timeout, breaker));
        Ok(Cache::from_inner(Inner {
            bus,
            levels,
            default_ttl: self.default_ttl,
            promote: self.promote,
            loads: Group::builder()
                .name(format!("{group_name}.loads"))
                .build()
                .map_err(|_| ConfigError::EmptyName)?,
            lookups: Lookups::new(patience),
            generations: Generations::new(),
            jitter: self.jitter.map(Jitter::new),
            negatives: self.negative_ttl.map(|ttl| {
                moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(ttl)
                    .build()
            }),
            eager_refresh: self.eager_refresh,
            serve_stale: self.stale_grace.is_some(),
            load_timeout: self.load_timeout,
            metrics: CacheMetrics::new(&self.name),
            name: self.name.into_boxed_str(),
        }))
    }
}

impl<V: Send + Sync + 'static> std::fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tiers: Vec<&str> = self.tiers.iter().map(|tier| tier.name()).collect();
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("tiers", &tiers)
            .field("default_ttl", &self.default_ttl)
            .field("remote_timeout", &self.remote_timeout)
            .finish_non_exhaustive()
    }
}
