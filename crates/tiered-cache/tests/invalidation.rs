//! Invalidation across instances: two (or three) caches in one test process,
//! each with its own connections, sharing a real Redis and an invalidation bus.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod first_tier;

use common::{Invalidation, backends, instance_with, pair, stale_set_race, subscribed};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use perfkit_test_support::RedisServer;
use perfkit_test_support::concurrency::within;
use perfkit_tiered_cache::{Cache, LocalBus, RedisBus, RedisTier, SetOptions};

/// One service instance: L1, Redis under `prefix`, and a Redis bus on `channel`.
fn instance(url: &str, prefix: &str, channel: &str) -> Cache<String> {
    instance_with(
        RedisTier::builder(url),
        RedisBus::builder(url),
        prefix,
        channel,
        None,
    )
}

/// Waits until `cache` no longer answers `old` for `key`; returns how long that took.
async fn until_not(cache: &Cache<String>, key: &str, old: &str) -> Duration {
    let start = Instant::now();
    within("an invalidation reaching the other instance", async {
        while cache.get(key).await.as_deref().map(String::as_str) == Some(old) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_bus_drops_the_other_instances_l1_and_ignores_its_own_messages() {
    let bus = LocalBus::new();
    let make = || {
        Cache::<String>::builder()
            .name("local")
            .tier(first_tier::l1(100))
            .invalidation_bus(bus.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    subscribed(&[&a, &b]).await;

    b.set("k", "b".to_owned()).await;
    within("A receiving B's set", async {
        while a.stats().invalidations_received == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    a.set("k", "a".to_owned()).await;
    // A's set reaches B, which drops its copy; A keeps its own value.
    until_not(&b, "k", "b").await;
    assert_eq!(b.get("k").await, None, "L1-only: nothing left in B");
    assert_eq!(a.get("k").await.as_deref().map(String::as_str), Some("a"));

    a.invalidate("k").await;
    assert_eq!(a.get("k").await, None);
    within("B receiving A's messages", async {
        while b.stats().invalidations_received < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.invalidations_sent, sb.invalidations_sent), (2, 1));
    assert_eq!(
        (sa.invalidations_received, sb.invalidations_received),
        (1, 2),
        "each applies only the other's messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_a_stops_b_serving_the_old_value_and_the_window_is_measured() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis);
        subscribed(&[&a, &b]).await;
        // The same, through Redis: B reads A's value from Redis into its L1, A
        // invalidates, B stops serving it.
        for i in 0..100 {
            let value = format!("v{i}");
            a.set("agent:1", value.clone()).await;
            within("B seeing A's set", async {
                while b.get("agent:1").await.as_deref() != Some(&value) {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            a.invalidate("agent:1").await;
            until_not(&b, "agent:1", &value).await;
            assert_eq!(b.get("agent:1").await, None, "gone from every tier");
        }

        // The window itself: an observer whose only tier is its L1, so that
        // "no longer served" is not blurred by a Redis read.
        let observer: Cache<String> = Cache::builder()
            .name("invalidation")
            .tier(first_tier::l1(100))
            .invalidation_bus(
                redis
                    .bus()
                    .channel(format!("{}bus", redis.prefix()))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        subscribed(&[&observer]).await;
        let mut windows = Vec::with_capacity(1_000);
        for i in 0..1_000 {
            let value = format!("w{i}");
            observer.set("agent:2", value.clone()).await;
            a.invalidate("agent:2").await;
            windows.push(until_not(&observer, "agent:2", &value).await);
        }
        windows.sort_unstable();
        println!(
            "propagation window over {} invalidations (invalidate() returned on A -> B's L1 stops serving; debug build, tests in parallel): p50 {:?}, p99 {:?}, max {:?}",
            windows.len(),
            percentile(&windows, 0.50),
            percentile(&windows, 0.99),
            windows[windows.len() - 1],
        );
    }
}

/// The stale-set race: loads on A and B read the "database" before an
/// update and finish around the invalidation that follows it; afterwards no
/// tier may hold a value older than the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_that_began_before_an_invalidation_never_write_their_old_value_afterwards() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis);
        subscribed(&[&a, &b]).await;
        let keys: Vec<String> = (0..50).map(|i| format!("race:{i}")).collect();
        stale_set_race(&redis, (&a, &b), &keys, Invalidation::Key, |i| i == 2_000).await;
    }
}

/// The same race for tags: loads on A and B tag what they load, and the
/// write is an `invalidate_tag` through either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_loads_that_began_before_a_tag_invalidation_never_write_their_old_value_afterwards()
{
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis);
        subscribed(&[&a, &b]).await;
        let keys: Vec<String> = (0..50).map(|i| format!("tag-race:{i}")).collect();
        stale_set_race(&redis, (&a, &b), &keys, Invalidation::Tag(5), |i| {
            i == 2_000
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_and_tag_invalidations_reach_the_other_instance() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let (a, b) = pair(&redis);
        subscribed(&[&a, &b]).await;
        for i in 0..20 {
            a.set(&format!("user:{i}:profile"), format!("p{i}")).await;
            a.set(&format!("order:{i}"), format!("o{i}")).await;
        }
        a.set_with(
            "report:1",
            "r".to_owned(),
            SetOptions::default().tags(["team:7"]),
        )
        .await;
        // B holds copies of everything (promoted from Redis, tags included).
        for i in 0..20 {
            assert!(b.get(&format!("user:{i}:profile")).await.is_some());
            assert!(b.get(&format!("order:{i}")).await.is_some());
        }
        assert!(b.get("report:1").await.is_some());

        let removed = a.invalidate_pattern("user:*:profile").await;
        assert!(removed >= 20, "20 keys in Redis (and L1): {removed}");
        // B applies a pattern to its L1 key by key (on its subscription task):
        // the message has been applied once every matching key is gone.
        within("the pattern reaching B", async {
            loop {
                let mut left = 0;
                for i in 0..20 {
                    left += usize::from(b.get(&format!("user:{i}:profile")).await.is_some());
                }
                if left == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        for i in 0..20 {
            assert_eq!(b.get(&format!("user:{i}:profile")).await, None);
            assert!(
                b.get(&format!("order:{i}")).await.is_some(),
                "keys outside the pattern stay"
            );
        }

        a.invalidate_tag("team:7").await;
        within("the tag reaching B", async {
            while b.get("report:1").await.is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(b.get("order:3").await.is_some(), "untagged keys stay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_write_per_invalidated_key_whatever_the_number_of_instances() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let caches: Vec<Cache<String>> = (0..3).map(|_| instance(&url, "one:", "one:bus")).collect();
    subscribed(&caches.iter().collect::<Vec<_>>()).await;
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    caches[0].set("k", "v".to_owned()).await;
    for cache in &caches {
        let found = cache.get("k").await;
        assert!(found.is_some(), "{:?}", cache.stats());
    }
    let received: Vec<u64> = caches
        .iter()
        .map(|c| c.stats().invalidations_received)
        .collect();
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();

    caches[0].invalidate("k").await;
    within("every instance applying it", async {
        while caches
            .iter()
            .zip(&received)
            .skip(1)
            .any(|(cache, before)| cache.stats().invalidations_received == *before)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    let calls: BTreeMap<String, u64> = info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat" | "ping"))
        .collect();
    let expected: BTreeMap<String, u64> = [("set".to_owned(), 1), ("publish".to_owned(), 1)]
        .into_iter()
        .collect();
    assert_eq!(
        calls, expected,
        "one write (the tombstone that replaces the value) and one PUBLISH; the receivers touch nothing in Redis"
    );
    for cache in &caches {
        assert_eq!(cache.get("k").await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_or_a_restarted_redis_flushes_l1_then_propagation_resumes() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let (a, b) = (
        instance(&url, "gap:", "gap:bus"),
        instance(&url, "gap:", "gap:bus"),
    );
    subscribed(&[&a, &b]).await;
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // 1. CLIENT KILL TYPE pubsub: both subscriptions drop.
    a.set("k", "1".to_owned()).await;
    assert!(b.get("k").await.is_some());
    assert_eq!(b.stats().bus_up, Some(true));
    let flushes = b.stats().l1_flushes;
    let () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async::<u64>(&mut admin)
        .await
        .map(|_| ())
        .unwrap();
    within("B noticing the loss and resubscribing", async {
        while b.stats().bus_reconnects == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(b.stats().bus_up, Some(true), "up again");
    assert!(
        b.stats().l1_flushes >= flushes + 2,
        "flushed when the subscription dropped and again when it came back"
    );
    // Propagation works again.
    let again = b.get("k").await;
    assert!(
        again.is_some(),
        "B reads k from Redis again: {:?}",
        b.stats()
    );
    a.invalidate("k").await;
    until_not(&b, "k", "1").await;

    // 2. Redis restarted (empty: it keeps no data).
    a.set("k", "2".to_owned()).await;
    assert!(b.get("k").await.is_some());
    let reconnects = b.stats().bus_reconnects;
    server.restart().unwrap();
    within("B resubscribing after the restart", async {
        while b.stats().bus_reconnects == reconnects {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let _ = a.get("warm-up").await;
    a.set("k", "3".to_owned()).await;
    within("B seeing A's set after the restart", async {
        while b.get("k").await.as_deref().map(String::as_str) != Some("3") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    a.invalidate("k").await;
    until_not(&b, "k", "3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_stops_serving_l1_once_the_bus_has_been_down_for_the_bound() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let loads = Arc::new(AtomicU64::new(0));
    let cache = instance_with(
        RedisTier::builder(&url),
        RedisBus::builder(&url),
        "strict:",
        "strict:bus",
        Some(Duration::from_millis(300)),
    );
    subscribed(&[&cache]).await;
    let load = |cache: Cache<String>, loads: Arc<AtomicU64>| async move {
        cache
            .get_or_load("k", move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>("v".to_owned())
            })
            .await
            .unwrap()
    };
    load(cache.clone(), Arc::clone(&loads)).await;
    load(cache.clone(), Arc::clone(&loads)).await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "served from L1 while the bus is up"
    );

    server.stop();
    // Redis is gone: every lookup past L1 fails fast, so loads count L1 bypasses.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = loads.load(Ordering::SeqCst);
    load(cache.clone(), Arc::clone(&loads)).await;
    load(cache.clone(), Arc::clone(&loads)).await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        before + 2,
        "past the bound, L1 is not served: every call loads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_used_after_the_runtime_that_built_it_is_gone_never_serves_what_others_invalidated()
{
    let Some(redis) = perfkit_test_support::redis().await else {
        return;
    };
    let channel = format!("{}bus", redis.prefix());
    let b = instance(redis.url(), redis.prefix(), &channel);
    b.set("k", "old".to_owned()).await;
    // A is built, subscribed and warmed in a runtime of its own, which then shuts down.
    let (url, prefix, bus) = (
        redis.url().to_owned(),
        redis.prefix().to_owned(),
        channel.clone(),
    );
    let a = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let a = runtime.block_on(async {
            let a = instance(&url, &prefix, &bus);
            subscribed(&[&a]).await;
            assert!(a.get("k").await.is_some(), "A holds a copy in L1");
            a
        });
        drop(runtime);
        a
    })
    .join()
    .unwrap();
    // The first subscription's flush, and the one at its death.
    let flushes_after_death = a.stats().l1_flushes;
    assert_eq!(flushes_after_death, 2, "{:?}", a.stats());
    subscribed(&[&b]).await;
    b.invalidate("k").await;
    assert_eq!(
        a.get("k").await,
        None,
        "A flushed its L1 when its subscription died: {:?}",
        a.stats()
    );
    // A subscribes again from this runtime: B's invalidations reach it.
    b.set("k2", "old".to_owned()).await;
    within("A resubscribing", async {
        // Subscribed again: the new subscription's first event flushes L1.
        while a.stats().l1_flushes == flushes_after_death {
            let _ = a.get("k2").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(a.get("k2").await.is_some(), "A promotes k2 into L1");
    let received = a.stats().invalidations_received;
    b.set("k2", "new".to_owned()).await;
    within("B's set reaching A", async {
        while a.stats().invalidations_received == received {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(
        a.get("k2").await.as_deref().map(String::as_str),
        Some("new")
    );
    assert_eq!(
        a.stats().tiers[1].errors,
        0,
        "Redis calls made from this runtime succeed, the first one included: {:?}",
        a.stats()
    );
}

/// A TCP proxy whose link the test can black-hole: bytes stop flowing both
/// ways, connections stay open, nothing is refused.
struct Proxy {
    url: String,
    black_hole: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    async fn to(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("redis://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let black_hole = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hole = Arc::clone(&black_hole);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Self::pipe(client_read, server_write, Arc::clone(&hole)));
                tokio::spawn(Self::pipe(server_read, client_write, Arc::clone(&hole)));
            }
        });
        Self { url, black_hole }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        black_hole: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = vec![0_u8; 16 * 1024];
        loop {
            let Ok(read) = from.read(&mut buffer).await else {
                return;
            };
            if read == 0 {
                return;
            }
            while black_hole.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if to.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_with_a_black_holed_bus_link_stops_serving_l1_within_the_bound() {
    let Some(redis) = perfkit_test_support::redis().await else {
        return;
    };
    let bound = Duration::from_millis(200);
    let channel = format!("{}bus", redis.prefix());
    let proxy = Proxy::to(redis.url()).await;
    // A reads and writes Redis directly; only its subscription crosses the proxy.
    let a = Cache::builder()
        .name("invalidation")
        .tier(first_tier::l1(1_000))
        .tier(
            RedisTier::builder(redis.url())
                .prefix(redis.prefix())
                .build()
                .unwrap(),
        )
        .remote_timeout(Duration::from_secs(2))
        .invalidation_bus(
            RedisBus::builder(&proxy.url)
                .channel(&channel)
                .build()
                .unwrap(),
        )
        .strict_invalidation(bound)
        .build()
        .unwrap();
    let b = instance(redis.url(), redis.prefix(), &channel);
    subscribed(&[&a, &b]).await;
    let mut stale_for = Vec::new();
    for round in 0..5 {
        let key = format!("k{round}");
        let received = a.stats().invalidations_received;
        b.set(&key, "old".to_owned()).await;
        // A applies B's set first, so that its copy is not dropped by it later.
        within("B's set reaching A", async {
            while a.stats().invalidations_received == received {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert_eq!(
            a.get(&key).await.as_deref().map(String::as_str),
            Some("old")
        );
        assert_eq!(
            a.get(&key).await.as_deref().map(String::as_str),
            Some("old"),
            "A serves its L1 copy"
        );
        proxy.black_hole.store(true, Ordering::SeqCst);
        // B's write: Redis has the new value, A's copy of the message is held.
        b.set(&key, "new".to_owned()).await;
        let written = Instant::now();
        within("A serving the new value", async {
            while a.get(&key).await.as_deref().map(String::as_str) != Some("new") {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        stale_for.push(written.elapsed());
        proxy.black_hole.store(false, Ordering::SeqCst);
        // Once its link has answered checks again for a while, A serves from L1 again.
        tokio::time::sleep(bound).await;
        within("A's link answering again", async {
            loop {
                let hits = a.stats().tiers[0].hits;
                let _ = a.get(&key).await;
                if a.stats().tiers[0].hits > hits {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    stale_for.sort();
    println!("strict {bound:?}, black-holed link: old value served for {stale_for:?}");
    let worst = stale_for[stale_for.len() - 1];
    assert!(
        worst <= bound + Duration::from_millis(100),
        "served the old value for {worst:?} with a {bound:?} bound"
    );
}
