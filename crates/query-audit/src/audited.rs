//! The audit at the call site: a query's future, timed and recorded.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use crate::auditor::Auditor;

thread_local! {
    /// Set while an [`Audited`] future is polled: sqlx's event for the same
    /// query is then not recorded a second time by the layer.
    static AUDITING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as polling an [`Audited`] future until dropped (also
/// when the query's poll panics).
pub(crate) struct Marked(bool);

impl Marked {
    pub(crate) fn new() -> Self {
        Self(AUDITING.with(|auditing| auditing.replace(true)))
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        let before = self.0;
        AUDITING.with(|auditing| auditing.set(before));
    }
}

/// Whether the current thread is polling an [`Audited`] future.
pub(crate) fn auditing() -> bool {
    AUDITING.with(Cell::get)
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
            let _marked = Marked::new();
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
