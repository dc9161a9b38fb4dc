//! The audit at the call site: a query's future, timed and recorded.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use crate::auditor::Auditor;

/// The span a query audited at the call site runs in: the layer does not
/// record sqlx's event for it a second time (it still counts it for N+1
/// loops). A span, not a thread-local flag: sqlx's SQLite driver runs
/// queries (and emits their events) on a thread of its own, inside the
/// caller's span.
pub(crate) const AUDITED_SPAN: &str = "query_audit.audited";
/// The span the auditor's own statements run in (EXPLAIN and the catalog
/// reads around it): the layer ignores their events altogether.
pub(crate) const EXPLAIN_SPAN: &str = "query_audit.explain";

/// A span marking a query audited at the call site (`TRACE`, target
/// `perfkit_query_audit`; enabled where the auditor's layer is installed).
pub(crate) fn audited_span() -> tracing::Span {
    tracing::trace_span!(target: "perfkit_query_audit", "query_audit.audited")
}

pin_project! {
    /// A future whose sqlx queries the layer ignores (the explainer's).
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) struct Unaudited<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
    }
}

impl<F> Unaudited<F> {
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            span: tracing::trace_span!(target: "perfkit_query_audit", "query_audit.explain"),
        }
    }
}

impl<F: Future> Future for Unaudited<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        this.inner.poll(cx)
    }
}

/// The rows a query's result holds or touched, for [`Auditor::audited`].
pub trait RowCount {
    /// Rows returned or affected.
    fn row_count(&self) -> u64;
}

impl<T> RowCount for Vec<T> {
    fn row_count(&self) -> u64 {
        u64::try_from(self.len()).unwrap_or(u64::MAX)
    }
}

impl<T> RowCount for Option<T> {
    fn row_count(&self) -> u64 {
        u64::from(self.is_some())
    }
}

impl RowCount for u64 {
    fn row_count(&self) -> u64 {
        *self
    }
}

#[cfg(feature = "postgres")]
impl RowCount for sqlx::postgres::PgQueryResult {
    fn row_count(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "postgres")]
impl RowCount for sqlx::postgres::PgRow {
    fn row_count(&self) -> u64 {
        1
    }
}

#[cfg(feature = "any")]
impl RowCount for sqlx::any::AnyQueryResult {
    fn row_count(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "any")]
impl RowCount for sqlx::any::AnyRow {
    fn row_count(&self) -> u64 {
        1
    }
}

#[cfg(feature = "sqlite")]
impl RowCount for sqlx::sqlite::SqliteQueryResult {
    fn row_count(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "sqlite")]
impl RowCount for sqlx::sqlite::SqliteRow {
    fn row_count(&self) -> u64 {
        1
    }
}

pin_project! {
    /// A query's future, timed from its first poll to its result and
    /// recorded under its statement. From [`Auditor::audited`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct Audited<'a, F> {
        auditor: &'a Auditor,
        statement: &'a str,
        started: Option<Instant>,
        span: tracing::Span,
        #[pin]
        query: F,
    }
}

impl<'a, F> Audited<'a, F> {
    pub(crate) fn new(auditor: &'a Auditor, statement: &'a str, query: F) -> Self {
        Self {
            auditor,
            statement,
            started: None,
            span: audited_span(),
            query,
        }
    }
}

impl<F, T, E> Future for Audited<'_, F>
where
    F: Future<Output = Result<T, E>>,
    T: RowCount,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = *this.started.get_or_insert_with(Instant::now);
        let polled = {
            let _entered = this.span.enter();
            this.query.poll(cx)
        };
        let Poll::Ready(outcome) = polled else {
            return Poll::Pending;
        };
        let rows = outcome.as_ref().map_or(0, RowCount::row_count);
        this.auditor.record(this.statement, started.elapsed(), rows);
        Poll::Ready(outcome)
    }
}
