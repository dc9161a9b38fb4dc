//! Counters and gauges, registered once per layer so the hot path only increments.
//!
//! Names follow `perfkit_idempotency_<what>_<unit>`, labelled `name` (the
//! layer's [name](crate::IdempotencyLayerBuilder::name)). Handles are taken
//! from the `metrics` recorder installed when the layer is built: install the
//! exporter first.

use metrics::{Counter, Gauge, counter, gauge};

use crate::error::StoreError;

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// Requests that claimed their key and ran the handler.
    pub(crate) new: Counter,
    /// Requests answered with a recorded response.
    pub(crate) replayed: Counter,
    /// Requests answered 409 (in progress, or not replayable).
    pub(crate) conflict: Counter,
    /// Requests answered 422 (key reused with another request).
    pub(crate) mismatch: Counter,
    /// Requests answered 400 or 413 (bad key, no scope, body).
    pub(crate) rejected: Counter,
    /// Requests with a key on a protected method that the store could not check (503 or pass-through).
    pub(crate) store_unavailable: Counter,
    /// Requests run without protection because the store failed and the layer fails open.
    pub(crate) passed_through: Counter,
    /// Store reads skipped because the Bloom filter had certainly not seen the key.
    pub(crate) bloom_skipped_reads: Counter,
    /// Store calls that failed or timed out, by operation.
    pub(crate) store_errors: StoreErrors,
    /// Claims released (5xx, handler error, panic, cancelled request).
    pub(crate) released: Counter,
    /// Completions refused because the claim was no longer held (the handler outlived its lock).
    pub(crate) lost_claims: Counter,
    /// Claims extended by renewal.
    pub(crate) renewals: Counter,
    /// Store calls not attempted because the store's circuit breaker was open.
    pub(crate) store_skipped: Counter,
    /// 1 while the store's circuit breaker is open or probing, 0 while closed.
    pub(crate) store_breaker_open: Gauge,
    /// Current estimated false-positive rate of the Bloom filter.
    pub(crate) bloom_fp_rate: Gauge,
    /// Bytes held by the Bloom filter.
    pub(crate) bloom_bytes: Gauge,
}

/// Counts a store call that failed on `counter`; a call the circuit
/// breaker skipped was never made, and is counted as skipped instead.
pub(crate) fn count_failed(counter: &Counter, error: &StoreError) {
    if !matches!(error, StoreError::CircuitOpen) {
        counter.increment(1);
    }
}

#[derive(Debug, Clone)]
pub(crate) struct StoreErrors {
    pub(crate) lookup: Counter,
    pub(crate) claim: Counter,
    pub(crate) complete: Counter,
    pub(crate) release: Counter,
    pub(crate) renew: Counter,
}

impl Metrics {
    pub(crate) fn new(layer: &str) -> Self {
        let requests = |outcome: &'static str| counter!("perfkit_idempotency_requests_total", "name" => layer.to_owned(), "outcome" => outcome);
        let store_errors = |op: &'static str| counter!("perfkit_idempotency_store_errors_total", "name" => layer.to_owned(), "op" => op);
        Self {
            new: requests("new"),
            replayed: requests("replayed"),
            conflict: requests("conflict"),
            mismatch: requests("mismatch"),
            rejected: requests("rejected"),
            store_unavailable: requests("store_unavailable"),
            passed_through: requests("passed_through"),
            bloom_skipped_reads: counter!("perfkit_idempotency_bloom_skipped_reads_total", "name" => layer.to_owned()),
            store_errors: StoreErrors {
                lookup: store_errors("lookup"),
                claim: store_errors("claim"),
                complete: store_errors("complete"),
                release: store_errors("release"),
                renew: store_errors("renew"),
            },
            released: counter!("perfkit_idempotency_released_total", "name" => layer.to_owned()),
            lost_claims: counter!("perfkit_idempotency_lost_claims_total", "name" => layer.to_owned()),
            renewals: counter!("perfkit_idempotency_renewals_total", "name" => layer.to_owned()),
            store_skipped: counter!("perfkit_idempotency_store_skipped_total", "name" => layer.to_owned()),
            store_breaker_open: gauge!("perfkit_idempotency_store_breaker_open", "name" => layer.to_owned()),
            bloom_fp_rate: gauge!("perfkit_idempotency_bloom_fp_ratio", "name" => layer.to_owned()),
            bloom_bytes: gauge!("perfkit_idempotency_bloom_bytes", "name" => layer.to_owned()),
        }
    }
}
