//! The layer over real sqlx events, from queries on a live PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{warnings, warnings_of};
use perfkit_query_audit::{Auditor, Fingerprint};
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
    assert_eq!((by_item.calls, by_item.rows), (20, 20));
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
