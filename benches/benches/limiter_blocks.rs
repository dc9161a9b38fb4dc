//! The limiter's check against governor's, in short alternating blocks: the
//! second method behind the `llm_batcher/limiter_check` criterion figures.
//!
//! Each round times one block of `BLOCK` checks of ours and one of
//! governor's (the order swapped every round) and keeps the ratio; the
//! median of 40 rounds is printed with its range. Blocks last a few
//! milliseconds, so both sides of a ratio see the same machine.
//!
//! `cargo bench -p perfkit-benches --bench limiter_blocks`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

const BLOCK: u32 = 200_000;
const ROUNDS: usize = 40;

fn time(mut check: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..BLOCK {
        check();
    }
    start.elapsed()
}

fn main() {
    let max = NonZeroU32::MAX;
    let ours = perfkit_llm_batcher::RateLimiter::builder()
        .requests_per_minute(max)
        .tokens_per_minute(max)
        .token_burst(max)
        .request_burst(max)
        .build()
        .expect("limiter");
    let governor = governor::RateLimiter::direct(governor::Quota::per_minute(max));
    let mut ours_check = || {
        let _ = black_box(ours.try_acquire(black_box(100)).expect("fits")).is_some();
    };
    let mut governor_check = || {
        let _ = black_box(governor.check()).is_ok();
    };
    // Warm-up.
    time(&mut ours_check);
    time(&mut governor_check);
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut ours_ns, mut governor_ns) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = time(&mut ours_check);
            (a, time(&mut governor_check))
        } else {
            let b = time(&mut governor_check);
            (time(&mut ours_check), b)
        };
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
        ours_ns.push(a.as_secs_f64() * 1e9 / f64::from(BLOCK));
        governor_ns.push(b.as_secs_f64() * 1e9 / f64::from(BLOCK));
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (
            values[values.len() / 2],
            values[0],
            values[values.len() - 1],
        )
    };
    let (ratio, low, high) = median(&mut ratios);
    let (ours_median, ..) = median(&mut ours_ns);
    let (governor_median, ..) = median(&mut governor_ns);
    println!(
        "limiter check, {ROUNDS} alternating blocks of {BLOCK}: perfkit {ours_median:.1} ns, \
         governor {governor_median:.1} ns, perfkit ÷ governor median {ratio:.2} (range {low:.2}–{high:.2})"
    );
}
