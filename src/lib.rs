//! # perfkit
//!
//! Performance primitives for async Rust services, one crate per concern. This
//! facade re-exports each of them as a module behind a cargo feature, so a
//! service pays (in compile time and dependencies) only for what it enables:
//!
//! | feature       | module                 | crate                  |
//! |---------------|------------------------|------------------------|
//! | `cache`       | `perfkit::cache`       | `perfkit-tiered-cache` (Redis tier and bus, JSON codec) |
//! | `cache-memory`| `perfkit::cache`       | `perfkit-tiered-cache`, in-process only: no `redis`, no `serde_json` |
//! | `idempotency` | `perfkit::idempotency` | `perfkit-idempotency`  |
//! | `dedup`       | `perfkit::dedup`       | `perfkit-dedup`        |
//! | `batcher`     | `perfkit::batcher`     | `perfkit-llm-batcher`  |
//! | `audit`       | `perfkit::audit`       | `perfkit-query-audit`  |
//! | `pool`        | `perfkit::pool`        | `perfkit-pool-monitor` |
//! | `full`        | all of the above       |                        |
//!
//! No feature is on by default: with default features this crate has no
//! dependencies at all.
//!
//! ```toml
//! [dependencies]
//! perfkit = { version = "0.1", features = ["dedup", "cache"] }
//! ```
//!
//! Each crate can equally be depended on alone (`perfkit-dedup = "0.1"`); the
//! modules here are the very same crates.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Tiered cache: in-process L1, Redis L2 and any tier you plug in (feature
/// `cache`; `cache-memory` for the in-process parts alone).
#[cfg(feature = "cache-memory")]
pub use perfkit_tiered_cache as cache;

/// `Idempotency-Key` tower layer (feature `idempotency`).
#[cfg(feature = "idempotency")]
pub use perfkit_idempotency as idempotency;

/// Single-flight: concurrent callers with one key share one execution (feature `dedup`).
#[cfg(feature = "dedup")]
pub use perfkit_dedup as dedup;

/// Batching of LLM requests under request and token rate limits (feature `batcher`).
#[cfg(feature = "batcher")]
pub use perfkit_llm_batcher as batcher;

/// Slow-query auditor for sqlx (feature `audit`).
#[cfg(feature = "audit")]
pub use perfkit_query_audit as audit;

/// Gauges for sqlx and deadpool connection pools (feature `pool`).
#[cfg(feature = "pool")]
pub use perfkit_pool_monitor as pool;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
