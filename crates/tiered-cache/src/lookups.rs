//! Shared lookups: concurrent `get` misses of one key ask the lower tiers once.
//!
//! A lookup is cheap to repeat and changes nothing but the first tier (its
//! promotion, which the generations guard), so it does not need what a load
//! needs from single-flight (a future that outlives its starter, shared
//! panics). It runs inline in the first caller's future: no task, no boxed
//! future, two small allocations (the key and the shared slot). The callers
//! that arrive meanwhile wait for its value.
//!
//! - **The first caller goes away** (dropped, or it panicked) before the
//!   value is in: its guard wakes the waiters, and the first of them to run
//!   looks in its place while the others wait on it.
//! - **The first caller stops being polled** without being dropped (a held
//!   `select!` branch): a waiter waits at most its *patience* (twice the
//!   remote tiers' timeouts, which bound a lookup and its promotion), then
//!   detaches that lookup and takes a turn again, so the waiters (and every
//!   later caller) share a new lookup instead of queueing behind the stalled
//!   one. A stalled caller can delay others once, never hang them.
//! - **Invalidation** detaches the lookup in progress ([`Lookups::forget`]):
//!   later callers look afresh; the detached lookup only ever removes its own
//!   slot, and its promotion is refused by the generations.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::sync::Notify;

/// The lookups in progress, by key.
pub(crate) struct Lookups<V> {
    slots: DashMap<Box<str>, Arc<Slot<V>>, foldhash::fast::RandomState>,
    patience: Duration,
}

/// One lookup in progress, shared by the caller running it and those waiting.
pub(crate) struct Slot<V> {
    outcome: Mutex<Outcome<V>>,
    done: Notify,
}

enum Outcome<V> {
    Running,
    Found(Option<Arc<V>>),
    /// The caller running it went away first.
    Abandoned,
}

/// What a caller does about a lookup.
pub(crate) enum Turn<'a, V> {
    /// Run it, then [`Leader::finish`].
    Lead(Leader<'a, V>),
    /// Wait for the caller running it ([`Lookups::wait`]).
    Wait(Arc<Slot<V>>),
}

/// The caller running a lookup. Dropped unfinished, it lets the waiters go.
pub(crate) struct Leader<'a, V> {
    lookups: &'a Lookups<V>,
    key: &'a str,
    slot: Arc<Slot<V>>,
    finished: bool,
}

/// How a wait ended.
pub(crate) enum Waited<V> {
    /// The shared lookup's value.
    Found(Option<Arc<V>>),
    /// Its caller went away: take a turn again.
    Retry,
    /// Its caller took longer than the patience: [`Lookups::detach`] it and
    /// take a turn again.
    Stalled,
}

impl<V> Lookups<V> {
    pub(crate) fn new(patience: Duration) -> Self {
        Self {
            slots: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            patience,
        }
    }

    /// Joins the lookup of `key` in progress, or starts one.
    pub(crate) fn turn<'a>(&'a self, key: &'a str) -> Turn<'a, V> {
        // Straight to the entry: starting is the common case (the key copy
        // is wasted only when joining).
        match self.slots.entry(Box::from(key)) {
            MapEntry::Occupied(running) => Turn::Wait(Arc::clone(running.get())),
            MapEntry::Vacant(vacant) => {
                let slot = Arc::new(Slot {
                    outcome: Mutex::new(Outcome::Running),
                    done: Notify::new(),
                });
                vacant.insert(Arc::clone(&slot));
                Turn::Lead(Leader {
                    lookups: self,
                    key,
                    slot,
                    finished: false,
                })
            }
        }
    }

    /// Waits for the lookup in `slot`, at most the patience.
    pub(crate) async fn wait(&self, slot: &Slot<V>) -> Waited<V> {
        let done = slot.done.notified();
        tokio::pin!(done);
        // Registered before the check: a finish between the two still wakes us.
        done.as_mut().enable();
        if let Some(waited) = slot.waited() {
            return waited;
        }
        if tokio::time::timeout(self.patience, done).await.is_err() {
            return Waited::Stalled;
        }
        slot.waited().unwrap_or(Waited::Retry)
    }

    /// Detaches the lookup of `key` in progress: later callers look afresh.
    pub(crate) fn forget(&self, key: &str) {
        self.slots.remove(key);
    }

    /// Removes `slot` from the map if it is still there (not a newer one):
    /// the next caller starts a new lookup. Its own caller, if it ever
    /// finishes, still hands its value to whoever waits on it.
    pub(crate) fn detach(&self, key: &str, slot: &Arc<Slot<V>>) {
        self.slots
            .remove_if(key, |_, current| Arc::ptr_eq(current, slot));
    }
}

impl<V> Slot<V> {
    fn waited(&self) -> Option<Waited<V>> {
        match &*self.outcome.lock().unwrap_or_else(PoisonError::into_inner) {
            Outcome::Running => None,
            Outcome::Found(value) => Some(Waited::Found(value.clone())),
            Outcome::Abandoned => Some(Waited::Retry),
        }
    }

    fn settle(&self, outcome: Outcome<V>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
        self.done.notify_waiters();
    }
}

impl<V> Leader<'_, V> {
    /// Hands `value` to the callers waiting, and frees the key.
    pub(crate) fn finish(mut self, value: Option<&Arc<V>>) {
        self.finished = true;
        self.lookups.detach(self.key, &self.slot);
        // Nobody else holds the slot once it is out of the map: no one to tell.
        if Arc::strong_count(&self.slot) > 1 {
            self.slot.settle(Outcome::Found(value.cloned()));
        }
    }
}

impl<V> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        if !self.finished {
            self.lookups.detach(self.key, &self.slot);
            self.slot.settle(Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead<'a>(lookups: &'a Lookups<u32>, key: &'a str) -> Leader<'a, u32> {
        match lookups.turn(key) {
            Turn::Lead(leader) => leader,
            Turn::Wait(_) => panic!("expected to lead"),
        }
    }

    fn join(lookups: &Lookups<u32>, key: &str) -> Arc<Slot<u32>> {
        match lookups.turn(key) {
            Turn::Wait(slot) => slot,
            Turn::Lead(_) => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn a_stalled_lookup_is_detached_and_its_late_end_leaves_the_new_one_alone() {
        let lookups = Lookups::new(Duration::from_millis(20));
        let stalled = lead(&lookups, "k");
        let slot = join(&lookups, "k");
        assert!(matches!(lookups.wait(&slot).await, Waited::Stalled));
        lookups.detach("k", &slot);
        // Later callers share a new lookup, not the stalled one.
        let fresh = lead(&lookups, "k");
        let behind_fresh = join(&lookups, "k");
        // The stalled caller ends late: it frees only its own slot.
        stalled.finish(Some(&Arc::new(1)));
        assert!(matches!(lookups.wait(&slot).await, Waited::Found(Some(v)) if *v == 1));
        let _still_joining = join(&lookups, "k");
        fresh.finish(Some(&Arc::new(2)));
        assert!(matches!(lookups.wait(&behind_fresh).await, Waited::Found(Some(v)) if *v == 2));
        let _next = lead(&lookups, "k");
    }

    #[tokio::test]
    async fn an_abandoned_lookup_tells_its_waiters_to_retry() {
        let lookups = Lookups::new(Duration::from_secs(60));
        let leader = lead(&lookups, "k");
        let slot = join(&lookups, "k");
        drop(leader);
        assert!(matches!(lookups.wait(&slot).await, Waited::Retry));
        let _next = lead(&lookups, "k");
    }
}
