//! loom models of the state machine: each explores every interleaving of a
//! small scenario (two or three threads) and asserts what the crate docs
//! promise. Run with
//! `RUSTFLAGS="--cfg perfkit_loom" cargo test -p perfkit-breaker --release --lib`.
//!
//! The cool-down is zero, so an open breaker hands the next call a probe:
//! time is not part of the model, every transition is.
//!
//! Mutations each model was seen to catch (the guard removed, the model
//! failed): the probe's `Drop` not reporting (left half-open); `healthy`
//! stored after the lock is released (flag out of step with the state); an
//! `allow` that hands out a probe without moving to half-open (two probes).

// A model's setup that fails should fail the model (clippy does not see a
// `cfg(all(test, perfkit_loom))` module as a test).
#![allow(clippy::expect_used)]

use std::num::NonZeroU32;
use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::AtomicUsize;
use loom::thread;

use super::{Breaker, State, Transition};
use crate::sync::Ordering;

fn breaker(threshold: u32) -> Arc<Breaker> {
    Arc::new(Breaker::new(
        NonZeroU32::new(threshold).unwrap_or(NonZeroU32::MIN),
        Duration::ZERO,
    ))
}

fn opened(threshold: u32) -> Arc<Breaker> {
    let breaker = breaker(threshold);
    for _ in 0..threshold {
        let call = breaker.allow().expect("closed");
        let _ = call.record(false);
    }
    assert!(matches!(breaker.state(), State::Open { .. }));
    breaker
}

/// The lock-free flag agrees with the state once every thread is done.
fn assert_in_step(breaker: &Breaker) {
    let state = breaker.state();
    assert_eq!(
        breaker.healthy.load(Ordering::SeqCst),
        state == State::Closed { failures: 0 },
        "the healthy flag is out of step with {state:?}"
    );
}

/// Runs `call` for each of `threads` threads and waits for them.
fn on_threads(threads: usize, call: impl Fn(usize) + Send + Sync + 'static) {
    let call = Arc::new(call);
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let call = Arc::clone(&call);
            thread::spawn(move || call(thread))
        })
        .collect();
    for handle in handles {
        handle.join().expect("a model thread panicked");
    }
}

/// Half-open lets one probe out at a time, and however its caller ends it
/// (dropped unreported, failed, succeeded), the breaker never stays
/// half-open.
#[test]
fn one_probe_at_a_time_and_no_probe_leaves_it_half_open() {
    for ending in 0..3 {
        loom::model(move || {
            let breaker = opened(1);
            let out = Arc::new(AtomicUsize::new(0));
            let (shared, probes) = (Arc::clone(&breaker), Arc::clone(&out));
            on_threads(2, move |thread| {
                let Some(call) = shared.allow() else {
                    return;
                };
                if !call.is_probe() {
                    let _ = call.record(true);
                    return;
                }
                let before = probes.fetch_add(1, Ordering::SeqCst);
                assert_eq!(before, 0, "two probes out at once");
                // Counted back in before the probe ends: no one else can
                // get one before its end reaches the state.
                probes.fetch_sub(1, Ordering::SeqCst);
                match (ending + thread) % 3 {
                    0 => drop(call),
                    1 => {
                        let _ = call.record(false);
                    }
                    _ => {
                        let _ = call.record(true);
                    }
                }
            });
            assert_ne!(breaker.state(), State::HalfOpen, "left half-open");
            assert_in_step(&breaker);
        });
    }
}

/// Failures and successes reported at once, from calls allowed while
/// closed: the flag the lock-free path reads ends in step with the state,
/// and the breaker opened only if the failures it saw last were
/// consecutive.
#[test]
fn concurrent_reports_leave_the_flag_in_step() {
    loom::model(|| {
        let breaker = breaker(2);
        let shared = Arc::clone(&breaker);
        on_threads(3, move |thread| {
            if let Some(call) = shared.allow() {
                let _ = call.record(thread == 1);
            }
        });
        assert_in_step(&breaker);
    });
}

/// A call allowed while closed that reports after the breaker opened,
/// while the probe is out or after it reported: never half-open at the
/// end, and a late success leaves it closed (the dependency answered).
#[test]
fn a_late_report_races_the_probe() {
    for late_success in [false, true] {
        loom::model(move || {
            let breaker = breaker(1);
            let slow = Arc::clone(&breaker);
            let (allowed_tx, allowed_rx) = loom::sync::mpsc::channel::<()>();
            let (opened_tx, opened_rx) = loom::sync::mpsc::channel::<()>();
            let late = thread::spawn(move || {
                let call = slow.allow().expect("allowed while closed");
                allowed_tx.send(()).expect("main waits");
                opened_rx.recv().expect("main opens the breaker");
                let _ = call.record(late_success);
            });
            allowed_rx.recv().expect("the slow call is out");
            let opened = breaker.allow().expect("closed").record(false);
            assert_eq!(opened, Some(Transition::Opened));
            opened_tx.send(()).expect("the late caller waits");
            if let Some(call) = breaker.allow() {
                let _ = call.record(true);
            }
            late.join().expect("the late caller");
            let state = breaker.state();
            assert_ne!(state, State::HalfOpen, "left half-open");
            if late_success {
                assert_eq!(
                    state,
                    State::Closed { failures: 0 },
                    "both calls succeeded last"
                );
            }
            assert_in_step(&breaker);
        });
    }
}
