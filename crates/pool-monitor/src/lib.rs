//! # perfkit-pool-monitor
//!
//! Gauges for sqlx and deadpool pools: total/idle/in-use/waiting connections, acquire latency, and exhaustion alerts.
//!
//! **Status:** Work in progress: the API lands with its own issue. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or through
//! the `perfkit` facade.
#![cfg_attr(docsrs, feature(doc_cfg))]
