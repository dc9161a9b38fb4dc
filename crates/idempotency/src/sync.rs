//! What the in-process state machines (the memory store's claims table,
//! the Bloom filter's generations) synchronize with: std's lock, dashmap's
//! map and tokio's clock here. The workspace's models
//! (`models/tests/idempotency/`) build the same source files against a
//! `sync` module of their own, with loom's lock, a map behind one, and a
//! clock the models move, so that loom explores every interleaving of the
//! code shipped.

use std::hash::Hash;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

pub(crate) use std::sync::{PoisonError, RwLock};
pub(crate) use tokio::time::Instant;

/// A concurrent map, each entry read and changed under its shard's lock.
///
/// Its methods, and the claims table's, are `#[inline]`: left to LLVM, the
/// wrappers cost a `MemoryStore` operation ~27 instructions more than the
/// map used directly (callgrind); inlined, 2.5.
///
/// foldhash: randomly seeded per map, several times faster than SipHash on
/// the short store keys.
pub(crate) struct KeyMap<K, V>(DashMap<K, V, foldhash::fast::RandomState>);

impl<K, V> Default for KeyMap<K, V>
where
    K: Hash + Eq,
{
    #[inline]
    fn default() -> Self {
        Self(DashMap::default())
    }
}

impl<K: Hash + Eq, V> KeyMap<K, V> {
    /// Under the key's lock: `occupied` on its value, or the value from
    /// `vacant` inserted. Returns their answer.
    #[inline]
    pub(crate) fn upsert<R>(
        &self,
        key: K,
        occupied: impl FnOnce(&mut V) -> R,
        vacant: impl FnOnce() -> (V, R),
    ) -> R {
        match self.0.entry(key) {
            Entry::Occupied(mut held) => occupied(held.get_mut()),
            Entry::Vacant(empty) => {
                let (value, answer) = vacant();
                empty.insert(value);
                answer
            }
        }
    }

    /// `read` on the key's value, if any.
    #[inline]
    pub(crate) fn with<R>(&self, key: &K, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.0.get(key).map(|value| read(&value))
    }

    /// `change` on the key's value, if any.
    #[inline]
    pub(crate) fn with_mut<R>(&self, key: &K, change: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.0.get_mut(key).map(|mut value| change(&mut value))
    }

    /// Removes the key's value if `remove` says so, atomically. Whether it did.
    #[inline]
    pub(crate) fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) -> bool {
        self.0.remove_if(key, |_, value| remove(value)).is_some()
    }

    /// Keeps only the values `keep` says so of (each shard locked in turn).
    #[inline]
    pub(crate) fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        self.0.retain(|_, value| keep(value));
    }

    /// Entries held (locks every shard in turn).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
