//! The crate's errors: configuration mistakes and store failures.

use std::time::Duration;

/// A configuration that cannot work, reported by
/// [`IdempotencyLayerBuilder::build`](crate::IdempotencyLayerBuilder::build)
/// or a store builder's `build`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither `scope` nor `unscoped` was chosen.
    #[error(
        "choose how records are scoped: `.scope(..)` with the tenant, API key or subject of each request, \
         or `.unscoped()` if every client may replay every other client's responses by key"
    )]
    NoScope,
    /// The layer's name is empty; it labels metrics and spans.
    #[error("the layer's name is empty; it labels metrics and spans, e.g. \"payments\"")]
    EmptyName,
    /// No method is protected.
    #[error("no HTTP method is protected; pass at least one to `.methods(..)`")]
    NoMethods,
    /// The lock TTL is zero.
    #[error("the lock TTL is zero; give the handler time to run, e.g. 60 s")]
    ZeroLockTtl,
    /// The record TTL is shorter than the lock TTL.
    #[error(
        "the key TTL ({key_ttl:?}) is shorter than the lock TTL ({lock_ttl:?}); records must outlive claims"
    )]
    KeyTtlBelowLockTtl {
        /// The configured key TTL.
        key_ttl: Duration,
        /// The configured lock TTL.
        lock_ttl: Duration,
    },
    /// The claim renewal period is zero or not shorter than the lock TTL.
    #[error(
        "claims must be renewed more often than they expire: renewal every {every:?} with a lock TTL of {lock_ttl:?}; try a third of the lock TTL"
    )]
    RenewalPeriod {
        /// The configured renewal period.
        every: Duration,
        /// The configured lock TTL.
        lock_ttl: Duration,
    },
    /// The Redis URL could not be parsed.
    #[error("the Redis URL is not valid: {0}")]
    RedisUrl(String),
    /// The wait for replicas is zero, or not shorter than the store's
    /// timeout (which bounds the whole call, the wait included).
    #[error(
        "the wait for replicas ({wait:?}) must be above zero and shorter than the store timeout ({timeout:?}), e.g. 50 ms with 250 ms"
    )]
    ReplicaWait {
        /// The configured wait.
        wait: Duration,
        /// The store's timeout.
        timeout: Duration,
    },
    /// The store's timeout is zero: every call would time out.
    #[error("the store timeout is zero; every call would time out (e.g. 250 ms)")]
    ZeroStoreTimeout,
    /// The circuit breaker's cool-down is zero.
    #[error("the circuit breaker's cool-down is zero; give the store time to recover, e.g. 5 s")]
    ZeroCoolDown,
    /// The Bloom filter parameters are out of range.
    #[error(
        "the Bloom filter needs a false-positive rate strictly between 0 and 1 and at least one expected key, got {fp_rate} for {expected_keys} keys"
    )]
    Bloom {
        /// The configured expected keys per key TTL.
        expected_keys: usize,
        /// The configured false-positive rate.
        fp_rate: f64,
    },
}

/// A store operation that failed. The layer answers it with `503` (fail-closed,
/// the default) or passes the request through (fail-open), logs and counts it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within its timeout.
    #[error("the idempotency store did not answer within {0:?}; is it overloaded or unreachable?")]
    Timeout(Duration),
    /// The store is unreachable or answered with an error.
    #[error("the idempotency store failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store returned data this crate did not write (corrupt, or a
    /// foreign value under the store's prefix).
    #[error("the idempotency store holds unreadable data for this key: {0}")]
    Corrupt(String),
    /// Not attempted: the store failed repeatedly and the layer's circuit
    /// breaker skips it until a probe finds it answering again.
    #[error(
        "the idempotency store is failing; calls are skipped until a probe succeeds (circuit open)"
    )]
    CircuitOpen,
    /// The store does not implement this operation.
    #[error("the idempotency store does not support {0}")]
    Unsupported(&'static str),
    /// Fewer replicas than required acknowledged a write within the wait
    /// ([`RedisStoreBuilder::wait_for_replicas`](crate::RedisStoreBuilder::wait_for_replicas)):
    /// a claim is given up (the request is not run), a record is retried.
    #[error(
        "{acknowledged} of the {wanted} replicas required acknowledged the write in time; are the replicas down or lagging?"
    )]
    NotReplicated {
        /// Replicas that acknowledged.
        acknowledged: u32,
        /// Replicas required.
        wanted: u32,
    },
}

impl StoreError {
    /// Whether the error says the store is unreachable or failing (what the
    /// circuit breaker counts), rather than something about one key's data.
    #[must_use]
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Backend(_) | Self::NotReplicated { .. }
        )
    }
}

/// Bytes that are not a recorded response, or a response that cannot be
/// encoded ([`RecordedResponse`](crate::RecordedResponse)'s `encode` and
/// `decode`). Its source, when there is one, is the serialization format's
/// own error.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct RecordError {
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl RecordError {
    pub(crate) fn format(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            what: format!("not a recorded response: {error}"),
            source: Some(Box::new(error)),
        }
    }

    pub(crate) fn invalid(what: &'static str) -> Self {
        Self {
            what: format!("not a recorded response: {what}"),
            source: None,
        }
    }
}
