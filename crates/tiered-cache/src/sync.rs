//! What the state machines the loom models check (`generations`, `lookups`)
//! synchronize with: std's locks and dashmap's map here. The models crate
//! (`models/` in the workspace) builds the same source files against a
//! `sync` module of its own, with loom's locks and a map behind one of them.

use std::future::Future;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
pub(crate) use std::sync::{Arc, Mutex, MutexGuard, RwLock};
pub(crate) use tokio::sync::Notify;

/// A concurrent map from string keys, each entry changed under its shard's
/// lock.
pub(crate) struct KeyMap<T>(DashMap<Box<str>, T, foldhash::fast::RandomState>);

impl<T> KeyMap<T> {
    pub(crate) fn new() -> Self {
        Self(DashMap::with_hasher(foldhash::fast::RandomState::default()))
    }

    /// Under the key's lock: `occupied` on its value, or the value and the
    /// answer from `vacant`, the value inserted.
    pub(crate) fn upsert<R>(
        &self,
        key: &str,
        occupied: impl FnOnce(&mut T) -> R,
        vacant: impl FnOnce() -> (T, R),
    ) -> R {
        // Straight to the entry: inserting is the common case (the key copy
        // is wasted only when the key is there).
        match self.0.entry(Box::from(key)) {
            Entry::Occupied(mut held) => occupied(held.get_mut()),
            Entry::Vacant(vacant_entry) => {
                let (value, answer) = vacant();
                vacant_entry.insert(value);
                answer
            }
        }
    }

    pub(crate) fn remove(&self, key: &str) -> Option<T> {
        self.0.remove(key).map(|(_, value)| value)
    }

    /// Removes the key's value if `remove` says so, atomically.
    pub(crate) fn remove_if(&self, key: &str, remove: impl FnOnce(&T) -> bool) -> Option<T> {
        self.0
            .remove_if(key, |_, value| remove(value))
            .map(|(_, value)| value)
    }

    /// `read` on the key's value, if any.
    #[cfg(test)]
    pub(crate) fn with<R>(&self, key: &str, read: impl FnOnce(&T) -> R) -> Option<R> {
        self.0.get(key).map(|value| read(&value))
    }

    #[cfg(any(test, perfkit_loom))]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `future`'s output, or `None` once `limit` has passed (tokio's timer).
pub(crate) async fn timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    tokio::time::timeout(limit, future).await.ok()
}
