//! Per-key generations: a write that began before a `set` or `remove` of its
//! key never lands in L1 afterwards.
//!
//! Keys hash onto a fixed array of stripes, each a generation counter behind
//! a lock. `set` and `remove` bump their key's stripe and change L1 under that
//! lock; a fill (a load's result, a promotion) takes a [`Lease`] when it
//! starts and writes L1 only if the stripe has not moved since, under the same
//! lock. Two keys sharing a stripe can only cause a fill to be skipped, never
//! a stale write. Memory is fixed (no per-key state); every operation is O(1).
//!
//! Invalidations that cover many keys at once (a pattern, a tag, a clear, a
//! gap in the invalidation bus) move one cache-wide epoch instead: a lease
//! also records the epoch, and a fill checks both.

use std::hash::BuildHasher;
use std::sync::PoisonError;

use crate::sync::{Mutex, MutexGuard, RwLock};

#[cfg(not(perfkit_loom))]
const STRIPES: usize = 1024;
/// One stripe in the loom models (`models/`), which build this file against
/// loom's locks: every lock is a state loom tracks, and which stripe a key
/// takes must not depend on the hasher's random seed (loom replays each
/// execution and needs it to touch the same locks every time).
#[cfg(perfkit_loom)]
const STRIPES: usize = 1;

pub(crate) struct Generations {
    hasher: foldhash::fast::RandomState,
    stripes: Box<[Mutex<u64>]>,
    /// Held shared by fills from their check to their write, exclusively by
    /// [`Generations::bump_all`]: a fill that passed the check has written
    /// before the epoch moves.
    epoch: RwLock<u64>,
}

/// The generation of a key's stripe when a fill began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    stripe: usize,
    generation: u64,
    epoch: u64,
}

impl Generations {
    pub(crate) fn new() -> Self {
        Self {
            hasher: foldhash::fast::RandomState::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            epoch: RwLock::new(0),
        }
    }

    // (One stripe in the loom models: every key on it.)
    #[cfg_attr(perfkit_loom, allow(clippy::modulo_one))]
    fn stripe(&self, key: &str) -> usize {
        // Truncation is the point: any bits pick a stripe.
        #[allow(clippy::cast_possible_truncation)]
        let hash = self.hasher.hash_one(key) as usize;
        hash % STRIPES
    }

    fn lock(&self, stripe: usize) -> Option<MutexGuard<'_, u64>> {
        self.stripes
            .get(stripe)
            .map(|cell| cell.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Starts a fill of `key`.
    pub(crate) fn lease(&self, key: &str) -> Lease {
        let stripe = self.stripe(key);
        let epoch = *self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        let generation = self.lock(stripe).map_or(0, |g| *g);
        Lease {
            stripe,
            generation,
            epoch,
        }
    }

    /// Runs `write` (an L1 change, synchronous) only if `lease` is current,
    /// atomically with respect to [`Generations::bump_then`].
    pub(crate) fn if_current(&self, lease: Lease, write: impl FnOnce()) -> bool {
        let epoch = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        if *epoch != lease.epoch {
            return false;
        }
        match self.lock(lease.stripe) {
            Some(generation) if *generation == lease.generation => {
                write();
                true
            }
            _ => false,
        }
    }

    /// Moves `key`'s stripe to a new generation and runs `write` (an L1
    /// change) under the same lock: fills that began earlier are refused.
    pub(crate) fn bump_then(&self, key: &str, write: impl FnOnce()) {
        if let Some(mut generation) = self.lock(self.stripe(key)) {
            *generation = generation.wrapping_add(1);
            write();
        }
    }

    /// Moves the cache-wide epoch: every fill that began earlier is refused
    /// from now on. Fills already past their check have written by the time
    /// this returns, so an L1 change made after it removes them.
    pub(crate) fn bump_all(&self) {
        let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
        *epoch = epoch.wrapping_add(1);
    }
}
