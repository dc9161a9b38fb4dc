//! `LazyConnection` on a real Redis Cluster (the local one `.ci/run` starts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use perfkit_redis::{LazyConnection, run_once_more};

async fn set_get(connection: &LazyConnection, key: &str) -> redis::RedisResult<String> {
    run_once_more(connection, |mut connection| async move {
        redis::cmd("SET")
            .arg(key)
            .arg(key)
            .arg("PX")
            .arg(60_000)
            .exec_async(&mut connection)
            .await?;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
    })
    .await
}

#[test]
fn a_cluster_connection_builds_without_a_runtime() {
    let connection =
        LazyConnection::open_cluster(&["redis://127.0.0.1:1"], Duration::from_millis(50)).unwrap();
    assert!(connection.is_cluster() && !connection.is_open());
    assert!(connection.client().is_none());
    assert!(
        LazyConnection::open_cluster(&["http://not-redis"], Duration::from_millis(50)).is_err()
    );
    let none: [&str; 0] = [];
    assert!(LazyConnection::open_cluster(&none, Duration::from_millis(50)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_routed_by_slot_and_each_primary_can_be_scanned() {
    let Some(cluster) = perfkit_test_support::redis_cluster().await else {
        return;
    };
    let connection = LazyConnection::open_cluster(cluster.urls(), Duration::from_secs(1)).unwrap();
    for i in 0..30 {
        let key = cluster.key(&format!("k{i}"));
        assert_eq!(set_get(&connection, &key).await.unwrap(), key);
    }
    let primaries = connection.primaries().await.unwrap();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let mut found = 0;
    for node in &primaries {
        let mut scan = redis::cmd("SCAN");
        scan.arg(0)
            .arg("MATCH")
            .arg(format!("{}*", cluster.prefix()))
            .arg("COUNT")
            .arg(10_000);
        let page = connection.on_node(node, &scan).await.unwrap();
        let (cursor, keys): (u64, Vec<String>) = redis::from_redis_value(page).unwrap();
        assert_eq!(cursor, 0, "one page holds this test's keys");
        assert!(!keys.is_empty(), "{node} holds some of the 30 keys");
        found += keys.len();
    }
    assert_eq!(found, 30, "every key on exactly one primary");
}

#[test]
fn a_cluster_connection_opened_on_a_runtime_that_shut_down_opens_again() {
    let urls = perfkit_test_support::redis_cluster_urls();
    let first = tokio::runtime::Runtime::new().unwrap();
    let Some(cluster) = first.block_on(perfkit_test_support::redis_cluster()) else {
        return;
    };
    let connection = LazyConnection::open_cluster(&urls, Duration::from_secs(1)).unwrap();
    let key = cluster.key("runtime");
    first.block_on(set_get(&connection, &key)).unwrap();
    assert!(connection.is_open());
    drop(first);
    // The driver task went with its runtime.
    assert!(!connection.is_open());
    let second = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(second.block_on(set_get(&connection, &key)).unwrap(), key);
    second.block_on(async { drop(cluster) });
}

/// One round of every kind of request on a slot that is moving: a `GET` and
/// a `SET` (a key the old owner no longer holds, or never held, is answered
/// with `ASK`), a pipeline on one key that may be on either side, a
/// transaction, a write with `WAIT` behind it, and an `MGET` of two keys.
/// Every key is `{m}…` (one slot).
async fn round(connection: &LazyConnection, task: usize, i: usize) -> Result<(), String> {
    let mut c = connection.clone();
    let old = |n: usize| format!("{{m}}old:{}", n % 100);
    let (a, b) = (old(task * 31 + i), old(task * 17 + i * 7 + 50));
    let check = |what: &str, got: redis::RedisResult<String>, want: &str| match got {
        Ok(got) if got == want => Ok(()),
        Ok(got) => Err(format!("{what}: {got:?}, not {want:?}")),
        Err(error) => Err(format!("{what}: {error}")),
    };
    check(
        "GET",
        redis::cmd("GET").arg(&a).query_async(&mut c).await,
        &a,
    )?;
    let new = format!("{{m}}new:{task}:{i}");
    redis::cmd("SET")
        .arg(&new)
        .arg(&new)
        .exec_async(&mut c)
        .await
        .map_err(|e| format!("SET: {e}"))?;
    check(
        "GET new",
        redis::cmd("GET").arg(&new).query_async(&mut c).await,
        &new,
    )?;
    let read: redis::RedisResult<(String, i64)> =
        redis::pipe().get(&b).pttl(&b).query_async(&mut c).await;
    match read {
        Ok((value, ttl)) if value == b && ttl > 0 => {}
        other => return Err(format!("pipeline GET {b} PTTL {b}: {other:?}")),
    }
    let counter = format!("{{m}}count:{task}");
    let (n,): (usize,) = redis::pipe()
        .atomic()
        .incr(&counter, 1)
        .pexpire(&counter, 60_000)
        .ignore()
        .query_async(&mut c)
        .await
        .map_err(|e| format!("MULTI INCR: {e}"))?;
    if n == 0 {
        return Err("MULTI INCR: 0".to_owned());
    }
    let waited = format!("{{m}}waited:{task}:{i}");
    let (_, replicas): ((), i64) = redis::pipe()
        .set(&waited, 1)
        .cmd("WAIT")
        .arg(0)
        .arg(0)
        .query_async(&mut c)
        .await
        .map_err(|e| format!("SET + WAIT: {e}"))?;
    if replicas < 0 {
        return Err(format!("WAIT: {replicas}"));
    }
    // Two keys made while the slot moves: both on the new owner.
    let both: redis::RedisResult<(String, String)> = redis::cmd("MGET")
        .arg(&new)
        .arg(&waited)
        .query_async(&mut c)
        .await;
    match both {
        Ok((x, y)) if x == new && y == "1" => Ok(()),
        other => Err(format!("MGET {new} {waited}: {other:?}")),
    }
}

/// Runs `rounds` rounds on each of 8 tasks at once; fails on any error,
/// saying `when`.
async fn traffic(connection: &LazyConnection, rounds: usize, when: &str) {
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let connection = connection.clone();
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for i in 0..rounds {
                    if let Err(error) = round(&connection, task, i).await {
                        errors.push(error);
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} of {} rounds failed {when}; first: {:#?}",
        errors.len(),
        rounds * 8,
        &errors[..errors.len().min(5)]
    );
}

/// Redis Cluster moves a slot key by key: meanwhile its old owner answers
/// `ASK` for a key it no longer holds, the new owner serves it only right
/// after `ASKING`; once moved, the old owner answers `MOVED`. redis-rs sends
/// `ASKING` on the shared connection as a request of its own, and another
/// task's command can take its place (every `SET` failed that way without
/// `LazyConnection`'s own redirection). Every request here must succeed
/// anyway, half moved and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelines_and_transactions_follow_a_slot_being_moved() {
    let Some(cluster) = tokio::task::block_in_place(perfkit_test_support::PrivateCluster::start)
    else {
        return;
    };
    let connection = LazyConnection::open_cluster(&cluster.urls(), Duration::from_secs(1)).unwrap();
    for n in 0..100 {
        let key = format!("{{m}}old:{n}");
        set_get(&connection, &key).await.unwrap();
    }
    let mut migration = tokio::task::block_in_place(|| cluster.begin_migration("{m}")).unwrap();
    tokio::task::block_in_place(|| migration.move_keys(50)).unwrap();

    traffic(&connection, 100, "on the half-moved slot").await;
    let moved = tokio::task::block_in_place(|| migration.finish()).unwrap();
    eprintln!("{moved:?}");
    traffic(&connection, 100, "once the slot had moved").await;
}
