//! A master of a private Redis Cluster killed under traffic: the cache
//! keeps answering (from the loader or its first tier, within the remote
//! timeout), the invalidation bus loses its shard, flushes the first tier
//! and comes back on the promoted replica, and propagation resumes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use perfkit_test_support::PrivateCluster;
use perfkit_test_support::concurrency::within;
use perfkit_tiered_cache::{Cache, MemoryTier, RedisBus, RedisTier};

const CHANNEL: &str = "failover:bus";
const REMOTE_TIMEOUT: Duration = Duration::from_millis(200);

fn instance(urls: &[String]) -> Cache<String> {
    Cache::builder()
        .name("failover")
        .tier(MemoryTier::with_max_entries(10_000))
        .tier(
            RedisTier::cluster_builder(urls)
                .prefix("failover:")
                .build()
                .unwrap(),
        )
        .remote_timeout(REMOTE_TIMEOUT)
        .invalidation_bus(
            RedisBus::cluster_builder(urls)
                .channel(CHANNEL)
                .health_check(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// Waits until the cluster no longer has `dead` serve `key`'s slot, and is ok.
fn failed_over(cluster: &PrivateCluster, key: &str, dead: usize) {
    let started = Instant::now();
    while cluster.master_of(key) == dead {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replica took over within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cluster.wait_until_ok(Duration::from_secs(30)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_costs_misses_not_errors_and_the_bus_comes_back_on_its_replica() {
    let Some(mut cluster) = tokio::task::block_in_place(PrivateCluster::start) else {
        return;
    };
    let urls = cluster.urls();
    let (a, b) = (instance(&urls), instance(&urls));
    within("both subscriptions", async {
        while a.stats().l1_flushes == 0 || b.stats().l1_flushes == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Traffic on both instances: loads of 300 keys, all masters' slots.
    let database = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Vec::new();
    for (n, cache) in [&a, &b, &a, &b].into_iter().enumerate() {
        let (cache, database, stop) = (cache.clone(), Arc::clone(&database), Arc::clone(&stop));
        traffic.push(tokio::spawn(async move {
            let (mut calls, mut errors, mut slowest) = (0_u64, 0_u64, Duration::ZERO);
            let mut i = n;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("k{}", i % 300);
                let database = Arc::clone(&database);
                let started = Instant::now();
                let answer = cache
                    .get_or_load(&key, move || async move {
                        Ok::<_, std::io::Error>(database.load(Ordering::SeqCst).to_string())
                    })
                    .await;
                slowest = slowest.max(started.elapsed());
                calls += 1;
                errors += u64::from(answer.is_err());
                i += 7;
                tokio::task::yield_now().await;
            }
            (calls, errors, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Kill the master of the bus channel's shard (and of a third of the keys).
    let flushes_before = b.stats().l1_flushes;
    let dead = cluster.master_of(CHANNEL);
    cluster.kill(dead);
    tokio::task::block_in_place(|| failed_over(&cluster, CHANNEL, dead));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut calls, mut errors, mut slowest) = (0, 0, Duration::ZERO);
    for task in traffic {
        let (c, e, s) = task.await.unwrap();
        calls += c;
        errors += e;
        slowest = slowest.max(s);
    }
    eprintln!("{calls} calls during the failover, slowest {slowest:?}");
    assert_eq!(
        errors, 0,
        "every call answered, from the loader when Redis could not"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "no call waited on the dead master: slowest {slowest:?} (remote timeout {REMOTE_TIMEOUT:?})"
    );

    // The bus lost its shard: B flushed its first tier, and is up again.
    within("B's subscription on the promoted replica", async {
        while b.stats().bus_up != Some(true) || b.stats().l1_flushes <= flushes_before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The second tier takes writes again (once its breaker, opened by the
    // timeouts on the dead master, lets a probe through), and propagation
    // resumes.
    within("the second tier serving again", async {
        loop {
            a.set("after", "1".to_owned()).await;
            if b.get("after").await.as_deref().map(String::as_str) == Some("1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    within("the invalidation reaching B", async {
        loop {
            a.set("after", "2".to_owned()).await;
            if b.get("after").await.as_deref().map(String::as_str) == Some("2") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let tier = |cache: &Cache<String>| cache.stats().tiers[1].clone();
    assert!(
        tier(&a).hits + tier(&b).hits > 0,
        "the second tier served hits"
    );
}
