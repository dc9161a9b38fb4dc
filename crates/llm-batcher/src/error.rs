//! The crate's errors: configuration mistakes and requests that cannot be
//! admitted.

use std::sync::Arc;

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
    /// A setting that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A full batch would need more tokens than the rate limiter's token
    /// burst: it could never be sent.
    #[error(
        "batches of up to {max_tokens} tokens could never pass a token burst of {burst}; lower max_tokens or raise the burst"
    )]
    BatchOverBurst {
        /// The batch token budget.
        max_tokens: u32,
        /// The limiter's token burst.
        burst: u32,
    },
    /// A price that is negative or not a number.
    #[error("the price of {0:?} must be a finite number of dollars, zero or more")]
    Price(String),
    /// The base URL is not an `http(s)://` URL.
    #[error("the base URL {0:?} is not an http(s) URL")]
    BaseUrl(String),
    /// The HTTP client could not be set up (its TLS configuration).
    #[error("the HTTP client could not be set up: {0}")]
    HttpClient(String),
    /// `build` was called outside a tokio runtime: the batcher's task needs one.
    #[error("build the batcher inside a tokio runtime: its background task runs there")]
    NoRuntime,
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

/// Why a [`Batcher`](crate::Batcher) request has no result. Errors of a
/// whole call reach every caller of the batch as the same `Arc`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The provider failed this request alone; the others of its batch
    /// have their own results.
    #[error("the request failed: {0}")]
    Item(#[source] E),
    /// The batch's call failed.
    #[error("the batch's call failed: {0}")]
    Failed(#[source] Arc<E>),
    /// The provider's quota is exhausted; not retried.
    #[error("the provider's quota is exhausted: {0}")]
    QuotaExhausted(#[source] Arc<E>),
    /// The provider still answered `429` after every attempt.
    #[error("rate limited by the provider after {attempts} attempts")]
    RateLimited {
        /// Sends of the batch, the first included.
        attempts: u32,
    },
    /// The executor returned another number of results than the batch had
    /// requests, so no result could be trusted to belong to its caller.
    #[error("the executor returned {got} results for {expected} requests; none was handed out")]
    CountMismatch {
        /// Requests in the batch.
        expected: usize,
        /// Results returned.
        got: usize,
    },
    /// The rate limiter refused the batch.
    #[error(transparent)]
    Limit(LimitError),
    /// The request's estimated tokens exceed what one batch may carry.
    #[error(
        "the request needs about {tokens} tokens, more than a batch may carry ({max}); split it"
    )]
    TooLarge {
        /// The request's estimate.
        tokens: u32,
        /// The batch token budget.
        max: u32,
    },
    /// The queue is full ([`Batcher::try_submit`](crate::Batcher::try_submit)).
    #[error("the batcher's queue is full; retry later or use submit to wait for room")]
    QueueFull,
    /// The batcher was shut down.
    #[error("the batcher is shut down")]
    Closed,
}
