//! # perfkit-llm-batcher
//!
//! Batches LLM requests (size + linger), rate-limited by requests per minute and tokens per minute, with each result fanned back to its caller.
//!
//! **Status:** Work in progress: the API lands with its own issue. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or through
//! the `perfkit` facade.
#![cfg_attr(docsrs, feature(doc_cfg))]
