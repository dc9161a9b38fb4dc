//! `perfkit-tiered-cache` against the raw backends it is built on and the
//! caches a Rust service would otherwise use, in one run.
//!
//! - L1 hit: `Cache::get` on a warm key against moka 0.12's sync and future
//!   `get` (moka's sync cache is our L1), `quick_cache` 0.7, `amalgam-cache`
//!   0.4.2 (`try_get`) and `multi-tier-cache` 0.6.9 (`CacheManager::get`,
//!   which returns raw bytes: no decoding is counted for it).
//!   The same cache with an invalidation bus in strict mode shows what
//!   invalidation across instances adds to a hit.
//! - L1 hit on two threads at once, against moka's sync cache configured as
//!   our L1: what the hit counters cost when two worker threads count at
//!   once (they count on separate cache lines).
//! - L2 hit: `Cache::get` that misses L1, hits Redis and promotes the value,
//!   against `multi-tier-cache`'s L2 hit and a raw redis-rs `GET` on the same connection type
//!   (`ConnectionManager`). Ours and the raw `GET` are measured as pairs in one
//!   workload (see `Side`), each function timing its own half. Needs Redis at `REDIS_URL`
//!   (default `redis://127.0.0.1:6379`); skipped with a message otherwise.
//!
//! `cargo bench -p perfkit-benches --bench tiered_cache`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use perfkit_tiered_cache::{Cache, MemoryBackend, MemoryTier, RedisTier};
use redis::aio::ConnectionManager;
use tokio::runtime::{Builder, Runtime};

const KEY: &str = "agent:42";
const L2_KEYS: usize = 2_000;
const PREFIX: &str = "perfkit-bench:tiered:";

fn runtime() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn value() -> String {
    "Ada Lovelace, analyst".to_owned()
}

/// Per-entry expiry, as `MemoryTier`'s moka backend configures moka.
struct PerEntry;

impl moka::Expiry<String, Arc<String>> for PerEntry {
    fn expire_after_create(&self, _: &String, _: &Arc<String>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(3_600))
    }
}

fn l1_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache/l1_hit");
    let runtime = runtime();

    let ours: Cache<String> = Cache::builder()
        .tier(MemoryTier::with_max_entries(10_000))
        .build()
        .expect("cache");
    runtime.block_on(ours.set(KEY, value()));
    group.bench_function(BenchmarkId::from_parameter("perfkit-tiered-cache"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(ours.get(black_box(KEY)).await);
                }
                start.elapsed()
            })
        });
    });

    // The same cache on the moka first tier.
    let on_moka: Cache<String> = Cache::builder()
        .tier(
            MemoryTier::builder()
                .backend(MemoryBackend::Moka)
                .max_entries(10_000)
                .build()
                .expect("tier"),
        )
        .build()
        .expect("cache");
    runtime.block_on(on_moka.set(KEY, value()));
    group.bench_function(
        BenchmarkId::from_parameter("perfkit-tiered-cache, moka backend"),
        |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(on_moka.get(black_box(KEY)).await);
                    }
                    start.elapsed()
                })
            });
        },
    );

    // The same cache with an invalidation bus in strict mode: what
    // invalidation across instances adds to a hit (a check that the bus is up).
    let with_bus: Cache<String> = runtime.block_on(async {
        let cache = Cache::builder()
            .tier(MemoryTier::with_max_entries(10_000))
            .invalidation_bus(perfkit_tiered_cache::LocalBus::new())
            .strict_invalidation(Duration::from_secs(1))
            .build()
            .expect("cache");
        while cache.stats().l1_flushes == 0 {
            tokio::task::yield_now().await;
        }
        cache.set(KEY, value()).await;
        cache
    });
    group.bench_function(
        BenchmarkId::from_parameter("perfkit-tiered-cache, invalidation bus, strict mode"),
        |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(with_bus.get(black_box(KEY)).await);
                    }
                    start.elapsed()
                })
            });
        },
    );

    let moka_sync: moka::sync::Cache<String, Arc<String>> = moka::sync::Cache::new(10_000);
    moka_sync.insert(KEY.to_owned(), Arc::new(value()));
    group.bench_function(BenchmarkId::from_parameter("moka-sync"), |b| {
        b.iter(|| black_box(moka_sync.get(black_box(KEY))));
    });

    // The same moka configuration as our L1: per-entry expiry.
    let moka_expiry: moka::sync::Cache<String, Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .expire_after(PerEntry)
        .build();
    moka_expiry.insert(KEY.to_owned(), Arc::new(value()));
    group.bench_function(
        BenchmarkId::from_parameter("moka-sync, per-entry expiry (the moka backend's map)"),
        |b| {
            b.iter(|| black_box(moka_expiry.get(black_box(KEY))));
        },
    );

    let moka_future: moka::future::Cache<String, Arc<String>> = moka::future::Cache::new(10_000);
    runtime.block_on(moka_future.insert(KEY.to_owned(), Arc::new(value())));
    group.bench_function(BenchmarkId::from_parameter("moka-future"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(moka_future.get(black_box(KEY)).await);
                }
                start.elapsed()
            })
        });
    });

    let amalgam: amalgam::Cache<String> = amalgam::Cache::builder()
        .try_build()
        .expect("amalgam cache");
    runtime
        .block_on(async { amalgam.set(KEY, value()).await })
        .expect("amalgam set");
    group.bench_function(BenchmarkId::from_parameter("amalgam-cache"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(amalgam.try_get(black_box(KEY)).await.expect("amalgam get"));
                }
                start.elapsed()
            })
        });
    });

    // multi-tier-cache needs its Redis L2 even for an L1 hit.
    if let Some(mtc) = runtime.block_on(multi_tier(&redis_url())) {
        let manager = mtc.cache_manager().clone();
        let key = format!("{PREFIX}{KEY}");
        runtime
            .block_on(manager.set_with_strategy(
                &key,
                bytes::Bytes::from(value()),
                multi_tier_cache::CacheStrategy::ShortTerm,
            ))
            .expect("multi-tier-cache set");
        group.bench_function(BenchmarkId::from_parameter("multi-tier-cache"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(
                            manager
                                .get(black_box(&key))
                                .await
                                .expect("multi-tier-cache get"),
                        );
                    }
                    start.elapsed()
                })
            });
        });
    }

    let quick: quick_cache::sync::Cache<String, Arc<String>> =
        quick_cache::sync::Cache::new(10_000);
    quick.insert(KEY.to_owned(), Arc::new(value()));
    group.bench_function(BenchmarkId::from_parameter("quick_cache"), |b| {
        b.iter(|| black_box(quick.get(black_box(KEY))));
    });
    group.finish();
}

/// Runs `iters` operations in cycles of `cycle`, each cycle on a new instance
/// from `fresh` (a cold L1, so every get goes to Redis); `op(instance, i)`
/// runs the cycle's `i`-th operation and returns the time it counts.
/// Warm L1 hits on two threads at once (each on its own current-thread
/// runtime, one key each), against moka's sync cache with our L1's
/// configuration: what the hit counters cost when two worker threads count
/// at once. Each sample is the wall time of both threads' `iters` hits,
/// divided by `iters` (so per-thread time per hit).
fn l1_hit_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache/l1_hit_2_threads");
    let ours: Cache<String> = Cache::builder()
        .tier(MemoryTier::with_max_entries(10_000))
        .build()
        .expect("cache");
    let keys = ["agent:1", "agent:2"];
    runtime().block_on(async {
        for key in keys {
            ours.set(key, value()).await;
        }
    });
    group.bench_function(BenchmarkId::from_parameter("perfkit-tiered-cache"), |b| {
        b.iter_custom(|iters| {
            on_two_threads(|thread| {
                let (cache, key) = (ours.clone(), keys[thread]);
                move || {
                    runtime().block_on(async {
                        for _ in 0..iters {
                            black_box(cache.get(black_box(key)).await);
                        }
                    });
                }
            })
        });
    });
    let moka_expiry: moka::sync::Cache<String, Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .expire_after(PerEntry)
        .build();
    for key in keys {
        moka_expiry.insert(key.to_owned(), Arc::new(value()));
    }
    group.bench_function(
        BenchmarkId::from_parameter("moka-sync, per-entry expiry (the moka backend's map)"),
        |b| {
            b.iter_custom(|iters| {
                on_two_threads(|thread| {
                    let (cache, key) = (moka_expiry.clone(), keys[thread]);
                    move || {
                        for _ in 0..iters {
                            black_box(cache.get(black_box(key)));
                        }
                    }
                })
            });
        },
    );
    group.finish();
}

/// Runs `work(0)` and `work(1)` on two threads released together; returns
/// the wall time from the release to the last one finishing.
fn on_two_threads<W, F>(work: W) -> Duration
where
    W: Fn(usize) -> F,
    F: FnOnce() + Send + 'static,
{
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let threads: Vec<_> = (0..2)
        .map(|thread| {
            let (barrier, run) = (Arc::clone(&barrier), work(thread));
            std::thread::spawn(move || {
                barrier.wait();
                run();
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for thread in threads {
        thread.join().expect("bench thread");
    }
    start.elapsed()
}

async fn time_cycles<C>(
    iters: u64,
    cycle: usize,
    fresh: impl AsyncFn() -> Option<C>,
    op: impl AsyncFn(&mut C, usize) -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let Some(mut instance) = fresh().await else {
            return total;
        };
        let left = usize::try_from(iters - done).map_or(cycle, |left| left.min(cycle));
        for i in 0..left {
            total += op(&mut instance, i).await;
            done += 1;
        }
    }
    total
}

/// Which half of a pair a benchmark function times.
#[derive(Clone, Copy)]
enum Side {
    Ours,
    Raw,
}

/// A multi-tier-cache system on `url`, or `None` (printed) without Redis.
async fn multi_tier(url: &str) -> Option<multi_tier_cache::CacheSystem> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        multi_tier_cache::CacheSystem::with_redis_url(url),
    )
    .await
    {
        Ok(Ok(system)) => Some(system),
        _ => {
            eprintln!("multi-tier-cache skipped: no Redis at {url}");
            None
        }
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn l2_hit(c: &mut Criterion) {
    let runtime = runtime();
    let url = redis_url();
    let Ok(client) = redis::Client::open(url.as_str()) else {
        eprintln!("cache/l2_hit skipped: invalid REDIS_URL {url}");
        return;
    };
    let reachable = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(2),
            ConnectionManager::new(client.clone()),
        )
        .await
        .is_ok_and(|connected| connected.is_ok())
    });
    if !reachable {
        eprintln!("cache/l2_hit skipped: no Redis at {url}");
        return;
    }
    let fresh_cache = || -> Cache<String> {
        Cache::builder()
            .tier(MemoryTier::with_max_entries(10_000))
            .tier(
                RedisTier::builder(&url)
                    .prefix(PREFIX)
                    .build()
                    .expect("tier"),
            )
            .build()
            .expect("cache")
    };
    let keys: Vec<String> = (0..L2_KEYS).map(|i| format!("agent:{i}")).collect();
    runtime.block_on(async {
        let writer = fresh_cache();
        for key in &keys {
            // Expiring, so that benchmark runs leave nothing behind for long.
            let expiring =
                perfkit_tiered_cache::SetOptions::default().ttl(Duration::from_secs(600));
            writer.set_with(key, value(), expiring).await;
        }
    });

    let full_keys: Vec<String> = keys.iter().map(|key| format!("{PREFIX}{key}")).collect();
    let mut group = c.benchmark_group("cache/l2_hit");
    // Ours and the raw GET run the same workload, pair by pair (our `get`,
    // then a raw `GET` of the same key, each cycle of keys on a new cache and
    // a new raw connection); each function times its own half. The machine
    // state both see is the same; only the time window differs.
    let paired = |side: Side| {
        let (runtime, fresh_cache, client) = (&runtime, &fresh_cache, &client);
        let (keys, full_keys) = (&keys, &full_keys);
        move |b: &mut criterion::Bencher<'_>| {
            b.iter_custom(|iters| {
                runtime.block_on(time_cycles(
                    iters,
                    keys.len(),
                    async || {
                        // Both connections open before the timed pairs.
                        let cache = fresh_cache();
                        let _ = cache.get("warm-up").await;
                        let raw = ConnectionManager::new(client.clone()).await.ok()?;
                        Some((cache, raw))
                    },
                    // Our `get` of a key, then a raw `GET` of the same key;
                    // only `side`'s half counts.
                    async |(cache, raw): &mut (Cache<String>, ConnectionManager), i| {
                        let start = Instant::now();
                        black_box(cache.get(&keys[i]).await.expect("value in Redis"));
                        let ours = start.elapsed();
                        let start = Instant::now();
                        let bytes: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(&full_keys[i])
                            .query_async(raw)
                            .await
                            .expect("GET");
                        black_box(bytes);
                        let theirs = start.elapsed();
                        match side {
                            Side::Ours => ours,
                            Side::Raw => theirs,
                        }
                    },
                ))
            });
        }
    };
    group.bench_function(
        BenchmarkId::from_parameter("perfkit-tiered-cache (L1 miss, L2 hit, promotion)"),
        paired(Side::Ours),
    );
    group.bench_function(
        BenchmarkId::from_parameter("redis-rs GET (ConnectionManager)"),
        paired(Side::Raw),
    );
    group.bench_function(
        BenchmarkId::from_parameter("multi-tier-cache (L1 miss, L2 hit)"),
        |b| {
            b.iter_custom(|iters| {
                runtime.block_on(time_cycles(
                    iters,
                    full_keys.len(),
                    async || {
                        multi_tier(&url)
                            .await
                            .map(|system| system.cache_manager().clone())
                    },
                    async |manager: &mut Arc<multi_tier_cache::CacheManager>, i| {
                        let start = Instant::now();
                        let found = manager.get(&full_keys[i]).await;
                        black_box(found.expect("multi-tier-cache get"));
                        start.elapsed()
                    },
                ))
            });
        },
    );
    group.finish();
}

criterion_group!(benches, l1_hit, l1_hit_two_threads, l2_hit);
criterion_main!(benches);
