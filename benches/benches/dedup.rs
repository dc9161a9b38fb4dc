//! `perfkit-dedup` against the single-flight primitives a Rust service would
//! otherwise use, in one run: `singleflight-async` 0.2.0,
//! `async_singleflight` 0.6.2, and moka 0.12's `get_with` (its request
//! coalescing; note that moka then keeps the value, which a single-flight
//! does not).
//!
//! `cargo bench -p perfkit-benches --bench dedup`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::{Builder, Runtime};

type Perfkit = perfkit_dedup::Group<u64, u64, ()>;
type AsyncSingleflight = async_singleflight::Group<u64, u64, ()>;
type SingleflightAsync = singleflight_async::SingleFlight<u64, u64>;
type Moka = moka::future::Cache<u64, u64>;

/// Enough capacity that moka never evicts during a measurement.
const MOKA_CAPACITY: u64 = 1_000_000;

/// One implementation under test, behind one call shape: `call(key, work)`.
#[derive(Clone)]
enum Impl {
    Perfkit(Perfkit),
    AsyncSingleflight(Arc<AsyncSingleflight>),
    SingleflightAsync(Arc<SingleflightAsync>),
    Moka(Moka),
}

impl Impl {
    fn all() -> Vec<(&'static str, Self)> {
        vec![
            ("perfkit-dedup", Self::Perfkit(Perfkit::new())),
            (
                "singleflight-async",
                Self::SingleflightAsync(Arc::default()),
            ),
            (
                "async_singleflight",
                Self::AsyncSingleflight(Arc::default()),
            ),
            ("moka-get_with", Self::Moka(Moka::new(MOKA_CAPACITY))),
        ]
    }

    /// Runs (or joins) `work` for `key` and returns its value.
    async fn call<W, Fut>(&self, key: u64, work: W) -> u64
    where
        W: FnOnce() -> Fut,
        Fut: Future<Output = u64> + Send + 'static,
    {
        match self {
            Self::Perfkit(group) => group
                .run(key, move || {
                    let fut = work();
                    async move { Ok(fut.await) }
                })
                .await
                .result
                .unwrap_or_default(),
            Self::SingleflightAsync(group) => group.work(key, work).await,
            Self::AsyncSingleflight(group) => {
                let fut = work();
                group
                    .work(&key, async move { Ok(fut.await) })
                    .await
                    .unwrap_or_default()
            }
            Self::Moka(cache) => cache.get_with(key, work()).await,
        }
    }
}

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Keys never repeat within a process run, so every call is a cold key.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

fn fresh_keys(n: u64) -> u64 {
    NEXT_KEY.fetch_add(n, Ordering::Relaxed)
}

/// One caller, a new key every call, work that is ready at once: the fixed
/// cost of going through the primitive.
fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup/uncontended_distinct_keys");
    group.throughput(Throughput::Elements(1));
    let runtime = current_thread();
    for (name, imp) in Impl::all() {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let first = fresh_keys(iters);
                let imp = imp.clone();
                runtime.block_on(async move {
                    let start = Instant::now();
                    for key in first..first + iters {
                        std::hint::black_box(imp.call(key, move || async move { key }).await);
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

/// Work that takes `rounds` scheduler rounds (callers arriving meanwhile
/// have to join it), or is ready at once with `rounds == 0`.
async fn work(key: u64, rounds: u32) -> u64 {
    for _ in 0..rounds {
        tokio::task::yield_now().await;
    }
    key
}

/// Spawns one task per key, each calling `imp` with `work(key, rounds)`, and
/// returns how long until every one of them had its value.
async fn spawn_and_join(imp: &Impl, keys: impl Iterator<Item = u64>, rounds: u32) -> Duration {
    let start = Instant::now();
    let callers: Vec<_> = keys
        .map(|key| {
            let imp = imp.clone();
            tokio::spawn(async move { imp.call(key, move || work(key, rounds)).await })
        })
        .collect();
    for caller in callers {
        std::hint::black_box(caller.await.unwrap_or_default());
    }
    start.elapsed()
}

/// 1,000 tasks on two worker threads call with one key at once.
fn one_key_1000_callers(c: &mut Criterion) {
    const CALLERS: u64 = 1_000;
    let mut group = c.benchmark_group("dedup/one_key_1000_callers");
    group.throughput(Throughput::Elements(CALLERS));
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(10));
    let runtime = perfkit_benches::two_workers();
    for (name, imp) in Impl::all() {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let first = fresh_keys(iters);
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for key in first..first + iters {
                        total +=
                            spawn_and_join(&imp, std::iter::repeat_n(key, 1_000_usize), 8).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

/// 10,000 tasks on two worker threads, each with its own key.
fn distinct_keys_10000_callers(c: &mut Criterion) {
    const CALLERS: u64 = 10_000;
    let mut group = c.benchmark_group("dedup/distinct_keys_10000_callers_2_threads");
    group.throughput(Throughput::Elements(CALLERS));
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(15));
    let runtime = perfkit_benches::two_workers();
    for (name, imp) in Impl::all() {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let first = fresh_keys(CALLERS);
                        total += spawn_and_join(&imp, first..first + CALLERS, 0).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    uncontended,
    one_key_1000_callers,
    distinct_keys_10000_callers
);
criterion_main!(benches);
