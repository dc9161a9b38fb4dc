//! # perfkit-query-audit
//!
//! A slow-query auditor for sqlx (PostgreSQL, SQLite): timing, EXPLAIN off the hot path, index suggestions and per-query aggregates.
//!
//! **Status:** Work in progress: the API lands with its own issue. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or through
//! the `perfkit` facade.
#![cfg_attr(docsrs, feature(doc_cfg))]
