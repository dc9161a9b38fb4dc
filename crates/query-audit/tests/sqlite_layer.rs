//! The layer and the call site together on SQLite, whose sqlx driver runs
//! queries (and emits their events) on a thread of its own: a query audited
//! at its call site is recorded once, the explainer's own statements never.
//! (A binary of its own: SQLite's events reach only the global subscriber.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use perfkit_query_audit::explain::Explainer;
use perfkit_query_audit::{Auditor, Fingerprint};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn sqlite_queries_audited_at_the_call_site_count_once_and_explains_never() {
    let auditor = Auditor::builder().name("sqlite-layer").build().unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(auditor.layer()))
        .unwrap();
    let path = std::env::temp_dir().join(format!(
        "perfkit-query-audit-layer-{}.db",
        std::process::id()
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
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    // Through the layer alone, through the call site (and the layer).
    let plain = "SELECT count(*) FROM t";
    let _: i64 = sqlx::query_scalar(plain).fetch_one(&pool).await.unwrap();
    let audited = "SELECT id FROM t WHERE v = ?";
    for v in 0..3 {
        let _: Vec<i64> = sqlx::query_scalar(audited)
            .bind(v)
            .fetch_all(auditor.on(&pool))
            .await
            .unwrap();
    }
    let explained = Explainer::sqlite(options)
        .build()
        .explain(audited)
        .await
        .unwrap();
    assert!(!explained.plan.children.is_empty() || !explained.plan.node_type.is_empty());
    let calls = |sql: &str| auditor.stats(Fingerprint::of(sql).id()).map(|s| s.calls);
    assert_eq!(calls(plain), Some(1), "the layer records sqlx's events");
    assert_eq!(
        calls(audited),
        Some(3),
        "not twice: the call site records them"
    );
    let report = auditor.report(100);
    assert!(
        report
            .iter()
            .all(|stats| !stats.text.starts_with("explain")),
        "the explainer's statements are not the service's: {report:#?}"
    );
    drop(pool);
    let _ = std::fs::remove_file(path);
}
