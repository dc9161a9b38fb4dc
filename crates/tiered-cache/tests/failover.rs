//! A private Redis Cluster changing under traffic. A master killed: the
//! cache keeps answering (from the loader or its first tier, within the
//! remote timeout), the invalidation bus loses its shard, flushes the first
//! tier and comes back on the promoted replica, and propagation resumes. A
//! slot resharded to another master: no value is lost, the stale-set
//! race finds no stale fill while the slot is half moved, and no value or
//! invalidation made meanwhile is lost.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod first_tier;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, Invalidation, pair, stale_set_race, subscribed};
use perfkit_test_support::PrivateCluster;
use perfkit_test_support::concurrency::within;
use perfkit_tiered_cache::{Cache, RedisBus, RedisTier};

const CHANNEL: &str = "failover:bus";
const REMOTE_TIMEOUT: Duration = Duration::from_millis(200);

fn instance(urls: &[String]) -> Cache<String> {
    Cache::builder()
        .name("failover")
        .tier(first_tier::l1(10_000))
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

/// `n` cache keys `<name>0`, `<name>1`, … that share one bucket, so one
/// slot: those whose stored key carries the first one's hash tag.
fn one_bucket(redis: &Backend, name: &str, n: usize) -> Vec<String> {
    let tag = |key: &str| {
        let stored = redis.key(key);
        let open = stored.find('{').unwrap();
        stored[open..=open + 5].to_owned()
    };
    let first = tag(&format!("{name}0"));
    (0..)
        .map(|i| format!("{name}{i}"))
        .filter(|key| tag(key) == first)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_resharded_under_traffic_loses_no_value_nor_invalidation_and_lets_no_stale_fill_through()
 {
    let Some(cluster) = tokio::task::block_in_place(PrivateCluster::start) else {
        return;
    };
    let cluster = Arc::new(cluster);
    let redis = Backend::on_cluster(cluster.connect().await);
    let (a, b) = pair(&redis);
    subscribed(&[&a, &b]).await;
    // One bucket: 20 keys for the race, 600 values that must survive the move.
    let keys = one_bucket(&redis, "moving:", 620);
    let (raced, kept) = keys.split_at(20);
    for key in kept {
        a.set(key, format!("kept {key}")).await;
    }
    let tier_errors = |cache: &Cache<String>| cache.stats().tiers[1].errors;
    assert_eq!(tier_errors(&a), 0);

    // The slot moves 10 keys at a time, 20 ms apart, while the race runs.
    let moving = tokio::task::spawn_blocking({
        let (cluster, stored) = (Arc::clone(&cluster), redis.key(&keys[0]));
        move || cluster.migrate_slot_of(&stored, 10, Duration::from_millis(20))
    });
    // Meanwhile a third of the kept values are invalidated through B, ten
    // at a time (several commands in flight on one node's connection).
    let invalidating = tokio::spawn({
        let (b, kept) = (b.clone(), kept.to_vec());
        async move {
            let doomed: Vec<&String> = kept.iter().step_by(3).collect();
            for ten in doomed.chunks(10) {
                futures_util::future::join_all(ten.iter().map(|key| b.invalidate(key))).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let rounds = stale_set_race(&redis, (&a, &b), raced, Invalidation::Key, |round| {
        round >= 100 && moving.is_finished()
    })
    .await;
    invalidating.await.unwrap();
    let migration = moving.await.unwrap().unwrap();
    eprintln!(
        "{migration:?}; {rounds} race rounds meanwhile; tier errors: A {}, B {}",
        tier_errors(&a),
        tier_errors(&b)
    );
    assert!(
        migration.keys >= kept.len() && migration.batches >= 50,
        "the slot was half moved for {} batches",
        migration.batches
    );
    assert_eq!(
        tokio::task::block_in_place(|| cluster.master_of(&redis.key(&keys[0]))),
        migration.to
    );

    // An instance that never saw them reads every value set before the
    // move from the new master, except those invalidated meanwhile.
    let fresh = pair(&redis).0;
    for (n, key) in kept.iter().enumerate() {
        let want = (n % 3 != 0).then(|| format!("kept {key}"));
        assert_eq!(
            fresh.get(key).await.as_deref().cloned(),
            want,
            "{key} after the move"
        );
    }
    assert_eq!(
        fresh.stats().tiers[1].hits,
        kept.len() as u64 - kept.len().div_ceil(3) as u64
    );
    // And the race holds on the slot's new master.
    stale_set_race(&redis, (&a, &b), raced, Invalidation::Key, |round| {
        round == 100
    })
    .await;
}
