//! Per-fingerprint statistics, as `pg_stat_statements` keeps them: calls,
//! total, min, max, mean, latency quantiles and rows, for a bounded number
//! of fingerprints (the rest share one overflow entry).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Histogram, counter, histogram};
use sketches_ddsketch::{Config, DDSketch};

use crate::fingerprint::Fingerprint;

/// The id and text of the entry that counts every fingerprint beyond the bound.
pub const OVERFLOW_TEXT: &str = "<other statements: over the fingerprint bound>";

/// One fingerprint's statistics, as [`Auditor::report`](crate::Auditor::report)
/// returns them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueryStats {
    /// The fingerprint's stable id (0 for the overflow entry).
    pub id: u64,
    /// The normalized statement, constants redacted.
    pub text: String,
    /// Executions recorded.
    pub calls: u64,
    /// Their total time.
    pub total: Duration,
    /// The fastest.
    pub min: Duration,
    /// The slowest.
    pub max: Duration,
    /// `total / calls`.
    pub mean: Duration,
    /// Median, 95th and 99th percentile (`DDSketch`, within 1 % of the true value).
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Rows returned or affected, summed.
    pub rows: u64,
    /// Executions over the slow threshold.
    pub slow_calls: u64,
    /// N+1 loops found: requests that ran the statement
    /// [`n_plus_one`](crate::AuditorBuilder::n_plus_one) times or more
    /// (counted by the layer, which sees the requests' spans).
    pub n_plus_one: u64,
    /// Index advice from the latest EXPLAIN of the statement (each a
    /// `CREATE INDEX` and its evidence; constants redacted unless the
    /// auditor reveals them); empty when not explained or nothing to advise.
    pub advice: Vec<String>,
}

/// One fingerprint's live statistics and metric handles.
pub(crate) struct Entry {
    pub(crate) fingerprint: Fingerprint,
    counters: Mutex<Counters>,
    /// The latest EXPLAIN's advice, as reported.
    pub(crate) advice: Mutex<Vec<String>>,
    /// When the statement was last sent to EXPLAIN (at most once per interval).
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) explained_at: Mutex<Option<std::time::Instant>>,
    metrics: EntryMetrics,
}

struct Counters {
    calls: u64,
    total: Duration,
    min: Duration,
    max: Duration,
    rows: u64,
    slow_calls: u64,
    n_plus_one: u64,
    /// Seconds.
    sketch: DDSketch,
}

struct EntryMetrics {
    calls: Counter,
    slow: Counter,
    rows: Counter,
    duration: Histogram,
}

impl Entry {
    /// `label`: what the metrics' `fingerprint` label says (the id in hex,
    /// `other` for the overflow entry).
    fn new(fingerprint: Fingerprint, label: String, name: &Arc<str>) -> Self {
        let labels = [("name", name.to_string()), ("fingerprint", label)];
        Self {
            fingerprint,
            counters: Mutex::new(Counters {
                calls: 0,
                total: Duration::ZERO,
                min: Duration::MAX,
                max: Duration::ZERO,
                rows: 0,
                slow_calls: 0,
                n_plus_one: 0,
                sketch: DDSketch::new(Config::defaults()),
            }),
            advice: Mutex::new(Vec::new()),
            explained_at: Mutex::new(None),
            metrics: EntryMetrics {
                calls: counter!("perfkit_query_audit_calls_total", &labels),
                slow: counter!("perfkit_query_audit_slow_total", &labels),
                rows: counter!("perfkit_query_audit_rows_total", &labels),
                duration: histogram!("perfkit_query_audit_duration_seconds", &labels),
            },
        }
    }

    /// Counts one execution.
    pub(crate) fn record(&self, elapsed: Duration, rows: u64, slow: bool) {
        let seconds = elapsed.as_secs_f64();
        {
            let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            counters.calls += 1;
            counters.total = counters.total.saturating_add(elapsed);
            counters.min = counters.min.min(elapsed);
            counters.max = counters.max.max(elapsed);
            counters.rows = counters.rows.saturating_add(rows);
            counters.slow_calls += u64::from(slow);
            counters.sketch.add(seconds);
        }
        self.metrics.calls.increment(1);
        self.metrics.rows.increment(rows);
        self.metrics.duration.record(seconds);
        if slow {
            self.metrics.slow.increment(1);
        }
    }

    /// One more N+1 loop of this statement.
    pub(crate) fn n_plus_one_found(&self) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters.n_plus_one += 1;
    }

    pub(crate) fn snapshot(&self) -> QueryStats {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        // The nearest-rank quantile (the ⌈q·n⌉-th smallest: the p99 of 3
        // executions is the slowest), which the sketch's own rank
        // (⌊q·(n−1)⌋, the second slowest of 3) is not for few samples.
        let quantile = |q: f64| {
            #[allow(clippy::cast_precision_loss)]
            let n = counters.sketch.count() as f64;
            let rank = (q * n).ceil().max(1.0);
            let q = if n > 1.0 {
                ((rank - 0.5) / (n - 1.0)).min(1.0)
            } else {
                1.0
            };
            counters
                .sketch
                .quantile(q)
                .ok()
                .flatten()
                .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
                .unwrap_or_default()
        };
        let calls = counters.calls;
        QueryStats {
            id: self.fingerprint.id(),
            text: self.fingerprint.text().to_owned(),
            calls,
            total: counters.total,
            min: if calls == 0 {
                Duration::ZERO
            } else {
                counters.min
            },
            max: counters.max,
            mean: counters
                .total
                .checked_div(u32::try_from(calls).unwrap_or(u32::MAX))
                .unwrap_or_default(),
            p50: quantile(0.5),
            p95: quantile(0.95),
            p99: quantile(0.99),
            rows: counters.rows,
            slow_calls: counters.slow_calls,
            n_plus_one: counters.n_plus_one,
            advice: self
                .advice
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Every fingerprint's entry, at most `max` of them plus the overflow.
pub(crate) struct Stats {
    entries: DashMap<u64, Arc<Entry>>,
    max: usize,
    overflow: Arc<Entry>,
    name: Arc<str>,
    overflowed: Counter,
}

impl Stats {
    pub(crate) fn new(max: usize, name: Arc<str>) -> Self {
        let overflow = Arc::new(Entry::new(
            Fingerprint::overflow(OVERFLOW_TEXT),
            "other".to_owned(),
            &name,
        ));
        Self {
            entries: DashMap::new(),
            max,
            overflow,
            overflowed: counter!("perfkit_query_audit_overflow_total", "name" => name.to_string()),
            name,
        }
    }

    /// The entry of `fingerprint`, created if there is room; the overflow
    /// entry otherwise.
    pub(crate) fn entry(&self, fingerprint: &Fingerprint) -> Arc<Entry> {
        if let Some(entry) = self.entries.get(&fingerprint.id()) {
            return Arc::clone(entry.value());
        }
        // Racing creators may overshoot the bound by a few; it stays bounded.
        if self.entries.len() >= self.max {
            self.overflowed.increment(1);
            return Arc::clone(&self.overflow);
        }
        let created = self.entries.entry(fingerprint.id()).or_insert_with(|| {
            let label = format!("{:016x}", fingerprint.id());
            Arc::new(Entry::new(fingerprint.clone(), label, &self.name))
        });
        Arc::clone(created.value())
    }

    /// One fingerprint's statistics (id 0: the overflow entry), if it has
    /// been called.
    pub(crate) fn snapshot(&self, id: u64) -> Option<QueryStats> {
        let stats = if id == 0 {
            self.overflow.snapshot()
        } else {
            self.entries.get(&id)?.value().snapshot()
        };
        (stats.calls > 0).then_some(stats)
    }

    /// Every entry with at least one call, the overflow included.
    pub(crate) fn snapshots(&self) -> Vec<QueryStats> {
        let mut all: Vec<QueryStats> = self
            .entries
            .iter()
            .map(|entry| entry.value().snapshot())
            .collect();
        let overflow = self.overflow.snapshot();
        if overflow.calls > 0 {
            all.push(overflow);
        }
        all.retain(|stats| stats.calls > 0);
        all
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn clear(&self) {
        self.entries.clear();
    }
}
