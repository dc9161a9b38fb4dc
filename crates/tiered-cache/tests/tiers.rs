//! The cache over a real Redis: promotion, TTLs, one load per key, loader
//! errors, and a user-written third tier.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod first_tier;

use common::{Backend, backends};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use perfkit_test_support::concurrency::{count_first_poll, until, within};
use perfkit_tiered_cache::{
    Cache, Entry, Error, MemoryTier, RedisTier, SetOptions, Tier, TierFuture, Write,
};
use redis::AsyncCommands;
use tokio::sync::watch;

fn l1() -> MemoryTier<String> {
    first_tier::l1(10_000)
}

fn l2(redis: &Backend) -> RedisTier<String> {
    redis.tier().prefix(redis.prefix()).build().unwrap()
}

/// L1 + L2, as one service instance sees it.
fn two_tiers(redis: &Backend) -> Cache<String> {
    Cache::builder()
        .name("test")
        .tier(l1())
        .tier(l2(redis))
        .build()
        .unwrap()
}

/// Redis alone: another instance, or a writer that bypasses our L1.
fn redis_only(redis: &Backend) -> Cache<String> {
    Cache::builder()
        .name("writer")
        .tier(l2(redis))
        .build()
        .unwrap()
}

async fn pttl(redis: &Backend, key: &str) -> i64 {
    redis.connection().pttl(redis.key(key)).await.unwrap()
}

#[tokio::test]
async fn l2_hit_is_promoted_with_its_remaining_ttl() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let writer = redis_only(&redis);
        let cache = two_tiers(&redis);
        writer
            .set_with(
                "agent:1",
                "Ada".to_owned(),
                SetOptions::default().ttl(Duration::from_millis(1_000)),
            )
            .await;

        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            cache.get("agent:1").await.as_deref().map(String::as_str),
            Some("Ada")
        );
        let stats = cache.stats();
        assert_eq!((stats.tiers[0].misses, stats.tiers[1].hits), (1, 1));
        assert_eq!(stats.tiers[0].promotions, 1, "promoted into L1");

        assert_eq!(
            cache.get("agent:1").await.as_deref().map(String::as_str),
            Some("Ada")
        );
        assert_eq!(cache.stats().tiers[0].hits, 1, "then served from L1");

        // Promoted with ~500 ms left, not a fresh second: gone from L1 by 1.2 s.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            cache.get("agent:1").await,
            None,
            "L1 kept the remaining TTL, not a new one"
        );
    }
}

#[tokio::test]
async fn ttl_is_honoured_on_every_tier() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(&redis);
        cache
            .set_with(
                "k",
                "v".to_owned(),
                SetOptions::default().ttl(Duration::from_millis(300)),
            )
            .await;
        let left = pttl(&redis, "k").await;
        assert!(left > 0 && left <= 300, "Redis PTTL {left}");
        assert!(cache.get("k").await.is_some());

        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(cache.get("k").await, None, "expired in L1 and in Redis");
        assert_eq!(pttl(&redis, "k").await, -2, "Redis dropped the key itself");
    }
}

#[tokio::test]
async fn keys_without_ttl_stay_without_on_every_tier() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let writer = redis_only(&redis);
        writer
            .set_with("forever", "v".to_owned(), SetOptions::default().no_ttl())
            .await;
        assert_eq!(pttl(&redis, "forever").await, -1);

        let cache = two_tiers(&redis);
        assert!(cache.get("forever").await.is_some());
        assert_eq!(cache.stats().tiers[0].promotions, 1);
        assert!(cache.get("forever").await.is_some());
        assert_eq!(
            cache.stats().tiers[0].hits,
            1,
            "served from L1 after promotion"
        );
        assert_eq!(
            pttl(&redis, "forever").await,
            -1,
            "promotion did not add a TTL anywhere"
        );
    }
}

#[tokio::test]
async fn default_ttl_applies_to_loads_and_sets() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache: Cache<String> = Cache::builder()
            .tier(l1())
            .tier(l2(&redis))
            .default_ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        cache.set("set", "v".to_owned()).await;
        cache
            .get_or_load("loaded", || async {
                Ok::<_, std::io::Error>("v".to_owned())
            })
            .await
            .unwrap();
        for key in ["set", "loaded"] {
            let left = pttl(&redis, key).await;
            assert!(left > 59_000 && left <= 60_000, "{key}: PTTL {left}");
        }
    }
}

/// `callers` tasks, half `get_or_load` and half `get`, on one key; the loader
/// waits at a gate until every caller has started.
async fn mixed_callers(cache: &Cache<String>, callers: usize) -> (usize, Vec<Option<String>>) {
    let loads = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(false);
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (cache, loads, started, mut gate) =
                (cache.clone(), loads.clone(), started.clone(), gate.clone());
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let load = cache.get_or_load("hot", move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok::<_, std::io::Error>("loaded".to_owned())
                    });
                    let value = count_first_poll(load, started).await.unwrap();
                    Some((*value).clone())
                } else {
                    count_first_poll(cache.get("hot"), started)
                        .await
                        .map(|v| (*v).clone())
                }
            })
        })
        .collect();
    until("every caller started", || {
        started.load(Ordering::SeqCst) == callers
    })
    .await;
    open.send_replace(true);
    let mut values = Vec::new();
    for task in tasks {
        values.push(within("a caller", task).await.unwrap());
    }
    (loads.load(Ordering::SeqCst), values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_mixed_callers_on_a_cold_key_load_once() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(&redis);
        let (loads, values) = mixed_callers(&cache, 1_000).await;
        assert_eq!(loads, 1, "the loader ran exactly once");
        for (i, value) in values.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(
                    value.as_deref(),
                    Some("loaded"),
                    "every get_or_load got the value"
                );
            } else {
                assert!(
                    matches!(value.as_deref(), None | Some("loaded")),
                    "a get saw a miss or the value, nothing else"
                );
            }
        }
        assert_eq!(
            cache.get("hot").await.as_deref().map(String::as_str),
            Some("loaded")
        );
        let in_redis: Option<Vec<u8>> = redis.connection().get(redis.key("hot")).await.unwrap();
        assert!(in_redis.is_some(), "the load filled L2 too");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_mixed_callers_on_a_key_only_in_l2_never_load() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        redis_only(&redis).set("hot", "from redis".to_owned()).await;
        let cache = two_tiers(&redis);
        let (loads, values) = mixed_callers(&cache, 1_000).await;
        assert_eq!(loads, 0, "L2 had it: no load at all");
        assert!(
            values.iter().all(|v| v.as_deref() == Some("from redis")),
            "every caller got the L2 value"
        );
        assert!(cache.stats().tiers[0].promotions >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_errors_are_shared_and_not_cached() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(&redis);
        let loads = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(false);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, loads, started, mut gate) =
                    (cache.clone(), loads.clone(), started.clone(), gate.clone());
                tokio::spawn(async move {
                    let load = cache.get_or_load("flaky", move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Err::<String, _>(std::io::Error::other("database is down"))
                    });
                    count_first_poll(load, started).await
                })
            })
            .collect();
        until("every caller started", || {
            started.load(Ordering::SeqCst) == 50
        })
        .await;
        open.send_replace(true);
        let mut errors = Vec::new();
        for task in tasks {
            match within("a caller", task).await.unwrap() {
                Err(Error::Load(error)) => errors.push(error),
                other => panic!("expected the loader's error, got {other:?}"),
            }
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(
            errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
            "one error, shared"
        );
        assert_eq!(errors[0].to_string(), "database is down");
        assert_eq!(cache.stats().load_errors, 1);

        assert_eq!(cache.get("flaky").await, None, "the failure was not cached");
        let value = cache
            .get_or_load("flaky", || async {
                Ok::<_, std::io::Error>("recovered".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(*value, "recovered", "the next call loaded again");
    }
}

#[tokio::test]
async fn set_during_a_load_is_not_overwritten_in_l1_by_the_older_load() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(&redis);
        let (open, mut gate) = watch::channel(false);
        let load = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("row", move || async move {
                        let _ = gate.wait_for(|open| *open).await;
                        Ok::<_, std::io::Error>("old row".to_owned())
                    })
                    .await
            })
        };
        until("the load started", || cache.stats().loads == 1).await;
        cache.set("row", "new row".to_owned()).await;
        open.send_replace(true);
        assert_eq!(
            *within("the load", load).await.unwrap().unwrap(),
            "old row",
            "the loader's caller gets its value"
        );
        assert_eq!(
            cache.get("row").await.as_deref().map(String::as_str),
            Some("new row"),
            "but the older load did not overwrite the newer set in L1"
        );
    }
}

#[tokio::test]
async fn remove_clears_every_tier() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(&redis);
        cache.set("gone", "v".to_owned()).await;
        cache.remove("gone").await;
        assert_eq!(cache.get("gone").await, None);
        // In Redis, a short-lived tombstone takes the value's place: it refuses
        // the fills of loads that looked before the removal.
        let raw: Vec<u8> = redis.connection().get(redis.key("gone")).await.unwrap();
        assert_eq!(&raw[..4], b"pk\x01t", "a tombstone, not the value");
        let left = pttl(&redis, "gone").await;
        assert!(
            (1..=60_000).contains(&left),
            "the tombstone expires: {left} ms"
        );
    }
}

/// A user-written third tier: remembers values forever, like a local archive.
#[derive(Default, Clone)]
struct Archive(Arc<Mutex<HashMap<String, Arc<String>>>>);

impl Tier<String> for Archive {
    fn name(&self) -> &str {
        "archive"
    }
    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<String>>> {
        let found = self.0.lock().unwrap().get(key).cloned();
        Box::pin(async move { Ok(found.map(|value| Entry::new(value, None))) })
    }
    fn set<'a>(&'a self, write: &'a Write<'a, String>) -> TierFuture<'a, ()> {
        self.0
            .lock()
            .unwrap()
            .insert(write.key.to_owned(), Arc::clone(write.value));
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
        self.0.lock().unwrap().remove(key);
        Box::pin(async { Ok(()) })
    }
    fn clear(&self) -> TierFuture<'_, ()> {
        self.0.lock().unwrap().clear();
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_custom_third_tier_hit_is_promoted_into_redis_and_memory() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let archive = Archive::default();
        archive
            .0
            .lock()
            .unwrap()
            .insert("old:7".to_owned(), Arc::new("archived".to_owned()));
        let cache: Cache<String> = Cache::builder()
            .tier(l1())
            .tier(l2(&redis))
            .tier(archive.clone())
            .build()
            .unwrap();

        assert_eq!(
            cache.get("old:7").await.as_deref().map(String::as_str),
            Some("archived")
        );
        let stats = cache.stats();
        assert_eq!(stats.tiers[2].hits, 1);
        assert_eq!(
            (stats.tiers[0].promotions, stats.tiers[1].promotions),
            (1, 1)
        );
        assert_eq!(
            pttl(&redis, "old:7").await,
            -1,
            "in Redis now, without TTL like the archive"
        );
        assert!(cache.get("old:7").await.is_some());
        assert_eq!(cache.stats().tiers[0].hits, 1, "then from memory");

        cache.set("new:1", "fresh".to_owned()).await;
        assert!(
            archive.0.lock().unwrap().contains_key("new:1"),
            "set writes every tier"
        );
    }
}

#[tokio::test]
async fn json_codec_writes_plain_json_that_other_languages_can_share() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Agent {
            id: u32,
            name: String,
        }
        let json_tier = || {
            redis
                .tier()
                .prefix(redis.prefix())
                .codec(perfkit_tiered_cache::Json)
                .plain_values()
                .build::<Agent>()
                .unwrap()
        };
        let cache: Cache<Agent> = Cache::builder().tier(json_tier()).build().unwrap();
        cache
            .set(
                "agent:1",
                Agent {
                    id: 1,
                    name: "Ada".to_owned(),
                },
            )
            .await;
        let raw: String = redis.connection().get(redis.key("agent:1")).await.unwrap();
        assert_eq!(raw, r#"{"id":1,"name":"Ada"}"#, "plain JSON under the key");

        // Written by "another service": plain JSON, read back as the typed value.
        let () = redis
            .connection()
            .set(redis.key("agent:2"), r#"{"id":2,"name":"Grace"}"#)
            .await
            .unwrap();
        let read = cache.get("agent:2").await.unwrap();
        assert_eq!(
            *read,
            Agent {
                id: 2,
                name: "Grace".to_owned()
            }
        );

        // Garbage under a key is a miss (counted as a value error), never a panic.
        let () = redis
            .connection()
            .set(redis.key("agent:3"), "not json")
            .await
            .unwrap();
        assert_eq!(cache.get("agent:3").await, None);
        assert_eq!(cache.stats().tiers[0].value_errors, 1);
        assert_eq!(cache.stats().tiers[0].errors, 0);
    }
}

#[tokio::test]
async fn clear_empties_every_tier_under_its_own_prefix_only() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        // Two services side by side under the test's namespace.
        let under = |service: &str| -> Cache<String> {
            Cache::builder()
                .tier(l1())
                .tier(
                    redis
                        .tier()
                        .prefix(redis.name(&format!("{service}:")))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        let cache = under("billing");
        let neighbour = under("catalog");
        for i in 0..1_200 {
            cache.set(&format!("k{i}"), "v".to_owned()).await;
        }
        neighbour.set("kept", "v".to_owned()).await;

        cache.clear().await;
        assert_eq!(cache.get("k7").await, None, "gone from L1 and Redis");
        let keys: Vec<String> = (0..1_200)
            .map(|i| redis.key_under(&redis.name("billing:"), &format!("k{i}")))
            .collect();
        let left: usize = redis.connection().exists(&keys).await.unwrap();
        assert_eq!(
            left, 0,
            "every key under the prefix, over several SCAN pages"
        );
        assert!(
            neighbour.get("kept").await.is_some(),
            "another prefix is untouched"
        );
    }
}

#[tokio::test]
async fn stats_report_the_hit_ratio_per_tier() {
    let cache: Cache<String> = Cache::builder().tier(l1()).build().unwrap();
    cache.set("a", "1".to_owned()).await;
    for _ in 0..3 {
        assert!(cache.get("a").await.is_some());
    }
    assert!(cache.get("missing").await.is_none());
    let l1 = &cache.stats().tiers[0];
    assert_eq!((l1.hits, l1.misses), (3, 1));
    assert!((l1.hit_ratio() - 0.75).abs() < f64::EPSILON);
}

#[tokio::test]
async fn the_stored_header_carries_the_expiry_and_never_extends_the_written_ttl() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache = two_tiers(&redis);
        cache
            .set_with(
                "agent:1",
                "Ada".to_owned(),
                SetOptions::default().ttl(Duration::from_secs(10)),
            )
            .await;
        let raw: Vec<u8> = redis.connection().get(redis.key("agent:1")).await.unwrap();
        assert_eq!(&raw[..4], b"pk\x01v", "magic, format 1, a value");
        let field = |at: usize| u64::from_be_bytes(raw[at..at + 8].try_into().unwrap());
        assert_eq!(field(12), 10_000, "the written TTL in milliseconds");
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!(
            (now_ms + 9_000..=now_ms + 10_000).contains(&field(4)),
            "the expiry, Unix milliseconds"
        );

        // A writer whose clock runs an hour ahead: its expiry is an hour away,
        // but the value was written with a 1 s TTL, and that bounds the promotion.
        let mut skewed = raw.clone();
        skewed[4..12].copy_from_slice(&(now_ms + 3_600_000).to_be_bytes());
        skewed[12..20].copy_from_slice(&1_000_u64.to_be_bytes());
        let () = redis
            .connection()
            .set_ex(redis.key("agent:2"), skewed, 60)
            .await
            .unwrap();
        let reader = two_tiers(&redis);
        assert_eq!(
            reader.get("agent:2").await.as_deref().map(String::as_str),
            Some("Ada")
        );
        assert_eq!(reader.stats().tiers[0].promotions, 1);
        let () = redis.connection().del(redis.key("agent:2")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert_eq!(
            reader.get("agent:2").await,
            None,
            "promoted for at most the written TTL"
        );

        // Bytes without the header (another program's) are a miss, counted as a value error.
        let () = redis
            .connection()
            .set(redis.key("agent:3"), "Ada")
            .await
            .unwrap();
        assert_eq!(reader.get("agent:3").await, None);
        assert_eq!(reader.stats().tiers[1].value_errors, 1);
        assert_eq!(reader.stats().tiers[1].errors, 0);
    }
}

#[tokio::test]
async fn plain_values_are_promoted_with_the_ttl_redis_has_left() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let plain = || {
            redis
                .tier()
                .prefix(redis.prefix())
                .plain_values()
                .build::<String>()
                .unwrap()
        };
        let writer: Cache<String> = Cache::builder().tier(plain()).build().unwrap();
        let reader: Cache<String> = Cache::builder().tier(l1()).tier(plain()).build().unwrap();
        writer
            .set_with(
                "agent:1",
                "Ada".to_owned(),
                SetOptions::default().ttl(Duration::from_millis(1_000)),
            )
            .await;
        let raw: Vec<u8> = redis.connection().get(redis.key("agent:1")).await.unwrap();
        assert_eq!(
            raw,
            postcard::to_allocvec("Ada").unwrap(),
            "the codec's bytes alone"
        );

        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            reader.get("agent:1").await.as_deref().map(String::as_str),
            Some("Ada")
        );
        assert_eq!(reader.stats().tiers[0].promotions, 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            reader.get("agent:1").await,
            None,
            "L1 kept the remaining TTL"
        );

        let () = redis
            .connection()
            .set(
                redis.key("agent:2"),
                postcard::to_allocvec("Grace").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            reader.get("agent:2").await.as_deref().map(String::as_str),
            Some("Grace"),
            "a value another program wrote without TTL"
        );
    }
}

/// A tier and a bus from a URL are built in a plain `fn` (no runtime, no
/// reachable Redis); a bad URL is a configuration error.
#[test]
fn redis_parts_from_a_url_build_without_a_runtime() {
    let tier: RedisTier<String> = RedisTier::builder("redis://127.0.0.1:1/0").build().unwrap();
    let bus = perfkit_tiered_cache::RedisBus::builder("redis://127.0.0.1:1/0")
        .build()
        .unwrap();
    drop((tier, bus));
    assert!(matches!(
        RedisTier::builder("http://not-redis").build::<String>(),
        Err(perfkit_tiered_cache::ConfigError::RedisUrl(_))
    ));
    assert!(matches!(
        perfkit_tiered_cache::RedisBus::builder("http://not-redis").build(),
        Err(perfkit_tiered_cache::ConfigError::RedisUrl(_))
    ));
}

/// A connection (and a client for the bus) the application already has is
/// used as it is: values written through it are read back through a tier
/// built from a URL, and invalidations reach another instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_and_a_bus_run_on_a_connection_and_client_the_application_has() {
    let Some(redis) = perfkit_test_support::redis().await else {
        return;
    };
    let given = RedisTier::builder_with_connection(redis.connection())
        .prefix(redis.prefix())
        .build()
        .unwrap();
    let channel = redis.key("bus");
    fn instance(tier: impl Tier<String>, client: &redis::Client, channel: &str) -> Cache<String> {
        let bus = perfkit_tiered_cache::RedisBus::builder_with_client(client.clone())
            .channel(channel)
            .build()
            .unwrap();
        let builder = Cache::<String>::builder().name("given").tier(l1());
        builder.tier(tier).invalidation_bus(bus).build().unwrap()
    }
    let a = instance(given, redis.client(), &channel);
    let from_url = RedisTier::builder(redis.url())
        .prefix(redis.prefix())
        .build()
        .unwrap();
    let b = instance(from_url, redis.client(), &channel);
    a.set("k", "v".to_owned()).await;
    assert_eq!(b.get("k").await.as_deref().map(String::as_str), Some("v"));
    assert_eq!(a.get("k").await.as_deref().map(String::as_str), Some("v"));
    // B's invalidation reaches A's L1 over the bus A built from its client
    // (repeated until A's subscription is up: pub/sub keeps no backlog).
    within("A drops its copy", async {
        loop {
            b.remove("k").await;
            if a.get("k").await.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(a.stats().invalidations_received >= 1);
}
