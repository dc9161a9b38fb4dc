//! Invalidation across instances over Redis pub/sub, against raw redis-rs
//! pub/sub delivery, in one run.
//!
//! - `raw PUBLISH -> subscriber`: one redis-rs connection publishes, a
//!   subscriber task on its own connection receives; timed from before the
//!   `PUBLISH` to the moment the measuring loop sees the message.
//! - `perfkit invalidate() -> other instance's L1`: instance A calls
//!   `invalidate(k)`; instance B (its own connections) held `k` in its L1;
//!   timed from before the call to the moment `B.get(k)` stops returning it.
//!
//! Both detect arrival the same way (a loop that checks and yields), on a
//! two-worker runtime. Criterion reports the mean per message; the p50 and
//! p99 of the individual messages are printed after each function, which is
//! what the propagation target compares. Needs Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`); skipped with a message otherwise.
//!
//! `cargo bench -p perfkit-benches --bench invalidation`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use perfkit_tiered_cache::{Cache, MemoryTier, RedisBus};

const CHANNEL: &str = "perfkit-bench:invalidation";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// p50 and p99 of `samples`, printed under `name`.
fn report(name: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        return;
    }
    samples.sort_unstable();
    let at = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((samples.len() - 1) as f64 * p).round() as usize;
        samples[index]
    };
    eprintln!(
        "{name}: {} messages, p50 {:?}, p99 {:?}",
        samples.len(),
        at(0.50),
        at(0.99)
    );
}

/// An L1-only cache on the bus: what an instance keeps locally.
fn instance(url: &str) -> Cache<String> {
    Cache::builder()
        .name("bench")
        .tier(MemoryTier::with_max_entries(1_000))
        .invalidation_bus(
            RedisBus::builder(url)
                .channel(CHANNEL)
                .build()
                .expect("bus"),
        )
        .build()
        .expect("cache")
}

fn propagation(c: &mut Criterion) {
    let runtime = perfkit_benches::two_workers();
    let url = redis_url();
    let Ok(client) = redis::Client::open(url.as_str()) else {
        eprintln!("invalidation skipped: invalid REDIS_URL {url}");
        return;
    };
    let connected = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()
        .and_then(Result::ok)
    });
    let Some(mut publisher) = connected else {
        eprintln!("invalidation skipped: no Redis at {url}");
        return;
    };

    // Raw pub/sub: a subscriber task records the last sequence number it saw.
    let seen = Arc::new(AtomicU64::new(0));
    let raw_channel = format!("{CHANNEL}:raw");
    runtime.block_on(async {
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
        pubsub.subscribe(&raw_channel).await.expect("subscribe");
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(message) =
                poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut stream), cx)).await
            {
                let n: u64 = message.get_payload().unwrap_or(0);
                seen.store(n, Ordering::Release);
            }
        });
    });

    let (a, b) = runtime.block_on(async {
        let (a, b) = (instance(&url), instance(&url));
        // Subscribed once each has flushed its L1 for the first time.
        while a.stats().l1_flushes == 0 || b.stats().l1_flushes == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (a, b)
    });

    let mut group = c.benchmark_group("invalidation/propagation");
    let mut raw_samples = Vec::new();
    let mut sequence = 0_u64;
    group.bench_function(
        BenchmarkId::from_parameter("raw redis-rs PUBLISH -> subscriber"),
        |bench| {
            bench.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        sequence += 1;
                        let start = Instant::now();
                        let () = redis::cmd("PUBLISH")
                            .arg(&raw_channel)
                            .arg(sequence)
                            .query_async::<u64>(&mut publisher)
                            .await
                            .map(|_| ())
                            .expect("PUBLISH");
                        while seen.load(Ordering::Acquire) != sequence {
                            tokio::task::yield_now().await;
                        }
                        let took = start.elapsed();
                        raw_samples.push(took);
                        total += took;
                    }
                    total
                })
            });
        },
    );
    report("raw PUBLISH -> subscriber", &mut raw_samples);

    let mut ours_samples = Vec::new();
    group.bench_function(
        BenchmarkId::from_parameter("perfkit invalidate() -> other instance's L1"),
        |bench| {
            bench.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let key = format!("agent:{}", i % 100);
                        // B holds the key locally (its set also reaches A, harmlessly).
                        b.set(&key, "v".to_owned()).await;
                        let start = Instant::now();
                        a.invalidate(&key).await;
                        while b.get(&key).await.is_some() {
                            tokio::task::yield_now().await;
                        }
                        let took = start.elapsed();
                        ours_samples.push(took);
                        total += took;
                    }
                    total
                })
            });
        },
    );
    report("perfkit invalidate() -> other L1", &mut ours_samples);
    group.finish();
}

criterion_group!(benches, propagation);
criterion_main!(benches);
