//! A `metrics` recorder that keeps every counter, for tests that assert what
//! a crate reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

/// Every counter and gauge registered through it, by `name{label=value,...}`
/// (labels in registration order). Install it around the code that
/// registers the handles, e.g. with
/// `metrics::with_local_recorder(&*counters, || build())`.
#[derive(Debug, Default)]
pub struct Counters(
    Mutex<HashMap<String, Arc<Total>>>,
    Mutex<HashMap<String, Arc<Level>>>,
);

/// A gauge's value, as the bits of an `f64`.
#[derive(Debug, Default)]
struct Level(AtomicU64);

impl GaugeFn for Level {
    fn increment(&self, value: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Total(AtomicU64);

impl CounterFn for Total {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

/// `name{label=value,...}` of a metric key.
fn key_name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Counters {
    /// The value of the gauge `key` (`name{label=value,...}`), `None` if never registered.
    #[must_use]
    pub fn gauge(&self, key: &str) -> Option<f64> {
        self.1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|level| f64::from_bits(level.0.load(Ordering::SeqCst)))
    }

    /// The value of the counter `key` (`name{label=value,...}`), 0 if never registered.
    #[must_use]
    pub fn get(&self, key: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, |total| total.0.load(Ordering::SeqCst))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let total = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key_name(key))
            .or_default()
            .clone();
        Counter::from_arc(total)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let level = self
            .1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key_name(key))
            .or_default()
            .clone();
        Gauge::from_arc(level)
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
