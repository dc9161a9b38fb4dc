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
//! | `batcher`     | `perfkit::batcher`     | `perfkit-llm-batcher` (with its tower layer) |
//! | `batcher-openai` | `perfkit::batcher::OpenAiEmbeddings` | `perfkit-llm-batcher/openai`: reqwest with rustls |
//! | `batcher-tokenizer` | `perfkit::batcher::Encoding` | `perfkit-llm-batcher/tokenizer`: bpe-openai |
//! | `audit`       | `perfkit::audit`       | `perfkit-query-audit`  |
//! | `audit-postgres` | `perfkit::audit::explain` | `perfkit-query-audit/postgres`: sqlx |
//! | `audit-sqlite` | `perfkit::audit::explain` | `perfkit-query-audit/sqlite`: sqlx, bundled SQLite |
//! | `pool`        | `perfkit::pool`        | `perfkit-pool-monitor` |
//! | `pool-sqlx`   | `perfkit::pool::InstrumentedPool` | `perfkit-pool-monitor/sqlx`: sqlx |
//! | `pool-deadpool` | `perfkit::pool::InstrumentedDeadpool` | `perfkit-pool-monitor/deadpool`: deadpool |
//! | `pool-bb8`    | `perfkit::pool::InstrumentedBb8` | `perfkit-pool-monitor/bb8`: bb8 |
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
//!
//! ## Metrics and spans
//!
//! Every crate reports through the `metrics` facade (install your exporter
//! before building caches, layers and groups) and `tracing`. Every metric
//! carries the instance's name as the label `name`; spans are `<crate>.<op>`
//! at `DEBUG` with a `<crate>.name` field. The complete list:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `perfkit_cache_hits_total`, `perfkit_cache_misses_total`, `perfkit_cache_promotions_total` | counter | `name`, `tier` |
//! | `perfkit_cache_tier_errors_total`, `perfkit_cache_value_errors_total`, `perfkit_cache_tier_skipped_total` | counter | `name`, `tier` |
//! | `perfkit_cache_breaker_open` | gauge | `name`, `tier` |
//! | `perfkit_cache_loads_total`, `perfkit_cache_load_errors_total`, `perfkit_cache_load_timeouts_total` | counter | `name` |
//! | `perfkit_cache_refreshes_total`, `perfkit_cache_negative_hits_total`, `perfkit_cache_stale_served_total`, `perfkit_cache_shared_lookups_total` | counter | `name` |
//! | `perfkit_cache_load_duration_seconds` | histogram | `name` |
//! | `perfkit_cache_invalidations_sent_total`, `perfkit_cache_invalidations_received_total` | counter | `name` |
//! | `perfkit_cache_invalidation_publish_errors_total`, `perfkit_cache_invalidation_publish_skipped_total` | counter | `name` |
//! | `perfkit_cache_publish_breaker_open`, `perfkit_cache_bus_up` | gauge | `name` |
//! | `perfkit_cache_l1_flushes_total` | counter | `name`, `reason` (`bus_down`, `bus_up`, `bus_lagged`) |
//! | `perfkit_cache_bus_reconnects_total` | counter | `name` |
//! | `perfkit_cache_invalidation_delay_seconds` | histogram | `name` |
//! | `perfkit_idempotency_requests_total` | counter | `name`, `outcome` (`new`, `replayed`, `conflict`, `mismatch`, `rejected`, `store_unavailable`, `passed_through`) |
//! | `perfkit_idempotency_store_errors_total` | counter | `name`, `op` (`lookup`, `claim`, `complete`, `release`, `renew`) |
//! | `perfkit_idempotency_store_skipped_total`, `perfkit_idempotency_bloom_skipped_reads_total` | counter | `name` |
//! | `perfkit_idempotency_released_total`, `perfkit_idempotency_lost_claims_total`, `perfkit_idempotency_renewals_total` | counter | `name` |
//! | `perfkit_idempotency_store_breaker_open`, `perfkit_idempotency_bloom_fp_ratio`, `perfkit_idempotency_bloom_bytes` | gauge | `name` |
//! | `perfkit_dedup_executions_total`, `perfkit_dedup_coalesced_total`, `perfkit_dedup_panics_total`, `perfkit_dedup_abandoned_total` | counter | `name` |
//! | `perfkit_dedup_http_unshared_total` | counter | `name` |
//! | `perfkit_batcher_queued` | gauge | `name` |
//! | `perfkit_batcher_batches_total`, `perfkit_batcher_dropped_total`, `perfkit_batcher_rate_limited_total`, `perfkit_batcher_retries_total`, `perfkit_batcher_failed_batches_total` | counter | `name` |
//! | `perfkit_batcher_batch_size`, `perfkit_batcher_batch_tokens`, `perfkit_batcher_linger_seconds`, `perfkit_batcher_queue_wait_seconds` | histogram | `name` |
//! | `perfkit_batcher_model_requests_total`, `perfkit_batcher_model_tokens_total`, `perfkit_batcher_cost_microdollars_total` | counter | `name`, `model` |
//! | `perfkit_batcher_limiter_wait_seconds` | histogram | `name` |
//! | `perfkit_batcher_limiter_requests_total`, `perfkit_batcher_limiter_tokens_total` | counter | `name` |
//! | `perfkit_batcher_limiter_refunded_tokens_total`, `perfkit_batcher_limiter_charged_tokens_total` | counter | `name` |
//! | `perfkit_query_audit_calls_total`, `perfkit_query_audit_slow_total`, `perfkit_query_audit_rows_total` | counter | `name`, `fingerprint` (id in hex, `other` past the bound) |
//! | `perfkit_query_audit_duration_seconds` | histogram | `name`, `fingerprint` |
//! | `perfkit_query_audit_n_plus_one_total`, `perfkit_query_audit_overflow_total`, `perfkit_query_audit_dropped_notices_total` | counter | `name` |
//! | `perfkit_query_audit_fingerprints` | gauge | `name` |
//! | `perfkit_query_audit_explains_total` | counter | `name`, `outcome` (`advised`, `no_advice`, `refused`, `failed`) |
//! | `perfkit_query_audit_explain_dropped_total` | counter | `name` |
//! | `perfkit_pool_connections` | gauge | `pool`, `state` (`idle`, `in_use`, `total`, `max`) |
//! | `perfkit_pool_waiting` | gauge | `pool` |
//! | `perfkit_pool_acquire_seconds`, `perfkit_pool_usage_seconds` | histogram | `pool` |
//! | `perfkit_pool_acquire_timeouts_total` | counter | `pool` |
//!
//! Spans: `cache.get`, `idempotency.claim`, `idempotency.record`,
//! `idempotency.replay`, `dedup.run`, `batcher.dispatch`. Each crate's documentation says what
//! each metric counts.
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

/// Gauges for sqlx, deadpool and bb8 connection pools (feature `pool`).
#[cfg(feature = "pool")]
pub use perfkit_pool_monitor as pool;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
