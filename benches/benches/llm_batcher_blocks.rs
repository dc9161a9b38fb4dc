//! The second method behind the `llm_batcher` criterion figures: ours and
//! each peer in short alternating blocks, on the same machine state.
//!
//! - Limiter: each round times one block of 200,000 checks of ours and one
//!   of governor's (the order swapped every round); 40 rounds.
//! - Batcher: each round drives the same load (64 tasks of 100 items on 2
//!   threads) through ours, batch-aint-one and batched-fn, in a rotating
//!   order; 30 rounds.
//!
//! Prints, per pair, the median of the per-round ratios ours ÷ peer and
//! their range. `cargo bench -p perfkit-benches --bench llm_batcher_blocks`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "shared/llm.rs"]
mod llm;

const CHECKS: u32 = 200_000;
const LIMITER_ROUNDS: usize = 40;
const BATCHER_ROUNDS: usize = 30;

fn time(mut check: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..CHECKS {
        check();
    }
    start.elapsed()
}

/// Median, lowest and highest.
fn summary(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn limiter() {
    let ours = llm::open_limiter();
    let governor = llm::open_governor();
    let mut ours_check = || {
        let _ = black_box(ours.try_acquire(black_box(100)).expect("fits")).is_some();
    };
    let mut governor_check = || {
        let _ = black_box(governor.check()).is_ok();
    };
    time(&mut ours_check);
    time(&mut governor_check);
    let (mut ratios, mut ours_ns, mut governor_ns) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..LIMITER_ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = time(&mut ours_check);
            (a, time(&mut governor_check))
        } else {
            let b = time(&mut governor_check);
            (time(&mut ours_check), b)
        };
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
        ours_ns.push(a.as_secs_f64() * 1e9 / f64::from(CHECKS));
        governor_ns.push(b.as_secs_f64() * 1e9 / f64::from(CHECKS));
    }
    let (ratio, low, high) = summary(ratios);
    println!(
        "limiter check, {LIMITER_ROUNDS} alternating blocks of {CHECKS}: perfkit {:.1} ns, \
         governor {:.1} ns; perfkit ÷ governor median {ratio:.2} (range {low:.2}–{high:.2})",
        summary(ours_ns).0,
        summary(governor_ns).0,
    );
}

fn batcher() {
    let rt = perfkit_benches::two_workers();
    let ours = llm::ours(&rt);
    let theirs = llm::batch_aint_one(&rt);
    let items = f64::from(u32::try_from(llm::TASKS * llm::PER_TASK).expect("items"));
    let run = |which: usize| -> f64 {
        let elapsed = match which {
            0 => llm::drive_ours(&rt, 1, &ours),
            1 => llm::drive_batch_aint_one(&rt, 1, &theirs),
            _ => llm::drive_batched_fn(&rt, 1),
        };
        elapsed.as_secs_f64() * 1e9 / items
    };
    for which in 0..3 {
        run(which);
    }
    let mut per_item = [Vec::new(), Vec::new(), Vec::new()];
    let (mut vs_aint_one, mut vs_batched_fn) = (Vec::new(), Vec::new());
    for round in 0..BATCHER_ROUNDS {
        let mut this_round = [0.0; 3];
        for step in 0..3 {
            let which = (round + step) % 3;
            this_round[which] = run(which);
        }
        for (which, ns) in this_round.iter().enumerate() {
            per_item[which].push(*ns);
        }
        vs_aint_one.push(this_round[0] / this_round[1]);
        vs_batched_fn.push(this_round[0] / this_round[2]);
    }
    let [ours_ns, aint_one_ns, batched_fn_ns] = per_item.map(|values| summary(values).0);
    let (aint_one, aint_low, aint_high) = summary(vs_aint_one);
    let (batched, batched_low, batched_high) = summary(vs_batched_fn);
    println!(
        "batcher overhead per item, {BATCHER_ROUNDS} rotating rounds: perfkit {ours_ns:.0} ns, \
         batch-aint-one {aint_one_ns:.0} ns, batched-fn {batched_fn_ns:.0} ns; perfkit ÷ \
         batch-aint-one median {aint_one:.2} (range {aint_low:.2}–{aint_high:.2}), perfkit ÷ \
         batched-fn median {batched:.2} (range {batched_low:.2}–{batched_high:.2})"
    );
}

fn main() {
    limiter();
    batcher();
}
