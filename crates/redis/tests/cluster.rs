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
