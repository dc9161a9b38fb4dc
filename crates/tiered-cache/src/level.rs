//! One tier in a cache, with what the cache adds around it: a timeout and a
//! circuit breaker for remote tiers, and its metrics.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::error::TierError;
use crate::metrics::TierMetrics;
use crate::tier::{Entry, Tier, TierFuture, Version, Write};
use perfkit_breaker::{Breaker, Transition};

pub(crate) struct Level<V> {
    pub(crate) tier: Box<dyn Tier<V>>,
    timeout: Option<Duration>,
    /// The bound of operations that walk many keys (tags, patterns, clear).
    bulk_timeout: Option<Duration>,
    breaker: Option<Breaker>,
    pub(crate) metrics: TierMetrics,
}

impl<V: Send + Sync + 'static> Level<V> {
    pub(crate) fn new(
        tier: Box<dyn Tier<V>>,
        cache: &str,
        timeouts: (Duration, Duration),
        breaker: (NonZeroU32, Duration),
    ) -> Self {
        let remote = tier.is_remote();
        let metrics = TierMetrics::new(cache, tier.name());
        metrics.breaker_open.set(0.0);
        Self {
            timeout: remote.then_some(timeouts.0),
            bulk_timeout: remote.then_some(timeouts.1),
            breaker: remote.then(|| Breaker::new(breaker.0, breaker.1)),
            metrics,
            tier,
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.tier.name()
    }

    pub(crate) fn breaker_open(&self) -> bool {
        self.breaker.as_ref().is_some_and(Breaker::is_open)
    }

    /// Runs one tier call under the timeout and breaker; failures are logged
    /// and counted here, and the caller treats them as a miss.
    async fn guarded<'a, T>(
        &'a self,
        op: &'static str,
        call: TierFuture<'a, T>,
    ) -> Result<T, TierError> {
        self.bounded(op, self.timeout, call).await
    }

    /// [`Level::guarded`] for operations that walk many keys.
    async fn guarded_bulk<'a, T>(
        &'a self,
        op: &'static str,
        call: TierFuture<'a, T>,
    ) -> Result<T, TierError> {
        self.bounded(op, self.bulk_timeout, call).await
    }

    async fn bounded<'a, T>(
        &'a self,
        op: &'static str,
        timeout: Option<Duration>,
        call: TierFuture<'a, T>,
    ) -> Result<T, TierError> {
        // Held across the call: a probe dropped with this future counts as failed.
        let permit = match &self.breaker {
            Some(breaker) => match breaker.allow() {
                Some(permit) => Some(permit),
                None => {
                    self.metrics.skipped.increment();
                    return Err(TierError::CircuitOpen);
                }
            },
            None => None,
        };
        let result = match timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(TierError::Timeout(limit))),
            None => call.await,
        };
        // A value the codec cannot read (or one too large to send) is about
        // that value: the round trip worked, so the breaker hears a success.
        let tier_failed = result.as_ref().is_err_and(|error| !error.is_value_error());
        if let Some(permit) = permit {
            match permit.record(!tier_failed) {
                Some(Transition::Opened) => {
                    self.metrics.breaker_open.set(1.0);
                    tracing::warn!(
                        cache.tier = self.name(),
                        "circuit opened: skipping this tier for its cool-down"
                    );
                }
                Some(Transition::Closed) => {
                    self.metrics.breaker_open.set(0.0);
                    tracing::info!(
                        cache.tier = self.name(),
                        "circuit closed: the tier answers again"
                    );
                }
                None => {}
            }
        }
        match &result {
            Err(error) if tier_failed => {
                self.metrics.errors.increment();
                tracing::warn!(cache.tier = self.name(), cache.op = op, %error, "tier call failed; treated as a miss");
            }
            Err(error) => self.value_skipped(op, error),
            Ok(_) => {}
        }
        result
    }

    /// Counts and logs a value the tier could not take or read: a miss for
    /// that key, never a failure of the tier.
    fn value_skipped(&self, op: &'static str, error: &TierError) {
        self.metrics.value_errors.increment();
        tracing::warn!(cache.tier = self.name(), cache.op = op, %error, "value skipped; treated as a miss");
    }

    /// A lookup: in-process tiers answer at once, others through the guard.
    /// Failures are misses.
    pub(crate) async fn get(&self, key: &str) -> Option<Entry<V>> {
        if let Some(found) = self.tier.get_now(key).known() {
            return found;
        }
        self.guarded("get", self.tier.get(key)).await.ok().flatten()
    }

    /// A lookup that may be followed by a fill: the version is `None` when
    /// the tier failed (nothing may be filled there then).
    pub(crate) async fn lookup(&self, key: &str) -> (Option<Entry<V>>, Option<Version>) {
        if let Some(found) = self.tier.get_now(key).known() {
            return (found, Some(Version::unversioned()));
        }
        match self.guarded("get", self.tier.lookup(key)).await {
            Ok((found, version)) => {
                if let Some(error) = version.unreadable_value() {
                    self.value_skipped("get", error);
                }
                (found, Some(version))
            }
            Err(_) => (None, None),
        }
    }

    /// A conditional fill of a tier that cannot write at once (the cache
    /// tries `set_now` first, under its lease): `Some(false)` when refused or
    /// failed, `None` when the tier would not take the value (too large,
    /// unencodable), which says nothing about the key.
    pub(crate) async fn fill(&self, write: &Write<'_, V>, seen: &Version) -> Option<bool> {
        match self.guarded("fill", self.tier.fill(write, seen)).await {
            Ok(stored) => Some(stored),
            Err(error) if error.is_value_error() => None,
            Err(_) => Some(false),
        }
    }

    pub(crate) async fn set(&self, write: &Write<'_, V>) {
        if !self.tier.set_now(write) {
            let _ = self.guarded("set", self.tier.set(write)).await;
        }
    }

    pub(crate) async fn delete(&self, key: &str) {
        if !self.tier.delete_now(key) {
            let _ = self.guarded("delete", self.tier.delete(key)).await;
        }
    }

    pub(crate) async fn delete_tag(&self, tag: &str) -> Vec<String> {
        self.guarded_bulk("delete_tag", self.tier.delete_tag(tag))
            .await
            .unwrap_or_default()
    }

    pub(crate) async fn delete_matching(&self, pattern: &str) -> u64 {
        self.guarded_bulk("delete_matching", self.tier.delete_matching(pattern))
            .await
            .unwrap_or_default()
    }

    pub(crate) async fn clear(&self) {
        let _ = self.guarded_bulk("clear", self.tier.clear()).await;
    }
}
