//! Criterion benchmarks for the perfkit crates.
//!
//! Every benchmark group measures a perfkit crate side by side with the peers
//! named in its issue, in one run, so that the ratios in each crate's README
//! come from one machine at one moment. Peers are dependencies of this package
//! only, never of the crates themselves.
//!
//! Run them all with `cargo bench -p perfkit-benches`, or one with
//! `cargo bench -p perfkit-benches --bench <name>`.

/// The runtime every concurrent benchmark runs on: two worker threads (the
/// build machine's cores), timers and I/O enabled.
///
/// # Panics
///
/// When the runtime cannot be built (a benchmark cannot run without it).
#[must_use]
#[allow(clippy::expect_used)]
pub fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
