//! # perfkit-models
//!
//! loom models of the state machines that live in crates whose dependencies
//! are too heavy to build a second time under `--cfg perfkit_loom` (the
//! tiered cache pulls in tokio, redis and, for its tests, sqlx). Each
//! machine's own source file is compiled here, by path, against a `sync`
//! module of loom's locks, with only the dependencies it needs: the code
//! checked is the code shipped.
//!
//! Built normally this crate is empty. Run the models with
//!
//! ```sh
//! RUSTFLAGS="--cfg perfkit_loom" cargo test -p perfkit-models --release --target-dir target/loom
//! ```
//!
//! Models of a crate without heavy dependencies live in that crate (see
//! `perfkit-breaker`); CONTRIBUTING.md says how to add one.

/// loom's locks, where the shipped crates use std's (`crate::sync` there),
/// and dashmap's map replaced by a loom lock around a `HashMap`.
#[cfg(perfkit_loom)]
mod sync;

/// perfkit-tiered-cache's per-key generations: a fill that began before a
/// `set` or an invalidation of its key never lands in L1 afterwards.
#[cfg(perfkit_loom)]
#[path = "../../crates/tiered-cache/src/generations.rs"]
#[allow(dead_code)] // what the models do not call
mod generations;

/// perfkit-tiered-cache's shared lookups: concurrent `get` misses of one
/// key share one look at the lower tiers.
#[cfg(perfkit_loom)]
#[path = "../../crates/tiered-cache/src/lookups.rs"]
#[allow(dead_code)] // what the models do not call
mod lookups;

#[cfg(all(test, perfkit_loom))]
mod generations_models;
#[cfg(all(test, perfkit_loom))]
mod lookups_models;
