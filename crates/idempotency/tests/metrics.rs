//! The counters a layer reports, read through a real `metrics` recorder.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{Handlers, app, fresh_key, layer, request, send};
use perfkit_idempotency::{IdempotencyStore, MemoryStore};
use perfkit_test_support::metrics::Counters;

#[tokio::test]
async fn counters_report_each_outcome_and_the_reads_the_bloom_filter_skipped() {
    let counters = Arc::new(Counters::default());
    let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
    let layer = metrics::with_local_recorder(&*counters, || layer(&store, |b| b.name("payments")));
    let handlers = Handlers::default();
    let app = app(&handlers, layer);
    let count = |outcome: &str| {
        counters.get(&format!(
            "perfkit_idempotency_requests_total{{name=payments,outcome={outcome}}}"
        ))
    };

    let key = fresh_key();
    send(&app, request("POST", "/payments", Some(&key), "{}")).await;
    assert!(
        send(&app, request("POST", "/payments", Some(&key), "{}"))
            .await
            .replayed()
    );
    assert_eq!(
        send(
            &app,
            request("POST", "/payments", Some(&key), "{\"other\":1}")
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        send(&app, request("POST", "/payments", None, "{}"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let failed = fresh_key();
    assert_eq!(
        send(&app, request("POST", "/fail", Some(&failed), "{}"))
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    assert_eq!(
        (
            count("new"),
            count("replayed"),
            count("mismatch"),
            count("rejected")
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(count("conflict"), 0);
    // Two first attempts went straight to the claim; the retries were read first.
    assert_eq!(
        counters.get("perfkit_idempotency_bloom_skipped_reads_total{name=payments}"),
        2
    );
    assert_eq!(
        counters.get("perfkit_idempotency_released_total{name=payments}"),
        1
    );
    assert_eq!(
        counters.get("perfkit_idempotency_lost_claims_total{name=payments}"),
        0
    );
}
