//! Metric handles, registered once per tier so the hot path only increments.
//!
//! Names follow `perfkit_cache_<what>_<unit>`, labelled `name` (the cache's
//! name) and `tier`. Handles come from the `metrics` recorder installed when
//! the cache is built: install the exporter first.

use std::cell::Cell as StdCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

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
/// The local count is kept in cache-line-padded cells. Each of the first
/// [`OWNED`] threads alive at once owns a cell and counts into it with a
/// plain load and store (only its owner writes a cell: no atomic
/// read-modify-write, which would cost an L1 hit a fifth of its time);
/// further threads share [`SHARED`] cells with atomic adds. A thread's cell
/// goes to the next thread when it exits.
#[derive(Debug)]
pub(crate) struct Local {
    exported: Counter,
    cells: Box<[Cell64]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell64(AtomicU64);

/// Cells owned by one thread each.
const OWNED: usize = 16;
/// Cells shared by the threads past the first [`OWNED`].
const SHARED: usize = 16;

/// Which owned cells are free, and how many threads share cells.
struct Owners {
    free: Vec<usize>,
    next: usize,
    overflow: usize,
}

static OWNERS: Mutex<Owners> = Mutex::new(Owners {
    free: Vec::new(),
    next: 0,
    overflow: 0,
});

/// Gives this thread's owned cell back when it exits.
struct Claim(usize);

impl Drop for Claim {
    fn drop(&mut self) {
        // Shared from here on: a count made while the thread's other locals
        // are destroyed must not land in a cell a new owner writes.
        let _ = CELL.try_with(|cell| cell.set(SHARED_FALLBACK));
        OWNERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free
            .push(self.0);
    }
}

/// Not claimed yet.
const UNCLAIMED: usize = usize::MAX;
/// The shared cell a thread counts into while its locals are destroyed.
const SHARED_FALLBACK: usize = OWNED;

thread_local! {
    // Const-initialized and without a destructor: reading it is one load.
    static CELL: StdCell<usize> = const { StdCell::new(UNCLAIMED) };
    static CLAIM: StdCell<Option<Claim>> = const { StdCell::new(None) };
}

/// This thread's cell (an owned one below [`OWNED`]), claimed on its first
/// count.
#[inline]
fn cell() -> usize {
    let mine = CELL.with(StdCell::get);
    if mine != UNCLAIMED {
        return mine;
    }
    claim_cell()
}

#[cold]
fn claim_cell() -> usize {
    let mut owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
    let owned = match owners.free.pop() {
        Some(index) => Some(index),
        None if owners.next < OWNED => {
            owners.next += 1;
            Some(owners.next - 1)
        }
        None => None,
    };
    let mine = match owned {
        Some(index) => {
            drop(owners);
            // A thread whose locals are already being destroyed cannot
            // register the release: it shares instead.
            if CLAIM
                .try_with(|claim| claim.set(Some(Claim(index))))
                .is_err()
            {
                OWNERS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .free
                    .push(index);
                return SHARED_FALLBACK;
            }
            index
        }
        None => {
            owners.overflow += 1;
            OWNED + owners.overflow % SHARED
        }
    };
    let _ = CELL.try_with(|cell| cell.set(mine));
    mine
}

impl Local {
    pub(crate) fn new(exported: Counter) -> Self {
        Self {
            exported,
            cells: (0..OWNED + SHARED).map(|_| Cell64::default()).collect(),
        }
    }

    #[inline]
    pub(crate) fn increment(&self) {
        self.exported.increment(1);
        let index = cell();
        let Some(cell) = self.cells.get(index) else {
            return;
        };
        if index < OWNED {
            // Only this thread writes this cell (see `Local`).
            cell.0
                .store(cell.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        } else {
            cell.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells
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
    fn two_runtime_worker_threads_count_in_distinct_cells() {
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
                    (std::thread::current().id(), cell())
                })
            })
            .collect();
        let seen: Vec<_> = tasks
            .into_iter()
            .map(|task| runtime.block_on(task).unwrap())
            .collect();
        assert_ne!(seen[0].0, seen[1].0, "two worker threads");
        assert_ne!(seen[0].1, seen[1].1, "in two cells: {seen:?}");
        assert_eq!(cell(), cell(), "a thread keeps its cell");
    }

    #[test]
    fn the_count_is_the_sum_over_threads() {
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

    #[test]
    fn no_two_live_threads_own_a_cell_and_no_count_is_lost() {
        // Waves of threads, more than there are owned cells, all alive at
        // once: no owned cell may be held by two of them (its plain stores
        // would lose counts). Each wave's threads exit and give their cells
        // to the next.
        let local = Local::new(Counter::noop());
        const THREADS: usize = OWNED + SHARED + 8;
        for wave in 0..3 {
            let barrier = std::sync::Barrier::new(THREADS);
            let held = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..THREADS {
                    scope.spawn(|| {
                        for _ in 0..20_000 {
                            local.increment();
                        }
                        held.lock().unwrap().push(cell());
                        // Nobody exits (and frees a cell) before all counted.
                        barrier.wait();
                    });
                }
            });
            let mut owned: Vec<usize> = held
                .into_inner()
                .unwrap()
                .into_iter()
                .filter(|index| *index < OWNED)
                .collect();
            let count = owned.len();
            owned.sort_unstable();
            owned.dedup();
            assert_eq!(owned.len(), count, "wave {wave}: an owned cell held twice");
            assert!(count > 0, "wave {wave}: no thread owned a cell");
        }
        assert_eq!(local.get(), 3 * THREADS as u64 * 20_000);
        let owners = OWNERS.lock().unwrap();
        assert!(owners.next <= OWNED, "{} cells handed out", owners.next);
    }
}
