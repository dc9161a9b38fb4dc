//! Criterion benchmarks for the perfkit crates.
//!
//! Every benchmark group measures a perfkit crate side by side with the peers
//! named in its issue, in one run, so that the ratios in each crate's README
//! come from one machine at one moment. Peers are dependencies of this package
//! only, never of the crates themselves.
//!
//! Run them all with `cargo bench -p perfkit-benches`, or one with
//! `cargo bench -p perfkit-benches --bench <name>`.
