//! The audit at the call site as an sqlx executor: `query.fetch_all(auditor.on(&pool))`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::{Database, Describe, Either, Error, Execute, Executor, Pool, SqlStr};

use crate::audited::{RowCount, audited_span};
use crate::auditor::Auditor;

/// An sqlx [`Executor`] whose queries the auditor records: a pool
/// (`auditor.on(&pool)`), a connection or a transaction
/// (`auditor.on(&mut *tx)`). From [`Auditor::on`].
///
/// Every way sqlx runs a query goes through it (`fetch_one`, `fetch_all`,
/// `fetch_optional`, `fetch`, `execute`, and the same on `query_as` and
/// `query_scalar`), so a call site is audited by changing its executor
/// argument only. A query is timed from its first poll to its last row (or
/// its error) and recorded under its statement with its rows; a stream
/// dropped early is recorded with the rows it gave. Queries run exactly as
/// they would on the wrapped executor: the same statement, the same
/// arguments, the same prepared-statement cache.
///
/// Where [`Auditor::layer`] is installed too, sqlx's own event for the
/// query is not recorded a second time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use perfkit_query_audit::Auditor;
///
/// let auditor = Auditor::builder().build()?;
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, org INTEGER)")
///     .execute(auditor.on(&pool))
///     .await?;
/// let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM users WHERE org = ?")
///     .bind(7)
///     .fetch_all(auditor.on(&pool))
///     .await?;
/// assert!(ids.is_empty());
/// assert_eq!(auditor.report(10).len(), 2);
/// # Ok(()) }
/// ```
pub struct AuditedExecutor<'a, E> {
    inner: E,
    auditor: &'a Auditor,
}

impl<'a, E> AuditedExecutor<'a, E> {
    pub(crate) fn new(auditor: &'a Auditor, inner: E) -> Self {
        Self { inner, auditor }
    }
}

impl<E: fmt::Debug> fmt::Debug for AuditedExecutor<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditedExecutor")
            .field("inner", &self.inner)
            .field("auditor", self.auditor)
            .finish()
    }
}

/// A pool whose queries are audited: `&AuditedPool` is an sqlx
/// [`Executor`], like `&Pool`. Cheap to clone.
///
/// Queries on connections taken out of it ([`pool`](Self::pool)`.acquire()`,
/// `begin()`) are audited through [`Auditor::on`]:
/// `query.execute(pool.auditor().on(&mut *tx))`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use perfkit_query_audit::{AuditedPool, Auditor};
///
/// let auditor = Auditor::builder().build()?;
/// let pool = AuditedPool::new(sqlx::SqlitePool::connect("sqlite::memory:").await?, auditor);
/// let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
/// assert_eq!(one, 1);
/// assert_eq!(pool.auditor().report(1)[0].text, "select ?");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AuditedPool<DB: Database> {
    pool: Pool<DB>,
    auditor: Auditor,
}

impl<DB: Database> AuditedPool<DB> {
    /// Audits the queries run on `pool` with `auditor`.
    #[must_use]
    pub fn new(pool: Pool<DB>, auditor: Auditor) -> Self {
        Self { pool, auditor }
    }

    /// The pool (its queries are not audited).
    #[must_use]
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The auditor.
    #[must_use]
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }
}

impl<'p, DB> Executor<'p> for &'p AuditedPool<DB>
where
    DB: Database,
    DB::QueryResult: RowCount,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, Q>(
        self,
        query: Q,
    ) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, Error>>
    where
        'p: 'e,
        Q: 'q + Execute<'q, DB>,
    {
        self.auditor.on(&self.pool).fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, Q>(
        self,
        query: Q,
    ) -> BoxFuture<'e, Result<Option<DB::Row>, Error>>
    where
        'p: 'e,
        Q: 'q + Execute<'q, DB>,
    {
        self.auditor.on(&self.pool).fetch_optional(query)
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, Result<DB::Statement, Error>>
    where
        'p: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<DB>, Error>>
    where
        'p: 'e,
    {
        self.pool.describe(sql)
    }
}

impl<'c, E> Executor<'c> for AuditedExecutor<'c, E>
where
    E: Executor<'c>,
    <E::Database as Database>::QueryResult: RowCount,
{
    type Database = E::Database;

    fn fetch_many<'e, 'q: 'e, Q>(
        self,
        query: Q,
    ) -> BoxStream<
        'e,
        Result<
            Either<<E::Database as Database>::QueryResult, <E::Database as Database>::Row>,
            Error,
        >,
    >
    where
        'c: 'e,
        Q: 'q + Execute<'q, E::Database>,
    {
        let (query, statement) = Tapped::new(query);
        Box::pin(AuditedStream {
            rows: Some(self.inner.fetch_many(query)),
            run: Run::new(self.auditor, statement),
            returned: 0,
            affected: 0,
        })
    }

    fn fetch_optional<'e, 'q: 'e, Q>(
        self,
        query: Q,
    ) -> BoxFuture<'e, Result<Option<<E::Database as Database>::Row>, Error>>
    where
        'c: 'e,
        Q: 'q + Execute<'q, E::Database>,
    {
        let (query, statement) = Tapped::new(query);
        Box::pin(AuditedRow {
            row: Some(self.inner.fetch_optional(query)),
            run: Run::new(self.auditor, statement),
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [<E::Database as Database>::TypeInfo],
    ) -> BoxFuture<'e, Result<<E::Database as Database>::Statement, Error>>
    where
        'c: 'e,
    {
        self.inner.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<E::Database>, Error>>
    where
        'c: 'e,
    {
        self.inner.describe(sql)
    }
}

/// Where a [`Tapped`] query leaves its statement when sqlx takes it.
type Statement = Arc<OnceLock<SqlStr>>;

/// A query that keeps a copy of its statement when sqlx takes it (an
/// [`Execute`] gives its statement up only by value); everything else is
/// the query's own, its prepared statement included.
struct Tapped<Q> {
    query: Q,
    statement: Statement,
}

impl<Q> Tapped<Q> {
    fn new(query: Q) -> (Self, Statement) {
        let statement = Statement::default();
        (
            Self {
                query,
                statement: Arc::clone(&statement),
            },
            statement,
        )
    }
}

impl<'q, DB: Database, Q: Execute<'q, DB>> Execute<'q, DB> for Tapped<Q> {
    fn sql(self) -> SqlStr {
        let sql = self.query.sql();
        // Static and shared statements are copied by reference.
        let _ = self.statement.set(sql.clone());
        sql
    }

    fn statement(&self) -> Option<&DB::Statement> {
        self.query.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<<DB as Database>::Arguments>, sqlx::error::BoxDynError> {
        self.query.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.query.persistent()
    }
}

/// One audited run: its start, and its record (once).
struct Run<'a> {
    auditor: &'a Auditor,
    /// Entered while the query is polled or dropped (see `AUDITED_SPAN`).
    span: tracing::Span,
    statement: Statement,
    started: Option<Instant>,
    recorded: bool,
}

impl<'a> Run<'a> {
    fn new(auditor: &'a Auditor, statement: Statement) -> Self {
        Self {
            auditor,
            span: audited_span(),
            statement,
            started: None,
            recorded: false,
        }
    }

    fn start(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }

    /// Records the run, once, if it started and sqlx took its statement.
    fn record(&mut self, returned: u64, affected: u64) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        if let (Some(started), Some(statement)) = (self.started, self.statement.get()) {
            self.auditor
                .record_counted(statement.as_str(), started.elapsed(), returned, affected);
        }
    }
}

/// [`AuditedExecutor::fetch_many`]'s stream.
struct AuditedStream<'a, S> {
    /// `None` once dropped (see `Drop`).
    rows: Option<S>,
    run: Run<'a>,
    returned: u64,
    affected: u64,
}

impl<S, R, T> Stream for AuditedStream<'_, S>
where
    S: Stream<Item = Result<Either<R, T>, Error>> + Unpin,
    R: RowCount,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(rows) = this.rows.as_mut() else {
            return Poll::Ready(None);
        };
        this.run.start();
        let polled = {
            let _entered = this.run.span.enter();
            Pin::new(rows).poll_next(cx)
        };
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(Either::Left(done)))) => {
                this.affected = this.affected.saturating_add(done.row_count());
            }
            Poll::Ready(Some(Ok(Either::Right(_)))) => {
                this.returned = this.returned.saturating_add(1);
            }
            Poll::Ready(Some(Err(_)) | None) => this.run.record(this.returned, this.affected),
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.rows.as_ref().map_or((0, Some(0)), Stream::size_hint)
    }
}

impl<S> Drop for AuditedStream<'_, S> {
    fn drop(&mut self) {
        // Dropped before its end (`fetch` read partly, or cancelled): record
        // what ran. sqlx's own event fires as its query is dropped, here
        // (not after this function, as a field would be), in the span that
        // tells the layer the call site records it.
        {
            let _entered = self.run.span.enter();
            drop(self.rows.take());
        }
        self.run.record(self.returned, self.affected);
    }
}

/// [`AuditedExecutor::fetch_optional`]'s future.
struct AuditedRow<'a, F> {
    /// `None` once dropped (see `Drop`).
    row: Option<F>,
    run: Run<'a>,
}

impl<F, T> Future for AuditedRow<'_, F>
where
    F: Future<Output = Result<Option<T>, Error>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(row) = this.row.as_mut() else {
            return Poll::Pending;
        };
        this.run.start();
        let polled = {
            let _entered = this.run.span.enter();
            Pin::new(row).poll(cx)
        };
        if let Poll::Ready(row) = &polled {
            let returned = row.as_ref().map_or(0, RowCount::row_count);
            this.run.record(returned, returned);
        }
        polled
    }
}

impl<F> Drop for AuditedRow<'_, F> {
    fn drop(&mut self) {
        {
            let _entered = self.run.span.enter();
            drop(self.row.take());
        }
        self.run.record(0, 0);
    }
}
