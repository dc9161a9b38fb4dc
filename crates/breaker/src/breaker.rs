//! The breaker's state machine.
//!
//! `State` is the whole of it: `Closed { failures }` counts consecutive
//! failures, `Open { until }` refuses calls until an instant, `HalfOpen`
//! has let one probe through and waits for its report. Who moves it:
//! - [`Breaker::allow`] moves `Open` to `HalfOpen` once `until` has passed
//!   (the caller gets the probe's permit);
//! - [`Permit::record`] moves `Closed` to `Open` after the threshold,
//!   `HalfOpen` to `Closed` (success) or `Open` (failure);
//! - a probe's [`Permit`] dropped unreported moves `HalfOpen` to `Open`.
//!
//! A report from a call allowed before the breaker opened (a slow call)
//! never reopens a breaker that is already open, and a success from one
//! closes it: the dependency answered.
//!
//! The healthy case (closed, no failure counted) is one atomic load per
//! `allow` and per successful `record`, no lock: `healthy` mirrors whether
//! `state` is `Closed { failures: 0 }` and is written under the lock.

use std::num::NonZeroU32;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::sync::{AtomicBool, Mutex, MutexGuard, Ordering};

/// A circuit breaker; see the [crate docs](crate). Share it by reference
/// (or in an `Arc`): every method takes `&self`.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
    /// Whether `state` is `Closed { failures: 0 }`, the common case: then
    /// `allow` and a successful `record` take no lock. Written under the
    /// lock; a stale read lets one call through as a call allowed just
    /// before the breaker opened would be, or takes the locked path.
    healthy: AtomicBool,
}

/// Where a [`Breaker`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Calls go through; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures since the last success.
        failures: u32,
    },
    /// Calls are refused until `until`.
    Open {
        /// When the next call becomes the probe.
        until: Instant,
    },
    /// One probe is out; calls are refused until it reports.
    HalfOpen,
}

/// A change worth logging and exporting (a gauge, a warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened: calls are refused for the cool-down.
    Opened,
    /// The breaker closed: the dependency answers again.
    Closed,
}

impl Breaker {
    /// A closed breaker that opens after `failures` consecutive failures
    /// and refuses calls for `cool_down` before it lets a probe through.
    #[must_use]
    pub fn new(failures: NonZeroU32, cool_down: Duration) -> Self {
        Self {
            threshold: failures.get(),
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
        }
    }

    /// A permit for one call now, or `None` while the breaker refuses calls
    /// (open, or half-open with its probe out).
    pub fn allow(&self) -> Option<Permit<'_>> {
        if self.healthy.load(Ordering::Acquire) {
            return Some(Permit {
                breaker: self,
                probe: false,
                reported: false,
            });
        }
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// Where the breaker is now.
    #[must_use]
    pub fn state(&self) -> State {
        *self.lock()
    }

    /// Whether the breaker is open or half-open (calls may be refused).
    #[must_use]
    pub fn is_open(&self) -> bool {
        !matches!(self.state(), State::Closed { .. })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value, consistent at every instant: a panic
        // elsewhere while the lock was held cannot have torn it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, success: bool) -> Option<Transition> {
        if success && self.healthy.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.lock();
        let transition = self.apply(&mut state, success);
        self.healthy
            .store(*state == State::Closed { failures: 0 }, Ordering::Release);
        transition
    }

    fn apply(&self, state: &mut State, success: bool) -> Option<Transition> {
        match (*state, success) {
            (State::Closed { failures }, true) => {
                if failures > 0 {
                    *state = State::Closed { failures: 0 };
                }
                None
            }
            (State::HalfOpen | State::Open { .. }, true) => {
                *state = State::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (State::Closed { failures }, false) if failures.saturating_add(1) < self.threshold => {
                *state = State::Closed {
                    failures: failures.saturating_add(1),
                };
                None
            }
            (State::Closed { .. } | State::HalfOpen, false) => {
                *state = State::Open {
                    until: Instant::now() + self.cool_down,
                };
                Some(Transition::Opened)
            }
            // A call allowed before the breaker opened failed late: it stays open.
            (State::Open { .. }, false) => None,
        }
    }

    /// A probe that never reported: it counts as failed.
    fn abandon_probe(&self) {
        let mut state = self.lock();
        if *state == State::HalfOpen {
            *state = State::Open {
                until: Instant::now() + self.cool_down,
            };
        }
    }
}

/// The right to make one call; report its outcome with [`Permit::record`].
/// Dropped unreported, a probe counts as failed; other calls count as nothing.
#[derive(Debug)]
#[must_use = "report the call's outcome with `record`, or drop the permit to abandon it"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// Records the outcome of the call; returns the transition it caused.
    pub fn record(mut self, success: bool) -> Option<Transition> {
        self.reported = true;
        self.breaker.record(success)
    }

    /// Whether this call is the half-open probe.
    #[must_use]
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(all(test, perfkit_loom))]
mod models;

// Ordinary tests only; under `perfkit_loom` the locks are loom's.
#[cfg(test)]
#[cfg(not(perfkit_loom))]
mod tests {
    use super::*;

    fn breaker(failures: u32, cool_down: Duration) -> Breaker {
        Breaker::new(
            NonZeroU32::new(failures).unwrap_or(NonZeroU32::MIN),
            cool_down,
        )
    }

    fn fail(breaker: &Breaker) -> Option<Transition> {
        breaker.allow().and_then(|call| call.record(false))
    }

    #[test]
    fn opens_after_threshold_failures_and_probes_after_cool_down() {
        let breaker = breaker(3, Duration::from_millis(20));
        assert_eq!(fail(&breaker), None);
        assert_eq!(fail(&breaker), None);
        let call = breaker.allow().expect("closed: calls go through");
        assert!(!call.is_probe());
        assert_eq!(call.record(false), Some(Transition::Opened));
        assert!(breaker.allow().is_none(), "open: calls are skipped");
        std::thread::sleep(Duration::from_millis(30));
        let probe = breaker.allow().expect("cool-down over: one probe");
        assert!(probe.is_probe());
        assert_eq!(breaker.state(), State::HalfOpen);
        assert!(breaker.allow().is_none(), "only one probe at a time");
        assert_eq!(probe.record(true), Some(Transition::Closed));
        assert!(breaker.allow().is_some());
    }

    #[test]
    fn failed_probe_reopens() {
        let breaker = breaker(1, Duration::from_millis(10));
        assert_eq!(fail(&breaker), Some(Transition::Opened));
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.allow().expect("a probe");
        assert_eq!(probe.record(false), Some(Transition::Opened));
        assert!(breaker.allow().is_none());
    }

    #[test]
    fn a_dropped_probe_counts_as_failed_and_the_next_cool_down_probes_again() {
        let breaker = breaker(1, Duration::from_millis(10));
        assert_eq!(fail(&breaker), Some(Transition::Opened));
        std::thread::sleep(Duration::from_millis(20));
        drop(breaker.allow().expect("a probe"));
        assert!(breaker.is_open());
        assert!(
            breaker.allow().is_none(),
            "open again for a cool-down, not half-open forever"
        );
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.allow().expect("a new probe after the cool-down");
        assert_eq!(probe.record(true), Some(Transition::Closed));
        assert!(!breaker.is_open());
    }

    #[test]
    fn a_dropped_call_while_closed_changes_nothing() {
        let breaker = breaker(1, Duration::from_secs(60));
        drop(breaker.allow());
        assert!(!breaker.is_open());
        assert!(breaker.allow().is_some());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let breaker = breaker(2, Duration::from_secs(60));
        assert_eq!(fail(&breaker), None);
        assert_eq!(breaker.allow().and_then(|call| call.record(true)), None);
        assert_eq!(fail(&breaker), None, "the count restarted");
        assert!(!breaker.is_open());
    }

    #[test]
    fn the_lock_free_healthy_flag_always_ends_in_step_with_the_state() {
        for round in 0..50_u32 {
            let breaker = breaker(3, Duration::from_micros(50));
            std::thread::scope(|scope| {
                for thread in 0..4_u32 {
                    let breaker = &breaker;
                    scope.spawn(move || {
                        for i in 0..2_000_u32 {
                            if let Some(call) = breaker.allow() {
                                // Failures in bursts, so the breaker opens and closes.
                                let fails = (i / 7 + thread + round) % 3 == 0;
                                let _ = call.record(!fails);
                            }
                        }
                    });
                }
            });
            let state = breaker.state();
            assert_eq!(
                breaker.healthy.load(Ordering::Acquire),
                state == State::Closed { failures: 0 },
                "round {round}: {state:?}"
            );
        }
    }

    #[test]
    fn a_late_failure_keeps_it_open_and_a_late_success_closes_it() {
        let breaker = breaker(1, Duration::from_secs(60));
        let slow = breaker.allow().expect("closed");
        assert_eq!(fail(&breaker), Some(Transition::Opened));
        assert!(breaker.allow().is_none(), "open");
        assert_eq!(slow.record(true), Some(Transition::Closed), "it answered");
        assert!(!breaker.is_open());
    }
}
