//! What only a Redis Cluster shows: where the keys land, what each
//! operation costs per node, a connection the application opened itself,
//! and the settings a cluster refuses. (The suites that run on one node run
//! on the cluster too: see `tests/common`.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod first_tier;

use std::collections::BTreeMap;

use perfkit_test_support::TestRedisCluster;
use perfkit_tiered_cache::{Cache, ConfigError, RedisTier, SetOptions};

/// The tests of this binary, one at a time: one counts every master's commands.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tier(cluster: &TestRedisCluster) -> RedisTier<String> {
    RedisTier::cluster_builder(cluster.urls())
        .prefix(cluster.prefix())
        .build()
        .unwrap()
}

fn two_tiers(cluster: &TestRedisCluster) -> Cache<String> {
    Cache::builder()
        .tier(first_tier::l1(10_000))
        .tier(tier(cluster))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_values_of_one_cache_spread_evenly_over_every_master() {
    let _serial = CLUSTER.lock().await;
    let Some(cluster) = perfkit_test_support::redis_cluster().await else {
        return;
    };
    let cache = two_tiers(&cluster);
    for i in 0..900 {
        cache.set(&format!("user:{i}"), format!("v{i}")).await;
    }
    let per_master = cluster.keys_per_master().await.unwrap();
    assert_eq!(per_master.len(), 3, "{per_master:?}");
    assert_eq!(per_master.iter().map(|(_, n)| n).sum::<usize>(), 900);
    for (master, keys) in &per_master {
        // A third each (300): 64 buckets, 21 or 22 per master, keys spread
        // over the buckets by CRC16.
        assert!(
            (240..=360).contains(keys),
            "{master} holds {keys} of 900 values: {per_master:?}"
        );
    }
}

/// The commands each master ran, of the masters that ran any.
async fn busy_masters(cluster: &TestRedisCluster) -> Vec<BTreeMap<String, u64>> {
    cluster
        .command_calls_per_master()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, calls)| calls)
        .filter(|calls| !calls.is_empty())
        .collect()
}

fn calls(expected: &[(&str, u64)]) -> BTreeMap<String, u64> {
    expected
        .iter()
        .map(|(name, n)| ((*name).to_owned(), *n))
        .collect()
}

/// On a cluster, a miss + load + fill and an L2 hit cost what they cost on
/// one node (`tests/round_trips.rs`), on the one master of the key's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_and_an_l2_hit_cost_one_nodes_round_trips_on_one_master() {
    let _serial = CLUSTER.lock().await;
    let Some(cluster) = perfkit_test_support::redis_cluster().await else {
        return;
    };
    let cache = two_tiers(&cluster);
    // Connections open and the fill script loaded on every master.
    for i in 0..60 {
        let _ = cache
            .get_or_load(&format!("warm-up:{i}"), || async {
                Ok::<_, std::io::Error>("w".to_owned())
            })
            .await;
    }
    busy_masters(&cluster).await;

    let loaded = cache
        .get_or_load("k", || async { Ok::<_, std::io::Error>("v".to_owned()) })
        .await
        .unwrap();
    assert_eq!(*loaded, "v");
    // The lookup's MGET (value and epoch); the fill script's EVALSHA (and the
    // GET, GET, SET it runs inside Redis).
    assert_eq!(
        busy_masters(&cluster).await,
        [calls(&[
            ("mget", 1),
            ("get", 2),
            ("evalsha", 1),
            ("set", 1)
        ])]
    );

    let other = two_tiers(&cluster);
    let _ = other.get("warm-up:0").await;
    busy_masters(&cluster).await;
    assert!(other.get("k").await.is_some());
    assert_eq!(busy_masters(&cluster).await, [calls(&[("get", 1)])]);
    assert!(other.get("k").await.is_some());
    assert!(busy_masters(&cluster).await.is_empty(), "a warm L1 hit");
}

/// redis-rs's cluster connection, opened by the application, is used as it
/// is, with the cluster layout: a tier built from URLs reads what it wrote,
/// and its tag and pattern invalidations reach every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_runs_on_a_cluster_connection_the_application_has() {
    let _serial = CLUSTER.lock().await;
    let Some(cluster) = perfkit_test_support::redis_cluster().await else {
        return;
    };
    let given: Cache<String> = Cache::builder()
        .tier(
            RedisTier::builder_with_connection(cluster.connection())
                .prefix(cluster.prefix())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let from_urls = Cache::builder().tier(tier(&cluster)).build().unwrap();
    for i in 0..50 {
        given
            .set_with(
                &format!("report:{i}"),
                "r".to_owned(),
                SetOptions::default().tags([format!("team:{}", i % 2)]),
            )
            .await;
        given.set(&format!("user:{i}"), "u".to_owned()).await;
    }
    assert!(from_urls.get("report:7").await.is_some());
    assert_eq!(given.invalidate_tag("team:1").await, 25);
    assert_eq!(from_urls.get("report:7").await, None);
    assert!(from_urls.get("report:8").await.is_some());
    assert_eq!(given.invalidate_pattern("user:*").await, 50);
    assert_eq!(from_urls.get("user:3").await, None);
    given.clear().await;
    assert_eq!(from_urls.get("report:8").await, None);
}

#[test]
fn a_cluster_tier_builds_without_a_runtime_and_checks_its_settings() {
    let nodes = ["redis://127.0.0.1:1"];
    let tier: RedisTier<String> = RedisTier::cluster_builder(&nodes).build().unwrap();
    assert!(tier.stored_key("k").starts_with("perfkit:cache:{"));
    assert!(matches!(
        RedisTier::cluster_builder(&nodes)
            .prefix("svc:{shard}:")
            .build::<String>(),
        Err(ConfigError::ClusterPrefix(_))
    ));
    for buckets in [0, 4_097] {
        assert!(matches!(
            RedisTier::cluster_builder(&nodes)
                .cluster_buckets(buckets)
                .build::<String>(),
            Err(ConfigError::ClusterBuckets(_))
        ));
    }
    assert!(matches!(
        RedisTier::cluster_builder(&["http://not-redis"]).build::<String>(),
        Err(ConfigError::RedisUrl(_))
    ));
    // On one node the setting is ignored and the layout is the plain one.
    let single: RedisTier<String> = RedisTier::builder("redis://127.0.0.1:1")
        .prefix("svc:{shard}:")
        .cluster_buckets(0)
        .build()
        .unwrap();
    assert_eq!(single.stored_key("k"), "svc:{shard}:k");
}
