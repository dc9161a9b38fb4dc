//! EXPLAIN and index advice on a live PostgreSQL 15.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use perfkit_query_audit::explain::{Analyze, ExplainError, Explainer};
use perfkit_test_support::postgres;
use sqlx::AssertSqlSafe;

/// The tests of this binary, one at a time: tracing caches whether a
/// callsite (sqlx's query event) is enabled across every thread, and a
/// test's scoped subscriber raced by another test's first sqlx query can
/// find that cache saying "never" (a test artifact: a service installs its
/// subscriber once, globally).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn execute(pool: &sqlx::PgPool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn an_unindexed_lookup_is_advised_and_the_advice_fixes_it() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(pool, "CREATE TABLE orders (id int PRIMARY KEY, org int NOT NULL, status text NOT NULL, total numeric)").await;
    execute(
        pool,
        "INSERT INTO orders SELECT i, i % 5000, CASE WHEN i % 50 = 0 THEN 'open' ELSE 'closed' END, i FROM generate_series(1, 100000) AS i",
    )
    .await;
    execute(pool, "ANALYZE orders").await;
    let explainer = Explainer::postgres(db.connect_options()).build();

    let explained = explainer
        .explain("SELECT * FROM orders WHERE org = 7")
        .await
        .unwrap();
    assert!(!explained.generic);
    assert_eq!(explained.advice.len(), 1, "{:?}", explained.advice);
    let advice = &explained.advice[0];
    assert_eq!(advice.rule, "seq_scan_filter");
    assert_eq!(advice.columns, ["org"]);
    let table = format!("{}.orders", db.schema());
    assert_eq!(advice.table, table);
    assert_eq!(
        advice.statement,
        format!("CREATE INDEX CONCURRENTLY ON {table} (org)")
    );
    assert!(
        advice.evidence.contains("Seq Scan on orders"),
        "{}",
        advice.evidence
    );
    // With HypoPG (.ci/run installs it), the planner's cost with the index
    // made hypothetical; without it, the advice says it has no estimate.
    let hypopg: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'hypopg')")
            .fetch_one(pool)
            .await
            .unwrap();
    if hypopg {
        let (before, after) = advice.estimate.expect("a HypoPG estimate");
        assert!(after < before / 10.0, "{before} → {after}");
        assert!(
            advice.evidence.contains("HypoPG: cost"),
            "{}",
            advice.evidence
        );
    } else {
        assert_eq!(advice.estimate, None);
        assert!(
            advice.evidence.contains("HypoPG is not installed"),
            "{}",
            advice.evidence
        );
    }

    // With ANALYZE allowed, the evidence holds what the scan measured, not
    // the estimate alone: the rows its filter removed, its time, its buffers.
    let analyzed = Explainer::postgres(db.connect_options())
        .analyze(Analyze::Select)
        .build()
        .explain("SELECT * FROM orders WHERE org = 7")
        .await
        .unwrap();
    assert!(analyzed.analyzed);
    let evidence = &analyzed.advice[0].evidence;
    assert!(
        evidence.contains("keeps about 20 of 100000 rows"),
        "{evidence}"
    );
    assert!(
        evidence.contains("ms,") && evidence.contains("buffers from cache"),
        "{evidence}"
    );

    // Placeholders: a generic plan on PostgreSQL 15 (no EXPLAIN (GENERIC_PLAN) there).
    let generic = explainer
        .explain("select * from orders where org = $1")
        .await
        .unwrap();
    assert!(generic.generic);
    assert_eq!(
        generic.advice.first().map(|a| a.columns.clone()),
        Some(vec!["org".to_owned()])
    );
    // The prepared statement is gone: the connection is left clean.
    let again = explainer
        .explain("select * from orders where org = $1 and total > $2")
        .await
        .unwrap();
    assert!(again.generic);

    // The advised index, created: the lookup uses it and is advised no more.
    execute(pool, &advice.statement).await;
    let fixed = explainer
        .explain("SELECT * FROM orders WHERE org = 7")
        .await
        .unwrap();
    assert!(fixed.advice.is_empty(), "{:?}", fixed.advice);
    assert!(fixed.plan.uses_index_on("orders"), "{:?}", fixed.plan);
    let fixed = explainer
        .explain("select * from orders where org = $1")
        .await
        .unwrap();
    assert!(fixed.advice.is_empty(), "{:?}", fixed.advice);

    // A constant on a two-valued column: a partial index.
    let partial = explainer
        .explain("select * from orders where status = 'open' and total > 99000")
        .await
        .unwrap();
    assert_eq!(partial.advice.len(), 1, "{:?}", partial.advice);
    assert_eq!(partial.advice[0].rule, "partial_index");
    assert_eq!(
        partial.advice[0].statement,
        format!("CREATE INDEX CONCURRENTLY ON {table} (total) WHERE status = 'open'::text")
    );
    execute(pool, &partial.advice[0].statement).await;
    let fixed = explainer
        .explain("select * from orders where status = 'open' and total > 99000")
        .await
        .unwrap();
    assert!(fixed.advice.is_empty(), "{:?}", fixed.advice);
}

#[tokio::test]
async fn a_costly_sort_is_advised_an_index_in_its_order() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(
        pool,
        "CREATE TABLE posts (id int PRIMARY KEY, created int NOT NULL, title text)",
    )
    .await;
    execute(pool, "INSERT INTO posts SELECT i, (i * 7919) % 100000, 't' || i FROM generate_series(1, 100000) AS i").await;
    execute(pool, "ANALYZE posts").await;
    let explainer = Explainer::postgres(db.connect_options()).build();
    let newest = "SELECT id, title FROM posts ORDER BY created DESC LIMIT 20";
    let explained = explainer.explain(newest).await.unwrap();
    assert_eq!(explained.advice.len(), 1, "{:?}", explained.advice);
    assert_eq!(explained.advice[0].rule, "sort");
    let table = format!("{}.posts", db.schema());
    assert_eq!(
        explained.advice[0].statement,
        format!("CREATE INDEX CONCURRENTLY ON {table} (created DESC)")
    );
    execute(pool, &explained.advice[0].statement).await;
    let fixed = explainer.explain(newest).await.unwrap();
    assert!(fixed.advice.is_empty(), "{:?}", fixed.advice);
    assert!(fixed.plan.uses_index_on("posts"), "{:?}", fixed.plan);
}

/// PostgreSQL 15's pitfall with placeholders: on skewed data the generic
/// plan (planned for an average value) keeps a Sort that the custom plans
/// avoid with the advised index. That index exists: it is not advised again.
#[tokio::test]
async fn an_index_the_generic_plan_skips_on_skewed_data_is_not_advised_again() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(
        pool,
        "CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL, due int NOT NULL, body text)",
    )
    .await;
    // About 0.5 % active, the rest done or failed, spread at random over
    // the table (a state that followed the rows' order would make an index
    // scan of a third of the table look cheap); `due` uncorrelated too;
    // rows wide enough that the table is not a few hundred pages.
    execute(
        pool,
        "INSERT INTO jobs SELECT i, CASE WHEN r < 0.005 THEN 'active' WHEN r < 0.5 THEN 'done' \
         ELSE 'failed' END, (i * 7919) % 100000, repeat('x', 200) || i \
         FROM generate_series(1, 100000) AS i, LATERAL (SELECT random() + i * 0 AS r) AS x",
    )
    .await;
    execute(pool, "ANALYZE jobs").await;
    let explainer = Explainer::postgres(db.connect_options()).build();
    let by_state = "SELECT id, body FROM jobs WHERE state = $1 ORDER BY due";
    let before = explainer.explain(by_state).await.unwrap();
    assert!(before.generic);
    assert_eq!(before.advice.len(), 1, "{:?}", before.advice);
    assert_eq!(before.advice[0].rule, "sort");
    assert_eq!(before.advice[0].columns, ["state", "due"]);
    execute(pool, &before.advice[0].statement).await;

    // The custom plan for the rare value uses the index, with no Sort ...
    let active = explainer
        .explain("SELECT id, body FROM jobs WHERE state = 'active' ORDER BY due")
        .await
        .unwrap();
    assert!(active.plan.uses_index_on("jobs"), "{:?}", active.plan);
    // (An INCLUDE for the columns it fetches may be advised; not the index again.)
    assert!(
        active.advice.iter().all(|advice| advice.rule == "covering"),
        "{:?}",
        active.advice
    );
    // ... the generic plan still sorts a whole scan, and nothing is advised.
    let after = explainer.explain(by_state).await.unwrap();
    let sorts = after.plan.walk().iter().any(|node| {
        node.node_type == "Sort"
            && node.children.first().map(|c| c.node_type.as_str()) == Some("Seq Scan")
    });
    assert!(sorts, "the generic plan still sorts: {:?}", after.plan);
    assert!(after.advice.is_empty(), "{:?}", after.advice);
}

#[tokio::test]
async fn a_join_reading_a_large_table_for_few_rows_is_advised_an_index_on_its_key() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(
        pool,
        "CREATE TABLE buyers (id int PRIMARY KEY, org int NOT NULL, name text NOT NULL)",
    )
    .await;
    execute(
        pool,
        "CREATE TABLE sales (id int PRIMARY KEY, buyer int NOT NULL, total int NOT NULL)",
    )
    .await;
    execute(
        pool,
        "INSERT INTO buyers SELECT i, i % 50, 'b' || i FROM generate_series(1, 5000) AS i",
    )
    .await;
    execute(
        pool,
        "INSERT INTO sales SELECT i, i % 5000 + 1, i FROM generate_series(1, 100000) AS i",
    )
    .await;
    execute(pool, "ANALYZE buyers").await;
    execute(pool, "ANALYZE sales").await;
    let explainer = Explainer::postgres(db.connect_options()).build();
    let statement = "SELECT s.id, s.total FROM buyers b JOIN sales s ON s.buyer = b.id WHERE b.org = 3 AND b.name LIKE 'b1%'";
    let explained = explainer.explain(statement).await.unwrap();
    let join: Vec<_> = explained
        .advice
        .iter()
        .filter(|a| a.rule == "join")
        .collect();
    assert_eq!(
        join.len(),
        1,
        "{:?}\n{:?}",
        explained.advice,
        explained.plan
    );
    let table = format!("{}.sales", db.schema());
    assert_eq!(
        join[0].statement,
        format!("CREATE INDEX CONCURRENTLY ON {table} (buyer)")
    );
    execute(pool, &join[0].statement).await;
    let fixed = explainer.explain(statement).await.unwrap();
    assert!(
        fixed.advice.iter().all(|a| a.rule != "join"),
        "{:?}",
        fixed.advice
    );
    assert!(fixed.plan.uses_index_on("sales"), "{:?}", fixed.plan);
}

#[tokio::test]
async fn many_heap_fetches_for_a_missing_column_are_advised_a_covering_index() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(pool, "CREATE TABLE ledger (id int PRIMARY KEY, account int NOT NULL, amount int NOT NULL, memo text)").await;
    execute(
        pool,
        "INSERT INTO ledger SELECT i, i % 500, i, 'm' FROM generate_series(1, 100000) AS i",
    )
    .await;
    execute(pool, "CREATE INDEX ledger_account ON ledger (account)").await;
    execute(pool, "VACUUM ANALYZE ledger").await;
    let explainer = Explainer::postgres(db.connect_options()).build();
    let statement = "SELECT account, amount FROM ledger WHERE account = 7";
    let explained = explainer.explain(statement).await.unwrap();
    assert_eq!(
        explained.advice.len(),
        1,
        "{:?}\n{:?}",
        explained.advice,
        explained.plan
    );
    let table = format!("{}.ledger", db.schema());
    assert_eq!(explained.advice[0].rule, "covering");
    assert_eq!(
        explained.advice[0].statement,
        format!("CREATE INDEX CONCURRENTLY ON {table} (account) INCLUDE (amount)")
    );
    execute(pool, &explained.advice[0].statement).await;
    execute(pool, "VACUUM ANALYZE ledger").await;
    let fixed = explainer.explain(statement).await.unwrap();
    assert!(
        fixed.advice.is_empty(),
        "{:?}\n{:?}",
        fixed.advice,
        fixed.plan
    );
    assert!(
        fixed
            .plan
            .walk()
            .iter()
            .any(|node| node.node_type == "Index Only Scan"),
        "{:?}",
        fixed.plan
    );
}

#[tokio::test]
async fn a_slow_update_is_explained_without_running_twice_even_with_analyze() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(
        pool,
        "CREATE TABLE counters (name text PRIMARY KEY, n int NOT NULL)",
    )
    .await;
    execute(pool, "INSERT INTO counters VALUES ('hits', 0)").await;
    let update = "UPDATE counters SET n = n + 1 WHERE name = 'hits'";
    execute(pool, update).await;
    for analyze in [Analyze::Never, Analyze::Select, Analyze::SelectAndDml] {
        let explainer = Explainer::postgres(db.connect_options())
            .analyze(analyze)
            .build();
        let explained = explainer.explain(update).await.unwrap();
        assert_eq!(explained.analyzed, analyze == Analyze::SelectAndDml);
        assert_eq!(explained.plan.node_type, "ModifyTable");
    }
    let n: i32 = sqlx::query_scalar("SELECT n FROM counters WHERE name = 'hits'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "the update ran once, by the service");
    // The row's value cannot tell an update rolled back from one never
    // run; the table's statistics can: `n_tup_upd` counts rolled-back
    // updates too. Only `SelectAndDml` runs it (in a transaction rolled
    // back): 2 in all, never 3 or 4. (The explainers' sessions have ended,
    // which flushes their statistics; the service's flushes when idle.)
    let updates = || async {
        let mut connection = db.pool().acquire().await.unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *connection)
            .await
            .unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'counters'::regclass",
        )
        .fetch_one(&mut *connection)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while updates().await < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        updates().await,
        2,
        "the service's update and ANALYZE's rolled-back one"
    );
}

#[tokio::test]
async fn what_explain_must_not_see_is_refused_and_nothing_runs() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(pool, "CREATE TABLE keep (id int)").await;
    let explainer = Explainer::postgres(db.connect_options())
        .analyze(Analyze::SelectAndDml)
        .build();
    for statement in [
        "DROP TABLE keep",
        "select 1; drop table keep",
        "select 1 /* ; */ ; drop table keep",
        "COMMIT",
    ] {
        assert!(
            matches!(
                explainer.explain(statement).await,
                Err(ExplainError::NotExplainable(_))
            ),
            "{statement}"
        );
    }
    // Refused by the server, and the explainer keeps working.
    assert!(matches!(
        explainer.explain("select * from missing_table").await,
        Err(ExplainError::Database(_))
    ));
    assert!(
        explainer
            .explain("select * from keep where id = $1")
            .await
            .is_ok()
    );
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('keep') IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(exists);
}

/// The auditor with an explainer: a slow statement, recorded directly or
/// reported by sqlx, gets its advice in the report (constants redacted),
/// and is explained once per interval.
#[tokio::test]
async fn slow_statements_get_advice_in_the_report_off_the_hot_path() {
    use std::time::Duration;

    use perfkit_query_audit::{Auditor, Fingerprint};
    use tracing_subscriber::layer::SubscriberExt;

    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    execute(
        pool,
        "CREATE TABLE events (id int PRIMARY KEY, kind text NOT NULL, account int NOT NULL)",
    )
    .await;
    execute(
        pool,
        "INSERT INTO events SELECT i, CASE WHEN i % 10 = 0 THEN 'signup' ELSE 'view' END, i % 20000 FROM generate_series(1, 100000) AS i",
    )
    .await;
    execute(pool, "ANALYZE events").await;
    let auditor = Auditor::builder()
        .name("explained")
        .slow_threshold(Duration::ZERO)
        .explainer(Explainer::postgres(db.connect_options()).build())
        .build()
        .unwrap();
    let advice_of = |statement: &str| {
        let id = Fingerprint::of(statement).id();
        let auditor = auditor.clone();
        async move {
            for _ in 0..500 {
                if let Some(stats) = auditor.stats(id)
                    && !stats.advice.is_empty()
                {
                    return stats.advice;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no advice for {id:016x}: {:?}", auditor.report(10));
        }
    };

    // Recorded at the call site.
    auditor.record(
        "SELECT * FROM events WHERE account = 42",
        Duration::from_millis(30),
        5,
    );
    let advice = advice_of("select * from events where account = 1").await;
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert!(
        advice[0].starts_with(&format!(
            "CREATE INDEX CONCURRENTLY ON {}.events (account)",
            db.schema()
        )),
        "{advice:?}"
    );

    // Reported by sqlx through the layer; a partial index, its constant redacted.
    {
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(auditor.layer()));
        let rows: Vec<(i32,)> =
            sqlx::query_as("select id from events where kind = 'signup' and account = 10")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 5);
    }
    let advice = advice_of("select id from events where kind = 'x' and account = 1").await;
    assert!(advice[0].contains("(account) WHERE kind = ?"), "{advice:?}");
    assert!(
        !advice.iter().any(|line| line.contains("signup")),
        "{advice:?}"
    );
}

/// A flood of slow statements while EXPLAIN hangs (a server that accepts
/// and never answers): the queue holds its bound, the rest is dropped and
/// counted, and recording never waits for it.
#[tokio::test]
async fn an_explain_flood_is_dropped_and_counted_never_waited_for() {
    use std::time::Duration;

    use perfkit_query_audit::Auditor;
    use perfkit_test_support::metrics::Counters;
    use sqlx::postgres::PgConnectOptions;

    let _serial = SERIAL.lock().await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("nobody");
    let counters = Counters::default();
    let auditor = metrics::with_local_recorder(&counters, || {
        Auditor::builder()
            .name("flood")
            .slow_threshold(Duration::ZERO)
            .explain_queue(4)
            .explainer(
                Explainer::postgres(options)
                    .timeout(Duration::from_secs(30))
                    .build(),
            )
            .build()
            .unwrap()
    });
    perfkit_test_support::concurrency::within("1,000 slow statements recorded", async {
        for table in 0..1_000 {
            auditor.record(
                &format!("select * from t{table} where id = 1"),
                Duration::from_millis(5),
                1,
            );
        }
    })
    .await;
    let dropped = counters.get("perfkit_query_audit_explain_dropped_total{name=flood}");
    // One taken by the (stuck) worker at most, four queued, the rest dropped.
    assert!((995..=996).contains(&dropped), "{dropped} dropped");
    assert_eq!(auditor.report(2_000).len(), 1_000);
    drop(silent);
}
