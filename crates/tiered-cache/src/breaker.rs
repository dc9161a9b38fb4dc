//! The circuit breaker in front of each remote tier.
//!
//! Closed: calls go through; `threshold` consecutive failures open it.
//! Open: calls are skipped (a miss) until `cool_down` has passed.
//! Half-open: one call, the probe, goes through; success closes the breaker,
//! failure opens it for another cool-down. Every decision is O(1) under a
//! lock held for a few instructions.
//!
//! An allowed call holds a [`Permit`] and reports through it. A probe whose
//! future is dropped before it reports (its caller timed out or went away)
//! counts as a failed probe when the permit drops: the breaker opens for
//! another cool-down and the next call after it probes again. Without that,
//! half-open would wait forever for a report that never comes.

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

    /// A permit for a call to the tier now, or `None` while it is skipped.
    pub(crate) fn allow(&self) -> Option<Permit<'_>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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

    /// Records the outcome of an allowed call.
    fn record(&self, success: bool) -> Option<Transition> {
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

    /// A probe that never reported: it counts as failed, so the breaker
    /// opens for another cool-down instead of staying half-open.
    fn abandon_probe(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state == State::HalfOpen {
            *state = State::Open {
                until: Instant::now() + self.cool_down,
            };
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            State::Closed { .. }
        )
    }
}

/// The right to make one call while the breaker allows it; report its
/// outcome with [`Permit::record`]. Dropped unreported, a probe counts as
/// failed (see the module doc); other calls count as nothing.
#[derive(Debug)]
#[must_use]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// Records the outcome of the call.
    pub(crate) fn record(mut self, success: bool) -> Option<Transition> {
        self.reported = true;
        self.breaker.record(success)
    }

    /// Whether this call is the half-open probe.
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_failures_and_probes_after_cool_down() {
        let breaker = Breaker::new(3, Duration::from_millis(20));
        assert_eq!(breaker.record(false), None);
        assert_eq!(breaker.record(false), None);
        let call = breaker.allow().expect("closed: calls go through");
        assert!(!call.is_probe());
        assert_eq!(call.record(false), Some(Transition::Opened));
        assert!(breaker.allow().is_none(), "open: calls are skipped");
        std::thread::sleep(Duration::from_millis(30));
        let probe = breaker.allow().expect("cool-down over: one probe");
        assert!(probe.is_probe());
        assert!(breaker.allow().is_none(), "only one probe at a time");
        assert_eq!(probe.record(true), Some(Transition::Closed));
        assert!(breaker.allow().is_some());
    }

    #[test]
    fn failed_probe_reopens() {
        let breaker = Breaker::new(1, Duration::from_millis(10));
        assert_eq!(breaker.record(false), Some(Transition::Opened));
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.allow().expect("a probe");
        assert_eq!(probe.record(false), Some(Transition::Opened));
        assert!(breaker.allow().is_none());
    }

    #[test]
    fn a_dropped_probe_counts_as_failed_and_the_next_cool_down_probes_again() {
        let breaker = Breaker::new(1, Duration::from_millis(10));
        assert_eq!(breaker.record(false), Some(Transition::Opened));
        std::thread::sleep(Duration::from_millis(20));
        let probe = breaker.allow().expect("a probe");
        drop(probe);
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
        let breaker = Breaker::new(1, Duration::from_secs(60));
        drop(breaker.allow());
        assert!(!breaker.is_open());
        assert!(breaker.allow().is_some());
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
