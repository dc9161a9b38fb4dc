//! `MemoryStore`: claims and records in this process (the embedded default).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::time::Instant;

use crate::fingerprint::Fingerprint;
use crate::key::StoreKey;
use crate::record::{Existing, RecordedResponse};
use crate::store::{Claim, ClaimToken, IdempotencyStore, StoreFuture};

/// Claims and recorded responses in this process's memory.
///
/// The embedded default: no server, exact expiry (an expired entry is never
/// returned; expired entries are swept as claims arrive, in amortized O(1) per
/// claim). It gives exactly-once execution among the requests that reach
/// **this process**; with several instances, or across restarts, use
/// [`RedisStore`](crate::RedisStore). Clones share the same entries.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: DashMap<StoreKey, Slot, foldhash::fast::RandomState>,
    claims_since_sweep: AtomicUsize,
}

struct Slot {
    state: State,
    expires_at: Instant,
}

enum State {
    InProgress {
        token: ClaimToken,
        fingerprint: Fingerprint,
    },
    Completed {
        fingerprint: Fingerprint,
        response: Arc<RecordedResponse>,
    },
}

impl Slot {
    fn existing(&self) -> Existing {
        match &self.state {
            State::InProgress { fingerprint, .. } => Existing::InProgress {
                fingerprint: *fingerprint,
            },
            State::Completed {
                fingerprint,
                response,
            } => Existing::Completed {
                fingerprint: *fingerprint,
                response: Arc::clone(response),
            },
        }
    }

    fn held_by(&self, token: &ClaimToken, now: Instant) -> bool {
        now < self.expires_at
            && matches!(&self.state, State::InProgress { token: held, .. } if held == token)
    }
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held, including expired ones not swept yet.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether the store holds no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Drops expired entries once as many claims arrived as entries are held.
    fn sweep_if_due(&self, now: Instant) {
        let claims = self
            .inner
            .claims_since_sweep
            .fetch_add(1, Ordering::Relaxed);
        // `len` locks every shard: only ask once 1,024 claims have passed.
        if claims >= 1024 && claims >= self.inner.entries.len() {
            self.inner.claims_since_sweep.store(0, Ordering::Relaxed);
            self.inner.entries.retain(|_, slot| now < slot.expires_at);
        }
    }

    fn lookup_now(&self, key: &StoreKey) -> Option<Existing> {
        let now = Instant::now();
        let slot = self.inner.entries.get(key)?;
        (now < slot.expires_at).then(|| slot.existing())
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        token: &ClaimToken,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> Claim {
        let now = Instant::now();
        self.sweep_if_due(now);
        let fresh = Slot {
            state: State::InProgress {
                token: token.clone(),
                fingerprint: *fingerprint,
            },
            expires_at: now + lock_ttl,
        };
        match self.inner.entries.entry(key.clone()) {
            Entry::Occupied(mut held) if now >= held.get().expires_at => {
                held.insert(fresh);
                Claim::Acquired
            }
            // The same claim again (a retry of a claim whose reply was lost).
            Entry::Occupied(held) if held.get().held_by(token, now) => Claim::Acquired,
            Entry::Occupied(held) => Claim::Existing(held.get().existing()),
            Entry::Vacant(vacant) => {
                vacant.insert(fresh);
                Claim::Acquired
            }
        }
    }

    fn complete_now(
        &self,
        key: &StoreKey,
        token: &ClaimToken,
        response: &Arc<RecordedResponse>,
        key_ttl: Duration,
    ) -> bool {
        let now = Instant::now();
        let Some(mut slot) = self.inner.entries.get_mut(key) else {
            return false;
        };
        if !slot.held_by(token, now) {
            return false;
        }
        let State::InProgress { fingerprint, .. } = slot.state else {
            return false;
        };
        *slot = Slot {
            state: State::Completed {
                fingerprint,
                response: Arc::clone(response),
            },
            expires_at: now + key_ttl,
        };
        true
    }

    fn release_now(&self, key: &StoreKey, token: &ClaimToken) -> bool {
        let now = Instant::now();
        self.inner
            .entries
            .remove_if(key, |_, slot| slot.held_by(token, now))
            .is_some()
    }
}

impl IdempotencyStore for MemoryStore {
    fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>> {
        let found = self.lookup_now(key);
        Box::pin(async move { Ok(found) })
    }

    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        let claim = self.claim_now(key, token, fingerprint, lock_ttl);
        Box::pin(async move { Ok(claim) })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        response: &'a Arc<RecordedResponse>,
        key_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let completed = self.complete_now(key, token, response, key_ttl);
        Box::pin(async move { Ok(completed) })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        let released = self.release_now(key, token);
        Box::pin(async move { Ok(released) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let renewed = self.inner.entries.get_mut(key).is_some_and(|mut slot| {
            let held = slot.held_by(token, now);
            if held {
                slot.expires_at = now + lock_ttl;
            }
            held
        });
        Box::pin(async move { Ok(renewed) })
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .finish()
    }
}
