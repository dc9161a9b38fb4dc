//! Metric handles, registered once per tier so the hot path only increments.
//!
//! Names follow `perfkit_cache_<what>_<unit>`, labelled `name` (the cache's
//! name) and `tier`. Handles come from the `metrics` recorder installed when
//! the cache is built: install the exporter first.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
/// The local count is striped over cache-line-padded cells, one per thread
/// (threads numbered in the order they first count, modulo the stripes), so
/// that threads counting hits at once do not contend on one cache line.
#[derive(Debug)]
pub(crate) struct Local {
    exported: Counter,
    stripes: Box<[Stripe]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

const STRIPES: usize = 16;

/// The next thread's stripe.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialized (no lazy-init check on the hot path); `usize::MAX`
    // until the thread first counts.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe: consecutive threads get consecutive stripes.
fn stripe() -> usize {
    STRIPE.with(|stripe| {
        let mine = stripe.get();
        if mine != usize::MAX {
            return mine;
        }
        let mine = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
        stripe.set(mine);
        mine
    })
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
        let labels = [("name", cache.to_owned()), ("tier", tier.to_owned())];
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
    /// Callers that gave up on a load after its timeout.
    pub(crate) load_timeouts: Local,
    pub(crate) load_seconds: Histogram,
}

impl CacheMetrics {
    pub(crate) fn new(cache: &str) -> Self {
        let labels = [("name", cache.to_owned())];
        Self {
            loads: Local::new(counter!("perfkit_cache_loads_total", &labels)),
            refreshes: Local::new(counter!("perfkit_cache_refreshes_total", &labels)),
            negative_hits: Local::new(counter!("perfkit_cache_negative_hits_total", &labels)),
            stale_served: Local::new(counter!("perfkit_cache_stale_served_total", &labels)),
            shared_lookups: Local::new(counter!("perfkit_cache_shared_lookups_total", &labels)),
            load_errors: Local::new(counter!("perfkit_cache_load_errors_total", &labels)),
            load_timeouts: Local::new(counter!("perfkit_cache_load_timeouts_total", &labels)),
            load_seconds: histogram!("perfkit_cache_load_duration_seconds", &labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_runtime_worker_threads_count_on_distinct_stripes() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        // Both tasks block on the barrier, so each holds one worker thread.
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let barrier = std::sync::Arc::clone(&barrier);
                runtime.spawn(async move {
                    barrier.wait();
                    (std::thread::current().id(), stripe())
                })
            })
            .collect();
        let seen: Vec<_> = tasks
            .into_iter()
            .map(|task| runtime.block_on(task).unwrap())
            .collect();
        assert_ne!(seen[0].0, seen[1].0, "two worker threads");
        assert_ne!(seen[0].1, seen[1].1, "on two stripes: {seen:?}");
        assert_eq!(stripe(), stripe(), "a thread keeps its stripe");
    }

    #[test]
    fn the_striped_count_is_the_sum_over_threads() {
        let local = Local::new(Counter::noop());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        local.increment();
                    }
                });
            }
        });
        assert_eq!(local.get(), 4_000);
    }
}
