//! Tag invalidation across tiers, including promoted copies that carry no tags.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod first_tier;

use common::{Backend, backends};
use std::time::Duration;

use perfkit_tiered_cache::{Cache, SetOptions};
use redis::AsyncCommands;

fn two_tiers(redis: &Backend) -> Cache<String> {
    Cache::builder()
        .tier(first_tier::l1(1_000))
        .tier(redis.tier().prefix(redis.prefix()).build().unwrap())
        .build()
        .unwrap()
}

/// Where the tier lists a tag's keys: under the prefix and the byte 0xFF,
/// which no cache key can contain (then, on a cluster, the bucket's hash
/// tag: one list per bucket).
async fn tag_sets(redis: &Backend, tag: &str) -> Vec<Vec<u8>> {
    let mut internal = redis.prefix().as_bytes().to_vec();
    internal.push(0xFF);
    let name = format!("tags:{tag}");
    redis
        .raw_keys()
        .await
        .into_iter()
        .filter(|key| {
            let Some(rest) = key.strip_prefix(internal.as_slice()) else {
                return false;
            };
            let rest = match rest.first() {
                Some(b'{') => &rest[6..],
                _ => rest,
            };
            rest == name.as_bytes()
        })
        .collect()
}

fn tagged(tags: &[&str]) -> SetOptions {
    SetOptions::default()
        .ttl(Duration::from_secs(60))
        .tags(tags.iter().copied())
}

#[tokio::test]
async fn invalidate_tag_removes_tagged_entries_from_every_tier_and_nothing_else() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(&redis);
        cache
            .set_with("agent:42:profile", "p".to_owned(), tagged(&["agent:42"]))
            .await;
        cache
            .set_with(
                "agent:42:orders",
                "o".to_owned(),
                tagged(&["agent:42", "orders"]),
            )
            .await;
        cache
            .set_with("agent:7:profile", "q".to_owned(), tagged(&["agent:7"]))
            .await;

        // Another instance promotes one of them into its own L1, untagged there.
        let other = two_tiers(&redis);
        assert!(other.get("agent:42:profile").await.is_some());

        assert_eq!(other.invalidate_tag("agent:42").await, 2);

        let mut conn = redis.connection();
        for key in ["agent:42:profile", "agent:42:orders"] {
            let exists: bool = conn.exists(redis.key(key)).await.unwrap();
            assert!(!exists, "{key} left Redis");
            assert_eq!(
                other.get(key).await,
                None,
                "{key} left the promoted L1 copy too"
            );
        }
        assert_eq!(
            other
                .get("agent:7:profile")
                .await
                .as_deref()
                .map(String::as_str),
            Some("q")
        );
        assert_eq!(
            tag_sets(&redis, "agent:42").await,
            Vec::<Vec<u8>>::new(),
            "the tag's index is gone with it"
        );
        let orders = tag_sets(&redis, "orders").await;
        assert!(!orders.is_empty(), "the tag orders is still listed");
        for set in orders {
            let orders_ttl: i64 = conn.pttl(set).await.unwrap();
            assert!(
                orders_ttl > 0 && orders_ttl <= 60_000,
                "a tag set lives as long as its members: {orders_ttl}"
            );
        }
        // (The first instance's own L1 copies go with cross-instance invalidation.)
    }
}

#[tokio::test]
async fn memory_tier_tags_work_without_redis_and_forget_replaced_values() {
    let cache: Cache<String> = Cache::builder()
        .tier(first_tier::l1(1_000))
        .build()
        .unwrap();
    cache.set_with("a", "1".to_owned(), tagged(&["t"])).await;
    cache.set_with("b", "2".to_owned(), tagged(&["t"])).await;
    // Rewritten without the tag: invalidating the tag must not remove it.
    cache.set_with("b", "3".to_owned(), tagged(&["u"])).await;
    assert_eq!(cache.invalidate_tag("t").await, 1);
    assert_eq!(cache.get("a").await, None);
    assert_eq!(
        cache.get("b").await.as_deref().map(String::as_str),
        Some("3")
    );
    assert_eq!(cache.invalidate_tag("u").await, 1);
    assert_eq!(cache.get("b").await, None);
    assert_eq!(cache.invalidate_tag("never-used").await, 0);
}

/// A tag with more keys than one page of its list (500) in one bucket:
/// the invalidation goes on page by page and removes every one.
#[tokio::test]
async fn a_tag_with_more_keys_than_a_page_is_removed_whole() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache: Cache<String> = Cache::builder()
            .tier(first_tier::l1(10_000))
            .tier(
                redis
                    .tier()
                    .prefix(redis.prefix())
                    // On the cluster: about 600 keys per bucket.
                    .cluster_buckets(2)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        for i in 0..1_200 {
            cache
                .set_with(&format!("big:{i}"), "v".to_owned(), tagged(&["big"]))
                .await;
        }
        cache.set("other", "v".to_owned()).await;
        assert_eq!(cache.invalidate_tag("big").await, 1_200);
        let left = redis.raw_keys().await;
        assert_eq!(
            left.len(),
            1 + 2_usize.min(redis.epochs()),
            "the untagged key and the epochs are left: {:?}",
            left.iter()
                .take(5)
                .map(|key| String::from_utf8_lossy(key))
                .collect::<Vec<_>>()
        );
        assert!(cache.get("other").await.is_some());
    }
}
