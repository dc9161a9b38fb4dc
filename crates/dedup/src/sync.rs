//! What the single-flight state machine (`flight`, `group`) synchronizes
//! with: std's lock, dashmap's map and tokio's runtime here. The workspace's
//! models (`models/tests/dedup/`) build the same source files against a
//! `sync` module of their own, with loom's lock, a map behind one, and loom
//! threads, so that loom explores every interleaving of the code shipped.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

pub(crate) use std::sync::{Mutex, MutexGuard};

/// The flights in progress, by key: a sharded map ([`DashMap`]), each entry
/// changed under its shard's lock.
///
/// foldhash: several times faster than SipHash on short keys and randomly
/// seeded per map; the map only ever holds keys in flight, which bounds what
/// a flood of colliding keys could cost.
pub(crate) struct KeyMap<K, V>(DashMap<K, V, foldhash::fast::RandomState>);

impl<K: Hash + Eq, V> KeyMap<K, V> {
    /// `shards`: a power of two greater than one (checked by the builder),
    /// or dashmap's default.
    pub(crate) fn new(shards: Option<usize>) -> Self {
        let hasher = foldhash::fast::RandomState::default();
        Self(match shards {
            Some(shards) => DashMap::with_hasher_and_shard_amount(hasher, shards),
            None => DashMap::with_hasher(hasher),
        })
    }

    /// Under the key's lock: `join`'s answer on the key's value, or, when
    /// there is none or `join` declines it, the value from `create` put in
    /// its place, and `create`'s answer.
    pub(crate) fn join_or_insert<R>(
        &self,
        key: K,
        join: impl FnOnce(&V) -> Option<R>,
        create: impl FnOnce(&K) -> (V, R),
    ) -> R {
        match self.0.entry(key) {
            Entry::Occupied(mut held) => {
                if let Some(answer) = join(held.get()) {
                    return answer;
                }
                let (value, answer) = create(held.key());
                held.insert(value);
                answer
            }
            Entry::Vacant(empty) => {
                let (value, answer) = create(empty.key());
                empty.insert(value);
                answer
            }
        }
    }

    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.remove(key).map(|(_, value)| value)
    }

    /// Removes the key's value if `remove` says so, atomically.
    pub(crate) fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) -> Option<V> {
        self.0
            .remove_if(key, |_, value| remove(value))
            .map(|(_, value)| value)
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Where abandoned work is finished under `AbandonPolicy::RunToCompletion`:
/// the tokio runtime of the caller that left last.
pub(crate) struct Spawner(tokio::runtime::Handle);

impl Spawner {
    /// The current runtime, if the caller runs on one.
    pub(crate) fn current() -> Option<Self> {
        tokio::runtime::Handle::try_current().ok().map(Self)
    }

    /// Runs `task` to its end on that runtime (dropped if it shuts down first).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.0.spawn(task));
    }
}
