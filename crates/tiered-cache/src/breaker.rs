//! The circuit breaker in front of each remote tier.
//!
//! Closed: calls go through; `threshold` consecutive failures open it.
//! Open: calls are skipped (a miss) until `cool_down` has passed.
//! Half-open: one call, the probe, goes through; success closes the breaker,
//! failure opens it for another cool-down. Every decision is O(1) under a
//! lock held for a few instructions.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// A change worth logging and exporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go to the tier now.
    pub(crate) fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// Records the outcome of an allowed call.
    pub(crate) fn record(&self, success: bool) -> Option<Transition> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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

    pub(crate) fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_failures_and_probes_after_cool_down() {
        let breaker = Breaker::new(3, Duration::from_millis(20));
        assert_eq!(breaker.record(false), None);
        assert_eq!(breaker.record(false), None);
        assert!(breaker.allow());
        assert_eq!(breaker.record(false), Some(Transition::Opened));
        assert!(!breaker.allow(), "open: calls are skipped");
        std::thread::sleep(Duration::from_millis(30));
        assert!(breaker.allow(), "cool-down over: one probe");
        assert!(!breaker.allow(), "only one probe at a time");
        assert_eq!(breaker.record(true), Some(Transition::Closed));
        assert!(breaker.allow());
    }

    #[test]
    fn failed_probe_reopens() {
        let breaker = Breaker::new(1, Duration::from_millis(10));
        assert_eq!(breaker.record(false), Some(Transition::Opened));
        std::thread::sleep(Duration::from_millis(20));
        assert!(breaker.allow());
        assert_eq!(breaker.record(false), Some(Transition::Opened));
        assert!(!breaker.allow());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let breaker = Breaker::new(2, Duration::from_secs(60));
        assert_eq!(breaker.record(false), None);
        assert_eq!(breaker.record(true), None);
        assert_eq!(breaker.record(false), None, "the count restarted");
        assert!(!breaker.is_open());
    }
}
