//! Criterion benchmarks for the perfkit tower layers, each measured side by
//! side with its axum-based peers in one run.
//!
//! A package apart from `perfkit-benches` so that the peers' features
//! (`tracing/log` through axum's default `tower-log`) do not leak into the
//! other crates' measurements. Run with
//! `cargo bench -p perfkit-benches-http --bench idempotency`.
