//! The crate's errors: configuration mistakes and requests that cannot be
//! admitted.

/// A configuration that cannot work, reported by a builder's `build`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither a request limit nor a token limit was set.
    #[error("set at least one limit: requests_per_minute or tokens_per_minute")]
    NoLimit,
    /// A burst larger than its limit could never be honoured in a window.
    #[error("a burst of {burst} is over its limit of {limit} per minute; use at most the limit")]
    BurstOverLimit {
        /// The configured burst.
        burst: u32,
        /// The configured limit per minute.
        limit: u32,
    },
    /// The name labels metrics and spans, so it cannot be empty or blank.
    #[error("the name must not be empty or blank")]
    EmptyName,
}

/// Why a request was not admitted by a [`RateLimiter`](crate::RateLimiter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The request needs more tokens than the token burst: it could never be
    /// admitted. Split it, or raise the burst.
    #[error(
        "the request needs {tokens} tokens, more than the token burst of {burst}: it could never be admitted; split it or raise the burst"
    )]
    TooLarge {
        /// The tokens the request needs.
        tokens: u32,
        /// The token burst.
        burst: u32,
    },
}
