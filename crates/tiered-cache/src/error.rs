//! Errors: what a caller sees, what a tier reports, and impossible settings.

use std::sync::Arc;
use std::time::Duration;

/// A loader's error, type-erased so that one cache can serve loaders with
/// different error types. Downcast it to get yours back.
pub type LoadError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why [`Cache::get_or_load`](crate::Cache::get_or_load) has no value.
///
/// Tier failures never appear here: a tier that fails counts as a miss (and
/// is logged and counted), so a cache call fails only when the loader does.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The loader failed. Every caller that waited on the same load gets the
    /// same error; it is not cached, so the next call loads again.
    #[error("loading the value failed: {0}")]
    Load(#[source] LoadError),
    /// The loader panicked. Every waiting caller gets this; the next call loads again.
    #[error("the loader panicked: {0}")]
    LoaderPanicked(Arc<str>),
    /// The load did not finish within the load timeout
    /// ([`CacheBuilder::load_timeout`](crate::CacheBuilder::load_timeout) or
    /// [`LoadOptions::timeout`](crate::LoadOptions::timeout)). The load is
    /// detached: the next call starts a new one, and the old one is dropped
    /// once no caller waits on it. Nothing was cached.
    #[error("the load did not finish within {0:?}")]
    LoadTimeout(Duration),
    /// `get_or_load` joined a load started by `get_or_load_optional` whose
    /// loader found no value for the key.
    #[error("the loader found no value for this key")]
    NotFound,
}

/// What a [`Tier`](crate::Tier) reports when an operation fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// The operation took longer than the tier's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open: the tier failed repeatedly and is skipped
    /// until its cool-down ends.
    #[error("circuit open after repeated failures")]
    CircuitOpen,
    /// A value could not be encoded or decoded. About that value only: the
    /// cache treats the key as a miss and never counts it against the tier
    /// (its circuit breaker).
    #[error("codec: {0}")]
    Codec(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// An encoded value is larger than the tier accepts; it was not sent.
    /// About that value only, like [`TierError::Codec`].
    #[error("the encoded value is {size} bytes, over the tier's limit of {max}")]
    TooLarge {
        /// The encoded size, in bytes.
        size: usize,
        /// The tier's limit, in bytes.
        max: usize,
    },
    /// The backend failed (connection refused, reset, protocol error, ...).
    #[error("backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl TierError {
    /// Wraps any backend error.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(error))
    }

    /// Wraps a codec's error (kept as the [source](std::error::Error::source)).
    pub fn codec(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Codec(Box::new(error))
    }

    /// Whether the error is about one value ([`TierError::Codec`],
    /// [`TierError::TooLarge`]) rather than the tier: such errors make the
    /// key a miss but never open the circuit breaker.
    #[must_use]
    pub fn is_value_error(&self) -> bool {
        matches!(self, Self::Codec(_) | Self::TooLarge { .. })
    }
}

/// A builder setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Two tiers carry the same name, which metrics and stats could not tell apart.
    #[error("two tiers are named {0:?}; give each a distinct name")]
    DuplicateTierName(String),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A TTL setting is under 1 ms (the resolution of every tier) or over
    /// [`MAX_TTL`](crate::MAX_TTL) (about 100 years).
    #[error(
        "{setting} must be between 1 ms and about 100 years (perfkit_tiered_cache::MAX_TTL), got {ttl:?}"
    )]
    TtlOutOfRange {
        /// The setting.
        setting: &'static str,
        /// The TTL given.
        ttl: Duration,
    },
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL: {0}")]
    RedisUrl(String),
    /// The key prefix is empty; every key perfkit writes must carry one.
    #[error("the key prefix must not be empty")]
    EmptyPrefix,
    /// On a Redis Cluster the prefix may hold no brace: the tier's own hash
    /// tag must be the first `{…}` of every key.
    #[error("on a Redis Cluster the key prefix must not contain '{{' or '}}', got {0:?}")]
    ClusterPrefix(String),
    /// A Redis Cluster tier's bucket count must be between 1 and 4096.
    #[error("cluster_buckets must be between 1 and 4096, got {0}")]
    ClusterBuckets(u16),
    /// The group name labels metrics and spans, so it cannot be empty.
    #[error("the cache name must not be empty")]
    EmptyName,
    /// `serve_stale` needs a first tier that can keep expired entries (such
    /// as [`MemoryTier`](crate::MemoryTier)).
    #[error("serve_stale needs a first tier that keeps expired entries; {0:?} does not")]
    StaleUnsupported(String),
    /// An invalidation bus runs a subscription task: build the cache inside
    /// a tokio runtime.
    #[error("a cache with an invalidation bus must be built inside a tokio runtime")]
    NoRuntime,
    /// `strict_invalidation` bounds how long the first tier serves while the
    /// invalidation bus is down, so it needs a bus.
    #[error("strict_invalidation needs an invalidation_bus")]
    StrictWithoutBus,
    /// A fraction setting is outside `0.0..1.0` (or `0.0..=1.0` where stated).
    #[error("{setting} must be a fraction between 0 and 1, got {value}")]
    Fraction {
        /// The setting.
        setting: &'static str,
        /// The value given, as written.
        value: String,
    },
}
