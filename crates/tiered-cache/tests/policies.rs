//! Negative caching, eager refresh, TTL jitter and warming.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod first_tier;

use common::backends;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use perfkit_test_support::concurrency::until;
use perfkit_tiered_cache::{Cache, ConfigError};
use redis::AsyncCommands;

fn memory_cache(builder: perfkit_tiered_cache::CacheBuilder<String>) -> Cache<String> {
    builder.tier(first_tier::l1(1_000)).build().unwrap()
}

async fn optional_lookup(
    cache: &Cache<String>,
    key: &str,
    calls: &Arc<AtomicUsize>,
) -> Option<String> {
    let calls = calls.clone();
    cache
        .get_or_load_optional(key, move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<String>, std::io::Error>(None)
        })
        .await
        .unwrap()
        .map(|v| (*v).clone())
}

#[tokio::test]
async fn not_found_is_remembered_for_the_negative_ttl_and_forgotten_on_set() {
    let cache = memory_cache(Cache::builder().negative_ttl(Duration::from_secs(60)));
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(optional_lookup(&cache, "ghost", &calls).await, None);
    assert_eq!(optional_lookup(&cache, "ghost", &calls).await, None);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second lookup did not reach the loader"
    );
    assert_eq!(cache.stats().negative_hits, 1);
    assert_eq!(
        cache.get("ghost").await,
        None,
        "nothing was stored in a tier"
    );

    cache.set("ghost", "now exists".to_owned()).await;
    assert_eq!(
        optional_lookup(&cache, "ghost", &calls).await.as_deref(),
        Some("now exists")
    );
    cache.remove("ghost").await;
    assert_eq!(optional_lookup(&cache, "ghost", &calls).await, None);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "remove forgot the value and the old negative entry"
    );
}

#[tokio::test]
async fn without_negative_ttl_not_found_is_not_remembered() {
    let cache = memory_cache(Cache::builder());
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        assert_eq!(optional_lookup(&cache, "ghost", &calls).await, None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn negative_entries_expire() {
    let cache = memory_cache(Cache::builder().negative_ttl(Duration::from_millis(100)));
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(optional_lookup(&cache, "ghost", &calls).await, None);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(optional_lookup(&cache, "ghost", &calls).await, None);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_reloads_once_in_the_background() {
    let cache = memory_cache(
        Cache::builder()
            .default_ttl(Duration::from_millis(600))
            .eager_refresh(0.5),
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = |loads: Arc<AtomicUsize>| {
        move || async move {
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, std::io::Error>(format!("version {n}"))
        }
    };
    assert_eq!(
        *cache.get_or_load("k", loader(loads.clone())).await.unwrap(),
        "version 1"
    );

    // Early hits do not refresh.
    for _ in 0..10 {
        assert_eq!(
            *cache.get_or_load("k", loader(loads.clone())).await.unwrap(),
            "version 1"
        );
    }
    assert_eq!(cache.stats().refreshes, 0);

    // Past half the TTL: every hit still answers at once from L1, one reload starts.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let hits: Vec<_> = (0..50)
        .map(|_| {
            let (cache, loader) = (cache.clone(), loader(loads.clone()));
            tokio::spawn(async move { cache.get_or_load("k", loader).await.unwrap() })
        })
        .collect();
    for hit in hits {
        assert_eq!(
            *hit.await.unwrap(),
            "version 1",
            "served the current value, not waiting for the reload"
        );
    }
    until("the refreshed value is in L1", || {
        ready_now(cache.get("k")).as_deref().map(String::as_str) == Some("version 2")
    })
    .await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "exactly one background reload"
    );
}

/// Polls a future that is ready at once (an L1 lookup) without a runtime hop.
fn ready_now<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

#[tokio::test]
async fn ttl_jitter_spreads_expiry_without_lengthening_it() {
    for redis in backends().await {
        eprintln!("on {}", redis.name);
        let cache: Cache<String> = Cache::builder()
            .tier(first_tier::l1(1_000))
            .tier(redis.tier().prefix(redis.prefix()).build().unwrap())
            .default_ttl(Duration::from_secs(10))
            .ttl_jitter(0.5)
            .build()
            .unwrap();
        // A key's TTL is at least 5 s when it is set: by the time its PTTL is
        // read it has lost at most the time since the first set.
        let first_set = std::time::Instant::now();
        for i in 0..100 {
            cache.set(&format!("k{i}"), "v".to_owned()).await;
        }
        let mut conn = redis.connection();
        let mut ttls = Vec::new();
        for i in 0..100 {
            let pttl: i64 = conn.pttl(redis.key(&format!("k{i}"))).await.unwrap();
            let since_set = i64::try_from(first_set.elapsed().as_millis()).unwrap();
            assert!(
                (5_000 - since_set..=10_000).contains(&pttl),
                "PTTL {pttl} outside [5 s - {since_set} ms since the first set, 10 s]"
            );
            ttls.push(pttl / 100);
        }
        ttls.sort_unstable();
        ttls.dedup();
        assert!(
            ttls.len() > 20,
            "spread over many 100 ms buckets, got {}",
            ttls.len()
        );
    }
}

#[tokio::test]
async fn fractions_outside_zero_to_one_are_rejected() {
    for bad in [0.0, 1.0, -0.1, 2.0, f64::NAN] {
        let built = Cache::<String>::builder().ttl_jitter(bad).build();
        assert!(matches!(built, Err(ConfigError::Fraction { .. })), "{bad}");
        let built = Cache::<String>::builder().eager_refresh(bad).build();
        assert!(matches!(built, Err(ConfigError::Fraction { .. })), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_loads_missing_keys_with_bounded_concurrency() {
    let cache = memory_cache(Cache::builder());
    cache.set("key-0", "already here".to_owned()).await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (running, most, loads) = (running.clone(), most.clone(), loads.clone());
        move |key: String| {
            let (running, most, loads) = (running.clone(), most.clone(), loads.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                if key == "key-13" {
                    Err(std::io::Error::other("no such row"))
                } else {
                    Ok(format!("value of {key}"))
                }
            }
        }
    };
    let keys = (0..50).map(|i| format!("key-{i}"));
    let report = cache
        .warm(keys, NonZeroUsize::new(4).unwrap(), loader)
        .await;
    assert_eq!((report.cached, report.failed), (49, 1));
    assert_eq!(loads.load(Ordering::SeqCst), 49, "key-0 was already cached");
    assert!(most.load(Ordering::SeqCst) <= 4, "at most 4 loads at once");
    assert_eq!(
        cache.get("key-0").await.as_deref().map(String::as_str),
        Some("already here")
    );
    assert_eq!(
        cache.get("key-7").await.as_deref().map(String::as_str),
        Some("value of key-7")
    );
}

#[tokio::test]
async fn serve_stale_answers_a_failed_load_with_the_expired_value() {
    let cache = memory_cache(
        Cache::builder()
            .default_ttl(Duration::from_millis(100))
            .serve_stale(Duration::from_secs(60)),
    );
    let ok = |v: &'static str| move || async move { Ok::<_, std::io::Error>(v.to_owned()) };
    let failing = || async { Err::<String, _>(std::io::Error::other("database is down")) };

    assert_eq!(*cache.get_or_load("k", ok("v1")).await.unwrap(), "v1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        cache.get("k").await,
        None,
        "expired: not a hit, even though kept"
    );
    assert_eq!(
        *cache.get_or_load("k", failing).await.unwrap(),
        "v1",
        "the stale value, not the error"
    );
    assert_eq!(cache.stats().stale_served, 1);
    assert_eq!(
        *cache.get_or_load("k", ok("v2")).await.unwrap(),
        "v2",
        "a working loader replaces it"
    );
}

#[tokio::test]
async fn without_serve_stale_a_failed_load_after_expiry_is_an_error() {
    let cache = memory_cache(Cache::builder().default_ttl(Duration::from_millis(100)));
    cache
        .get_or_load("k", || async { Ok::<_, std::io::Error>("v1".to_owned()) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let failed = cache
        .get_or_load("k", || async {
            Err::<String, _>(std::io::Error::other("down"))
        })
        .await;
    assert!(failed.is_err());
}

#[tokio::test]
async fn stale_values_are_dropped_after_the_max_stale_age() {
    let cache = memory_cache(
        Cache::builder()
            .default_ttl(Duration::from_millis(50))
            .serve_stale(Duration::from_millis(100)),
    );
    cache.set("k", "v1".to_owned()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed = cache
        .get_or_load("k", || async {
            Err::<String, _>(std::io::Error::other("down"))
        })
        .await;
    assert!(
        failed.is_err(),
        "past TTL + max stale age nothing is served"
    );
}
