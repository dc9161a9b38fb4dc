//! The EXPLAIN worker: slow statements are queued (bounded, never waited
//! for) and explained one at a time on a background task.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use metrics::{Counter, counter};
use tokio::sync::mpsc;

use crate::error::ConfigError;
use crate::explain::{ExplainError, Explainer};
use crate::stats::Entry;

/// The builder's EXPLAIN settings.
#[derive(Debug, Clone)]
pub(crate) struct ExplainSettings {
    pub(crate) explainer: Option<Explainer>,
    pub(crate) interval: Duration,
    pub(crate) sample_rate: f64,
    pub(crate) queue: usize,
}

impl Default for ExplainSettings {
    fn default() -> Self {
        Self {
            explainer: None,
            interval: Duration::from_secs(3_600),
            sample_rate: 1.0,
            queue: 64,
        }
    }
}

impl ExplainSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(ConfigError::Rate("explain_sample_rate", self.sample_rate));
        }
        if self.queue == 0 {
            return Err(ConfigError::Zero("explain_queue"));
        }
        Ok(())
    }

    /// Starts the worker if there is an explainer.
    pub(crate) fn start(
        self,
        name: &Arc<str>,
        reveal_literals: bool,
    ) -> Result<Option<ExplainQueue>, ConfigError> {
        let Some(explainer) = self.explainer else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let (jobs, receiver) = mpsc::channel(self.queue);
        let metrics = ExplainMetrics::new(name);
        runtime.spawn(work(
            explainer,
            receiver,
            metrics.clone(),
            Arc::clone(name),
            reveal_literals,
        ));
        Ok(Some(ExplainQueue {
            jobs,
            interval: self.interval,
            // The rate as a share of the u64 range (1.0 → every one).
            threshold: rate_threshold(self.sample_rate),
            drawn: AtomicU64::new(0),
            sampler: RandomState::new(),
            metrics,
        }))
    }
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn rate_threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        (rate * u64::MAX as f64) as u64
    }
}

/// A statement to explain.
struct Job {
    entry: Arc<Entry>,
    statement: String,
}

/// The auditor's side of the worker.
pub(crate) struct ExplainQueue {
    jobs: mpsc::Sender<Job>,
    interval: Duration,
    threshold: u64,
    drawn: AtomicU64,
    sampler: RandomState,
    metrics: ExplainMetrics,
}

impl ExplainQueue {
    /// Queues `entry`'s statement for EXPLAIN when the sample takes it and
    /// its interval has passed; never waits.
    pub(crate) fn offer(&self, entry: &Arc<Entry>, statement: impl FnOnce() -> String) {
        if self.threshold != u64::MAX {
            let draw = self
                .sampler
                .hash_one(self.drawn.fetch_add(1, Ordering::Relaxed));
            if draw > self.threshold {
                return;
            }
        }
        {
            let mut explained_at = entry
                .explained_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if explained_at.is_some_and(|at| now.duration_since(at) < self.interval) {
                return;
            }
            *explained_at = Some(now);
        }
        let job = Job {
            entry: Arc::clone(entry),
            statement: statement(),
        };
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            self.jobs.try_send(job)
        {
            // Not explained after all: it may be offered again.
            *job.entry
                .explained_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            self.metrics.dropped.increment(1);
        }
    }
}

#[derive(Clone)]
struct ExplainMetrics {
    advised: Counter,
    no_advice: Counter,
    refused: Counter,
    failed: Counter,
    dropped: Counter,
}

impl ExplainMetrics {
    fn new(name: &str) -> Self {
        let outcome = |outcome: &'static str| counter!("perfkit_query_audit_explains_total", "name" => name.to_owned(), "outcome" => outcome);
        Self {
            advised: outcome("advised"),
            no_advice: outcome("no_advice"),
            refused: outcome("refused"),
            failed: outcome("failed"),
            dropped: counter!("perfkit_query_audit_explain_dropped_total", "name" => name.to_owned()),
        }
    }
}

/// Explains queued statements one at a time until the auditor is dropped.
async fn work(
    explainer: Explainer,
    mut jobs: mpsc::Receiver<Job>,
    metrics: ExplainMetrics,
    name: Arc<str>,
    reveal_literals: bool,
) {
    while let Some(Job { entry, statement }) = jobs.recv().await {
        let fingerprint = format!("{:016x}", entry.fingerprint.id());
        match explainer.explain(&statement).await {
            Ok(explained) => {
                let advice: Vec<String> = explained
                    .advice
                    .iter()
                    .map(|advice| {
                        let statement = if reveal_literals {
                            &advice.statement
                        } else {
                            &advice.redacted
                        };
                        format!("{statement} -- {} ({})", advice.evidence, advice.rule)
                    })
                    .collect();
                if advice.is_empty() {
                    metrics.no_advice.increment(1);
                } else {
                    metrics.advised.increment(1);
                    for line in &advice {
                        tracing::warn!(
                            audit.name = &*name,
                            query.fingerprint = %fingerprint,
                            query.text = entry.fingerprint.text(),
                            advice = %line,
                            "index advice for a slow query"
                        );
                    }
                }
                *entry.advice.lock().unwrap_or_else(PoisonError::into_inner) = advice;
            }
            Err(ExplainError::NotExplainable(why)) => {
                metrics.refused.increment(1);
                tracing::debug!(audit.name = &*name, query.fingerprint = %fingerprint, why, "slow statement not explained");
            }
            Err(error) => {
                metrics.failed.increment(1);
                tracing::warn!(audit.name = &*name, query.fingerprint = %fingerprint, %error, "EXPLAIN of a slow statement failed");
            }
        }
    }
}
