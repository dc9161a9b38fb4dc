//! bb8-redis: snapshots agree with the pool's own state, waiters are
//! counted right when callers give up (bb8's own count is not), timeouts
//! and acquire windows are counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use perfkit_pool_monitor::{InstrumentedBb8, PoolSource};
use perfkit_test_support::concurrency::until;
use perfkit_test_support::metrics::Counters;
use perfkit_test_support::redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_redis_figures_agree_with_its_state_and_cancelled_gets_leave_no_waiter() {
    let Some(server) = redis().await else { return };
    let manager = bb8_redis::RedisConnectionManager::new(server.url()).unwrap();
    let pool = bb8::Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_millis(300))
        .build(manager)
        .await
        .unwrap();
    let counters = Counters::default();
    let pool = Arc::new(metrics::with_local_recorder(&counters, || {
        InstrumentedBb8::builder(pool)
            .name("bb8-cache")
            .build()
            .unwrap()
    }));
    let before = pool.acquires().unwrap();
    let mut first = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *first).await.unwrap();
    assert_eq!(pong, "PONG");
    let second = pool.get().await.unwrap();
    let state = pool.pool().state();
    let snapshot = pool.publish();
    assert_eq!(
        (snapshot.max, snapshot.size, snapshot.idle, snapshot.in_use),
        (2, state.connections, state.idle_connections, 2)
    );
    assert_eq!(
        counters.gauge("perfkit_pool_connections{pool=bb8-cache,state=in_use}"),
        Some(2.0)
    );

    // Ten callers wait and then give up: half by a timeout around the get,
    // half by their task being aborted.
    let waiters: Vec<_> = (0..10)
        .map(|i| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let _ = tokio::time::timeout(Duration::from_millis(100), pool.get()).await;
                } else {
                    let _ = pool.get().await;
                }
            })
        })
        .collect();
    until("ten waiting", || pool.snapshot().waiting == Some(10)).await;
    assert_eq!(
        pool.pool().state().statistics.get_started
            - pool.pool().state().statistics.get_direct
            - pool.pool().state().statistics.get_waited
            - pool.pool().state().statistics.get_timed_out,
        10,
        "bb8 counts them too while they wait"
    );
    for (i, waiter) in waiters.into_iter().enumerate() {
        if i % 2 == 1 {
            waiter.abort();
        }
        let _ = waiter.await;
    }
    until("no waiter left", || pool.snapshot().waiting == Some(0)).await;
    // bb8's own figure for the same moment: the gets that were cancelled
    // never end in its statistics.
    let stats = pool.pool().state().statistics;
    let bb8_pending =
        stats.get_started - (stats.get_direct + stats.get_waited + stats.get_timed_out);
    assert!(
        bb8_pending > 0,
        "bb8's pending count is expected to drift: {stats:?}"
    );

    // A get that reaches bb8's own timeout: counted, and in the window.
    assert!(matches!(pool.get().await, Err(bb8::RunError::TimedOut)));
    assert_eq!(
        counters.get("perfkit_pool_acquire_timeouts_total{pool=bb8-cache}"),
        1
    );
    let window = pool.acquires().unwrap().since(&before);
    assert_eq!((window.acquired, window.timeouts), (2, 1));
    assert!(window.p99.is_some());

    drop((first, second));
    until("all idle", || {
        let snapshot = pool.snapshot();
        snapshot.in_use == 0 && snapshot.idle == 2 && snapshot.waiting == Some(0)
    })
    .await;
}
