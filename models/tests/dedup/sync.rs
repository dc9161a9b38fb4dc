//! The models' `crate::sync` for perfkit-dedup: what the crate's `sync`
//! gives its single-flight state machine, with loom's types in place of
//! std's, dashmap's and tokio's, so that loom sees (and interleaves at) every
//! lock and every thread.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::PoisonError;

pub(crate) use loom::sync::{Mutex, MutexGuard};

/// The crate's `KeyMap` (dashmap's there): one loom lock around a
/// `HashMap`, so every change of an entry is atomic as under a shard lock.
pub(crate) struct KeyMap<K, V>(Mutex<HashMap<K, V>>);

impl<K: Hash + Eq, V> KeyMap<K, V> {
    pub(crate) fn new(_shards: Option<usize>) -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    fn map(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn join_or_insert<R>(
        &self,
        key: K,
        join: impl FnOnce(&V) -> Option<R>,
        create: impl FnOnce(&K) -> (V, R),
    ) -> R {
        let mut map = self.map();
        if let Some(answer) = map.get(&key).and_then(join) {
            return answer;
        }
        let (value, answer) = create(&key);
        map.insert(key, value);
        answer
    }

    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map().remove(key)
    }

    pub(crate) fn remove_if(&self, key: &K, remove: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut map = self.map();
        if map.get(key).is_some_and(remove) {
            map.remove(key)
        } else {
            None
        }
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map().contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}

/// tokio's runtime handle there; here abandoned work under
/// `RunToCompletion` runs on a loom thread of its own, polled by loom's
/// `block_on`, so the models explore its interleavings with the callers.
pub(crate) struct Spawner;

impl Spawner {
    pub(crate) fn current() -> Option<Self> {
        Some(Self)
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let thread = loom::thread::spawn(move || loom::future::block_on(task));
        SPAWNED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(thread);
    }
}

loom::lazy_static! {
    /// The threads `Spawner` started in this execution of a model.
    static ref SPAWNED: Mutex<Vec<loom::thread::JoinHandle<()>>> = Mutex::new(Vec::new());
}

/// Waits for the abandoned work spawned so far (a model's end: loom
/// reports a deadlock if it never finishes).
pub(crate) fn join_spawned() {
    let spawned = std::mem::take(&mut *SPAWNED.lock().unwrap_or_else(PoisonError::into_inner));
    for thread in spawned {
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }
}
