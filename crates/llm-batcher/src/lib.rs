//! # perfkit-llm-batcher
//!
//! Batches LLM requests (size + linger), rate-limited by requests per minute and tokens per minute, with each result fanned back to its caller.
//!
//! **Status:** in progress. The [`Batcher`] (by model, closed on count,
//! tokens or linger, results one-to-one, 429s retried) and the
//! [`RateLimiter`] (requests and tokens per minute at once, FIFO,
//! reservations reconciled with reported usage) are usable with a
//! [`BatchExecutor`] of your own, or with `OpenAiEmbeddings` (feature
//! `openai`) for `OpenAI`-compatible embeddings endpoints; `Encoding`
//! (feature `tokenizer`) counts tokens exactly. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or
//! through the `perfkit` facade.
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
