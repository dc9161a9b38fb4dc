//! `LazyConnection` and `run_once_more` against a real, private Redis that
//! is stopped and started under them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use perfkit_redis::{LazyConnection, run_once_more};
use perfkit_test_support::RedisServer;

async fn ping(connection: &LazyConnection) -> redis::RedisResult<String> {
    run_once_more(connection, |mut connection| async move {
        redis::cmd("PING").query_async(&mut connection).await
    })
    .await
}

#[test]
fn builds_without_a_runtime_and_rejects_a_bad_url() {
    let connection =
        LazyConnection::open("redis://127.0.0.1:1/0", Duration::from_millis(50)).unwrap();
    assert!(!connection.is_open());
    assert!(LazyConnection::open("http://not-redis", Duration::from_millis(50)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_on_first_use_and_the_first_call_after_a_restart_succeeds() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let connection = LazyConnection::open(&server.url(), Duration::from_millis(200)).unwrap();
    assert_eq!(ping(&connection).await.unwrap(), "PONG");
    assert!(connection.is_open());

    server.stop();
    // Down: calls fail (after at most the connect timeout each), never hang.
    for _ in 0..3 {
        let failed = tokio::time::timeout(Duration::from_secs(2), ping(&connection)).await;
        assert!(matches!(failed, Ok(Err(_))), "{failed:?}");
    }
    server.restart().unwrap();
    // The connection's last reconnect failed; the resend reaches the live server.
    assert_eq!(ping(&connection).await.unwrap(), "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_while_redis_was_down_opens_once_it_is_up() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    server.stop();
    let connection = LazyConnection::open(&server.url(), Duration::from_millis(200)).unwrap();
    assert!(ping(&connection).await.is_err());
    assert!(!connection.is_open());
    server.restart().unwrap();
    assert_eq!(ping(&connection).await.unwrap(), "PONG");
}
