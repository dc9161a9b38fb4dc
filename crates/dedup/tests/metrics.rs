//! The counters a group reports, read through a real `metrics` recorder.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use perfkit_dedup::{Error, Group};
use perfkit_test_support::metrics::Counters;

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
    while counters.get("perfkit_dedup_coalesced_total{name=prices}") < 19 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    open.send_replace(true);
    for caller in callers {
        assert_eq!(caller.await.unwrap().result.unwrap(), 1);
    }
    assert_eq!(
        counters.get("perfkit_dedup_executions_total{name=prices}"),
        1
    );
    assert_eq!(
        counters.get("perfkit_dedup_coalesced_total{name=prices}"),
        19
    );

    // A panic.
    let outcome = group.run(2, || async { panic!("boom") }).await;
    assert!(matches!(outcome.result, Err(Error::Panicked(_))));
    assert_eq!(counters.get("perfkit_dedup_panics_total{name=prices}"), 1);

    // An abandoned flight.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        group.run(3, std::future::pending::<Result<u32, ()>>),
    )
    .await;
    assert!(abandoned.is_err());
    assert_eq!(
        counters.get("perfkit_dedup_abandoned_total{name=prices}"),
        1
    );
    assert_eq!(
        counters.get("perfkit_dedup_executions_total{name=prices}"),
        3
    );
}
