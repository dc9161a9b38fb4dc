//! The models' `crate::sync` for perfkit-idempotency: what the crate's
//! `sync` gives its claims table and Bloom filter, with loom's types in place
//! of std's and dashmap's, and a clock the models move in place of tokio's.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Add;
use std::time::Duration;

pub(crate) use loom::sync::RwLock;
pub(crate) use std::sync::PoisonError;

use loom::sync::Mutex;
use loom::sync::atomic::{AtomicU64, Ordering};

/// The crate's `KeyMap` (dashmap's there): one loom lock around a
/// `HashMap`, so every read or change of an entry is atomic as under a
/// shard lock.
pub(crate) struct KeyMap<K, V>(Mutex<HashMap<K, V>>);

impl<K: Hash + Eq, V> Default for KeyMap<K, V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq, V> KeyMap<K, V> {
    fn map(&self) -> loom::sync::MutexGuard<'_, HashMap<K, V>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn upsert<R>(
        &self,
        key: K,
        occupied: impl FnOnce(&mut V) -> R,
        vacant: impl FnOnce() -> (V, R),
    ) -> R {
        let mut map = self.map();
        if let Some(value) = map.get_mut(&key) {
            return occupied(value);
        }
        let (value, answer) = vacant();
        map.insert(key, value);
        answer
    }

    pub(crate) fn with<R>(&self, key: &K, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.map().get(key).map(read)
    }

    pub(crate) fn with_mut<R>(&self, key: &K, change: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.map().get_mut(key).map(change)
    }

    pub(crate) fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) -> bool {
        let mut map = self.map();
        if map.get(key).is_some_and(remove) {
            map.remove(key);
            true
        } else {
            false
        }
    }

    pub(crate) fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        self.map().retain(|_, value| keep(value));
    }

    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

loom::lazy_static! {
    /// The models' clock, in milliseconds, starting at 0 in each execution.
    static ref CLOCK: AtomicU64 = AtomicU64::new(0);
}

/// tokio's `Instant` there; here a point on the models' clock, which only
/// [`advance`] moves (a loom atomic: reading it is a switch point, as a
/// clock read between two locks is in a real process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Instant(Duration);

impl Instant {
    pub(crate) fn now() -> Self {
        Self(Duration::from_millis(CLOCK.load(Ordering::SeqCst)))
    }

    /// The instant `since_start` after the clock's start.
    pub(crate) fn at(since_start: Duration) -> Self {
        Self(since_start)
    }

    pub(crate) fn duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Self;

    fn add(self, later: Duration) -> Self {
        Self(self.0 + later)
    }
}

/// Moves the models' clock forward.
pub(crate) fn advance(by: Duration) {
    let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
    CLOCK.fetch_add(millis, Ordering::SeqCst);
}
