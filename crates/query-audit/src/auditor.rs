//! The auditor: records executed statements, keeps their statistics, flags
//! slow ones and N+1 loops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Gauge, counter, gauge};

use crate::audited::{Audited, RowCount};
use crate::error::ConfigError;
use crate::fingerprint::Fingerprint;
use crate::layer::{AuditLayer, FilteredAuditLayer, SqlxQueries};
use crate::stats::{Entry, QueryStats, Stats};

/// Notices waiting to be logged; beyond this they are dropped and counted.
const NOTICE_QUEUE: usize = 1_024;

/// Finds slow statements and N+1 loops, and keeps per-statement statistics
/// like `pg_stat_statements`, from inside the service.
///
/// Feed it from sqlx's own per-query events with [`layer`](Self::layer) (a
/// `tracing_subscriber::Layer`), or call [`record`](Self::record) where a
/// query runs. Cheap to clone: clones share everything.
///
/// **What is logged:** a `WARN` event (target `perfkit_query_audit::auditor`) per
/// execution over the slow threshold, and one per N+1 loop (the same
/// statement run [`n_plus_one`](AuditorBuilder::n_plus_one) times within one
/// request's span tree), with the statement's normalized text — constants
/// are never logged. The events are emitted from the auditor's own thread
/// (a layer cannot emit while tracing dispatches to it).
///
/// ```
/// use std::time::Duration;
///
/// use perfkit_query_audit::Auditor;
///
/// let auditor = Auditor::builder()
///     .slow_threshold(Duration::from_millis(50))
///     .build()?;
/// auditor.record("SELECT * FROM users WHERE id = 7", Duration::from_millis(2), 1);
/// auditor.record("select * from users where id = 8", Duration::from_millis(80), 1);
///
/// let top = auditor.report(10);
/// assert_eq!(top[0].text, "select * from users where id = ?");
/// assert_eq!((top[0].calls, top[0].slow_calls), (2, 1));
/// # Ok::<(), perfkit_query_audit::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) name: Arc<str>,
    slow_threshold: Duration,
    /// Slow thresholds by fingerprint id.
    slow_thresholds: HashMap<u64, Duration>,
    pub(crate) n_plus_one: u32,
    stats: Stats,
    /// Statements as written → their entry: a statement seen before is not
    /// scanned again. Bounded; statements beyond it are scanned each time.
    seen: DashMap<Box<str>, Arc<Entry>>,
    max_seen: usize,
    notices: SyncSender<Notice>,
    metrics: AuditorMetrics,
    /// EXPLAIN off the hot path, when an explainer is set.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) explain: Option<crate::worker::ExplainQueue>,
}

struct AuditorMetrics {
    fingerprints: Gauge,
    n_plus_one: Counter,
    dropped_notices: Counter,
}

/// What the notice thread logs.
pub(crate) enum Notice {
    Slow {
        id: u64,
        text: Box<str>,
        elapsed: Duration,
        threshold: Duration,
        rows: u64,
        /// The statement's advice from an earlier EXPLAIN, if any.
        advice: Box<str>,
    },
    NPlusOne {
        id: u64,
        text: Box<str>,
        count: u32,
        span: &'static str,
    },
}

/// What [`Auditor::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recorded {
    /// The statement's fingerprint id (0 when it went to the overflow entry).
    pub fingerprint: u64,
    /// Whether it was over its slow threshold.
    pub slow: bool,
}

/// Builds an [`Auditor`]: `Auditor::builder()…build()?`.
#[derive(Debug, Clone)]
#[must_use]
pub struct AuditorBuilder {
    slow_threshold: Duration,
    slow_thresholds: Vec<(String, Duration)>,
    n_plus_one: u32,
    max_fingerprints: usize,
    name: String,
    reveal_literals: bool,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    explain: crate::worker::ExplainSettings,
}

impl Default for AuditorBuilder {
    fn default() -> Self {
        Self {
            slow_threshold: Duration::from_millis(100),
            slow_thresholds: Vec::new(),
            n_plus_one: 10,
            max_fingerprints: 1_000,
            name: "default".to_owned(),
            reveal_literals: false,
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            explain: crate::worker::ExplainSettings::default(),
        }
    }
}

impl AuditorBuilder {
    /// Executions at least this long are slow. Default: 100 ms.
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.slow_threshold = threshold;
        self
    }

    /// A threshold of its own for one statement (any spelling of it: its
    /// fingerprint is what is matched).
    pub fn slow_threshold_for(mut self, statement: impl Into<String>, threshold: Duration) -> Self {
        self.slow_thresholds.push((statement.into(), threshold));
        self
    }

    /// The same statement run this many times within one request's span
    /// tree is an N+1 loop (one warning per loop). Default: 10.
    pub fn n_plus_one(mut self, executions: u32) -> Self {
        self.n_plus_one = executions;
        self
    }

    /// Distinct fingerprints kept; executions of any further one are
    /// counted in one overflow entry (label `fingerprint="other"`), so
    /// dynamic SQL cannot grow memory or metric cardinality without limit.
    /// Default: 1,000.
    pub fn max_fingerprints(mut self, fingerprints: usize) -> Self {
        self.max_fingerprints = fingerprints;
        self
    }

    /// Shows statements' constants where they appear in advice (a partial
    /// index's predicate). Default: off — logs and reports never hold a
    /// constant of a statement.
    pub fn reveal_literals(mut self, reveal: bool) -> Self {
        self.reveal_literals = reveal;
        self
    }

    /// EXPLAINs slow statements with `explainer`, off the hot path: a
    /// background task, a bounded queue (drops counted), at most one EXPLAIN
    /// per statement per [`explain_interval`](Self::explain_interval). The
    /// advice shows in [`QueryStats::advice`] and in a `WARN` per statement.
    /// Needs a tokio runtime at [`build`](Self::build).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
    pub fn explainer(mut self, explainer: crate::explain::Explainer) -> Self {
        self.explain.explainer = Some(explainer);
        self
    }

    /// At most one EXPLAIN per statement in this long. Default: 1 hour.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
    pub fn explain_interval(mut self, interval: Duration) -> Self {
        self.explain.interval = interval;
        self
    }

    /// The share of slow executions considered for EXPLAIN (0 to 1).
    /// Default: 1.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
    pub fn explain_sample_rate(mut self, rate: f64) -> Self {
        self.explain.sample_rate = rate;
        self
    }

    /// Statements waiting for EXPLAIN at most; beyond, they are dropped
    /// (and counted). Default: 64.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
    pub fn explain_queue(mut self, statements: usize) -> Self {
        self.explain.queue = statements;
        self
    }

    /// Names the auditor in metrics (`name` label). Default: `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the auditor and starts its notice thread.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyName`] for a blank name, [`ConfigError::Zero`] for
    /// a zero N+1 count or fingerprint bound, [`ConfigError::Thread`] when the
    /// notice thread cannot be started.
    pub fn build(self) -> Result<Auditor, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.n_plus_one == 0 {
            return Err(ConfigError::Zero("n_plus_one"));
        }
        if self.max_fingerprints == 0 {
            return Err(ConfigError::Zero("max_fingerprints"));
        }
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        self.explain.validate()?;
        let name: Arc<str> = Arc::from(self.name);
        let (notices, receiver) = std::sync::mpsc::sync_channel(NOTICE_QUEUE);
        std::thread::Builder::new()
            .name("perfkit-query-audit".to_owned())
            .spawn({
                let name = Arc::clone(&name);
                move || log_notices(&name, &receiver)
            })
            .map_err(ConfigError::Thread)?;
        let label = || ("name", name.to_string());
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        let explain = self.explain.start(&name, self.reveal_literals)?;
        Ok(Auditor {
            inner: Arc::new(Inner {
                slow_threshold: self.slow_threshold,
                slow_thresholds: self
                    .slow_thresholds
                    .into_iter()
                    .map(|(statement, threshold)| (Fingerprint::of(statement).id(), threshold))
                    .collect(),
                n_plus_one: self.n_plus_one,
                stats: Stats::new(self.max_fingerprints, Arc::clone(&name)),
                seen: DashMap::new(),
                max_seen: self.max_fingerprints.saturating_mul(4),
                notices,
                #[cfg(any(feature = "postgres", feature = "sqlite"))]
                explain,
                metrics: AuditorMetrics {
                    fingerprints: gauge!("perfkit_query_audit_fingerprints", &[label()]),
                    n_plus_one: counter!("perfkit_query_audit_n_plus_one_total", &[label()]),
                    dropped_notices: counter!(
                        "perfkit_query_audit_dropped_notices_total",
                        &[label()]
                    ),
                },
                name,
            }),
        })
    }
}

impl Auditor {
    /// A builder with the defaults each setter names.
    pub fn builder() -> AuditorBuilder {
        AuditorBuilder::default()
    }

    /// Records one execution of `statement`: `elapsed` long, `rows` rows
    /// returned or affected. Logs it if it is slow.
    pub fn record(&self, statement: &str, elapsed: Duration, rows: u64) -> Recorded {
        self.record_with(statement, elapsed, |_| rows)
    }

    /// [`record`](Self::record) with the rows as sqlx counts them: returned
    /// and affected.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "sqlite", feature = "any")),
        allow(dead_code)
    )]
    pub(crate) fn record_counted(
        &self,
        statement: &str,
        elapsed: Duration,
        returned: u64,
        affected: u64,
    ) -> Recorded {
        self.record_with(statement, elapsed, |entry| rows(entry, returned, affected))
    }

    /// Records one execution, its rows as `rows` says for its entry.
    fn record_with(
        &self,
        statement: &str,
        elapsed: Duration,
        rows: impl FnOnce(&Entry) -> u64,
    ) -> Recorded {
        let entry = self.inner.entry(statement);
        let recorded = self.inner.observe(&entry, elapsed, rows(&entry));
        if recorded.slow {
            self.inner.explain_later(&entry, || statement.to_owned());
        }
        recorded
    }

    /// Times `query` (a query's future) and records it under `statement`
    /// when it finishes, with the rows its result holds ([`RowCount`]: a
    /// `Vec`, an `Option`, and with feature `postgres` a `PgQueryResult` or
    /// a `PgRow`). Where [`layer`](Self::layer) is installed too, sqlx's own
    /// event for the query is not recorded again (it still counts for N+1
    /// loops).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let auditor = perfkit_query_audit::Auditor::builder().build()?;
    /// let statement = "SELECT id FROM users WHERE org = $1";
    /// // With sqlx: sqlx::query_as(statement).bind(7).fetch_all(&pool)
    /// let query = async { Ok::<Vec<i64>, std::io::Error>(vec![1, 2, 3]) };
    /// let ids = auditor.audited(statement, query).await?;
    /// assert_eq!(auditor.report(1)[0].rows, 3);
    /// # Ok(()) }
    /// ```
    pub fn audited<'a, F, T, E>(&'a self, statement: &'a str, query: F) -> Audited<'a, F>
    where
        F: std::future::Future<Output = Result<T, E>>,
        T: RowCount,
    {
        Audited::new(self, statement, query)
    }

    /// An sqlx executor that audits the queries run on `executor` (a
    /// `&Pool`, a `&mut` connection or transaction): change a call site's
    /// executor argument and its query is timed and recorded under its own
    /// statement, with its rows. See [`AuditedExecutor`](crate::AuditedExecutor).
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool, auditor: perfkit_query_audit::Auditor) -> Result<(), sqlx::Error> {
    /// let names: Vec<String> = sqlx::query_scalar("SELECT name FROM users WHERE org = $1")
    ///     .bind(7_i64)
    ///     .fetch_all(auditor.on(&pool))
    ///     .await?;
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("UPDATE users SET org = $1 WHERE org = $2")
    ///     .bind(8_i64)
    ///     .bind(7_i64)
    ///     .execute(auditor.on(&mut *tx))
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "any"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "postgres", feature = "sqlite", feature = "any")))
    )]
    pub fn on<'a, E>(&'a self, executor: E) -> crate::AuditedExecutor<'a, E>
    where
        E: sqlx::Executor<'a>,
    {
        crate::AuditedExecutor::new(self, executor)
    }

    /// The `top` statements by total time, slowest total first.
    #[must_use]
    pub fn report(&self, top: usize) -> Vec<QueryStats> {
        let mut all = self.inner.stats.snapshots();
        all.sort_by(|a, b| b.total.cmp(&a.total).then(b.calls.cmp(&a.calls)));
        all.truncate(top);
        all
    }

    /// One statement's statistics, by fingerprint id.
    #[must_use]
    pub fn stats(&self, fingerprint: u64) -> Option<QueryStats> {
        self.inner.stats.snapshot(fingerprint)
    }

    /// Distinct fingerprints kept (the overflow entry not counted).
    #[must_use]
    pub fn fingerprints(&self) -> usize {
        self.inner.stats.len()
    }

    /// Forgets every statistic (as `pg_stat_statements_reset()`).
    pub fn reset(&self) {
        self.inner.seen.clear();
        self.inner.stats.clear();
        self.inner.metrics.fingerprints.set(0.0);
    }

    /// A `tracing_subscriber::Layer` that records every query sqlx reports
    /// (events of target `sqlx::query`, which sqlx emits at `DEBUG` by
    /// default: let them through your filter) and counts N+1 loops per
    /// request span tree.
    ///
    /// The layer comes with its own filter ([`SqlxQueries`]): it enables
    /// sqlx's query events and spans for itself only, so installing it turns
    /// on no other event (sqlx's `TRACE` logs stay off) and changes nothing
    /// the subscriber's other layers see. [`unfiltered_layer`](Self::unfiltered_layer)
    /// is the same layer without it.
    #[must_use]
    pub fn layer<S>(&self) -> FilteredAuditLayer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_subscriber::Layer::with_filter(self.unfiltered_layer(), SqlxQueries)
    }

    /// The layer without its filter, to combine with a filter of your own.
    /// That filter must let through sqlx's query events (target
    /// `sqlx::query`, `DEBUG`) and this crate's `TRACE` spans (target
    /// `perfkit_query_audit`): they mark the queries recorded at their call
    /// site and the auditor's own EXPLAIN statements, which the layer must
    /// not record again.
    #[must_use]
    pub fn unfiltered_layer(&self) -> AuditLayer {
        AuditLayer::new(Arc::clone(&self.inner))
    }
}

/// A statement's rows: what a read returned; for a write, the larger of
/// what it returned and what it changed (PostgreSQL reports a `SELECT`'s
/// rows as affected too, as `pg_stat_statements` counts them; SQLite
/// reports the connection's last write's changes for a read).
pub(crate) fn rows(entry: &Entry, returned: u64, affected: u64) -> u64 {
    if entry.fingerprint.reads() {
        returned
    } else {
        returned.max(affected)
    }
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("name", &self.inner.name)
            .field("fingerprints", &self.inner.stats.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The entry of `statement`, from the statements seen before when it is
    /// one of them.
    pub(crate) fn entry(&self, statement: &str) -> Arc<Entry> {
        if let Some(entry) = self.seen.get(statement) {
            return Arc::clone(entry.value());
        }
        let before = self.stats.len();
        let entry = self.stats.entry(&Fingerprint::of(statement));
        if self.stats.len() != before {
            #[allow(clippy::cast_precision_loss)]
            self.metrics.fingerprints.set(self.stats.len() as f64);
        }
        if self.seen.len() < self.max_seen {
            self.seen.insert(Box::from(statement), Arc::clone(&entry));
        }
        entry
    }

    pub(crate) fn observe(&self, entry: &Entry, elapsed: Duration, rows: u64) -> Recorded {
        let id = entry.fingerprint.id();
        let threshold = self
            .slow_thresholds
            .get(&id)
            .copied()
            .unwrap_or(self.slow_threshold);
        let slow = elapsed >= threshold;
        entry.record(elapsed, rows, slow);
        if slow {
            let advice = entry
                .advice
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .join("; ");
            self.notify(Notice::Slow {
                id,
                text: Box::from(entry.fingerprint.text()),
                elapsed,
                threshold,
                rows,
                advice: advice.into_boxed_str(),
            });
        }
        Recorded {
            fingerprint: id,
            slow,
        }
    }

    /// Sends a slow statement to EXPLAIN if an explainer is set, the sample
    /// takes it and its interval has passed; `statement` is asked for only
    /// then (the layer copies it out of the event only for this).
    #[cfg_attr(
        not(any(feature = "postgres", feature = "sqlite")),
        allow(clippy::unused_self)
    )]
    pub(crate) fn explain_later(&self, entry: &Arc<Entry>, statement: impl FnOnce() -> String) {
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        if let Some(explain) = &self.explain {
            explain.offer(entry, statement);
        }
        #[cfg(not(any(feature = "postgres", feature = "sqlite")))]
        let _ = (entry, statement);
    }

    pub(crate) fn n_plus_one_found(&self, entry: &Entry, count: u32, span: &'static str) {
        self.metrics.n_plus_one.increment(1);
        entry.n_plus_one_found();
        self.notify(Notice::NPlusOne {
            id: entry.fingerprint.id(),
            text: Box::from(entry.fingerprint.text()),
            count,
            span,
        });
    }

    fn notify(&self, notice: Notice) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.notices.try_send(notice)
        {
            self.metrics.dropped_notices.increment(1);
        }
    }
}

/// The notice thread: logs what the auditor found, outside any tracing
/// dispatch. Ends when the auditor is dropped.
fn log_notices(name: &str, notices: &Receiver<Notice>) {
    while let Ok(notice) = notices.recv() {
        match notice {
            Notice::Slow {
                id,
                text,
                elapsed,
                threshold,
                rows,
                advice,
            } => tracing::warn!(
                audit.name = name,
                query.fingerprint = %format_args!("{id:016x}"),
                query.text = &*text,
                query.duration_ms = elapsed.as_secs_f64() * 1_000.0,
                query.threshold_ms = threshold.as_secs_f64() * 1_000.0,
                query.rows = rows,
                advice = &*advice,
                "slow query"
            ),
            Notice::NPlusOne {
                id,
                text,
                count,
                span,
            } => tracing::warn!(
                audit.name = name,
                query.fingerprint = %format_args!("{id:016x}"),
                query.text = &*text,
                query.count = count,
                span = span,
                "N+1 queries: the same statement {count} times in one request"
            ),
        }
    }
}
