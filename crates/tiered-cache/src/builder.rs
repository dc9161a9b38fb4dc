//! Configuration of a [`Cache`].

use std::num::NonZeroU32;
use std::time::Duration;

use perfkit_dedup::Group;

use crate::cache::{Cache, Inner};
use crate::error::ConfigError;
use crate::generations::Generations;
use crate::level::Level;
use crate::metrics::CacheMetrics;
use crate::tier::Tier;
use crate::tiers::memory::MemoryTier;

/// Default [`CacheBuilder::remote_timeout`]: 50 ms.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_millis(50);
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
    breaker_failures: NonZeroU32,
    breaker_cool_down: Duration,
    promote: bool,
}

impl<V: Send + Sync + 'static> CacheBuilder<V> {
    pub(crate) fn new() -> Self {
        Self {
            name: "default".to_owned(),
            tiers: Vec::new(),
            default_ttl: None,
            remote_timeout: DEFAULT_REMOTE_TIMEOUT,
            breaker_failures: NonZeroU32::new(DEFAULT_BREAKER_FAILURES).unwrap_or(NonZeroU32::MIN),
            breaker_cool_down: DEFAULT_BREAKER_COOL_DOWN,
            promote: true,
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

    /// The TTL of values stored by `set` and `get_or_load`. Default: none
    /// (entries live until evicted or removed).
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

    /// After `failures` consecutive failures of a remote tier, skip it for
    /// `cool_down`, then let one probe call through. Default: 5 failures, 5 s.
    pub fn circuit_breaker(mut self, failures: NonZeroU32, cool_down: Duration) -> Self {
        self.breaker_failures = failures;
        self.breaker_cool_down = cool_down;
        self
    }

    /// Whether a hit in a slower tier is written into the faster ones.
    /// Default: `true`.
    pub fn promote(mut self, promote: bool) -> Self {
        self.promote = promote;
        self
    }

    /// Builds the cache. With no tier added, it gets one [`MemoryTier`] of
    /// 10,000 entries: the embedded default needs no server.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an empty name, two tiers with one name, or a zero
    /// duration.
    pub fn build(mut self) -> Result<Cache<V>, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        for (what, duration) in [
            ("remote_timeout", Some(self.remote_timeout)),
            ("circuit_breaker cool_down", Some(self.breaker_cool_down)),
            ("default_ttl", self.default_ttl),
        ] {
            if duration == Some(Duration::ZERO) {
                return Err(ConfigError::ZeroDuration(what));
            }
        }
        if self.tiers.is_empty() {
            self.tiers
                .push(Box::new(MemoryTier::<V>::with_max_entries(10_000)));
        }
        let mut names = std::collections::HashSet::new();
        for tier in &self.tiers {
            if !names.insert(tier.name().to_owned()) {
                return Err(ConfigError::DuplicateTierName(tier.name().to_owned()));
            }
        }
        let breaker = (self.breaker_failures.get(), self.breaker_cool_down);
        let levels = self
            .tiers
            .into_iter()
            .map(|tier| Level::new(tier, &self.name, self.remote_timeout, breaker))
            .collect();
        let group_name = format!("cache.{}", self.name);
        Ok(Cache::from_inner(Inner {
            levels,
            default_ttl: self.default_ttl,
            promote: self.promote,
            loads: Group::builder()
                .name(format!("{group_name}.loads"))
                .build()
                .map_err(|_| ConfigError::EmptyName)?,
            lookups: Group::builder()
                .name(format!("{group_name}.lookups"))
                .build()
                .map_err(|_| ConfigError::EmptyName)?,
            generations: Generations::new(),
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
