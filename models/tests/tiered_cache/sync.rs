//! The models' `crate::sync`: what the shipped crates' `sync` modules give
//! their state machines, with loom's types in place of std's, so that loom
//! sees (and interleaves at) every lock, atomic and reference count.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard, RwLock};

/// The tiered cache's `KeyMap` (dashmap's there): one loom lock around a
/// `HashMap`, so every change of an entry is atomic as under a shard lock.
pub(crate) struct KeyMap<T>(Mutex<HashMap<Box<str>, T>>);

impl<T> KeyMap<T> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Box<str>, T>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn upsert<R>(
        &self,
        key: &str,
        occupied: impl FnOnce(&mut T) -> R,
        vacant: impl FnOnce() -> (T, R),
    ) -> R {
        let mut map = self.map();
        if let Some(value) = map.get_mut(key) {
            return occupied(value);
        }
        let (value, answer) = vacant();
        map.insert(Box::from(key), value);
        answer
    }

    pub(crate) fn remove(&self, key: &str) -> Option<T> {
        self.map().remove(key)
    }

    pub(crate) fn remove_if(&self, key: &str, remove: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut map = self.map();
        if map.get(key).is_some_and(remove) {
            map.remove(key)
        } else {
            None
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// No timers under loom: a wait never runs out of patience by itself (the
/// models play a stalled lookup's detach explicitly).
pub(crate) async fn timeout<F: Future>(_limit: Duration, future: F) -> Option<F::Output> {
    Some(future.await)
}

/// tokio's `Notify` (loom-tested by tokio, opaque to loom here), with a
/// switch point where a waiter registers (for `notify_waiters`, a
/// `Notified` counts from its creation): loom may run another thread right
/// before it, as an OS may, so an outcome checked before the registration
/// (a lost wake-up) shows up as a deadlock.
pub(crate) struct Notify(tokio::sync::Notify);

impl Notify {
    pub(crate) fn new() -> Self {
        Self(tokio::sync::Notify::new())
    }

    pub(crate) fn notified(&self) -> Notified<'_> {
        loom::thread::yield_now();
        Notified(Box::pin(self.0.notified()))
    }

    pub(crate) fn notify_waiters(&self) {
        self.0.notify_waiters();
    }
}

/// tokio's `Notified`, boxed (so `Unpin`: no unsafe projection).
pub(crate) struct Notified<'a>(Pin<Box<tokio::sync::futures::Notified<'a>>>);

impl Notified<'_> {
    pub(crate) fn enable(self: Pin<&mut Self>) -> bool {
        self.get_mut().0.as_mut().enable()
    }
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.as_mut().poll(cx)
    }
}
