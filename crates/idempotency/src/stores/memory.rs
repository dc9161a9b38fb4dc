//! `MemoryStore`: claims and records in this process (the embedded default).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::fingerprint::Fingerprint;
use crate::key::StoreKey;
use crate::record::{Existing, RecordedResponse};
use crate::store::{Claim, ClaimToken, IdempotencyStore, StoreFuture};
use crate::stores::claims::{Claimed, Claims, Held};

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
    claims: Claims<StoreKey, ClaimToken, Fingerprint, Arc<RecordedResponse>>,
    claims_since_sweep: AtomicUsize,
}

impl From<Held<Fingerprint, Arc<RecordedResponse>>> for Existing {
    fn from(held: Held<Fingerprint, Arc<RecordedResponse>>) -> Self {
        match held {
            Held::InProgress { fingerprint } => Self::InProgress { fingerprint },
            Held::Completed {
                fingerprint,
                response,
            } => Self::Completed {
                fingerprint,
                response,
            },
        }
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
        self.inner.claims.len()
    }

    /// Whether the store holds no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.claims.is_empty()
    }

    /// Drops expired entries once as many claims arrived as entries are held.
    fn sweep_if_due(&self, now: Instant) {
        let claims = self
            .inner
            .claims_since_sweep
            .fetch_add(1, Ordering::Relaxed);
        // `len` locks every shard: only ask once 1,024 claims have passed.
        if claims >= 1024 && claims >= self.inner.claims.len() {
            self.inner.claims_since_sweep.store(0, Ordering::Relaxed);
            self.inner.claims.sweep(now);
        }
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
        match self
            .inner
            .claims
            .claim(key, token, *fingerprint, now, lock_ttl)
        {
            Claimed::Acquired => Claim::Acquired,
            Claimed::Existing(held) => Claim::Existing(held.into()),
        }
    }
}

impl IdempotencyStore for MemoryStore {
    fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>> {
        let found = self
            .inner
            .claims
            .lookup(key, Instant::now())
            .map(Existing::from);
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
        let completed = self
            .inner
            .claims
            .complete(key, token, response, Instant::now(), key_ttl);
        Box::pin(async move { Ok(completed) })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        let released = self.inner.claims.release(key, token, Instant::now());
        Box::pin(async move { Ok(released) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let renewed = self
            .inner
            .claims
            .renew(key, token, Instant::now(), lock_ttl);
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
