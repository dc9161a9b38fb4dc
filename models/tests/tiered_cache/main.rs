//! loom models of perfkit-tiered-cache's in-process state machines, built
//! from the crate's own source files against this directory's `sync`
//! (loom's locks). The root mirrors the crate's: `crate::sync`,
//! `crate::generations` and `crate::lookups` resolve as they do there.
//!
//! ```sh
//! RUSTFLAGS="--cfg perfkit_loom" cargo test -p perfkit-models --release --test tiered_cache --target-dir target/loom
//! ```
#![cfg(perfkit_loom)]

/// loom's locks, where the cache uses std's, and dashmap's map replaced by
/// a loom lock around a `HashMap`.
mod sync;

/// The per-key generations: a fill that began before a `set` or an
/// invalidation of its key never lands in L1 afterwards.
#[path = "../../../crates/tiered-cache/src/generations.rs"]
#[allow(dead_code)] // what the models do not call
mod generations;

/// The shared lookups: concurrent `get` misses of one key share one look at
/// the lower tiers.
#[path = "../../../crates/tiered-cache/src/lookups.rs"]
#[allow(dead_code)] // what the models do not call
mod lookups;

mod generations_models;
mod lookups_models;
