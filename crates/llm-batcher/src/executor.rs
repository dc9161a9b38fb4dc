//! What the batcher calls: one provider call for a batch of requests.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The future of one [`BatchExecutor::execute`] call.
pub type ExecFuture<'a, R, E> =
    Pin<Box<dyn Future<Output = Result<Executed<R, E>, ExecError<E>>> + Send + 'a>>;

/// Sends a batch of requests to the provider in one call (for embeddings,
/// one request with an array of inputs) and hands back one result per
/// request, in the order the requests were given.
///
/// ```
/// use perfkit_llm_batcher::{BatchExecutor, ExecFuture, Executed, estimate_tokens};
///
/// /// Embeds each text as its length (a stand-in for the provider).
/// struct Lengths;
///
/// impl BatchExecutor for Lengths {
///     type Request = String;
///     type Response = usize;
///     type Error = std::io::Error;
///
///     fn model<'a>(&'a self, _request: &'a String) -> &'a str {
///         "text-embedding-3-small"
///     }
///
///     fn estimate_tokens(&self, request: &String) -> u32 {
///         estimate_tokens(request)
///     }
///
///     fn execute<'a>(&'a self, _model: &'a str, batch: &'a [String]) -> ExecFuture<'a, usize, std::io::Error> {
///         Box::pin(async move {
///             Ok(Executed::new(batch.iter().map(|text| Ok(text.len())).collect()))
///         })
///     }
/// }
/// ```
pub trait BatchExecutor: Send + Sync + 'static {
    /// One caller's request (an input to embed, a prompt).
    type Request: Send + Sync + 'static;
    /// One caller's result.
    type Response: Send + 'static;
    /// What a call, or one item of it, fails with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The batching key: requests for different models never share a call.
    /// It may come from the request or from the executor (one model per
    /// executor).
    fn model<'a>(&'a self, request: &'a Self::Request) -> &'a str;

    /// The tokens `request` will cost, estimated before the call (the
    /// executor reports the real usage after it). [`estimate_tokens`] is a
    /// heuristic for text.
    ///
    /// [`estimate_tokens`]: crate::estimate_tokens
    fn estimate_tokens(&self, request: &Self::Request) -> u32;

    /// Calls the provider once for `batch`, all of `model`. Results go to
    /// callers by position: exactly one per request, in order (a count that
    /// does not match fails every caller of the batch). A retried batch is
    /// sent again with the same requests.
    fn execute<'a>(
        &'a self,
        model: &'a str,
        batch: &'a [Self::Request],
    ) -> ExecFuture<'a, Self::Response, Self::Error>;
}

/// The outcome of one call: one result per request, and the tokens the
/// provider says it used.
#[derive(Debug)]
#[non_exhaustive]
pub struct Executed<R, E> {
    /// One result per request, in the order of the batch.
    pub results: Vec<Result<R, E>>,
    /// The tokens the provider reports for the call, if it does; the rate
    /// limiter is reconciled with it.
    pub tokens_used: Option<u32>,
    /// What the provider's headers say is left; the rate limiter lowers its
    /// budget to it ([`RateLimiter::observe_remaining`](crate::RateLimiter::observe_remaining)).
    pub remaining: Option<crate::ProviderRemaining>,
}

impl<R, E> Executed<R, E> {
    /// Results without a usage report.
    #[must_use]
    pub fn new(results: Vec<Result<R, E>>) -> Self {
        Self {
            results,
            tokens_used: None,
            remaining: None,
        }
    }

    /// What the provider's headers say is left.
    #[must_use]
    pub fn with_remaining(mut self, remaining: crate::ProviderRemaining) -> Self {
        self.remaining = Some(remaining);
        self
    }

    /// The tokens the provider reports for the call.
    #[must_use]
    pub fn with_tokens_used(mut self, tokens: u32) -> Self {
        self.tokens_used = Some(tokens);
        self
    }
}

/// Why a whole call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError<E> {
    /// The provider answered `429` for its rate limit: the batcher pauses
    /// dispatch for `retry_after` (or its own backoff) and sends the batch
    /// again, up to its attempts.
    #[error("rate limited by the provider (retry after {retry_after:?})")]
    RateLimited {
        /// What the provider asked for (`retry-after-ms`, `retry-after`).
        retry_after: Option<Duration>,
    },
    /// The account's quota is exhausted (`insufficient_quota`): retrying
    /// cannot help, every caller of the batch fails at once.
    #[error("the provider's quota is exhausted: {0}")]
    QuotaExhausted(#[source] E),
    /// Any other failure of the call; every caller of the batch gets it.
    #[error("the call failed: {0}")]
    Failed(#[source] E),
}

/// A heuristic token count for English-like text: about four characters
/// per token, rounded up, at least one. Good enough to reserve rate-limit
/// budget (the provider's reported usage corrects it); a BPE tokenizer
/// counts exactly.
#[must_use]
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4).max(1)).unwrap_or(u32::MAX)
}
