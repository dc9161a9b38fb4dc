//! The second method behind `tiered_cache`: ours and a reference on the same
//! data, alternated in short blocks (or op by op where an operation is long
//! enough to time alone), the order within each pair alternating too, in
//! rounds; each round prints both medians and their ratio, and the summary
//! the median of the per-round ratios with their range (the machine drifts
//! between rounds, not between the two halves of a pair).
//!
//! - L1 hit: `Cache::get` of a warm key with a TTL, on each first-tier
//!   backend, against that map's own sync `get`: the default (`quick_cache`)
//!   against `quick_cache`'s, the moka backend against moka's (with
//!   per-entry expiry, as the tier configures it), in blocks of 256 calls.
//! - L2 hit with promotion (values of 1 KiB): `Cache::get` on a cache whose
//!   L1 has not seen the key, against a raw redis-rs `GET` of the same stored key on the same
//!   connection type (`ConnectionManager`), op by op; also the CPU time each
//!   costs this thread (the runtime's only one), and the difference.
//! - Miss and load: `Cache::get_or_load` of a key in no tier (lookup, load,
//!   conditional fill), against the raw `GET` and `SET` a look-aside cache
//!   needs at least, op by op.
//!
//! - Propagation: instance A's `invalidate(k)` until instance B's `get(k)`
//!   stops returning it (L1-only instances on a Redis bus), against a raw
//!   `PUBLISH` until a subscriber on its own connection has it, one of each
//!   in turn (the `invalidation` bench has the same pair under criterion).
//!
//! The Redis parts need Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`)
//! and are skipped with a message otherwise.
//!
//! `cargo bench -p perfkit-benches --bench tiered_cache_blocks`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::future::poll_fn;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use perfkit_tiered_cache::{Cache, MemoryBackend, MemoryTier, RedisBus, RedisTier};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

const ROUNDS: usize = 10;
const BLOCK: usize = 256;
const BLOCKS: usize = 200;
const KEYS: usize = 1_000;
const KEY: &str = "agent:42";

fn value() -> String {
    "Ada Lovelace, analyst".to_owned()
}

/// The L2 parts' value: 1 KiB, the size the targets are set for.
fn kib() -> String {
    "x".repeat(1_024)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// The per-round ratios of one comparison.
struct Comparison {
    name: &'static str,
    ratios: Vec<f64>,
}

impl Comparison {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ratios: Vec::with_capacity(ROUNDS),
        }
    }

    /// Records a round: medians of both sides (per call), and their ratio.
    fn round(&mut self, round: usize, ours: &mut [Duration], reference: &mut [Duration]) {
        let (ours, reference) = (median(ours), median(reference));
        let ratio = ours.as_secs_f64() / reference.as_secs_f64();
        self.ratios.push(ratio);
        eprintln!(
            "round {round} {}: ours {ours:?}, reference {reference:?}, ratio {ratio:.2}",
            self.name
        );
    }

    fn summary(&mut self) {
        self.ratios.sort_by(f64::total_cmp);
        eprintln!(
            "{}: ours ÷ reference, median of {} per-round ratios {:.2} (min {:.2}, max {:.2})",
            self.name,
            self.ratios.len(),
            self.ratios[self.ratios.len() / 2],
            self.ratios[0],
            self.ratios[self.ratios.len() - 1]
        );
    }
}

/// Times `calls` calls of `op` and returns the time per call.
fn per_call(calls: usize, mut op: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..calls {
        op();
    }
    started.elapsed() / u32::try_from(calls).expect("a block fits a u32")
}

/// CPU time this thread has used: on a current-thread runtime, every bit of
/// client work (the connection's driver task included) runs on it.
fn thread_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(time.tv_sec).unwrap_or(0),
        u32::try_from(time.tv_nsec).unwrap_or(0),
    )
}

/// Per-entry expiry, as `MemoryTier`'s moka backend configures moka.
struct PerEntry;

impl moka::Expiry<String, Arc<String>> for PerEntry {
    fn expire_after_create(&self, _: &String, _: &Arc<String>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(3_600))
    }
}

/// A cache whose L1 is on `backend`, holding [`KEY`] with a TTL (so that a
/// hit checks its deadline, as in service use).
fn l1_cache(runtime: &tokio::runtime::Runtime, backend: MemoryBackend) -> Cache<String> {
    let cache: Cache<String> = Cache::builder()
        .tier(
            MemoryTier::builder()
                .backend(backend)
                .max_entries(10_000)
                .build()
                .expect("tier"),
        )
        .default_ttl(Duration::from_secs(3_600))
        .build()
        .expect("cache");
    runtime.block_on(cache.set(KEY, value()));
    cache
}

fn l1_hits(runtime: &tokio::runtime::Runtime) {
    let ours = l1_cache(runtime, MemoryBackend::QuickCache);
    let ours_moka = l1_cache(runtime, MemoryBackend::Moka);
    let quick: quick_cache::sync::Cache<String, Arc<String>> =
        quick_cache::sync::Cache::new(10_000);
    quick.insert(KEY.to_owned(), Arc::new(value()));
    let moka: moka::sync::Cache<String, Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .expire_after(PerEntry)
        .build();
    moka.insert(KEY.to_owned(), Arc::new(value()));

    let (mut vs_quick, mut vs_moka) = (
        Comparison::new("L1 hit (quick_cache backend, default) ÷ quick_cache get"),
        Comparison::new("L1 hit (moka backend) ÷ moka sync get"),
    );
    let cache_block = |cache: &Cache<String>| {
        runtime.block_on(async {
            let started = Instant::now();
            for _ in 0..BLOCK {
                black_box(cache.get(black_box(KEY)).await);
            }
            started.elapsed() / u32::try_from(BLOCK).expect("block")
        })
    };
    for round in 0..=ROUNDS {
        let (mut a, mut q, mut b, mut m) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for block in 0..BLOCKS {
            let quick_block = || per_call(BLOCK, || drop(black_box(quick.get(black_box(KEY)))));
            let moka_block = || per_call(BLOCK, || drop(black_box(moka.get(black_box(KEY)))));
            if block % 2 == 0 {
                a.push(cache_block(&ours));
                q.push(quick_block());
                b.push(cache_block(&ours_moka));
                m.push(moka_block());
            } else {
                m.push(moka_block());
                b.push(cache_block(&ours_moka));
                q.push(quick_block());
                a.push(cache_block(&ours));
            }
        }
        if round == 0 {
            continue; // warm-up
        }
        vs_quick.round(round, &mut a, &mut q);
        vs_moka.round(round, &mut b, &mut m);
    }
    vs_quick.summary();
    vs_moka.summary();
}

async fn l2(url: &str) -> Option<()> {
    let client = redis::Client::open(url).ok()?;
    let raw = tokio::time::timeout(Duration::from_secs(2), ConnectionManager::new(client))
        .await
        .ok()?
        .ok()?;
    let prefix = format!("perfkit-bench:blocks:{}:", std::process::id());
    let tier = || {
        RedisTier::builder(url)
            .prefix(&prefix)
            .build()
            .expect("tier")
    };
    let writer: Cache<String> = Cache::builder().tier(tier()).build().expect("cache");
    let names: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    for name in &names {
        writer.set(name, kib()).await;
    }
    let stored: Vec<String> = names.iter().map(|name| format!("{prefix}{name}")).collect();

    let mut cpu_over: Vec<f64> = Vec::with_capacity(ROUNDS);
    let (mut hits, mut loads) = (
        Comparison::new("L2 hit with promotion ÷ raw GET"),
        Comparison::new("miss and load ÷ raw GET + SET"),
    );
    for round in 0..=ROUNDS {
        // A cache whose L1 is empty: each first get of a key is an L2 hit.
        let reader: Cache<String> = Cache::builder()
            .tier(MemoryTier::with_max_entries(10_000))
            .tier(tier())
            .build()
            .expect("cache");
        let _ = reader.get("warm-up").await;
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        let (mut ours_cpu, mut reference_cpu) = (Vec::new(), Vec::new());
        for (i, (name, key)) in names.iter().zip(&stored).enumerate() {
            let mut raw = raw.clone();
            let time_ours = async {
                let (started, cpu) = (Instant::now(), thread_cpu());
                let found = reader.get(name).await;
                let took = (started.elapsed(), thread_cpu().saturating_sub(cpu));
                assert!(found.is_some(), "{name} is in Redis");
                took
            };
            let time_raw = async {
                let (started, cpu) = (Instant::now(), thread_cpu());
                let found: Option<Vec<u8>> = raw.get(key).await.expect("GET");
                let took = (started.elapsed(), thread_cpu().saturating_sub(cpu));
                assert!(found.is_some());
                took
            };
            let (a, b) = if i % 2 == 0 {
                let a = time_ours.await;
                (a, time_raw.await)
            } else {
                let b = time_raw.await;
                (time_ours.await, b)
            };
            ours.push(a.0);
            ours_cpu.push(a.1);
            reference.push(b.0);
            reference_cpu.push(b.1);
        }
        let (mut load_ours, mut load_reference) = (Vec::new(), Vec::new());
        for i in 0..KEYS {
            let (name, raw_key) = (
                format!("miss:{round}:{i}"),
                format!("{prefix}raw:{round}:{i}"),
            );
            let mut raw = raw.clone();
            let time_ours = async {
                let started = Instant::now();
                let loaded = reader
                    .get_or_load(&name, || async { Ok::<_, std::io::Error>(kib()) })
                    .await;
                let took = started.elapsed();
                assert!(loaded.is_ok());
                took
            };
            let time_raw = async {
                let started = Instant::now();
                let found: Option<Vec<u8>> = raw.get(&raw_key).await.expect("GET");
                assert!(found.is_none());
                let () = raw
                    .set_ex(&raw_key, black_box(kib()), 60)
                    .await
                    .expect("SET");
                started.elapsed()
            };
            if i % 2 == 0 {
                load_ours.push(time_ours.await);
                load_reference.push(time_raw.await);
            } else {
                load_reference.push(time_raw.await);
                load_ours.push(time_ours.await);
            }
        }
        if round == 0 {
            continue; // warm-up: connections, the fill script
        }
        hits.round(round, &mut ours, &mut reference);
        let extra = median(&mut ours_cpu).as_secs_f64() - median(&mut reference_cpu).as_secs_f64();
        eprintln!(
            "round {round} L2 hit CPU over a raw GET: {:.2} µs",
            extra * 1e6
        );
        cpu_over.push(extra * 1e6);
        loads.round(round, &mut load_ours, &mut load_reference);
    }
    hits.summary();
    cpu_over.sort_by(f64::total_cmp);
    eprintln!(
        "L2 hit CPU over a raw GET (this thread's CPU time, medians per round): median of {} rounds {:.2} µs (min {:.2}, max {:.2})",
        cpu_over.len(),
        cpu_over[cpu_over.len() / 2],
        cpu_over[0],
        cpu_over[cpu_over.len() - 1]
    );
    loads.summary();
    writer.clear().await;
    Some(())
}

/// Pairs of invalidations per round of the propagation part.
const MESSAGES: usize = 200;

/// An L1-only cache on a Redis bus: what an instance keeps locally.
fn instance(url: &str, channel: &str) -> Cache<String> {
    Cache::builder()
        .name("blocks")
        .tier(MemoryTier::with_max_entries(1_000))
        .invalidation_bus(
            RedisBus::builder(url)
                .channel(channel)
                .build()
                .expect("bus"),
        )
        .build()
        .expect("cache")
}

/// Propagation: instance A's `invalidate(k)` until instance B's `get(k)`
/// stops returning it, against a raw `PUBLISH` until a subscriber task on
/// its own connection has the message; one of each in turn (order
/// alternating), both detected by a loop that checks and yields, on a
/// two-worker runtime.
async fn propagation(url: &str) -> Option<()> {
    let client = redis::Client::open(url).ok()?;
    let mut publisher = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let channel = format!("perfkit-bench:blocks:{}", std::process::id());
    let raw_channel = format!("{channel}:raw");
    let seen = Arc::new(AtomicU64::new(0));
    let mut pubsub = client.get_async_pubsub().await.ok()?;
    pubsub.subscribe(&raw_channel).await.ok()?;
    let subscriber = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(message) =
                poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut stream), cx)).await
            {
                seen.store(message.get_payload().unwrap_or(0), Ordering::Release);
            }
        })
    };
    let (a, b) = (instance(url, &channel), instance(url, &channel));
    // Subscribed once each has flushed its L1 for the first time.
    while a.stats().l1_flushes == 0 || b.stats().l1_flushes == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let mut comparison = Comparison::new("propagation ÷ raw PUBLISH -> subscriber");
    let mut sequence = 0_u64;
    for round in 0..=ROUNDS {
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for i in 0..MESSAGES {
            let key = format!("agent:{}", i % 100);
            // B holds the key locally (its set also reaches A, harmlessly).
            b.set(&key, value()).await;
            let time_ours = async {
                let started = Instant::now();
                a.invalidate(&key).await;
                while b.get(&key).await.is_some() {
                    tokio::task::yield_now().await;
                }
                started.elapsed()
            };
            sequence += 1;
            let time_raw = async {
                let started = Instant::now();
                let _: u64 = redis::cmd("PUBLISH")
                    .arg(&raw_channel)
                    .arg(sequence)
                    .query_async(&mut publisher)
                    .await
                    .expect("PUBLISH");
                while seen.load(Ordering::Acquire) != sequence {
                    tokio::task::yield_now().await;
                }
                started.elapsed()
            };
            if i % 2 == 0 {
                ours.push(time_ours.await);
                reference.push(time_raw.await);
            } else {
                reference.push(time_raw.await);
                ours.push(time_ours.await);
            }
        }
        if round == 0 {
            continue; // warm-up
        }
        comparison.round(round, &mut ours, &mut reference);
    }
    comparison.summary();
    subscriber.abort();
    Some(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    l1_hits(&runtime);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if runtime.block_on(l2(&url)).is_none() {
        eprintln!("tiered_cache_blocks: no Redis at {url}; the L2 parts are skipped");
        return;
    }
    if perfkit_benches::two_workers()
        .block_on(propagation(&url))
        .is_none()
    {
        eprintln!("tiered_cache_blocks: propagation skipped (no pub/sub connection at {url})");
    }
}
