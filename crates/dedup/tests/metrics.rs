//! The counters a group reports, read through a real `metrics` recorder.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use perfkit_dedup::{Error, Group};

/// Keeps every counter by name and `group` label.
#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<Total>>>);

#[derive(Default)]
struct Total(AtomicU64);

impl CounterFn for Total {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl Counters {
    fn get(&self, name: &str, group: &str) -> u64 {
        let key = format!("{name}{{group={group}}}");
        self.0
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, |t| t.0.load(Ordering::SeqCst))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let total = self.0.lock().unwrap().entry(name).or_default().clone();
        Counter::from_arc(total)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_report_executions_coalescing_panics_and_abandonment() {
    let counters = Arc::new(Counters::default());
    let group: Group<u32, u32, ()> = metrics::with_local_recorder(&*counters, || {
        Group::builder().name("prices").build().unwrap()
    });

    // 20 callers, one execution: 19 of them coalesced.
    let (open, gate) = tokio::sync::watch::channel(false);
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (group, mut gate) = (group.clone(), gate.clone());
            tokio::spawn(async move {
                group
                    .run(1, move || async move {
                        let _ = gate.wait_for(|open| *open).await;
                        Ok(1)
                    })
                    .await
            })
        })
        .collect();
    while counters.get("perfkit_dedup_coalesced_total", "prices") < 19 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    open.send_replace(true);
    for caller in callers {
        assert_eq!(caller.await.unwrap().result.unwrap(), 1);
    }
    assert_eq!(counters.get("perfkit_dedup_executions_total", "prices"), 1);
    assert_eq!(counters.get("perfkit_dedup_coalesced_total", "prices"), 19);

    // A panic.
    let outcome = group.run(2, || async { panic!("boom") }).await;
    assert!(matches!(outcome.result, Err(Error::Panicked(_))));
    assert_eq!(counters.get("perfkit_dedup_panics_total", "prices"), 1);

    // An abandoned flight.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        group.run(3, std::future::pending::<Result<u32, ()>>),
    )
    .await;
    assert!(abandoned.is_err());
    assert_eq!(counters.get("perfkit_dedup_abandoned_total", "prices"), 1);
    assert_eq!(counters.get("perfkit_dedup_executions_total", "prices"), 3);
}
