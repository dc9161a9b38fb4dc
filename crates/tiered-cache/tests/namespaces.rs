//! User keys never reach the tier's own bookkeeping: keys that look like
//! internal ones (`__epoch`, `__tags:t`, `__user`) are data like any other,
//! for every kind of invalidation, from this instance and from another.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod first_tier;

use common::{Backend, backends};
use std::time::Duration;

use perfkit_test_support::concurrency::within;
use perfkit_tiered_cache::{Cache, SetOptions};
use redis::AsyncCommands;

/// Keys that spelled, or sat beside, the tier's internal keys before they
/// moved behind the byte 0xFF; and characters whose UTF-8 contains 0xBF/0xC3.
const LOOKALIKES: [&str; 7] = [
    "__epoch",
    "__user",
    "__tags:t",
    "__tags:",
    "__",
    "\u{ff}epoch",
    "\u{ff}tags:t",
];

fn instance(redis: &Backend) -> Cache<String> {
    Cache::builder()
        .name("namespaces")
        .tier(first_tier::l1(1_000))
        .tier(redis.tier().prefix(redis.prefix()).build().unwrap())
        .remote_timeout(Duration::from_secs(2))
        .invalidation_bus(
            redis
                .bus()
                .channel(format!("{}bus", redis.prefix()))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

async fn pair(redis: &Backend) -> (Cache<String>, Cache<String>) {
    let (a, b) = (instance(redis), instance(redis));
    within("the bus subscriptions", async {
        while a.stats().l1_flushes == 0 || b.stats().l1_flushes == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    (a, b)
}

async fn in_redis(redis: &Backend, key: &str) -> bool {
    redis.connection().exists(redis.key(key)).await.unwrap()
}

/// Waits until `cache` answers `None` for `key`.
async fn gone(cache: &Cache<String>, key: &str) {
    within("the invalidation reaching the other instance", async {
        while cache.get(key).await.is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_removes_lookalike_user_keys_everywhere() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis).await;
        for key in LOOKALIKES {
            a.set(key, format!("value of {key}")).await;
            assert!(b.get(key).await.is_some(), "{key}: B holds a copy");
        }
        let removed = a.invalidate_pattern("*").await;
        assert!(
            removed >= 2 * LOOKALIKES.len() as u64,
            "every lookalike left Redis and L1: {removed}"
        );
        for key in LOOKALIKES {
            assert!(!in_redis(&redis, key).await, "{key} left Redis");
            gone(&b, key).await;
            assert_eq!(a.get(key).await, None, "{key} is not promoted back");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_or_removing_a_key_named_like_the_epoch_leaves_pattern_invalidation_intact() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis).await;
        a.set("__epoch", "user data".to_owned()).await;
        a.invalidate("__epoch").await;
        a.set("__epoch", "user data again".to_owned()).await;
        for i in 0..10 {
            a.set(&format!("k{i}"), format!("old {i}")).await;
            assert!(b.get(&format!("k{i}")).await.is_some());
        }
        let removed = a.invalidate_pattern("k*").await;
        assert!(removed >= 10, "{removed}");
        for i in 0..10 {
            let key = format!("k{i}");
            assert!(!in_redis(&redis, &key).await, "{key} left Redis");
            gone(&b, &key).await;
        }
        assert_eq!(
            b.get("__epoch").await.as_deref().map(String::as_str),
            Some("user data again"),
            "the user key itself is untouched by a pattern it does not match"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_key_named_like_a_tag_index_does_not_stop_tagging() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis).await;
        a.set("__tags:t", "user data".to_owned()).await;
        a.set_with("report", "r".to_owned(), SetOptions::default().tags(["t"]))
            .await;
        assert!(b.get("report").await.is_some());
        let removed = a.invalidate_tag("t").await;
        assert_eq!(removed, 1, "the tagged key, and nothing else");
        assert!(!in_redis(&redis, "report").await);
        gone(&b, "report").await;
        assert_eq!(
            b.get("__tags:t").await.as_deref().map(String::as_str),
            Some("user data"),
            "the lookalike is data, untouched by the tag"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_lookalikes_and_leaves_only_an_expiring_epoch() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis).await;
        for key in LOOKALIKES {
            a.set_with(key, "v".to_owned(), SetOptions::default().tags(["t"]))
                .await;
            assert!(b.get(key).await.is_some());
        }
        a.clear().await;
        for key in LOOKALIKES {
            gone(&b, key).await;
        }
        let left = redis.raw_keys().await;
        let mut internal = redis.prefix().as_bytes().to_vec();
        internal.push(0xFF);
        assert_eq!(left.len(), redis.epochs(), "only the epochs are left");
        for epoch in &left {
            assert!(
                epoch.starts_with(&internal) && epoch.ends_with(b"epoch"),
                "only the epochs are left: {}",
                String::from_utf8_lossy(epoch)
            );
            let ttl: i64 = redis.connection().pttl(epoch).await.unwrap();
            assert!(
                ttl > 0 && ttl <= 120_000,
                "the epoch expires (twice the 60 s tombstone TTL): {ttl} ms"
            );
        }
    }
}
