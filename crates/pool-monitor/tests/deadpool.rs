//! deadpool-redis and deadpool-postgres: snapshots agree with the pools'
//! own status, timeouts are counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::time::Duration;

use perfkit_pool_monitor::{InstrumentedDeadpool, PoolSource};
use perfkit_test_support::concurrency::until;
use perfkit_test_support::metrics::Counters;
use perfkit_test_support::{postgres, redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_redis_figures_agree_with_its_status_and_timeouts_are_counted() {
    let Some(server) = redis().await else { return };
    let mut config = deadpool_redis::Config::from_url(server.url());
    config.pool = Some(deadpool_redis::PoolConfig {
        max_size: 2,
        timeouts: deadpool_redis::Timeouts {
            wait: Some(Duration::from_millis(100)),
            ..deadpool_redis::Timeouts::default()
        },
        ..deadpool_redis::PoolConfig::default()
    });
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let counters = Counters::default();
    let pool = metrics::with_local_recorder(&counters, || {
        InstrumentedDeadpool::builder(pool)
            .name("cache")
            .build()
            .unwrap()
    });
    let mut first = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *first).await.unwrap();
    assert_eq!(pong, "PONG");
    let second = pool.get().await.unwrap();
    // Three more wait; deadpool counts them, and so does the snapshot.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.pool().clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), pool.get()).await;
            })
        })
        .collect();
    until("three waiting", || pool.snapshot().waiting == Some(3)).await;
    let status = pool.pool().status();
    let snapshot = pool.publish();
    assert_eq!(
        (
            snapshot.max,
            snapshot.size,
            snapshot.idle,
            snapshot.in_use,
            snapshot.waiting
        ),
        (
            u32::try_from(status.max_size).unwrap(),
            u32::try_from(status.size).unwrap(),
            u32::try_from(status.available).unwrap(),
            2,
            Some(u64::try_from(status.waiting).unwrap())
        )
    );
    assert_eq!(
        counters.gauge("perfkit_pool_waiting{pool=cache}"),
        Some(3.0)
    );
    // Ours times out after deadpool's wait timeout: counted.
    assert!(matches!(
        pool.get().await,
        Err(deadpool_redis::PoolError::Timeout(_))
    ));
    assert_eq!(
        counters.get("perfkit_pool_acquire_timeouts_total{pool=cache}"),
        1
    );
    drop((first, second));
    for waiter in waiters {
        waiter.await.unwrap();
    }
    until("all back", || {
        let snapshot = pool.snapshot();
        snapshot.in_use == 0 && snapshot.waiting == Some(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_postgres_figures_agree_with_its_status() {
    let Some(db) = postgres().await else { return };
    let config = tokio_postgres::Config::from_str(db.url()).unwrap();
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(3)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let counters = Counters::default();
    let pool = metrics::with_local_recorder(&counters, || {
        InstrumentedDeadpool::builder(pool)
            .name("db")
            .build()
            .unwrap()
    });
    let mut held = Vec::new();
    for _ in 0..3 {
        let client = pool.get().await.unwrap();
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        held.push(client);
    }
    let status = pool.pool().status();
    let snapshot = pool.snapshot();
    assert_eq!((snapshot.size, snapshot.in_use, snapshot.idle), (3, 3, 0));
    assert_eq!(snapshot.size, u32::try_from(status.size).unwrap());
    assert_eq!(snapshot.idle, u32::try_from(status.available).unwrap());
    assert!(matches!(
        pool.get().await,
        Err(deadpool_postgres::PoolError::Timeout(_))
    ));
    assert_eq!(
        counters.get("perfkit_pool_acquire_timeouts_total{pool=db}"),
        1
    );
    held.clear();
    until("all idle", || pool.snapshot().idle == 3).await;
}
