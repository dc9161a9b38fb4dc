//! The memory store's table: who holds each key (a claim, by its owner's
//! token) until when, and what it recorded.
//!
//! Every read and change of a key happens under that key's lock
//! ([`KeyMap`]), and the time comes in as an argument: the loom models
//! (`models/tests/idempotency/`) run this same file with the instants they
//! choose. The table is generic over what it stores so that it needs
//! nothing from the rest of the crate: `K` the key, `T` the owner token,
//! `F` the request's fingerprint, `R` the recorded response.

use std::hash::Hash;
use std::time::Duration;

use crate::sync::{Instant, KeyMap};

pub(crate) struct Claims<K, T, F, R> {
    slots: KeyMap<K, Slot<T, F, R>>,
}

struct Slot<T, F, R> {
    state: State<T, F, R>,
    /// The slot is gone from this instant on (never returned, replaced by
    /// the next claim, swept).
    expires_at: Instant,
}

enum State<T, F, R> {
    InProgress { token: T, fingerprint: F },
    Completed { fingerprint: F, response: R },
}

/// What holds a key, as another request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held<F, R> {
    /// A claim, not completed.
    InProgress { fingerprint: F },
    /// A request ran and this is what it recorded.
    Completed { fingerprint: F, response: R },
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed<F, R> {
    /// The caller holds the key now.
    Acquired,
    /// Someone else does, or did.
    Existing(Held<F, R>),
}

impl<T: PartialEq, F: Copy, R: Clone> Slot<T, F, R> {
    #[inline]
    fn held(&self) -> Held<F, R> {
        match &self.state {
            State::InProgress { fingerprint, .. } => Held::InProgress {
                fingerprint: *fingerprint,
            },
            State::Completed {
                fingerprint,
                response,
            } => Held::Completed {
                fingerprint: *fingerprint,
                response: response.clone(),
            },
        }
    }

    #[inline]
    fn live(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// Whether `token`'s claim holds the key at `now`.
    #[inline]
    fn held_by(&self, token: &T, now: Instant) -> bool {
        self.live(now)
            && matches!(&self.state, State::InProgress { token: held, .. } if held == token)
    }
}

impl<K, T, F, R> Default for Claims<K, T, F, R>
where
    K: Hash + Eq,
{
    #[inline]
    fn default() -> Self {
        Self {
            slots: KeyMap::default(),
        }
    }
}

impl<K, T, F, R> Claims<K, T, F, R>
where
    K: Hash + Eq + Clone,
    T: PartialEq + Clone,
    F: Copy,
    R: Clone,
{
    /// What holds `key` at `now`, if anything.
    #[inline]
    pub(crate) fn lookup(&self, key: &K, now: Instant) -> Option<Held<F, R>> {
        self.slots
            .with(key, |slot| slot.live(now).then(|| slot.held()))
            .flatten()
    }

    /// Claims `key` for `token` until `now + lock_ttl`, unless a live claim
    /// or record holds it. The same token claiming again (a retry whose
    /// reply was lost) gets it again, its expiry unchanged.
    #[inline]
    pub(crate) fn claim(
        &self,
        key: &K,
        token: &T,
        fingerprint: F,
        now: Instant,
        lock_ttl: Duration,
    ) -> Claimed<F, R> {
        let fresh = || Slot {
            state: State::InProgress {
                token: token.clone(),
                fingerprint,
            },
            expires_at: now + lock_ttl,
        };
        self.slots.upsert(
            key.clone(),
            |slot| {
                if !slot.live(now) {
                    *slot = fresh();
                    Claimed::Acquired
                } else if slot.held_by(token, now) {
                    Claimed::Acquired
                } else {
                    Claimed::Existing(slot.held())
                }
            },
            || (fresh(), Claimed::Acquired),
        )
    }

    /// Records `response` for `key` until `now + key_ttl`, if `token`'s
    /// claim still holds it. Whether it did.
    #[inline]
    pub(crate) fn complete(
        &self,
        key: &K,
        token: &T,
        response: &R,
        now: Instant,
        key_ttl: Duration,
    ) -> bool {
        self.slots
            .with_mut(key, |slot| {
                if !slot.held_by(token, now) {
                    return false;
                }
                let State::InProgress { fingerprint, .. } = slot.state else {
                    return false;
                };
                *slot = Slot {
                    state: State::Completed {
                        fingerprint,
                        response: response.clone(),
                    },
                    expires_at: now + key_ttl,
                };
                true
            })
            .unwrap_or(false)
    }

    /// Frees `key` if `token`'s claim still holds it. Whether it did.
    #[inline]
    pub(crate) fn release(&self, key: &K, token: &T, now: Instant) -> bool {
        self.slots.remove_if(key, |slot| slot.held_by(token, now))
    }

    /// Extends `token`'s claim on `key` to `now + lock_ttl`, if it still
    /// holds it. Whether it did.
    #[inline]
    pub(crate) fn renew(&self, key: &K, token: &T, now: Instant, lock_ttl: Duration) -> bool {
        self.slots
            .with_mut(key, |slot| {
                let held = slot.held_by(token, now);
                if held {
                    slot.expires_at = now + lock_ttl;
                }
                held
            })
            .unwrap_or(false)
    }

    /// Drops what has expired at `now`.
    #[inline]
    pub(crate) fn sweep(&self, now: Instant) {
        self.slots.retain(|slot| slot.live(now));
    }

    /// Entries held, expired ones not swept yet included.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
