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

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "shared/llm.rs"]
mod llm;

use llm::{PER_TASK, TASKS};

fn limiter_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("llm_batcher/limiter_check");
    let ours = llm::open_limiter();
    group.bench_function("perfkit (requests + tokens)", |b| {
        b.iter(|| black_box(ours.try_acquire(black_box(100)).expect("fits")).is_some());
    });
    let governor = llm::open_governor();
    group.bench_function("governor (one quantity)", |b| {
        b.iter(|| black_box(governor.check()).is_ok());
    });
    group.finish();
}

fn batcher_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("llm_batcher/overhead_per_item");
    group.throughput(Throughput::Elements(TASKS * PER_TASK));
    let rt = perfkit_benches::two_workers();
    let ours = llm::ours(&rt);
    group.bench_function("perfkit-llm-batcher", |b| {
        b.iter_custom(|iterations| llm::drive_ours(&rt, iterations, &ours));
    });
    let theirs = llm::batch_aint_one(&rt);
    group.bench_function("batch-aint-one", |b| {
        b.iter_custom(|iterations| llm::drive_batch_aint_one(&rt, iterations, &theirs));
    });
    group.bench_function("batched-fn", |b| {
        b.iter_custom(|iterations| llm::drive_batched_fn(&rt, iterations));
    });
    group.finish();
}

criterion_group!(benches, limiter_check, batcher_overhead);
criterion_main!(benches);
