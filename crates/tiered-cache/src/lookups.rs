//! Shared lookups: concurrent `get` misses of one key ask the lower tiers once.
//!
//! A lookup is cheap to repeat and changes nothing but the first tier (its
//! promotion, which the generations guard), so it does not need what a load
//! needs from single-flight (a future that outlives its starter, shared
//! panics). It runs inline in the first caller's future: no task, no boxed
//! future, one small allocation (the key in the map). The callers that
//! arrive meanwhile wait for its value on a slot that the first of them
//! makes: a lookup nobody joins allocates no slot.
//!
//! - **The first caller goes away** (dropped, or it panicked) before the
//!   value is in: its guard frees the key and wakes the waiters, and the
//!   first of them to run looks in its place while the others wait on it.
//! - **The first caller stops being polled** without being dropped (a held
//!   `select!` branch): a waiter waits at most its *patience* (twice the
//!   remote tiers' timeouts, which bound a lookup and its promotion), then
//!   detaches that lookup, waking the other waiters, and all take a turn
//!   again, so they (and every later caller) share a new lookup instead of
//!   queueing behind the stalled one. A stalled caller can delay others
//!   once, never hang them.
//! - **Invalidation** detaches the lookup in progress ([`Lookups::forget`])
//!   and sends its waiters to look again: later callers look afresh; the
//!   detached lookup only ever removes its own entry (the map's entries
//!   carry the id of the lookup that made them), and its promotion is
//!   refused by the generations.

use std::sync::PoisonError;
use std::time::Duration;

use crate::sync::{Arc, AtomicU64, KeyMap, Mutex, Notify, Ordering, timeout};

/// The lookups in progress, by key.
pub(crate) struct Lookups<V> {
    running: KeyMap<Running<V>>,
    /// The next lookup's id.
    next: AtomicU64,
    patience: Duration,
}

/// A lookup in progress, as the map holds it.
struct Running<V> {
    /// Which lookup: whoever removes the entry checks it is the one it means.
    id: u64,
    /// Where the callers waiting on it get its outcome; made by the first.
    waiters: Option<Arc<Slot<V>>>,
}

/// Where the callers waiting on a lookup get its outcome.
pub(crate) struct Slot<V> {
    outcome: Mutex<Outcome<V>>,
    done: Notify,
}

enum Outcome<V> {
    Running,
    Found(Option<Arc<V>>),
    /// The caller running it went away first, or the lookup was detached
    /// (stalled, or its key invalidated): look again.
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
    id: u64,
    finished: bool,
}

/// How a wait ended.
pub(crate) enum Waited<V> {
    /// The shared lookup's value.
    Found(Option<Arc<V>>),
    /// Its caller went away, or the lookup was detached: take a turn again.
    Retry,
    /// Its caller took longer than the patience: [`Lookups::detach`] it and
    /// take a turn again.
    Stalled,
}

impl<V> Lookups<V> {
    pub(crate) fn new(patience: Duration) -> Self {
        Self {
            running: KeyMap::new(),
            next: AtomicU64::new(0),
            patience,
        }
    }

    /// Joins the lookup of `key` in progress, or starts one.
    pub(crate) fn turn<'a>(&'a self, key: &'a str) -> Turn<'a, V> {
        self.running.upsert(
            key,
            |running| {
                // Made under the entry's lock: every waiter shares the one
                // its lookup will settle.
                let slot = running.waiters.get_or_insert_with(|| {
                    Arc::new(Slot {
                        outcome: Mutex::new(Outcome::Running),
                        done: Notify::new(),
                    })
                });
                Turn::Wait(Arc::clone(slot))
            },
            || {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                let leader = Leader {
                    lookups: self,
                    key,
                    id,
                    finished: false,
                };
                (Running { id, waiters: None }, Turn::Lead(leader))
            },
        )
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
        if timeout(self.patience, done).await.is_none() {
            return Waited::Stalled;
        }
        slot.waited().unwrap_or(Waited::Retry)
    }

    /// Detaches the lookup of `key` in progress: later callers look afresh,
    /// and so do those waiting on it.
    pub(crate) fn forget(&self, key: &str) {
        if let Some(running) = self.running.remove(key) {
            running.abandon();
        }
    }

    /// Detaches the lookup whose waiters wait on `slot`, if it is still the
    /// key's (not a newer one), and sends them all to take a turn again:
    /// the next caller starts a new lookup. Its own caller, if it ever
    /// finishes, finds nobody to hand its value to.
    pub(crate) fn detach(&self, key: &str, slot: &Arc<Slot<V>>) {
        let removed = self.running.remove_if(key, |current| {
            current
                .waiters
                .as_ref()
                .is_some_and(|waiting| Arc::ptr_eq(waiting, slot))
        });
        if let Some(running) = removed {
            running.abandon();
        }
    }

    /// Whether no lookup is in progress (the loom models' check).
    #[cfg(perfkit_loom)]
    pub(crate) fn running_is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Removes the lookup `id` of `key` if it is still in the map; what its
    /// waiters wait on, if any.
    fn remove(&self, key: &str, id: u64) -> Option<Option<Arc<Slot<V>>>> {
        self.running
            .remove_if(key, |current| current.id == id)
            .map(|running| running.waiters)
    }
}

impl<V> Running<V> {
    /// Sends the waiters, if any, to take a turn again.
    fn abandon(self) {
        if let Some(slot) = self.waiters {
            slot.settle(Outcome::Abandoned);
        }
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
    /// Hands `value` to the callers waiting, and frees the key. A lookup
    /// detached meanwhile has sent its waiters away already: nobody to tell.
    pub(crate) fn finish(mut self, value: Option<&Arc<V>>) {
        self.finished = true;
        if let Some(Some(slot)) = self.lookups.remove(self.key, self.id) {
            slot.settle(Outcome::Found(value.cloned()));
        }
    }
}

impl<V> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        if !self.finished
            && let Some(Some(slot)) = self.lookups.remove(self.key, self.id)
        {
            slot.settle(Outcome::Abandoned);
        }
    }
}

// Ordinary tests only; under `perfkit_loom` the locks are loom's.
#[cfg(test)]
#[cfg(not(perfkit_loom))]
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
        // Every waiter on it is sent to take a turn again.
        assert!(matches!(lookups.wait(&slot).await, Waited::Retry));
        // Later callers share a new lookup, not the stalled one.
        let fresh = lead(&lookups, "k");
        let behind_fresh = join(&lookups, "k");
        // A detach meant for the stalled lookup leaves the new one alone.
        lookups.detach("k", &slot);
        // The stalled caller ends late: it frees only its own entry.
        stalled.finish(Some(&Arc::new(1)));
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

    #[tokio::test]
    async fn a_forgotten_lookup_sends_its_waiters_to_look_again_and_its_end_frees_nothing_newer() {
        let lookups = Lookups::new(Duration::from_secs(60));
        let old = lead(&lookups, "k");
        let slot = join(&lookups, "k");
        lookups.forget("k");
        assert!(matches!(lookups.wait(&slot).await, Waited::Retry));
        let new = lead(&lookups, "k");
        let behind_new = join(&lookups, "k");
        // The forgotten lookup ends, then another is dropped unfinished:
        // neither touches the new lookup's entry.
        old.finish(Some(&Arc::new(1)));
        drop(lead(&lookups, "other"));
        let _joining = join(&lookups, "k");
        new.finish(Some(&Arc::new(2)));
        assert!(matches!(lookups.wait(&behind_new).await, Waited::Found(Some(v)) if *v == 2));
        let _next = lead(&lookups, "k");
    }

    /// The patience, on tokio's paused clock: the waiter gives up exactly
    /// at its bound, not before, and a value that comes first wins.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_on_a_stalled_lookup_exactly_at_its_patience() {
        let patience = Duration::from_millis(100);
        let lookups = Lookups::new(patience);
        let _stalled = lead(&lookups, "k");
        let slot = join(&lookups, "k");
        let started = tokio::time::Instant::now();
        let wait = lookups.wait(&slot);
        tokio::pin!(wait);
        let early = patience - Duration::from_millis(1);
        assert!(
            tokio::time::timeout(early, wait.as_mut()).await.is_err(),
            "gave up before its patience"
        );
        let waited = tokio::time::timeout(Duration::from_secs(3_600), wait).await;
        assert!(matches!(waited, Ok(Waited::Stalled)), "never gave up");
        assert_eq!(started.elapsed(), patience);

        // A lookup that finishes within the patience hands its value over.
        lookups.detach("k", &slot);
        let leader = lead(&lookups, "k");
        let slot = join(&lookups, "k");
        let wait = lookups.wait(&slot);
        tokio::pin!(wait);
        assert!(tokio::time::timeout(early, wait.as_mut()).await.is_err());
        leader.finish(Some(&Arc::new(3)));
        assert!(matches!(wait.await, Waited::Found(Some(v)) if *v == 3));
    }

    #[test]
    fn a_lookup_nobody_joins_makes_no_slot() {
        let lookups = Lookups::<u32>::new(Duration::from_secs(60));
        let leader = lead(&lookups, "k");
        assert!(lookups.running.with("k", |r| r.waiters.is_none()) == Some(true));
        let slot = join(&lookups, "k");
        let again = join(&lookups, "k");
        assert!(Arc::ptr_eq(&slot, &again), "waiters share one slot");
        leader.finish(None);
        assert!(lookups.running.is_empty());
    }
}
