//! Round trips to Redis, counted by Redis itself (`INFO commandstats`) on a
//! private server: a miss + load + fill costs two (one lookup, one write), an
//! L2 hit one, a warm L1 hit none.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod first_tier;

use std::collections::BTreeMap;

use perfkit_test_support::RedisServer;
use perfkit_tiered_cache::{Cache, RedisTier};

/// Calls per command since the last `CONFIG RESETSTAT`.
async fn command_calls(admin: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| !name.starts_with("info") && !name.starts_with("config"))
        .collect()
}

/// A connection of the test's own, for `INFO` and `CONFIG RESETSTAT`.
async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn reset(admin: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn miss_load_fill_is_two_round_trips_l2_hit_one_l1_hit_none() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let tier = || RedisTier::builder(&url).prefix("rt:").build().unwrap();
    let cache: Cache<String> = Cache::builder()
        .tier(first_tier::l1(100))
        .tier(tier())
        .build()
        .unwrap();
    let mut admin = admin(&url).await;
    // Open the cache's connection and load the fill script first, so that
    // neither is counted.
    let _ = cache
        .get_or_load("warm-up", || async {
            Ok::<_, std::io::Error>("w".to_owned())
        })
        .await;

    reset(&mut admin).await;
    let loaded = cache
        .get_or_load("k", || async { Ok::<_, std::io::Error>("v".to_owned()) })
        .await
        .unwrap();
    assert_eq!(*loaded, "v");
    let calls = command_calls(&mut admin).await;
    // Round trip 1: MGET of the key and of the tier's epoch.
    // Round trip 2: EVALSHA of the conditional fill, which runs GET (key),
    // GET (epoch) and SET inside Redis (commandstats counts those too).
    let expected: BTreeMap<String, u64> = [("mget", 1), ("get", 2), ("evalsha", 1), ("set", 1)]
        .into_iter()
        .map(|(name, n)| (name.to_owned(), n))
        .collect();
    assert_eq!(calls, expected, "one lookup, one conditional fill");

    // Another instance: L1 miss, L2 hit, promotion: one round trip.
    let other: Cache<String> = Cache::builder()
        .tier(first_tier::l1(100))
        .tier(tier())
        .build()
        .unwrap();
    let _ = other.get("warm-up").await;
    reset(&mut admin).await;
    assert!(other.get("k").await.is_some());
    let calls = command_calls(&mut admin).await;
    let expected: BTreeMap<String, u64> = std::iter::once(("get".to_owned(), 1)).collect();
    assert_eq!(
        calls, expected,
        "one plain GET (the expiry is in the value); promotion into L1 costs no round trip"
    );

    // Warm L1 hit: nothing reaches Redis.
    reset(&mut admin).await;
    assert!(other.get("k").await.is_some());
    assert!(command_calls(&mut admin).await.is_empty());
}

#[tokio::test]
async fn concurrent_misses_of_a_key_in_l2_send_one_get() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let tier = || RedisTier::builder(&url).prefix("rt:").build().unwrap();
    let writer: Cache<String> = Cache::builder().tier(tier()).build().unwrap();
    writer.set("hot", "v".to_owned()).await;
    let mut admin = admin(&url).await;
    for round in 0..10 {
        // A fresh instance: its L1 is cold.
        let cache: Cache<String> = Cache::builder()
            .tier(first_tier::l1(100))
            .tier(tier())
            .build()
            .unwrap();
        let _ = cache.get("warm-up").await;
        reset(&mut admin).await;
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get("hot").await })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.unwrap().as_deref().map(String::as_str),
                Some("v")
            );
        }
        let calls = command_calls(&mut admin).await;
        let expected: BTreeMap<String, u64> = std::iter::once(("get".to_owned(), 1)).collect();
        assert_eq!(calls, expected, "round {round}: 100 misses, one GET");
        assert_eq!(cache.stats().shared_lookups, 99, "round {round}");
    }
}
