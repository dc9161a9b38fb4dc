//! Usage accounting per model, read through a real `metrics` recorder
//! installed for this test binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, LazyLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use perfkit_llm_batcher::{BatchExecutor, Batcher, ExecFuture, Executed};
use perfkit_test_support::metrics::Counters;

static COUNTERS: LazyLock<Arc<Counters>> = LazyLock::new(Arc::default);

/// The global recorder: the batcher registers per-model counters in its tasks.
struct Global;

impl Recorder for Global {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        COUNTERS.describe_counter(key, unit, text);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        COUNTERS.describe_gauge(key, unit, text);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        COUNTERS.describe_histogram(key, unit, text);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        COUNTERS.register_counter(key, metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        COUNTERS.register_gauge(key, metadata)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        COUNTERS.register_histogram(key, metadata)
    }
}

/// Reports 7 tokens used per request.
struct Sevens;

impl BatchExecutor for Sevens {
    type Request = &'static str;
    type Response = ();
    type Error = std::io::Error;

    fn model<'a>(&'a self, model: &'a &'static str) -> &'a str {
        model
    }

    fn estimate_tokens(&self, _request: &&'static str) -> u32 {
        10
    }

    fn execute<'a>(
        &'a self,
        _model: &'a str,
        batch: &'a [&'static str],
    ) -> ExecFuture<'a, (), std::io::Error> {
        Box::pin(async move {
            let used = u32::try_from(batch.len()).unwrap() * 7;
            Ok(Executed::new(batch.iter().map(|_| Ok(())).collect()).with_tokens_used(used))
        })
    }
}

#[tokio::test]
async fn usage_and_cost_are_counted_per_model_from_the_reported_usage() {
    metrics::set_global_recorder(Global).unwrap();
    let batcher = Batcher::builder(Sevens)
        .name("usage")
        .price_per_million_tokens("cheap", 0.02)
        .price_per_million_tokens("dear", 60.0)
        .build()
        .unwrap();
    let (a, b, c) = tokio::join!(
        batcher.submit("cheap"),
        batcher.submit("cheap"),
        batcher.submit("dear")
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    batcher.shutdown().await;
    let get =
        |metric: &str, model: &str| COUNTERS.get(&format!("{metric}{{name=usage,model={model}}}"));
    assert_eq!(get("perfkit_batcher_model_requests_total", "cheap"), 2);
    assert_eq!(get("perfkit_batcher_model_tokens_total", "cheap"), 14);
    assert_eq!(get("perfkit_batcher_model_tokens_total", "dear"), 7);
    // $60 per million tokens: 7 tokens are 420 micro-dollars; $0.02: 14 tokens round to 0.
    assert_eq!(get("perfkit_batcher_cost_microdollars_total", "dear"), 420);
    assert_eq!(get("perfkit_batcher_cost_microdollars_total", "cheap"), 0);
}
