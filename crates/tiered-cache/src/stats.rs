//! Counters since a cache was built, for dashboards and tests.

/// What [`Cache::stats`](crate::Cache::stats) returns.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per tier, fastest first.
    pub tiers: Vec<TierStats>,
    /// Loader runs.
    pub loads: u64,
    /// Loader runs that failed.
    pub load_errors: u64,
    /// Callers (and eager refreshes) that gave up on a load after the load
    /// timeout.
    pub load_timeouts: u64,
    /// Background reloads started by eager refresh.
    pub refreshes: u64,
    /// `get_or_load_optional` calls answered by a remembered "not found".
    pub negative_hits: u64,
    /// Failed loads answered with an expired value (serve-stale).
    pub stale_served: u64,
    /// `get` misses answered by another caller's lookup of the lower tiers
    /// (concurrent misses of one key share one lookup).
    pub shared_lookups: u64,
    /// Invalidations published to the invalidation bus.
    pub invalidations_sent: u64,
    /// Invalidations not published: failed, timed out, or skipped while the
    /// publish breaker was open.
    pub publish_errors: u64,
    /// Invalidations from other instances applied to the first tier.
    pub invalidations_received: u64,
    /// First-tier flushes because the invalidation bus may have lost
    /// messages (down, back up, lagging; the first subscription counts once).
    pub l1_flushes: u64,
    /// Times the invalidation bus came back after being down.
    pub bus_reconnects: u64,
    /// Whether the invalidation bus's subscription is up now (`None`
    /// without a bus): while it is down, other instances' invalidations
    /// may be missed.
    pub bus_up: Option<bool>,
}

/// Counters of one tier.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TierStats {
    /// The tier's name.
    pub name: String,
    /// Lookups that found a value here.
    pub hits: u64,
    /// Lookups that reached this tier and found nothing.
    pub misses: u64,
    /// Calls that failed because of the tier (timeouts, connection errors):
    /// what the circuit breaker counts.
    pub errors: u64,
    /// Values skipped as misses because of the value itself: undecodable,
    /// unencodable, or over the tier's size limit. Never counted against
    /// the tier.
    pub value_errors: u64,
    /// Calls skipped because the circuit breaker was open.
    pub skipped: u64,
    /// Values written here because a slower tier had them.
    pub promotions: u64,
    /// Whether the circuit breaker is open (or probing) now.
    pub breaker_open: bool,
}

impl TierStats {
    /// `hits / (hits + misses)`, or 0 before the first lookup.
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // a ratio for dashboards
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits.saturating_add(self.misses);
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}
