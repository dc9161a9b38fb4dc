//! What the llm-batcher benchmarks share: the no-op work each batcher
//! drives, the peers built to do the same, and the load (64 tasks of 100
//! items on 2 threads). Included by `llm_batcher.rs` and
//! `llm_batcher_blocks.rs`.

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use perfkit_llm_batcher::{BatchExecutor, Batcher, ExecFuture, Executed, RateLimiter};
use tokio::runtime::Runtime;

/// A limiter that always admits: its check's own cost is what is measured.
pub(crate) fn open_limiter() -> RateLimiter {
    let max = NonZeroU32::MAX;
    RateLimiter::builder()
        .requests_per_minute(max)
        .tokens_per_minute(max)
        .token_burst(max)
        .request_burst(max)
        .build()
        .expect("limiter")
}

/// governor's limiter at its largest quota (always admits).
pub(crate) fn open_governor() -> governor::DefaultDirectRateLimiter {
    governor::RateLimiter::direct(governor::Quota::per_minute(NonZeroU32::MAX))
}

/// Does nothing: the batcher's own cost is what is measured.
pub(crate) struct Noop;

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
pub(crate) struct NoopProcessor;

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

pub(crate) const TASKS: u64 = 64;
pub(crate) const PER_TASK: u64 = 100;
pub(crate) const BATCH: usize = 64;

/// Runs `TASKS` tasks submitting `PER_TASK` items each through `submit`,
/// `iterations` times; returns the time taken.
pub(crate) fn drive<F, Fut>(runtime: &Runtime, iterations: u64, submit: F) -> Duration
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

/// Our batcher, closing batches of `BATCH` (or after 100 µs).
pub(crate) fn ours(rt: &Runtime) -> Batcher<Noop> {
    rt.block_on(async {
        Batcher::builder(Noop)
            .max_items(NonZeroUsize::new(BATCH).expect("batch"))
            .linger(Duration::from_micros(100))
            .build()
            .expect("batcher")
    })
}

/// batch-aint-one sending batches of up to `BATCH` as soon as it can, up
/// to 4 at a time (our default calls in flight).
pub(crate) fn batch_aint_one(rt: &Runtime) -> Arc<batch_aint_one::Batcher<NoopProcessor>> {
    rt.block_on(async {
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
    })
}

/// One iteration's load through each batcher.
pub(crate) fn drive_ours(rt: &Runtime, iterations: u64, ours: &Batcher<Noop>) -> Duration {
    let ours = ours.clone();
    drive(rt, iterations, move |item| {
        let ours = ours.clone();
        async move { ours.submit(item).await.expect("result") }
    })
}

pub(crate) fn drive_batch_aint_one(
    rt: &Runtime,
    iterations: u64,
    theirs: &Arc<batch_aint_one::Batcher<NoopProcessor>>,
) -> Duration {
    let theirs = Arc::clone(theirs);
    drive(rt, iterations, move |item| {
        let theirs = Arc::clone(&theirs);
        async move { theirs.add(0, item).await.expect("result") }
    })
}

pub(crate) fn drive_batched_fn(rt: &Runtime, iterations: u64) -> Duration {
    drive(rt, iterations, batched_fn_submit)
}

pub(crate) async fn batched_fn_submit(item: u64) -> u64 {
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
