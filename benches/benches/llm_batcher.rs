//! `perfkit-llm-batcher` against what a Rust service would otherwise use, in
//! one run:
//! - the limiter's check (requests and tokens at once) against governor
//!   0.10's `check` (one quantity), both always admitting;
//! - the batcher's overhead per item, with an executor that does nothing,
//!   against batch-aint-one 0.16 and batched-fn 0.2 batching the same
//!   no-op work, items submitted by 64 concurrent tasks on 2 threads.
//!
//! `cargo bench -p perfkit-benches --bench llm_batcher`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use perfkit_llm_batcher::{BatchExecutor, Batcher, ExecFuture, Executed};
use tokio::runtime::Runtime;

const MAX: NonZeroU32 = NonZeroU32::MAX;

fn limiter_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("llm_batcher/limiter_check");
    let ours = perfkit_llm_batcher::RateLimiter::builder()
        .requests_per_minute(MAX)
        .tokens_per_minute(MAX)
        .token_burst(MAX)
        .request_burst(MAX)
        .build()
        .expect("limiter");
    group.bench_function("perfkit (requests + tokens)", |b| {
        b.iter(|| black_box(ours.try_acquire(black_box(100)).expect("fits")).is_some());
    });
    let governor = governor::RateLimiter::direct(governor::Quota::per_minute(MAX));
    group.bench_function("governor (one quantity)", |b| {
        b.iter(|| black_box(governor.check()).is_ok());
    });
    group.finish();
}

/// Does nothing: the batcher's own cost is what is measured.
struct Noop;

impl BatchExecutor for Noop {
    type Request = u64;
    type Response = u64;
    type Error = std::io::Error;

    fn model<'a>(&'a self, _request: &'a u64) -> &'a str {
        "m"
    }

    fn estimate_tokens(&self, _request: &u64) -> u32 {
        1
    }

    fn execute<'a>(
        &'a self,
        _model: &'a str,
        batch: &'a [u64],
    ) -> ExecFuture<'a, u64, std::io::Error> {
        Box::pin(async move { Ok(Executed::new(batch.iter().map(|item| Ok(*item)).collect())) })
    }
}

#[derive(Debug, Clone)]
struct NoopProcessor;

impl batch_aint_one::Processor for NoopProcessor {
    type Key = u8;
    type Input = u64;
    type Output = u64;
    type Error = String;
    type Resources = ();

    async fn acquire_resources(&self, _key: u8) -> Result<(), String> {
        Ok(())
    }

    async fn process(
        &self,
        _key: u8,
        inputs: impl Iterator<Item = u64> + Send,
        _resources: (),
    ) -> Result<Vec<u64>, String> {
        Ok(inputs.collect())
    }
}

const TASKS: u64 = 64;
const PER_TASK: u64 = 100;
const BATCH: usize = 64;

/// Runs `TASKS` tasks submitting `PER_TASK` items each through `submit`,
/// `iterations` times; returns the time taken.
fn drive<F, Fut>(runtime: &Runtime, iterations: u64, submit: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = u64> + Send,
{
    runtime.block_on(async move {
        let start = Instant::now();
        for _ in 0..iterations {
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let submit = submit.clone();
                    tokio::spawn(async move {
                        let mut sum = 0;
                        for item in 0..PER_TASK {
                            sum += submit(task * PER_TASK + item).await;
                        }
                        sum
                    })
                })
                .collect();
            for task in tasks {
                black_box(task.await.expect("task"));
            }
        }
        start.elapsed()
    })
}

fn batcher_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("llm_batcher/overhead_per_item");
    group.throughput(Throughput::Elements(TASKS * PER_TASK));
    let rt = perfkit_benches::two_workers();

    let ours = rt.block_on(async {
        Batcher::builder(Noop)
            .max_items(NonZeroUsize::new(BATCH).expect("batch"))
            .linger(Duration::from_micros(100))
            .build()
            .expect("batcher")
    });
    group.bench_function("perfkit-llm-batcher", |b| {
        b.iter_custom(|iterations| {
            let ours = ours.clone();
            drive(&rt, iterations, move |item| {
                let ours = ours.clone();
                async move { ours.submit(item).await.expect("result") }
            })
        });
    });

    let theirs = rt.block_on(async {
        Arc::new(
            batch_aint_one::Batcher::builder()
                .name("bench")
                .processor(NoopProcessor)
                .limits(
                    batch_aint_one::Limits::builder()
                        .max_batch_size(BATCH)
                        .max_key_concurrency(4)
                        .build(),
                )
                .batching_policy(batch_aint_one::BatchingPolicy::Immediate)
                .build(),
        )
    });
    group.bench_function("batch-aint-one", |b| {
        b.iter_custom(|iterations| {
            let theirs = Arc::clone(&theirs);
            drive(&rt, iterations, move |item| {
                let theirs = Arc::clone(&theirs);
                async move { theirs.add(0, item).await.expect("result") }
            })
        });
    });

    group.bench_function("batched-fn", |b| {
        b.iter_custom(|iterations| drive(&rt, iterations, batched_fn_submit));
    });
    group.finish();
}

async fn batched_fn_submit(item: u64) -> u64 {
    let batched = batched_fn::batched_fn! {
        handler = |batch: Vec<u64>| -> Vec<u64> { batch };
        config = {
            max_batch_size: 64,
            max_delay: 1,
        };
        context = {};
    };
    batched(item).await.expect("result")
}

criterion_group!(benches, limiter_check, batcher_overhead);
criterion_main!(benches);
