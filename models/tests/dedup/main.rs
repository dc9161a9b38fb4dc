//! loom models of perfkit-dedup's single-flight state machine (a `Flight`
//! and the `Group`'s map of them), built from the crate's own source files
//! against this directory's `sync` (loom's lock, a map behind one, loom
//! threads for abandoned work). The root mirrors the crate's: `crate::flight`,
//! `crate::group`, `crate::sync` and the rest resolve as they do there.
//!
//! ```sh
//! RUSTFLAGS="--cfg perfkit_loom" cargo test -p perfkit-models --release --test dedup --target-dir target/loom
//! ```
#![cfg(perfkit_loom)]
// The crate's public items, reached here through private modules.
#![allow(unreachable_pub)]

/// loom's lock where the crate uses std's; a loom lock around a `HashMap`
/// for dashmap's map; a loom thread where abandoned work is spawned.
mod sync;

#[path = "../../../crates/dedup/src/builder.rs"]
#[allow(dead_code)] // what the models do not call
mod builder;
#[path = "../../../crates/dedup/src/error.rs"]
#[allow(dead_code)]
mod error;
/// One execution of the work, shared by every caller waiting on it.
#[path = "../../../crates/dedup/src/flight.rs"]
#[allow(dead_code)]
mod flight;
/// The `Group` and the future of one call.
#[path = "../../../crates/dedup/src/group.rs"]
#[allow(dead_code)]
mod group;
#[path = "../../../crates/dedup/src/metrics.rs"]
#[allow(dead_code)]
mod metrics;

mod flight_models;
