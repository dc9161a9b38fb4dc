//! The second method behind `pool_monitor/acquire`: sqlx's acquire and the
//! instrumented one alternated op by op (so both see the same machine), the
//! acquire alone timed (each release settles between them), in rounds of
//! 2,000 pairs; prints the median of the per-round ratios and their range.
//! A loopback PostgreSQL at `DATABASE_URL` is needed.
//!
//! `cargo bench -p perfkit-benches --bench pool_monitor_blocks`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use perfkit_pool_monitor::InstrumentedPool;

const PAIRS: u32 = 2_000;
const ROUNDS: usize = 15;

fn main() {
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
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&url),
    ) else {
        eprintln!("pool_monitor_blocks skipped: no PostgreSQL at {url}");
        return;
    };
    for (label, leak) in [
        ("leak detection off", None),
        ("leak detection on", Some(Duration::from_secs(60))),
    ] {
        let mut builder = InstrumentedPool::builder(pool.clone()).name("blocks");
        if let Some(threshold) = leak {
            builder = builder.leak_threshold(threshold);
        }
        let instrumented = builder.build().expect("pool");
        let mut ratios = Vec::with_capacity(ROUNDS);
        let (mut plain_us, mut ours_us) = (Vec::new(), Vec::new());
        for _ in 0..=ROUNDS {
            let (mut plain, mut ours) = (Duration::ZERO, Duration::ZERO);
            runtime.block_on(async {
                for pair in 0..PAIRS {
                    // The order within a pair alternates too.
                    let first_plain = pair % 2 == 0;
                    for step in 0..2 {
                        // The acquire is timed; the release (sqlx returns a
                        // connection on a task) settles outside the timing.
                        if (step == 0) == first_plain {
                            let started = Instant::now();
                            let connection = black_box(pool.acquire().await.expect("connection"));
                            plain += started.elapsed();
                            drop(connection);
                        } else {
                            let started = Instant::now();
                            let connection =
                                black_box(instrumented.acquire().await.expect("connection"));
                            ours += started.elapsed();
                            drop(connection);
                        }
                        // Both connections idle again before the next timed
                        // acquire: it takes a pooled connection, uncontended.
                        while pool.num_idle() < 2 {
                            tokio::task::yield_now().await;
                        }
                    }
                }
            });
            ratios.push(ours.as_secs_f64() / plain.as_secs_f64());
            plain_us.push(plain.as_secs_f64() * 1e6 / f64::from(PAIRS));
            ours_us.push(ours.as_secs_f64() * 1e6 / f64::from(PAIRS));
        }
        // The first round warms up.
        ratios.remove(0);
        plain_us.remove(0);
        ours_us.remove(0);
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            (
                values[values.len() / 2],
                values[0],
                values[values.len() - 1],
            )
        };
        let (ratio, low, high) = median(&mut ratios);
        println!(
            "uncontended acquire, {label}, {ROUNDS} rounds of {PAIRS} alternating pairs: sqlx {:.2} µs, \
             instrumented {:.2} µs; instrumented ÷ sqlx median {ratio:.3} (range {low:.3}–{high:.3})",
            median(&mut plain_us).0,
            median(&mut ours_us).0,
        );
    }
}
