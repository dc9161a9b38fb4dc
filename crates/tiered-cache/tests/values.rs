//! Values the tiers cannot or must not hold: undecodable bytes, oversized
//! values, TTLs at and past the edges. Each is about that value only: it
//! never takes a tier offline, and never leaves an older value behind.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod first_tier;

use common::{Backend, backends};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use perfkit_tiered_cache::{Cache, ConfigError, MAX_TTL, MemoryTier, RedisTierBuilder, SetOptions};
use redis::AsyncCommands;

fn tier(redis: &Backend) -> RedisTierBuilder {
    redis.tier().prefix(redis.prefix())
}

/// L1 + Redis; the breaker opens after 2 failures.
fn two_tiers(l2: RedisTierBuilder) -> Cache<String> {
    Cache::builder()
        .name("values")
        .tier(first_tier::l1(1_000))
        .tier(l2.build().unwrap())
        .remote_timeout(Duration::from_secs(2))
        .circuit_breaker(NonZeroU32::new(2).unwrap(), Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Another instance that reads Redis only.
fn reader(redis: &Backend) -> Cache<String> {
    Cache::builder()
        .name("reader")
        .tier(tier(redis).build().unwrap())
        .remote_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_undecodable_value_is_a_miss_and_never_takes_redis_offline() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let writer = two_tiers(tier(&redis));
        for i in 0..5 {
            writer.set(&format!("good{i}"), format!("v{i}")).await;
        }
        let mut admin = redis.connection();
        // Foreign bytes (no header), and our header around bytes postcard rejects.
        let _: () = admin
            .set(redis.key("foreign"), b"{\"json\":1}")
            .await
            .unwrap();
        let mut ours_but_bad = b"pkv".to_vec();
        ours_but_bad[2] = 1;
        ours_but_bad.push(b'v');
        ours_but_bad.extend_from_slice(&[0; 18]);
        ours_but_bad.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        let _: () = admin.set(redis.key("bad"), ours_but_bad).await.unwrap();

        let cache = two_tiers(tier(&redis));
        for _ in 0..10 {
            assert_eq!(cache.get("foreign").await, None);
            assert_eq!(cache.get("bad").await, None);
        }
        for i in 0..5 {
            assert_eq!(
                cache.get(&format!("good{i}")).await.as_deref(),
                Some(&format!("v{i}")),
                "healthy keys are still served from Redis"
            );
        }
        let l2 = &cache.stats().tiers[1];
        assert!(!l2.breaker_open, "{l2:?}");
        assert_eq!(l2.errors, 0, "no strike against the tier: {l2:?}");
        assert_eq!(l2.value_errors, 20, "each bad read counted: {l2:?}");

        // A load overwrites the bad value.
        let loaded = cache
            .get_or_load("bad", || async {
                Ok::<_, std::io::Error>("fixed".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(*loaded, "fixed");
        assert_eq!(
            reader(&redis)
                .get("bad")
                .await
                .as_deref()
                .map(String::as_str),
            Some("fixed")
        );
    }
}

#[tokio::test]
async fn an_oversized_value_is_never_sent_and_leaves_no_older_value_behind() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let limit = NonZeroUsize::new(64 * 1024).unwrap();
        let cache = two_tiers(tier(&redis).max_value_size(limit));
        let other = reader(&redis);
        cache.set("doc", "small".to_owned()).await;
        assert!(other.get("doc").await.is_some());

        let big = "x".repeat(100 * 1024);
        cache.set("doc", big.clone()).await;
        let exists: bool = redis.connection().exists(redis.key("doc")).await.unwrap();
        let stored: Option<Vec<u8>> = redis.connection().get(redis.key("doc")).await.unwrap();
        assert!(
            stored.as_ref().is_none_or(|bytes| bytes.len() < 1024),
            "not sent (a tombstone at most): exists {exists}"
        );
        assert_eq!(
            other.get("doc").await,
            None,
            "the older value is gone from Redis"
        );
        assert_eq!(
            cache.get("doc").await.as_deref(),
            Some(&big),
            "the writer's own memory tier holds it"
        );
        let l2 = &cache.stats().tiers[1];
        assert_eq!((l2.value_errors, l2.errors), (1, 0), "{l2:?}");
        assert!(!l2.breaker_open);

        // A load of an oversized value: returned and kept in L1, not sent.
        let loaded = cache
            .get_or_load(
                "report",
                move || async move { Ok::<_, std::io::Error>(big) },
            )
            .await
            .unwrap();
        assert_eq!(loaded.len(), 100 * 1024);
        assert!(cache.get("report").await.is_some(), "L1 filled");
        assert_eq!(other.get("report").await, None, "Redis not filled");
        assert_eq!(cache.stats().tiers[1].value_errors, 2);

        // The next write on the same connection is not queued behind anything.
        cache.set("next", "fast".to_owned()).await;
        assert_eq!(
            other.get("next").await.as_deref().map(String::as_str),
            Some("fast")
        );
    }
}

#[tokio::test]
async fn a_ttl_under_a_millisecond_means_do_not_cache_in_any_tier() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(tier(&redis));
        let other = reader(&redis);
        for ttl in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(999),
        ] {
            cache.set("k", "older".to_owned()).await;
            assert!(other.get("k").await.is_some());
            cache
                .set_with("k", "new".to_owned(), SetOptions::default().ttl(ttl))
                .await;
            assert_eq!(cache.get("k").await, None, "{ttl:?}: not in L1");
            assert_eq!(
                other.get("k").await,
                None,
                "{ttl:?}: nothing readable in Redis"
            );
        }
        cache
            .set_with(
                "k",
                "kept".to_owned(),
                SetOptions::default().ttl(Duration::from_millis(1_500)),
            )
            .await;
        assert!(other.get("k").await.is_some(), "1.5 s is cached");
    }
}

#[tokio::test]
async fn ttls_past_every_tiers_limit_are_clamped_and_builder_settings_rejected() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(tier(&redis));
        let other = reader(&redis);
        for (key, ttl) in [
            ("max", Duration::MAX),
            ("u64-seconds", Duration::from_secs(u64::MAX)),
            ("past-max", MAX_TTL + Duration::from_secs(1)),
        ] {
            cache
                .set_with(key, "v".to_owned(), SetOptions::default().ttl(ttl))
                .await;
            assert!(cache.get(key).await.is_some(), "{key}: in L1");
            assert!(
                other.get(key).await.is_some(),
                "{key}: in Redis, readable by others"
            );
            let pttl: i64 = redis.connection().pttl(redis.key(key)).await.unwrap();
            let max_ms = i64::try_from(MAX_TTL.as_millis()).unwrap();
            assert!(
                pttl > max_ms - 60_000 && pttl <= max_ms,
                "{key}: clamped, {pttl} ms"
            );
        }

        let started = Instant::now();
        for (setting, ttl) in [
            ("default_ttl", Duration::MAX),
            ("default_ttl", Duration::from_nanos(1)),
        ] {
            let built = Cache::<String>::builder().default_ttl(ttl).build();
            assert!(
                matches!(built, Err(ConfigError::TtlOutOfRange { setting: s, .. }) if s == setting),
                "{setting} {ttl:?}: {built:?}"
            );
        }
        assert!(matches!(
            Cache::<String>::builder()
                .negative_ttl(Duration::MAX)
                .build(),
            Err(ConfigError::TtlOutOfRange { .. })
        ));
        assert!(matches!(
            MemoryTier::builder()
                .max_ttl(Duration::MAX)
                .build::<String>(),
            Err(ConfigError::TtlOutOfRange { .. })
        ));
        assert!(matches!(
            tier(&redis).max_ttl(Duration::MAX).build::<String>(),
            Err(ConfigError::TtlOutOfRange { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
