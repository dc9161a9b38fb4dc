//! The auditor as a `tracing_subscriber::Layer` over sqlx's own query events.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::auditor::Inner;
use crate::stats::Entry;

/// The target of sqlx's per-query events.
pub const SQLX_TARGET: &str = "sqlx::query";

/// Records every query sqlx reports into an [`Auditor`](crate::Auditor), and
/// counts repeated statements per request to find N+1 loops. From
/// [`Auditor::layer`](crate::Auditor::layer).
///
/// sqlx emits one event per query (target `sqlx::query`, level `DEBUG` by
/// default, `WARN` for its own slow-statement alert) with the statement,
/// the rows and the elapsed time; this layer needs those events enabled.
/// With `EnvFilter`, add `sqlx::query=debug` (or filter this layer on its
/// own with `Layer::with_filter`).
///
/// **N+1 loops** are counted in the *outermost* span of the event's span
/// tree (a request's span under tower-http's `TraceLayer`): one warning when
/// a statement reaches the count, none for statements spread over separate
/// requests. Queries outside any span are recorded but not counted.
///
/// ```
/// use perfkit_query_audit::Auditor;
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let auditor = Auditor::builder().build()?;
/// let subscriber = tracing_subscriber::registry().with(auditor.layer());
/// tracing::subscriber::with_default(subscriber, || {
///     // What sqlx emits after each query:
///     tracing::debug!(target: "sqlx::query", summary = "select 1", db.statement = "", rows_affected = 0_u64, rows_returned = 1_u64, elapsed_secs = 0.000_2);
/// });
/// assert_eq!(auditor.report(1)[0].text, "select ?");
/// # Ok::<(), perfkit_query_audit::ConfigError>(())
/// ```
pub struct AuditLayer {
    inner: Arc<Inner>,
}

impl AuditLayer {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// The auditor's layer with its own filter ([`SqlxQueries`]), as
/// [`Auditor::layer`](crate::Auditor::layer) returns it.
pub type FilteredAuditLayer<S> = Filtered<AuditLayer, SqlxQueries, S>;

/// A per-layer filter: sqlx's query events and every span (to find a
/// request's outermost span), nothing else. Installing the auditor then
/// turns on no other event of sqlx or of any other crate, and leaves what
/// the subscriber's other layers see unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlxQueries;

impl SqlxQueries {
    fn wants(metadata: &Metadata<'_>) -> bool {
        metadata.is_span() || metadata.target() == SQLX_TARGET
    }
}

impl<S> Filter<S> for SqlxQueries {
    fn enabled(&self, metadata: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        Self::wants(metadata)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if Self::wants(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

/// Statement counts of one request (kept in its outermost span).
#[derive(Default)]
struct Repeats(HashMap<u64, u32>);

/// Reads one sqlx query event.
struct QueryFields<'a> {
    inner: &'a Inner,
    /// The entry of `db.statement` (set when it is not empty).
    entry: Option<Arc<Entry>>,
    /// `summary`: the whole statement when `db.statement` is empty.
    summary: Option<String>,
    rows_returned: u64,
    rows_affected: u64,
    elapsed: Option<Duration>,
}

impl Visit for QueryFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "db.statement" => {
                let statement = value.trim();
                if !statement.is_empty() {
                    self.entry = Some(self.inner.entry(statement));
                }
            }
            "summary" => self.summary = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "rows_returned" => self.rows_returned = value,
            "rows_affected" => self.rows_affected = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, u64::try_from(value).unwrap_or(0));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = Duration::try_from_secs_f64(value).ok();
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// The statement an sqlx event carries (a second pass over its fields).
fn statement_of(event: &Event<'_>) -> String {
    #[derive(Default)]
    struct Statement {
        full: String,
        summary: String,
    }
    impl Visit for Statement {
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "db.statement" => value.trim().clone_into(&mut self.full),
                "summary" => value.trim().clone_into(&mut self.summary),
                _ => {}
            }
        }
        fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
    }
    let mut statement = Statement::default();
    event.record(&mut statement);
    if statement.full.is_empty() {
        statement.summary
    } else {
        statement.full
    }
}

impl<S> Layer<S> for AuditLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != SQLX_TARGET {
            return;
        }
        // The auditor's own statements are not recorded; a query audited
        // at its call site is recorded there (but counts for N+1 loops).
        // One walk from the event's span to the outermost one, the request.
        let mut audited = false;
        let mut root = None;
        for span in ctx.event_scope(event).into_iter().flatten() {
            match span.name() {
                crate::audited::EXPLAIN_SPAN => return,
                crate::audited::AUDITED_SPAN => audited = true,
                _ => {}
            }
            root = Some(span);
        }
        let mut fields = QueryFields {
            inner: &self.inner,
            entry: None,
            summary: None,
            rows_returned: 0,
            rows_affected: 0,
            elapsed: None,
        };
        event.record(&mut fields);
        let entry = match (fields.entry, fields.summary) {
            (Some(entry), _) => entry,
            (None, Some(summary)) if !summary.trim().is_empty() => self.inner.entry(summary.trim()),
            // Not a query event this layer can read: nothing to record.
            _ => return,
        };
        let Some(elapsed) = fields.elapsed else {
            return;
        };
        if !audited {
            let rows = crate::auditor::rows(&entry, fields.rows_returned, fields.rows_affected);
            if self.inner.observe(&entry, elapsed, rows).slow {
                // The statement is copied out of the event only when it goes to EXPLAIN.
                self.inner.explain_later(&entry, || statement_of(event));
            }
        }
        let Some(root) = root else {
            return;
        };
        let count = {
            let mut extensions = root.extensions_mut();
            if extensions.get_mut::<Repeats>().is_none() {
                extensions.insert(Repeats::default());
            }
            let Some(repeats) = extensions.get_mut::<Repeats>() else {
                return;
            };
            let count = repeats.0.entry(entry.fingerprint.id()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        if count == self.inner.n_plus_one {
            self.inner.n_plus_one_found(&entry, count, root.name());
        }
    }
}
