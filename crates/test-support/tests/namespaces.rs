//! The Redis and PostgreSQL helpers really connect, keep tests apart and clean up.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;

use redis::AsyncCommands;
use sqlx::Row;

#[tokio::test]
async fn redis_prefixes_are_unique_and_disjoint() {
    let Some(a) = perfkit_test_support::redis().await else {
        return;
    };
    let Some(b) = perfkit_test_support::redis().await else {
        return;
    };
    assert_ne!(a.prefix(), b.prefix());
    assert!(a.prefix().ends_with(':'));

    let mut conn = a.connection();
    let () = conn.set(a.key("k1"), "a").await.unwrap();
    let () = conn.set(a.key("k2"), "a").await.unwrap();
    let () = b.connection().set(b.key("k1"), "b").await.unwrap();

    assert_eq!(a.keys().await.unwrap(), vec![a.key("k1"), a.key("k2")]);
    assert_eq!(b.keys().await.unwrap(), vec![b.key("k1")]);
    let value: String = conn.get(b.key("k1")).await.unwrap();
    assert_eq!(value, "b", "both talk to the same live server");
}

#[tokio::test]
async fn dropping_test_redis_deletes_its_keys_only() {
    let Some(a) = perfkit_test_support::redis().await else {
        return;
    };
    let Some(b) = perfkit_test_support::redis().await else {
        return;
    };
    let mut conn = b.connection();
    let a_keys: Vec<String> = (0..1200).map(|i| a.key(&format!("k{i}"))).collect();
    let mut pipe = redis::pipe();
    for key in &a_keys {
        pipe.set(key, 1).ignore();
    }
    pipe.set(b.key("survivor"), 1).ignore();
    let () = pipe.query_async(&mut conn).await.unwrap();

    drop(a);

    let left: usize = conn.exists(&a_keys).await.unwrap();
    assert_eq!(
        left, 0,
        "every key under the dropped prefix is gone (more than one DEL batch)"
    );
    let survivor: bool = conn.exists(b.key("survivor")).await.unwrap();
    assert!(survivor, "another test's keys are untouched");
}

#[test]
fn many_namespaces_never_collide() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut prefixes = HashSet::new();
        for _ in 0..50 {
            let Some(redis) = perfkit_test_support::redis().await else {
                return;
            };
            assert!(
                prefixes.insert(redis.prefix().to_owned()),
                "duplicate prefix {}",
                redis.prefix()
            );
        }
    });
}

#[tokio::test]
async fn postgres_pool_works_in_a_private_schema() {
    let Some(pg) = perfkit_test_support::postgres().await else {
        return;
    };
    let current: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pg.pool())
        .await
        .unwrap();
    assert_eq!(current, pg.schema());

    sqlx::query("CREATE TABLE items (id INT PRIMARY KEY, name TEXT NOT NULL)")
        .execute(pg.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
        .execute(pg.pool())
        .await
        .unwrap();
    // Every pooled connection sees the same schema, not just the first one.
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(pg.pool().acquire().await.unwrap());
    }
    for conn in &mut connections {
        let row = sqlx::query("SELECT count(*) AS n FROM items")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(row.get::<i64, _>("n"), 2);
    }
}

#[tokio::test]
async fn postgres_schemas_isolate_tests_and_are_dropped() {
    let Some(a) = perfkit_test_support::postgres().await else {
        return;
    };
    let Some(b) = perfkit_test_support::postgres().await else {
        return;
    };
    assert_ne!(a.schema(), b.schema());

    sqlx::query("CREATE TABLE only_in_a (id INT)")
        .execute(a.pool())
        .await
        .unwrap();
    let seen_from_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(b.pool())
        .await
        .unwrap();
    assert_eq!(
        seen_from_b, None,
        "b's unqualified names do not reach a's schema"
    );

    let schema_a = a.schema().to_owned();
    drop(a);

    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
    )
    .bind(&schema_a)
    .fetch_one(b.pool())
    .await
    .unwrap();
    assert!(
        !exists,
        "schema {schema_a} is dropped with its TestPostgres"
    );
}
