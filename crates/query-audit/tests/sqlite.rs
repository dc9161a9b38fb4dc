//! EXPLAIN QUERY PLAN and index advice on SQLite (a file of the test's own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use perfkit_query_audit::explain::Explainer;
use perfkit_query_audit::{Auditor, Fingerprint};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, SqlitePool};

async fn database() -> (SqlitePool, SqliteConnectOptions, std::path::PathBuf) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "perfkit-query-audit-{}-{}.db",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .unwrap();
    (pool, options, path)
}

async fn execute(pool: &SqlitePool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn a_whole_table_scan_is_advised_and_the_advice_fixes_it() {
    let (pool, options, path) = database().await;
    execute(&pool, "CREATE TABLE items (id INTEGER PRIMARY KEY, org INTEGER NOT NULL, created INTEGER NOT NULL, name TEXT)").await;
    execute(
        &pool,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO items SELECT i, i % 500, 20000 - i, 'item ' || i FROM n",
    )
    .await;
    let explainer = Explainer::sqlite(options).build();

    let lookup = "SELECT * FROM items WHERE org = ? AND created > 100";
    let explained = explainer.explain(lookup).await.unwrap();
    assert_eq!(explained.advice.len(), 1, "{explained:?}");
    let advice = &explained.advice[0];
    assert_eq!(advice.columns, ["org", "created"]);
    assert_eq!(
        advice.statement,
        "CREATE INDEX perfkit_items_org_created ON items (org, created)"
    );
    execute(&pool, &advice.statement).await;
    let fixed = explainer.explain(lookup).await.unwrap();
    assert!(fixed.advice.is_empty(), "{fixed:?}");
    assert!(fixed.plan.uses_index_on("items"), "{:?}", fixed.plan);

    // A sort in a temporary B-tree over a whole scan.
    let newest = "SELECT id, name FROM items ORDER BY created DESC LIMIT 10";
    let explained = explainer.explain(newest).await.unwrap();
    assert_eq!(
        explained.advice.first().map(|a| a.rule),
        Some("sort"),
        "{explained:?}"
    );
    execute(&pool, &explained.advice[0].statement).await;
    assert!(explainer.explain(newest).await.unwrap().advice.is_empty());

    // Small tables, statements that change nothing, DDL refused.
    execute(
        &pool,
        "CREATE TABLE tiny (id INTEGER PRIMARY KEY, v INTEGER)",
    )
    .await;
    assert!(
        explainer
            .explain("select * from tiny where v = 3")
            .await
            .unwrap()
            .advice
            .is_empty()
    );
    assert!(explainer.explain("DROP TABLE items").await.is_err());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 20_000);
    pool.close().await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn the_auditor_explains_slow_sqlite_statements() {
    let (pool, options, path) = database().await;
    execute(
        &pool,
        "CREATE TABLE logs (id INTEGER PRIMARY KEY, level TEXT NOT NULL, at INTEGER NOT NULL)",
    )
    .await;
    execute(
        &pool,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO logs SELECT i, CASE i % 3 WHEN 0 THEN 'warn' ELSE 'info' END, i FROM n",
    )
    .await;
    let auditor = Auditor::builder()
        .name("sqlite")
        .slow_threshold(Duration::ZERO)
        .explainer(Explainer::sqlite(options).build())
        .build()
        .unwrap();
    let statement = "SELECT * FROM logs WHERE at >= ? AND at <= ?";
    let rows: Vec<(i64, String, i64)> = auditor
        .audited(
            statement,
            sqlx::query_as(statement).bind(10).bind(20).fetch_all(&pool),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 11);
    let id = Fingerprint::of(statement).id();
    for _ in 0..500 {
        if auditor
            .stats(id)
            .is_some_and(|stats| !stats.advice.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = auditor.stats(id).unwrap();
    assert_eq!((stats.calls, stats.rows), (1, 11));
    assert_eq!(stats.advice.len(), 1, "{stats:?}");
    assert!(
        stats.advice[0].starts_with("CREATE INDEX perfkit_logs_at ON logs (at) -- SCAN logs"),
        "{stats:?}"
    );
    pool.close().await;
    let _ = std::fs::remove_file(path);
}

/// SQLite reports the rows its connection's last write changed as a read's
/// rows affected: a read's rows are the rows it returned.
#[tokio::test]
async fn a_read_after_a_write_on_sqlite_counts_the_rows_it_returned() {
    let (pool, _options, path) = database().await;
    let auditor = Auditor::builder().name("sqlite-rows").build().unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        .execute(auditor.on(&pool))
        .await
        .unwrap();
    let insert = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
                  INSERT INTO t SELECT i, i FROM n";
    sqlx::query(insert)
        .execute(auditor.on(&pool))
        .await
        .unwrap();
    let none = "SELECT id FROM t WHERE v < 0";
    let rows: Vec<(i64,)> = sqlx::query_as(none)
        .fetch_all(auditor.on(&pool))
        .await
        .unwrap();
    assert!(rows.is_empty());
    let three = "SELECT id FROM t WHERE v <= 3";
    let rows: Vec<(i64,)> = sqlx::query_as(three)
        .fetch_all(auditor.on(&pool))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let rows_of = |sql: &str| auditor.stats(Fingerprint::of(sql).id()).unwrap().rows;
    assert_eq!(rows_of(insert), 500);
    assert_eq!(rows_of(none), 0);
    assert_eq!(rows_of(three), 3);
    drop(pool);
    let _ = std::fs::remove_file(path);
}
