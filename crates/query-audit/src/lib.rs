//! # perfkit-query-audit
//!
//! A slow-query auditor for sqlx (PostgreSQL, SQLite): timing, EXPLAIN off the hot path, index suggestions and per-query aggregates.
//!
//! **Status:** not yet usable: this version reserves the name and has no API yet. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or through
//! the `perfkit` facade.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
