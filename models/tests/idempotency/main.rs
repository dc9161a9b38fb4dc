//! loom models of perfkit-idempotency's in-process state machines: the
//! memory store's claims table and the Bloom filter's rotating generations,
//! built from the crate's own source files against this directory's `sync`
//! (loom's locks, a map behind one, a clock the models move). The root
//! mirrors the crate's: `crate::sync`, `crate::stores::claims`,
//! `crate::bloom` resolve as they do there.
//!
//! ```sh
//! RUSTFLAGS="--cfg perfkit_loom" cargo test -p perfkit-models --release --test idempotency --target-dir target/loom
//! ```
#![cfg(perfkit_loom)]
// The crate's public items, reached here through private modules.
#![allow(unreachable_pub)]

/// loom's locks where the crate uses std's, a loom lock around a `HashMap`
/// for dashmap's map, and a clock of the models' own for tokio's.
mod sync;

/// The one item of the crate's `error` the filter names: its `new` refuses
/// bad parameters with it (the models pass good ones).
mod error {
    #[derive(Debug, Clone)]
    #[allow(dead_code)] // fields the models never read
    pub(crate) enum ConfigError {
        Bloom { expected_keys: usize, fp_rate: f64 },
    }
}

// The crate's `src/stores/` directory, for the one file of it built here.
#[path = "../../../crates/idempotency/src/stores"]
mod stores {
    /// The memory store's table of claims and records.
    #[allow(dead_code)] // what the models do not call
    pub(crate) mod claims;
}

/// The Bloom filter of keys seen, in two generations.
#[path = "../../../crates/idempotency/src/bloom.rs"]
#[allow(dead_code)]
mod bloom;

mod bloom_models;
mod claims_models;
