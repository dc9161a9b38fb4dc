//! Counters, registered once per group so the hot path only increments.
//!
//! Names follow `perfkit_dedup_<what>_<unit>`, labelled `name`. Handles are
//! taken from the `metrics` recorder installed when the group is built: install
//! the exporter before building groups.

use metrics::{Counter, counter};

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// Times the work ran (one per flight).
    pub(crate) executions: Counter,
    /// Callers that joined a flight already in progress instead of running the work.
    pub(crate) coalesced: Counter,
    /// Flights whose work panicked.
    pub(crate) panics: Counter,
    /// Flights cancelled because every waiter left.
    pub(crate) abandoned: Counter,
}

impl Metrics {
    pub(crate) fn new(group: &str) -> Self {
        let group = group.to_owned();
        Self {
            executions: counter!("perfkit_dedup_executions_total", "name" => group.clone()),
            coalesced: counter!("perfkit_dedup_coalesced_total", "name" => group.clone()),
            panics: counter!("perfkit_dedup_panics_total", "name" => group.clone()),
            abandoned: counter!("perfkit_dedup_abandoned_total", "name" => group),
        }
    }
}
