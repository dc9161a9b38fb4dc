//! `perfkit-pool-monitor`'s cost, in one run, on a sqlx pool of PostgreSQL
//! connections over loopback:
//! - sampling one pool (`snapshot`, and `publish`, which also sets its gauges);
//! - an uncontended acquire and release of a pooled connection, plain and
//!   through `InstrumentedPool` (with and without leak detection).
//!
//! `cargo bench -p perfkit-benches --bench pool_monitor` (needs PostgreSQL at
//! `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! without it the run is skipped).

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use perfkit_pool_monitor::{InstrumentedPool, PoolSource};

fn pool_monitor(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let Ok(pool) = runtime.block_on(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .min_connections(2)
            // No ping per acquire: the pool's own work is what is measured.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&url),
    ) else {
        eprintln!("pool_monitor skipped: no PostgreSQL at {url}");
        return;
    };
    let instrumented = InstrumentedPool::builder(pool.clone())
        .name("bench")
        .build()
        .expect("pool");
    let watched = InstrumentedPool::builder(pool.clone())
        .name("bench-leaks")
        .leak_threshold(Duration::from_secs(60))
        .build()
        .expect("pool");

    let mut group = c.benchmark_group("pool_monitor/sample");
    group.bench_function("snapshot", |b| {
        b.iter(|| black_box(instrumented.snapshot()));
    });
    group.bench_function("publish (snapshot and gauges)", |b| {
        b.iter(|| black_box(instrumented.publish()));
    });
    // What a monitor adds per sample for alerts on acquires: the totals,
    // and a window from two of them.
    let earlier = instrumented
        .acquires()
        .expect("an instrumented pool counts acquires");
    group.bench_function("acquire totals and window", |b| {
        b.iter(|| black_box(instrumented.acquires().map(|now| now.since(&earlier))));
    });
    group.finish();

    let mut group = c.benchmark_group("pool_monitor/acquire");
    group.bench_function("sqlx acquire + release", |b| {
        b.iter(|| {
            runtime.block_on(async {
                drop(black_box(pool.acquire().await.expect("connection")));
            });
        });
    });
    group.bench_function("InstrumentedPool acquire + release", |b| {
        b.iter(|| {
            runtime.block_on(async {
                drop(black_box(instrumented.acquire().await.expect("connection")));
            });
        });
    });
    group.bench_function(
        "with leak detection: InstrumentedPool acquire + release",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    drop(black_box(watched.acquire().await.expect("connection")));
                });
            });
        },
    );
    group.finish();
}

criterion_group!(benches, pool_monitor);
criterion_main!(benches);
