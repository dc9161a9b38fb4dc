//! # perfkit-llm-batcher
//!
//! Batches LLM requests (size + linger), rate-limited by requests per minute
//! and tokens per minute, with each result fanned back to its caller.
//!
//! - [`Batcher`]: one request per caller in, one call per batch out (by
//!   model, closed on count, estimated tokens or linger), results one-to-one,
//!   a provider's `429` paused for and retried, callers who left taken out.
//! - [`RateLimiter`]: requests and tokens per minute at once (GCRA on each,
//!   lock-free), first come first served, reservations reconciled with the
//!   usage the provider reports; also a tower layer ([`RateLimitLayer`],
//!   feature `tower`, default).
//! - `OpenAiEmbeddings` (feature `openai`): an executor for
//!   `OpenAI`-compatible embeddings endpoints; `Encoding` (feature
//!   `tokenizer`): exact token counts.
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//!
//! use perfkit_llm_batcher::{BatchExecutor, Batcher, ExecFuture, Executed, RateLimiter, estimate_tokens};
//!
//! /// Stands in for an embeddings endpoint: one number per input.
//! struct Lengths;
//!
//! impl BatchExecutor for Lengths {
//!     type Request = String;
//!     type Response = usize;
//!     type Error = std::io::Error;
//!
//!     fn model<'a>(&'a self, _text: &'a String) -> &'a str {
//!         "text-embedding-3-small"
//!     }
//!
//!     fn estimate_tokens(&self, text: &String) -> u32 {
//!         estimate_tokens(text)
//!     }
//!
//!     fn execute<'a>(&'a self, _model: &'a str, batch: &'a [String]) -> ExecFuture<'a, usize, std::io::Error> {
//!         // One call for the whole batch; the usage it reports corrects the limiter.
//!         Box::pin(async move {
//!             let results = batch.iter().map(|text| Ok(text.len())).collect();
//!             let used = batch.iter().map(|text| estimate_tokens(text)).sum();
//!             Ok(Executed::new(results).with_tokens_used(used))
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimiter::builder()
//!     .requests_per_minute(NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN))
//!     .tokens_per_minute(NonZeroU32::new(200_000).unwrap_or(NonZeroU32::MIN))
//!     .build()?;
//! let batcher = Batcher::builder(Lengths)
//!     .linger(Duration::from_millis(5))
//!     .rate_limiter(limiter)
//!     .build()?;
//! let (a, b) = tokio::join!(batcher.submit("hello".to_owned()), batcher.submit("batch".to_owned()));
//! assert_eq!((a?, b?), (5, 5)); // both in one call, under both limits
//! batcher.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! This crate is part of the [perfkit](https://github.com/perfkit-rs/perfkit)
//! family; use it alone or through the `perfkit` facade (features `batcher`,
//! `batcher-openai`, `batcher-tokenizer`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod batcher;
mod error;
mod executor;
#[cfg(feature = "tower")]
mod layer;
mod limiter;
#[cfg(feature = "openai")]
mod openai;
#[cfg(feature = "tokenizer")]
mod tokenizer;

pub use crate::batcher::{Batcher, BatcherBuilder, Pending};
pub use crate::error::{ConfigError, Error, LimitError};
pub use crate::executor::{BatchExecutor, ExecError, ExecFuture, Executed, estimate_tokens};
#[cfg(feature = "tower")]
pub use crate::layer::{RateLimit, RateLimitError, RateLimitLayer};
pub use crate::limiter::{Clock, ProviderRemaining, RateLimiter, RateLimiterBuilder, Reservation};
#[cfg(feature = "openai")]
pub use crate::openai::{
    MAX_INPUTS_PER_CALL, OpenAiEmbeddings, OpenAiEmbeddingsBuilder, OpenAiError,
};
#[cfg(feature = "tokenizer")]
pub use crate::tokenizer::Encoding;

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(all(doctest, feature = "tower", feature = "openai"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
