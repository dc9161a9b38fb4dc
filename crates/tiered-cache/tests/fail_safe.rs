//! Redis down, silent, killed or restarted: calls go through the loader, the
//! breaker opens, and closes again once Redis is back.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod first_tier;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use perfkit_test_support::RedisServer;
use perfkit_test_support::concurrency::within;
use perfkit_tiered_cache::{Cache, RedisBus, RedisTier};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn cache_on(url: &str, failures: u32, cool_down: Duration) -> Cache<String> {
    Cache::builder()
        .name("fail-safe")
        .tier(first_tier::l1(1_000))
        .tier(
            RedisTier::builder(url)
                .prefix("perfkit-test:fail-safe:")
                .build()
                .unwrap(),
        )
        .remote_timeout(Duration::from_millis(50))
        .circuit_breaker(NonZeroU32::new(failures).unwrap(), cool_down)
        .build()
        .unwrap()
}

async fn load(cache: &Cache<String>, key: &str) -> String {
    let value = within(
        "a get_or_load with Redis unavailable",
        cache.get_or_load(key, || async {
            Ok::<_, std::io::Error>("from the loader".to_owned())
        }),
    )
    .await
    .unwrap();
    (*value).clone()
}

#[tokio::test]
async fn closed_port_calls_succeed_through_the_loader_and_the_breaker_opens() {
    let cache = cache_on("redis://127.0.0.1:1", 3, Duration::from_secs(60));
    for i in 0..10 {
        assert_eq!(load(&cache, &format!("k{i}")).await, "from the loader");
    }
    let l2 = &cache.stats().tiers[1];
    assert!(l2.breaker_open, "the breaker opened");
    assert_eq!(l2.errors, 3, "three failures opened it");
    assert!(l2.skipped > 0, "then Redis was skipped: {l2:?}");
    assert_eq!(cache.stats().loads, 10);
}

/// Accepts connections and never answers: the worst kind of outage.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut sink = [0_u8; 1024];
            let _ = socket.read(&mut sink).await;
            held.push(socket);
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_silent_redis_costs_a_timeout_not_a_hang() {
    let (url, server) = silent_server().await;
    let cache = cache_on(&url, 2, Duration::from_secs(60));
    let started = Instant::now();
    for i in 0..6 {
        assert_eq!(load(&cache, &format!("k{i}")).await, "from the loader");
    }
    // Printed, not asserted: two 50 ms timeouts (the lookup and the fill of the
    // first call), then the breaker skips Redis.
    println!("6 loads with a silent Redis took {:?}", started.elapsed());
    let l2 = &cache.stats().tiers[1];
    assert!(l2.breaker_open);
    assert_eq!(l2.errors, 2);
    server.abort();
}

#[tokio::test]
async fn killed_connection_is_a_miss_then_the_connection_comes_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let cache = cache_on(&server.url(), 5, Duration::from_secs(60));
    cache.set("before", "kept in redis".to_owned()).await;

    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1, "the cache's connection was killed");

    // Whatever the first call after the kill sees, it answers (from the loader at worst)...
    assert_eq!(load(&cache, "after").await, "from the loader");
    // ...and the connection manager reconnects: Redis serves again.
    let other_instance = cache_on(&server.url(), 5, Duration::from_secs(60));
    let mut served = None;
    for _ in 0..50 {
        served = other_instance.get("before").await;
        if served.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served.as_deref().map(String::as_str), Some("kept in redis"));
    let mut refilled = None;
    for _ in 0..50 {
        cache.set("after-kill", "written".to_owned()).await;
        refilled = other_instance.get("after-kill").await;
        if refilled.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refilled.is_some(),
        "the killed instance writes to Redis again"
    );
}

#[tokio::test]
async fn breaker_opens_when_redis_stops_and_closes_once_it_is_back() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let cool_down = Duration::from_millis(200);
    let cache = cache_on(&server.url(), 2, cool_down);
    cache.set("k", "v".to_owned()).await;
    assert!(!cache.stats().tiers[1].breaker_open);

    server.stop();
    for i in 0..5 {
        assert_eq!(load(&cache, &format!("down{i}")).await, "from the loader");
    }
    assert!(
        cache.stats().tiers[1].breaker_open,
        "opened while Redis was down"
    );

    server.restart().unwrap();
    // After the cool-down, the next call probes Redis; a success closes the breaker.
    let mut closed = false;
    for i in 0..100 {
        tokio::time::sleep(cool_down / 4).await;
        let _ = load(&cache, &format!("up{i}")).await;
        if !cache.stats().tiers[1].breaker_open {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the breaker closed once Redis was back: {:?}",
        cache.stats().tiers[1]
    );
    let second = cache_on(&server.url(), 2, cool_down);
    cache.set("after", "back".to_owned()).await;
    assert_eq!(
        second.get("after").await.as_deref().map(String::as_str),
        Some("back"),
        "L2 works again"
    );
}

/// Calls `get` as a caller that gives up after `patience` (a request
/// timeout, a client that went away): the future is dropped mid-call.
async fn impatient_get(cache: &Cache<String>, key: &str, patience: Duration) {
    let _ = tokio::time::timeout(patience, cache.get(key)).await;
}

#[tokio::test]
async fn a_probe_whose_caller_goes_away_does_not_leave_the_breaker_open() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let cool_down = Duration::from_millis(50);
    let cache = cache_on(&server.url(), 1, cool_down);
    server.stop();
    impatient_get(&cache, "k", Duration::from_secs(1)).await;
    assert!(cache.stats().tiers[1].breaker_open, "opened by the refusal");

    // Back, but frozen: every call hangs, and every caller leaves after
    // 10 ms, long before the 50 ms tier timeout. Probes are dropped unreported.
    server.restart().unwrap();
    server.pause();
    let frozen_until = Instant::now() + 6 * cool_down;
    while Instant::now() < frozen_until {
        impatient_get(&cache, "k", Duration::from_millis(10)).await;
    }
    server.resume();

    // Callers still leave after 10 ms, but Redis answers well within that now.
    let started = Instant::now();
    while cache.stats().tiers[1].breaker_open && started.elapsed() < Duration::from_secs(2) {
        impatient_get(&cache, "k", Duration::from_millis(10)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let l2 = &cache.stats().tiers[1];
    assert!(
        !l2.breaker_open,
        "a later probe found Redis answering and closed the breaker: {l2:?}"
    );
}

#[tokio::test]
async fn redis_is_used_again_within_one_cool_down_of_answering_after_a_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let cool_down = Duration::from_secs(1);
    let cache = cache_on(&server.url(), 1, cool_down);
    cache.set("before", "v".to_owned()).await;
    server.stop();
    assert_eq!(load(&cache, "during").await, "from the loader");
    assert!(cache.stats().tiers[1].breaker_open);
    // The connection's reconnect attempts fail while Redis is away.
    tokio::time::sleep(cool_down / 4).await;
    server.restart().unwrap();
    let answering = Instant::now();

    let mut closed_after = None;
    while answering.elapsed() < 3 * cool_down {
        let _ = cache.get("probe").await;
        if !cache.stats().tiers[1].breaker_open {
            closed_after = Some(answering.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed_after = closed_after.expect("the breaker closed");
    println!("Redis used again {closed_after:?} after it answered (cool-down {cool_down:?})");
    assert!(
        closed_after <= cool_down + Duration::from_millis(300),
        "the first probe after the cool-down must test a live connection, not \
         report the last failed reconnect: closed {closed_after:?} after Redis answered"
    );
    cache.set("after", "back".to_owned()).await;
    let second = cache_on(&server.url(), 1, cool_down);
    assert_eq!(
        second.get("after").await.as_deref().map(String::as_str),
        Some("back")
    );
}

/// L1 + Redis + a Redis bus, all on `url`.
fn instance_with_bus(url: &str, cool_down: Duration) -> Cache<String> {
    Cache::builder()
        .name("fail-safe-bus")
        .tier(first_tier::l1(1_000))
        .tier(
            RedisTier::builder(url)
                .prefix("perfkit-test:fail-safe:")
                .build()
                .unwrap(),
        )
        .invalidation_bus(RedisBus::builder(url).build().unwrap())
        .remote_timeout(Duration::from_millis(50))
        .circuit_breaker(NonZeroU32::new(2).unwrap(), cool_down)
        .build()
        .unwrap()
}

/// The slowest of `rounds` sets and invalidates, each of a new key.
async fn slowest_write(cache: &Cache<String>, rounds: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..rounds {
        let key = format!("w{i}");
        let started = Instant::now();
        cache.set(&key, "v".to_owned()).await;
        cache.invalidate(&key).await;
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test]
async fn during_an_outage_sets_and_invalidations_fail_fast_like_reads() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    for outage in ["stopped", "frozen"] {
        server.restart().unwrap();
        let cache = instance_with_bus(&server.url(), Duration::from_secs(60));
        cache.set("warm", "up".to_owned()).await;
        assert_eq!(cache.stats().publish_errors, 0);
        if outage == "stopped" {
            server.stop();
        } else {
            server.pause();
        }
        // Two failures of each (tier writes, publishes) open their breakers.
        let opening = slowest_write(&cache, 2).await;
        let slowest = slowest_write(&cache, 20).await;
        let stats = cache.stats();
        println!(
            "Redis {outage}: the writes that opened the breakers took up to {opening:?}, \
             the next 20 set + invalidate pairs at most {slowest:?}"
        );
        assert!(stats.tiers[1].breaker_open, "{outage}: {stats:?}");
        assert!(
            stats.tiers[1].skipped >= 40,
            "{outage}: the tier writes were skipped: {stats:?}"
        );
        assert!(
            stats.publish_errors >= 44,
            "{outage}: every publish failed or was skipped: {stats:?}"
        );
        assert!(
            slowest < Duration::from_millis(50),
            "{outage}: once known down, a write waits for no timeout (50 ms); slowest {slowest:?}"
        );
        server.resume();
    }
}
