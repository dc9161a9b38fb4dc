//! `perfkit-query-audit`'s cost, in one run:
//! - a primary-key SELECT over loopback to PostgreSQL, un-audited, audited
//!   at the call site (`Auditor::audited`, and an `AuditedPool`) and audited through the tracing
//!   layer (sqlx's own events; with the layer installed sqlx also formats
//!   its event, which is part of what the layer path costs);
//! - the fast path alone (`Auditor::record` of a statement seen before);
//! - fingerprinting typical statements, against the same normalization
//!   (constants to `?`) through sqlparser's full parser.
//!
//! `cargo bench -p perfkit-benches --bench query_audit` (the SELECT group
//! needs PostgreSQL at `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! without it that group is skipped).

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use perfkit_query_audit::{Auditor, Fingerprint};
use sqlparser::ast::{Expr, Value, VisitMut, VisitorMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use tracing_subscriber::layer::SubscriberExt;

/// Statements of the kinds a service sends.
const STATEMENTS: [&str; 3] = [
    "SELECT id, name, email FROM users WHERE id = $1",
    "SELECT o.id, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.org = 42 AND o.status = 'open' ORDER BY o.created_at DESC LIMIT 20",
    "INSERT INTO events (account, kind, payload, created_at) VALUES ($1, $2, $3, now())",
];

const PK_SELECT: &str = "SELECT id, name FROM perfkit_bench_users WHERE id = $1";

fn auditor() -> Auditor {
    Auditor::builder()
        .slow_threshold(Duration::from_secs(10))
        .build()
        .expect("auditor")
}

fn pk_select(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let Ok(pool) = runtime.block_on(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&url),
    ) else {
        eprintln!("query_audit/pk_select skipped: no PostgreSQL at {url}");
        return;
    };
    runtime.block_on(async {
        sqlx::query("CREATE TABLE IF NOT EXISTS perfkit_bench_users (id int PRIMARY KEY, name text NOT NULL)")
            .execute(&pool)
            .await
            .expect("table");
        sqlx::query("INSERT INTO perfkit_bench_users SELECT i, 'user ' || i FROM generate_series(1, 10000) AS i ON CONFLICT DO NOTHING")
            .execute(&pool)
            .await
            .expect("rows");
    });
    let select = |id: i32| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i32, String)>(PK_SELECT)
                .bind(id)
                .fetch_one(&pool)
                .await
        }
    };
    let mut group = c.benchmark_group("query_audit/pk_select");
    let mut id = 0;
    group.bench_function("un-audited", |b| {
        b.iter(|| {
            id = id % 10_000 + 1;
            black_box(runtime.block_on(select(id)).expect("row"))
        });
    });
    let at_call_site = auditor();
    group.bench_function("audited at the call site", |b| {
        b.iter(|| {
            id = id % 10_000 + 1;
            let query = async { select(id).await.map(Some) };
            black_box(
                runtime
                    .block_on(at_call_site.audited(PK_SELECT, query))
                    .expect("row"),
            )
        });
    });
    let audited_pool = perfkit_query_audit::AuditedPool::new(pool.clone(), auditor());
    group.bench_function("audited through AuditedPool", |b| {
        b.iter(|| {
            id = id % 10_000 + 1;
            let query = sqlx::query_as::<_, (i32, String)>(PK_SELECT)
                .bind(id)
                .fetch_one(&audited_pool);
            black_box(runtime.block_on(query).expect("row"))
        });
    });
    let layered = auditor();
    let subscriber = tracing_subscriber::registry().with(layered.layer());
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("audited through the tracing layer", |b| {
            b.iter(|| {
                id = id % 10_000 + 1;
                black_box(runtime.block_on(select(id)).expect("row"))
            });
        });
    });
    group.finish();
}

fn fast_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("query_audit/fast_path");
    let auditor = auditor();
    for statement in STATEMENTS {
        auditor.record(statement, Duration::from_micros(300), 1);
    }
    group.bench_function("record a statement seen before", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 1) % STATEMENTS.len();
            black_box(auditor.record(black_box(STATEMENTS[at]), Duration::from_micros(300), 1))
        });
    });
    // What a query costs on the layer path besides the query itself: sqlx's
    // own summary and formatting (done only when its event is enabled, as
    // the layer makes it), the event's dispatch and the layer's recording.
    let layered = crate::auditor();
    let subscriber = tracing_subscriber::registry().with(layered.layer());
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("a sqlx query event through the layer", |b| {
            let mut at = 0;
            b.iter(|| {
                at = (at + 1) % STATEMENTS.len();
                sqlx_event(black_box(STATEMENTS[at]));
            });
        });
    });
    group.bench_function("a sqlx query event, no subscriber", |b| {
        let mut at = 0;
        b.iter(|| {
            at = (at + 1) % STATEMENTS.len();
            sqlx_event(black_box(STATEMENTS[at]));
        });
    });
    group.finish();
}

/// What sqlx 0.9's `QueryLogger::finish` does for one query: its enabled
/// check, then (if enabled) the summary, the formatted statement and the event.
fn sqlx_event(sql: &str) {
    let elapsed = Duration::from_micros(180);
    if tracing::enabled!(target: "sqlx::query", tracing::Level::DEBUG) {
        let mut summary: String = sql.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
        let statement = if summary == sql {
            String::new()
        } else {
            summary.push_str(" …");
            format!("\n\n{sql}\n")
        };
        tracing::debug!(
            target: "sqlx::query",
            summary,
            db.statement = statement,
            rows_affected = 0_u64,
            rows_returned = 1_u64,
            ?elapsed,
            elapsed_secs = elapsed.as_secs_f64(),
        );
    }
}

/// Constants to `?`, as the fingerprint does, through a full parse.
struct Redact;

impl VisitorMut for Redact {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Value(value) = expr {
            value.value = Value::Placeholder("?".to_owned());
        }
        ControlFlow::Continue(())
    }
}

fn fingerprint(c: &mut Criterion) {
    let mut group = c.benchmark_group("query_audit/fingerprint");
    group.throughput(criterion::Throughput::Elements(STATEMENTS.len() as u64));
    group.bench_function("perfkit Fingerprint::of", |b| {
        b.iter(|| {
            for statement in STATEMENTS {
                black_box(Fingerprint::of(black_box(statement)));
            }
        });
    });
    group.bench_function("sqlparser parse + redact + print", |b| {
        b.iter(|| {
            for statement in STATEMENTS {
                let mut ast =
                    Parser::parse_sql(&PostgreSqlDialect {}, black_box(statement)).expect("parses");
                let _ = ast.visit(&mut Redact);
                black_box(ast.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
        });
    });
    group.finish();
}

criterion_group!(benches, fast_path, fingerprint, pk_select);
criterion_main!(benches);
