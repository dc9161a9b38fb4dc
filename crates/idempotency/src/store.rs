//! The store trait: the atomic claim that decides whether a request runs.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::error::StoreError;
use crate::fingerprint::Fingerprint;
use crate::key::StoreKey;
use crate::record::{Existing, RecordedResponse};

/// A boxed store operation (the trait is object-safe, so a layer holds any store).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where claims and recorded responses live: [`MemoryStore`](crate::MemoryStore)
/// (one process) or [`RedisStore`](crate::RedisStore) (every instance).
///
/// The contract, which the conformance suite checks against every built-in store:
/// - [`claim`](Self::claim) is atomic: of any number of concurrent claims of
///   one key, across processes, exactly one returns [`Claim::Acquired`]; the
///   others return what the store holds. A claim expires after its lock TTL
///   unless completed, and the key can then be claimed again. A claim sent
///   again under the token that holds the key is acquired again (a store
///   may repeat a claim whose reply was lost).
/// - [`complete`](Self::complete), [`release`](Self::release) and
///   [`renew`](Self::renew) are compare-and-set on the claim's [`ClaimToken`]: they change nothing
///   (and return `false`) unless that exact claim still holds the key, so a
///   handler that outlived its lock can never overwrite another request's record.
/// - [`lookup`](Self::lookup) only reads.
/// - Every operation returns within a bounded time (the store's timeout).
///
/// A store of your own: here, one that counts claims and keeps everything
/// else of a [`MemoryStore`](crate::MemoryStore).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::Duration;
///
/// use perfkit_idempotency::{
///     Claim, ClaimToken, Existing, Fingerprint, IdempotencyLayer, IdempotencyStore,
///     MemoryStore, RecordedResponse, StoreFuture, StoreKey,
/// };
///
/// #[derive(Default)]
/// struct CountingStore {
///     inner: MemoryStore,
///     claims: AtomicU64,
/// }
///
/// impl IdempotencyStore for CountingStore {
///     fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>> {
///         self.inner.lookup(key)
///     }
///
///     fn claim<'a>(
///         &'a self,
///         key: &'a StoreKey,
///         token: &'a ClaimToken,
///         fingerprint: &'a Fingerprint,
///         lock_ttl: Duration,
///     ) -> StoreFuture<'a, Claim> {
///         self.claims.fetch_add(1, Ordering::Relaxed);
///         self.inner.claim(key, token, fingerprint, lock_ttl)
///     }
///
///     fn complete<'a>(
///         &'a self,
///         key: &'a StoreKey,
///         token: &'a ClaimToken,
///         response: &'a Arc<RecordedResponse>,
///         key_ttl: Duration,
///     ) -> StoreFuture<'a, bool> {
///         self.inner.complete(key, token, response, key_ttl)
///     }
///
///     fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
///         self.inner.release(key, token)
///     }
/// }
///
/// let layer = IdempotencyLayer::builder(CountingStore::default()).unscoped().build()?;
/// # Ok::<(), perfkit_idempotency::ConfigError>(())
/// ```
pub trait IdempotencyStore: Send + Sync + 'static {
    /// What the store holds for `key`, if anything.
    fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>>;

    /// Claims `key` for the request with `fingerprint` under `token` for
    /// `lock_ttl`, or returns what the store already holds.
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, Claim>;

    /// Replaces the claim `token` holds with `response`, kept for `key_ttl`.
    /// `false` when the claim is no longer held (expired, reclaimed).
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        response: &'a Arc<RecordedResponse>,
        key_ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Drops the claim `token` holds, so that a retry can run. `false` when
    /// the claim is no longer held.
    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool>;

    /// Extends the claim `token` holds to `lock_ttl` from now
    /// (compare-and-set on the token, like [`complete`](Self::complete)).
    /// `false` when the claim is no longer held. Used by
    /// [claim renewal](crate::IdempotencyLayerBuilder::renew_claims); the
    /// default answers [`StoreError::Unsupported`].
    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let _ = (key, token, lock_ttl);
        Box::pin(async { Err(StoreError::Unsupported("claim renewal")) })
    }
}

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>> {
        (**self).lookup(key)
    }

    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        (**self).claim(key, token, fingerprint, lock_ttl)
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        response: &'a Arc<RecordedResponse>,
        key_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).complete(key, token, response, key_ttl)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        (**self).release(key, token)
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).renew(key, token, lock_ttl)
    }
}

/// The outcome of [`IdempotencyStore::claim`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Claim {
    /// This request holds the key and runs.
    Acquired,
    /// Another request claimed the key first.
    Existing(Existing),
}

/// The owner of one claim: unique per claim attempt, across processes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken([u8; 16]);

/// Random per process; with a counter, tokens never repeat within a process
/// and collide across processes with probability ~2⁻⁶⁴ per pair.
static PROCESS_SEED: LazyLock<u64> =
    LazyLock::new(|| RandomState::new().hash_one(std::process::id()));
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

impl ClaimToken {
    /// A token no other claim has.
    #[must_use]
    pub fn new() -> Self {
        let mut token = [0; 16];
        token[..8].copy_from_slice(&PROCESS_SEED.to_le_bytes());
        token[8..].copy_from_slice(&NEXT_TOKEN.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        Self(token)
    }

    /// The token's 16 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimToken(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}
