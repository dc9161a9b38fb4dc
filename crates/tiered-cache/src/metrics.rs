//! Metric handles, registered once per tier so the hot path only increments.
//!
//! Names follow `perfkit_cache_<what>_<unit>`, labelled `cache` (the cache's
//! name) and `tier`. Handles come from the `metrics` recorder installed when
//! the cache is built: install the exporter first.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Per-tier counters, exported and kept locally for [`Stats`](crate::Stats).
#[derive(Debug)]
pub(crate) struct TierMetrics {
    pub(crate) hits: Local,
    pub(crate) misses: Local,
    pub(crate) errors: Local,
    /// Values skipped because they could not be decoded or encoded, or were too large.
    pub(crate) value_errors: Local,
    pub(crate) skipped: Local,
    pub(crate) promotions: Local,
    pub(crate) breaker_open: Gauge,
}

/// A counter exported through `metrics` and readable locally.
///
/// The local count is striped over cache-line-sized cells picked per thread,
/// so that threads counting hits at once do not contend on one cache line.
#[derive(Debug)]
pub(crate) struct Local {
    exported: Counter,
    stripes: Box<[Stripe]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

const STRIPES: usize = 16;

thread_local! {
    // Const-initialized: no lazy-init check on the hot path. Its address
    // differs per thread, which is all a stripe needs.
    static STRIPE_MARKER: u8 = const { 0 };
}

fn stripe() -> usize {
    STRIPE_MARKER.with(|marker| (std::ptr::from_ref(marker) as usize >> 4) % STRIPES)
}

impl Local {
    pub(crate) fn new(exported: Counter) -> Self {
        Self {
            exported,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }

    pub(crate) fn increment(&self) {
        self.exported.increment(1);
        if let Some(cell) = self.stripes.get(stripe()) {
            cell.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|cell| cell.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl TierMetrics {
    pub(crate) fn new(cache: &str, tier: &str) -> Self {
        let labels = [("cache", cache.to_owned()), ("tier", tier.to_owned())];
        Self {
            hits: Local::new(counter!("perfkit_cache_hits_total", &labels)),
            misses: Local::new(counter!("perfkit_cache_misses_total", &labels)),
            errors: Local::new(counter!("perfkit_cache_tier_errors_total", &labels)),
            value_errors: Local::new(counter!("perfkit_cache_value_errors_total", &labels)),
            skipped: Local::new(counter!("perfkit_cache_tier_skipped_total", &labels)),
            promotions: Local::new(counter!("perfkit_cache_promotions_total", &labels)),
            breaker_open: gauge!("perfkit_cache_breaker_open", &labels),
        }
    }
}

/// Cache-wide metrics.
#[derive(Debug)]
pub(crate) struct CacheMetrics {
    pub(crate) loads: Local,
    pub(crate) refreshes: Local,
    pub(crate) negative_hits: Local,
    pub(crate) stale_served: Local,
    /// `get` misses answered by another caller's lookup.
    pub(crate) shared_lookups: Local,
    pub(crate) load_errors: Local,
    pub(crate) load_seconds: Histogram,
}

impl CacheMetrics {
    pub(crate) fn new(cache: &str) -> Self {
        let labels = [("cache", cache.to_owned())];
        Self {
            loads: Local::new(counter!("perfkit_cache_loads_total", &labels)),
            refreshes: Local::new(counter!("perfkit_cache_refreshes_total", &labels)),
            negative_hits: Local::new(counter!("perfkit_cache_negative_hits_total", &labels)),
            stale_served: Local::new(counter!("perfkit_cache_stale_served_total", &labels)),
            shared_lookups: Local::new(counter!("perfkit_cache_shared_lookups_total", &labels)),
            load_errors: Local::new(counter!("perfkit_cache_load_errors_total", &labels)),
            load_seconds: histogram!("perfkit_cache_load_duration_seconds", &labels),
        }
    }
}
