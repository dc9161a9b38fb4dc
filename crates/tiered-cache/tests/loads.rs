//! Loads that never finish, and loads that carry tags: memory-only caches,
//! no server needed.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod first_tier;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use perfkit_test_support::concurrency::within;
use perfkit_tiered_cache::{Cache, Error, LoadOptions};

/// Sets its flag when the loader future holding it is dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_that_never_returns_times_out_its_callers_and_the_next_call_loads_afresh() {
    let cache: Cache<String> = Cache::builder()
        .tier(first_tier::l1(10_000))
        .load_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, dropped) = (cache.clone(), Arc::clone(&dropped));
            tokio::spawn(async move {
                cache
                    .get_or_load("stuck", move || async move {
                        let _guard = Dropped(dropped);
                        std::future::pending::<Result<String, std::io::Error>>().await
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        let outcome = within("a caller of a stuck load", caller).await.unwrap();
        assert!(
            matches!(outcome, Err(Error::LoadTimeout(limit)) if limit == Duration::from_millis(100)),
            "{outcome:?}"
        );
    }
    println!(
        "10 callers of a stuck load released after {:?}",
        started.elapsed()
    );
    assert_eq!(cache.stats().load_timeouts, 10);
    within("the abandoned load being dropped", async {
        while !dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;

    let value = within(
        "a new load after the timeouts",
        cache.get_or_load("stuck", || async {
            Ok::<_, std::io::Error>("fresh".to_owned())
        }),
    )
    .await
    .unwrap();
    assert_eq!(*value, "fresh", "a new load, not the stuck one");
}

#[tokio::test]
async fn a_per_call_timeout_overrides_the_default_and_new_callers_do_not_join_a_timed_out_load() {
    let cache: Cache<String> = Cache::builder()
        .tier(first_tier::l1(10_000))
        .build()
        .unwrap();
    let first = cache.get_or_load_with(
        "k",
        LoadOptions::default().timeout(Duration::from_millis(20)),
        std::future::pending::<Result<String, std::io::Error>>,
    );
    let outcome = within("a load with a per-call timeout", first).await;
    assert!(matches!(outcome, Err(Error::LoadTimeout(_))), "{outcome:?}");
    // Without a timeout of its own, this caller would hang if it joined.
    let value = within(
        "the next load",
        cache.get_or_load("k", || async { Ok::<_, std::io::Error>("v".to_owned()) }),
    )
    .await
    .unwrap();
    assert_eq!(*value, "v");
    assert!(matches!(
        Cache::<String>::builder()
            .load_timeout(Duration::ZERO)
            .build(),
        Err(perfkit_tiered_cache::ConfigError::ZeroDuration(
            "load_timeout"
        ))
    ));
}

/// The tag race in one instance: loads tagged `t` read the "database"
/// before an update and finish around the `invalidate_tag("t")` that
/// follows it; afterwards the cache may not hold a value older than the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_loads_that_began_before_a_tag_invalidation_never_store_their_old_value() {
    let cache: Cache<String> = Cache::builder()
        .tier(first_tier::l1(10_000))
        .build()
        .unwrap();
    let database = Arc::new(AtomicU64::new(0));
    let mut seed: u64 = 0x7A65;
    let mut random = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let mut stale = Vec::new();
    for i in 0..2_000 {
        let key = format!("race:{}", i % 20);
        let tag = format!("t{}", i % 3);
        let loads: Vec<_> = (0..2)
            .map(|_| {
                let (cache, key, database) = (cache.clone(), key.clone(), Arc::clone(&database));
                let options = LoadOptions::default().tags([tag.clone()]);
                let delay = random(800);
                tokio::spawn(async move {
                    cache
                        .get_or_load_with(&key, options, move || async move {
                            let read = database.load(Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_micros(delay)).await;
                            Ok::<_, std::io::Error>(read.to_string())
                        })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(random(600))).await;
        let now = database.fetch_add(1, Ordering::SeqCst) + 1;
        cache.invalidate_tag(&tag).await;
        for load in loads {
            let _ = within("the loads", load).await.unwrap();
        }
        if let Some(value) = cache.get(&key).await {
            let seen: u64 = value.parse().unwrap();
            if seen < now {
                stale.push((i, seen, now));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads, first {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}
