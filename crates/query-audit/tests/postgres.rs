//! The layer over real sqlx events, from queries on a live PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{warnings, warnings_of};
use futures_core::Stream;
use perfkit_query_audit::{AuditedPool, Auditor, Fingerprint};
use perfkit_test_support::postgres;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// One test at a time (see `explain.rs`: a scoped subscriber raced by
/// another test's first sqlx query can miss sqlx's events).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn sqlx_queries_are_recorded_with_their_rows_and_an_n_plus_one_loop_is_found() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    let auditor = Auditor::builder()
        .name("pg-layer")
        .n_plus_one(10)
        .build()
        .unwrap();
    warnings();
    // This thread's subscriber: the test's queries run on it (current-thread runtime).
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(auditor.layer()));

    sqlx::query("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 100) AS i")
        .execute(pool)
        .await
        .unwrap();
    // One request that loads 20 items one by one: an N+1 loop.
    async {
        for id in 1..=20 {
            let _: (String,) = sqlx::query_as("SELECT name FROM items WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        }
    }
    .instrument(tracing::info_span!("request", path = "/orders/7"))
    .await;
    let rows: Vec<(i32,)> = sqlx::query_as("select id from items where id <= 30 order by id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 30);

    let by_item = auditor
        .stats(Fingerprint::of("select name from items where id = 1").id())
        .expect("the per-item select was recorded");
    assert_eq!(
        (by_item.calls, by_item.rows, by_item.n_plus_one),
        (20, 20, 1)
    );
    assert!(by_item.total > std::time::Duration::ZERO);
    let range = auditor
        .stats(Fingerprint::of("select id from items where id <= 1 order by id").id())
        .expect("the range select was recorded");
    assert_eq!((range.calls, range.rows), (1, 30));
    let insert = auditor
        .stats(
            Fingerprint::of("INSERT INTO items SELECT i, 'x' || i FROM generate_series(1, 5) AS i")
                .id(),
        )
        .expect("the insert was recorded");
    assert_eq!(insert.rows, 100);

    let logged = warnings_of("pg-layer", 1);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].message.contains("N+1"), "{logged:?}");
}

#[tokio::test]
async fn a_query_audited_at_the_call_site_is_recorded_once_beside_the_layer() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    let auditor = Auditor::builder().name("pg-audited").build().unwrap();
    sqlx::query("CREATE TABLE users (id int PRIMARY KEY, org int NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    let insert = "INSERT INTO users SELECT i, i % 3 FROM generate_series(1, 30) AS i";
    let inserted = auditor
        .audited(insert, sqlx::query(insert).execute(pool))
        .await
        .unwrap();
    assert_eq!(inserted.rows_affected(), 30);
    // The layer too: the audited query must not count twice.
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(auditor.layer()));
    let statement = "SELECT id FROM users WHERE org = $1";
    for org in 0..3 {
        let ids: Vec<(i32,)> = auditor
            .audited(
                statement,
                sqlx::query_as(statement).bind(org).fetch_all(pool),
            )
            .await
            .unwrap();
        assert_eq!(ids.len(), 10);
    }
    let select = auditor.stats(Fingerprint::of(statement).id()).unwrap();
    assert_eq!((select.calls, select.rows), (3, 30));
    let insert = auditor.stats(Fingerprint::of(insert).id()).unwrap();
    assert_eq!((insert.calls, insert.rows), (1, 30));
    // A failed query is recorded too, with no rows.
    let missing = "SELECT * FROM missing_table";
    assert!(
        auditor
            .audited(missing, sqlx::query(missing).fetch_all(pool))
            .await
            .is_err()
    );
    assert_eq!(
        auditor.stats(Fingerprint::of(missing).id()).unwrap().calls,
        1
    );
}

#[tokio::test]
async fn queries_on_an_audited_executor_are_recorded_once_in_pools_connections_and_transactions() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    let auditor = Auditor::builder()
        .name("pg-executor")
        .n_plus_one(10)
        .slow_threshold(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    warnings();
    // The layer too: nothing run through the executor may count twice.
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(auditor.layer()));
    let calls = |sql: &str| {
        auditor
            .stats(Fingerprint::of(sql).id())
            .map(|s| (s.calls, s.rows))
    };

    let create = "CREATE TABLE users (id int PRIMARY KEY, org int NOT NULL, name text NOT NULL)";
    sqlx::query(create).execute(auditor.on(pool)).await.unwrap();
    let insert = "INSERT INTO users SELECT i, i % 3, 'user ' || i FROM generate_series(1, 30) AS i";
    let done = sqlx::query(insert).execute(auditor.on(pool)).await.unwrap();
    assert_eq!(done.rows_affected(), 30);
    assert_eq!(calls(insert), Some((1, 30)));

    // query_as and query_scalar, fetch_all / fetch_one / fetch_optional, on an AuditedPool.
    let audited = AuditedPool::new(pool.clone(), auditor.clone());
    let by_org = "SELECT id, name FROM users WHERE org = $1";
    for org in 0..3 {
        let users: Vec<(i32, String)> = sqlx::query_as(by_org)
            .bind(org)
            .fetch_all(&audited)
            .await
            .unwrap();
        assert_eq!(users.len(), 10);
    }
    assert_eq!(calls(by_org), Some((3, 30)));
    let by_id = "SELECT name FROM users WHERE id = $1";
    let name: String = sqlx::query_scalar(by_id)
        .bind(7)
        .fetch_one(&audited)
        .await
        .unwrap();
    assert_eq!(name, "user 7");
    let none: Option<String> = sqlx::query_scalar(by_id)
        .bind(70)
        .fetch_optional(&audited)
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(calls(by_id), Some((2, 1)));

    // A transaction (rolled back) and a connection with a statement it prepared.
    let update = "UPDATE users SET org = $1 WHERE org = $2";
    let mut tx = pool.begin().await.unwrap();
    let moved = sqlx::query(update)
        .bind(9)
        .bind(1)
        .execute(auditor.on(&mut *tx))
        .await
        .unwrap();
    assert_eq!(moved.rows_affected(), 10);
    tx.rollback().await.unwrap();
    assert_eq!(calls(update), Some((1, 10)));
    let mut conn = pool.acquire().await.unwrap();
    let prepared = sqlx::Executor::prepare(
        &mut *conn,
        sqlx::SqlStr::from_static("SELECT count(*) FROM users WHERE org <= $1"),
    )
    .await
    .unwrap();
    let count: i64 = sqlx::Statement::query_scalar(&prepared)
        .bind(1)
        .fetch_one(auditor.on(&mut *conn))
        .await
        .unwrap();
    assert_eq!(count, 20);
    assert_eq!(
        calls("SELECT count(*) FROM users WHERE org <= $1"),
        Some((1, 1))
    );

    // A stream read in part, then dropped: recorded once, with the rows it gave.
    let all = "SELECT id FROM users ORDER BY id";
    {
        let mut rows = sqlx::query_scalar::<_, i32>(all).fetch(auditor.on(pool));
        for expected in 1..=5 {
            let id = std::future::poll_fn(|cx| std::pin::Pin::new(&mut rows).poll_next(cx))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(id, expected);
        }
    }
    let (all_calls, all_rows) = calls(all).unwrap();
    assert_eq!(all_calls, 1);
    assert!((5..=30).contains(&all_rows), "{all_rows}");

    // A failed query, and a cancelled one: each recorded once, nothing hangs.
    let missing = "SELECT * FROM missing_table";
    assert!(
        sqlx::query(missing)
            .fetch_all(auditor.on(pool))
            .await
            .is_err()
    );
    assert_eq!(calls(missing), Some((1, 0)));
    let sleep = "SELECT pg_sleep(5)";
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        sqlx::query(sleep).execute(auditor.on(pool)),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(calls(sleep).map(|(calls, _)| calls), Some(1));

    // An N+1 loop through the executor still warns once (the layer counts it).
    async {
        for id in 1..=12 {
            let _: String = sqlx::query_scalar(by_id)
                .bind(id)
                .fetch_one(&audited)
                .await
                .unwrap();
        }
    }
    .instrument(tracing::info_span!("request", path = "/users"))
    .await;
    assert_eq!(calls(by_id), Some((14, 13)));
    let logged = warnings_of("pg-executor", 1);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].message.contains("N+1"), "{logged:?}");
}

/// Per-statement call counts equal `pg_stat_statements`' for a scripted
/// workload, and mean times agree: ours are measured by the client, so
/// each is theirs (the server's execution) plus a round trip and decoding:
/// never less, and within 5 ms of it on loopback for statements run 10
/// times or more.
#[tokio::test]
async fn statistics_agree_with_pg_stat_statements() {
    let _serial = SERIAL.lock().await;
    let Some(db) = postgres().await else { return };
    let pool = db.pool();
    let installed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') \
         AND current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if !installed {
        assert!(
            std::env::var("PERFKIT_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "pg_stat_statements is not preloaded and created (.ci/run sets it up)"
        );
        eprintln!("skipped: pg_stat_statements is not preloaded and created in this database");
        return;
    }
    // A table name no other test uses: pg_stat_statements is database-wide.
    let table = format!("pss_{}", db.schema().trim_start_matches("perfkit_test_"));
    let auditor = Auditor::builder().name("pss").build().unwrap();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(auditor.layer()));
    let run = |sql: String| async move {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    };
    run(format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL, label text)"
    ))
    .await;
    run(format!(
        "INSERT INTO {table} SELECT i, 0, 'l' || i FROM generate_series(1, 2000) AS i"
    ))
    .await;
    let by_id = format!("SELECT label FROM {table} WHERE id = $1");
    for id in 1..=40 {
        let _: (String,) = sqlx::query_as(sqlx::AssertSqlSafe(by_id.clone()))
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    }
    for n in 0..25 {
        run(format!(
            "SELECT count(*) FROM {table} WHERE n > {n} AND label LIKE 'l1%'"
        ))
        .await;
    }
    for id in 0..10 {
        run(format!(
            "UPDATE {table} SET n = n + 1 WHERE id = {}",
            id * 7 + 1
        ))
        .await;
    }
    drop(_default);

    let theirs: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT query, calls, mean_exec_time FROM public.pg_stat_statements WHERE query LIKE '%' || $1 || '%'",
    )
    .bind(&table)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut compared = 0;
    for (query, calls, mean_ms) in &theirs {
        let ours = auditor
            .stats(Fingerprint::of(query).id())
            .unwrap_or_else(|| panic!("not recorded: {query}\nours: {:#?}", auditor.report(20)));
        assert_eq!(ours.calls, u64::try_from(*calls).unwrap(), "{query}");
        let ours_ms = ours.mean.as_secs_f64() * 1_000.0;
        // Never less than the server's time; for statements run many times,
        // within 5 ms of it (a statement run once also pays its first
        // prepare's round trips, which the server counts as planning).
        assert!(
            ours_ms >= mean_ms * 0.99 && (*calls < 10 || ours_ms - mean_ms <= 5.0),
            "{query}: ours {ours_ms:.3} ms, pg_stat_statements {mean_ms:.3} ms"
        );
        compared += 1;
    }
    assert!(compared >= 5, "{theirs:#?}");
}
