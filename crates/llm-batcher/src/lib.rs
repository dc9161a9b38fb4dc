//! # perfkit-llm-batcher
//!
//! Batches LLM requests (size + linger), rate-limited by requests per minute and tokens per minute, with each result fanned back to its caller.
//!
//! **Status:** in progress. The [`RateLimiter`] (requests and tokens per
//! minute at once, FIFO, reservations reconciled with reported usage) is
//! usable; the batcher itself is not there yet. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or
//! through the `perfkit` facade.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod limiter;

pub use crate::error::{ConfigError, LimitError};
pub use crate::limiter::{RateLimiter, RateLimiterBuilder, Reservation};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
