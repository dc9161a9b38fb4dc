//! One Redis against a Redis Cluster, op by op: an L2 hit of the tiered
//! cache (a Redis-only cache, so every `get` is one `GET`), and through the
//! idempotency layer a new key (claim, run, record) and a replay. Each
//! operation runs on one node, then the same operation on the cluster,
//! alternating; each round reports both medians and their ratio, and the
//! summary the median of the per-round ratios (the machine drifts between
//! rounds, not between the two halves of a pair).
//!
//! Needs Redis at `REDIS_URL` and a cluster at `REDIS_CLUSTER_URLS` (the
//! defaults `.ci/run` uses); skipped with a message otherwise. Every master
//! of the cluster has a replica: point `REDIS_URL` at a node with one too
//! for the like-for-like comparison of writes (the idempotency README has
//! the commands).
//!
//! `cargo bench -p perfkit-benches-http --bench cluster` (a current-thread
//! runtime), and `PERFKIT_BENCH_RUNTIME=multi cargo bench …` (two workers).

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use perfkit_idempotency::{IdempotencyLayer, RedisStore};
use perfkit_tiered_cache::{Cache, RedisTier};
use tower::ServiceExt;

const ROUNDS: usize = 10;
const PAIRS: usize = 400;

fn single_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn cluster_urls() -> Vec<String> {
    std::env::var("REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            (7000..=7005)
                .map(|port| format!("redis://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn app(store: RedisStore) -> Router {
    Router::new()
        .route("/payments", post(|| async { (StatusCode::CREATED, "ok") }))
        .layer(IdempotencyLayer::builder(store).unscoped().build().unwrap())
}

fn payment(key: &str) -> Request<Body> {
    Request::post("/payments")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(r#"{"amount":100,"currency":"eur"}"#))
        .unwrap()
}

async fn send(app: &Router, key: &str) -> Duration {
    let started = Instant::now();
    let response = app.clone().oneshot(payment(key)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::CREATED);
    black_box(response);
    took
}

async fn get(cache: &Cache<String>, key: &str) -> Duration {
    let started = Instant::now();
    let found = cache.get(key).await;
    let took = started.elapsed();
    assert!(found.is_some());
    took
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Per-round (one node, cluster) medians of one operation.
#[derive(Default)]
struct Rounds {
    ratios: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, name: &str, round: usize, single: &mut [Duration], cluster: &mut [Duration]) {
        let (single, cluster) = (median(single), median(cluster));
        let ratio = cluster.as_secs_f64() / single.as_secs_f64();
        self.ratios.push(ratio);
        eprintln!(
            "round {round} {name}: one node {single:?}, cluster {cluster:?}, ratio {ratio:.2}"
        );
    }

    fn summary(&mut self, name: &str) {
        self.ratios.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: cluster ÷ one node, median of {} per-round ratios {:.2} (min {:.2}, max {:.2})",
            self.ratios.len(),
            self.ratios[self.ratios.len() / 2],
            self.ratios[0],
            self.ratios[self.ratios.len() - 1]
        );
    }
}

fn main() {
    let runtime = perfkit_runtime();
    runtime.block_on(async {
        let prefix = format!("perfkit-bench-cluster:{}:", std::process::id());
        let single_tier = RedisTier::builder(&single_url())
            .prefix(&prefix)
            .build()
            .unwrap();
        let cluster_tier = RedisTier::cluster_builder(&cluster_urls())
            .prefix(&prefix)
            .build()
            .unwrap();
        let single_cache: Cache<String> = Cache::builder().tier(single_tier).build().unwrap();
        let cluster_cache: Cache<String> = Cache::builder().tier(cluster_tier).build().unwrap();
        let keys: Vec<String> = (0..PAIRS).map(|i| format!("k{i}")).collect();
        for key in &keys {
            single_cache.set(key, "v".repeat(100)).await;
            cluster_cache.set(key, "v".repeat(100)).await;
        }
        if single_cache.get("k0").await.is_none() || cluster_cache.get("k0").await.is_none() {
            eprintln!(
                "cluster: Redis at {} or a cluster at {:?} is missing; skipped",
                single_url(),
                cluster_urls()
            );
            return;
        }
        let single_app = app(RedisStore::builder(&single_url())
            .prefix(&prefix)
            .build()
            .unwrap());
        let cluster_app = app(RedisStore::cluster_builder(&cluster_urls())
            .prefix(&prefix)
            .build()
            .unwrap());
        let (mut hits, mut new_keys, mut replays) =
            (Rounds::default(), Rounds::default(), Rounds::default());
        for round in 0..=ROUNDS {
            // Which of the pair goes first alternates: the first of two
            // operations in a row pays more for waking the runtime.
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (i, key) in keys.iter().enumerate() {
                if i % 2 == 0 {
                    a.push(get(&single_cache, key).await);
                    b.push(get(&cluster_cache, key).await);
                } else {
                    b.push(get(&cluster_cache, key).await);
                    a.push(get(&single_cache, key).await);
                }
            }
            let (mut c, mut d, mut e, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..PAIRS {
                let key = format!("r{round}-{i}");
                if i % 2 == 0 {
                    c.push(send(&single_app, &key).await);
                    d.push(send(&cluster_app, &key).await);
                    e.push(send(&single_app, &key).await);
                    f.push(send(&cluster_app, &key).await);
                } else {
                    d.push(send(&cluster_app, &key).await);
                    c.push(send(&single_app, &key).await);
                    f.push(send(&cluster_app, &key).await);
                    e.push(send(&single_app, &key).await);
                }
            }
            if round == 0 {
                continue; // warm-up: connections, scripts
            }
            hits.add("L2 hit", round, &mut a, &mut b);
            new_keys.add("new key", round, &mut c, &mut d);
            replays.add("replay", round, &mut e, &mut f);
        }
        hits.summary("L2 hit");
        new_keys.summary("idempotency new key");
        replays.summary("idempotency replay");
        single_cache.clear().await;
        cluster_cache.clear().await;
    });
}

/// A current-thread runtime, or with `PERFKIT_BENCH_RUNTIME=multi` two
/// workers (the second method: other wake-ups, other scheduling).
fn perfkit_runtime() -> tokio::runtime::Runtime {
    if std::env::var("PERFKIT_BENCH_RUNTIME").is_ok_and(|runtime| runtime == "multi") {
        eprintln!("runtime: two workers");
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
    }
    eprintln!("runtime: current thread");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
