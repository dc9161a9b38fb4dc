//! Redis-specific behaviour: fail-closed and fail-open with Redis down or
//! restarted, round trips per request counted by the server, key layout.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use common::{Handlers, app, fresh_key, layer, request, send, spawn_request};
use perfkit_idempotency::{
    FailMode, IdempotencyKey, IdempotencyLayer, IdempotencyStore, RedisStore, StoreKey,
};
use perfkit_test_support::RedisServer;

fn store_on(url: &str) -> Arc<dyn IdempotencyStore> {
    Arc::new(
        RedisStore::builder(url)
            .prefix("perfkit-test:idem:")
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn redis_down_is_503_fail_closed_and_pass_through_fail_open() {
    let store = store_on("redis://127.0.0.1:1");
    let handlers = Handlers::default();
    let closed = app(
        &handlers,
        layer(&store, |b| b.retry_after(Duration::from_secs(3))),
    );
    let answer = send(
        &closed,
        request("POST", "/payments", Some(&fresh_key()), "{}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers[header::RETRY_AFTER], "3");
    assert_eq!(
        answer.problem_type(),
        "urn:perfkit:idempotency:store-unavailable"
    );
    assert_eq!(
        handlers.payments(),
        0,
        "fail-closed never runs the handler unprotected"
    );

    let open = app(&handlers, layer(&store, |b| b.fail_mode(FailMode::Open)));
    let key = fresh_key();
    for _ in 0..2 {
        let answer = send(&open, request("POST", "/payments", Some(&key), "{}")).await;
        assert_eq!(
            (answer.status, answer.replayed()),
            (StatusCode::CREATED, false)
        );
    }
    assert_eq!(
        handlers.payments(),
        2,
        "fail-open runs every request, unprotected"
    );
}

#[tokio::test]
async fn a_restarted_redis_is_used_again() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = store_on(&server.url());
    let handlers = Handlers::default();
    let app = app(&handlers, layer(&store, |b| b));
    let key = fresh_key();
    assert_eq!(
        send(&app, request("POST", "/payments", Some(&key), "{}"))
            .await
            .status,
        StatusCode::CREATED
    );

    server.stop();
    let answer = send(&app, request("POST", "/payments", Some(&fresh_key()), "{}")).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );

    server.restart().unwrap();
    let mut answer = send(&app, request("POST", "/payments", Some(&fresh_key()), "{}")).await;
    for _ in 0..50 {
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = send(&app, request("POST", "/payments", Some(&fresh_key()), "{}")).await;
    }
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

/// Commands clients sent since the last reset: `INFO`/`CONFIG` (the test's
/// own) and the commands only the store's scripts run inside Redis excluded
/// (commandstats counts those too; the store itself sends only `EVALSHA` and
/// `HMGET`, and the scripts never run `HMGET`).
const SCRIPT_INTERNAL: [&str; 5] = ["hget", "hset", "hdel", "pexpire", "del"];

async fn commands(connection: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(connection)
        .await
        .unwrap();
    let mut counted: Vec<(String, u64)> = info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            let ours = name.starts_with("info")
                || name.starts_with("config")
                || SCRIPT_INTERNAL.contains(&name);
            (!ours).then(|| (name.to_owned(), calls))
        })
        .collect();
    counted.sort();
    counted
}

#[tokio::test]
async fn a_new_key_costs_two_round_trips_a_replay_and_a_conflict_one() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let store = store_on(&server.url());
    let handlers = Handlers::default();
    let a = app(&handlers, layer(&store, |b| b.name("a")));
    let b = app(&handlers, layer(&store, |b| b.name("b")));
    // Warm-up: connections opened, scripts loaded.
    send(&a, request("POST", "/payments", Some(&fresh_key()), "{}")).await;
    send(&b, request("POST", "/payments", Some(&fresh_key()), "{}")).await;
    commands(&mut admin).await;

    let key = fresh_key();
    send(&a, request("POST", "/payments", Some(&key), "{}")).await;
    assert_eq!(
        commands(&mut admin).await,
        [("evalsha".to_owned(), 2)],
        "new key: claim + record"
    );

    assert!(
        send(&a, request("POST", "/payments", Some(&key), "{}"))
            .await
            .replayed()
    );
    assert_eq!(
        commands(&mut admin).await,
        [("hmget".to_owned(), 1)],
        "replay on the instance that saw the key: one read"
    );

    assert!(
        send(&b, request("POST", "/payments", Some(&key), "{}"))
            .await
            .replayed()
    );
    assert_eq!(
        commands(&mut admin).await,
        [("evalsha".to_owned(), 1)],
        "replay on another instance: one claim that returns the record"
    );

    let slow = fresh_key();
    let first = spawn_request(&a, "/payments?delay_ms=300", &slow);
    perfkit_test_support::concurrency::until("the slow request runs", || {
        handlers.finished() + 1 == handlers.payments()
    })
    .await;
    commands(&mut admin).await;
    let conflict = send(
        &b,
        request("POST", "/payments?delay_ms=300", Some(&slow), "{}"),
    )
    .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(
        commands(&mut admin).await,
        [("evalsha".to_owned(), 1)],
        "conflict: one claim"
    );
    first.await.unwrap();
}

#[tokio::test]
async fn one_hash_per_key_under_the_prefix_expiring_with_the_key_ttl() {
    let Some(redis) = perfkit_test_support::redis().await else {
        return;
    };
    let store: Arc<dyn IdempotencyStore> = Arc::new(
        RedisStore::builder(redis.url())
            .prefix(redis.prefix())
            .build()
            .unwrap(),
    );
    let handlers = Handlers::default();
    let app = app(
        &handlers,
        layer(&store, |b| b.key_ttl(Duration::from_secs(3_600))),
    );
    send(
        &app,
        request("POST", "/payments", Some("\"order:{7}\""), "{}"),
    )
    .await;
    let keys = redis.keys().await.unwrap();
    assert_eq!(
        keys,
        [redis.key("4:acme:order:{7}")],
        "scope length, scope, key"
    );
    let mut connection = redis.connection();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((3_590_000..=3_600_000).contains(&ttl), "{ttl}");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut fields = fields;
    fields.sort();
    assert_eq!(
        fields,
        ["f", "r", "s", "t"],
        "state, fingerprint, record, and the owner token (a retried completion is recognised)"
    );
}

/// The slowest of `rounds` requests with fresh keys, and their statuses.
async fn slowest(app: &axum::Router, rounds: usize) -> (Duration, Vec<StatusCode>) {
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        let answer = send(app, request("POST", "/payments", Some(&fresh_key()), "{}")).await;
        slowest = slowest.max(started.elapsed());
        statuses.push(answer.status);
    }
    (slowest, statuses)
}

#[tokio::test]
async fn during_a_store_outage_requests_are_answered_in_microseconds_and_a_probe_finds_recovery() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let cool_down = Duration::from_millis(500);
    for (outage, mode) in [
        ("stopped", FailMode::Closed),
        ("frozen", FailMode::Closed),
        ("stopped", FailMode::Open),
        ("frozen", FailMode::Open),
    ] {
        server.restart().unwrap();
        let store = store_on(&server.url());
        let handlers = Handlers::default();
        let app = app(
            &handlers,
            layer(&store, |b| {
                b.fail_mode(mode)
                    .circuit_breaker(std::num::NonZeroU32::new(3).unwrap(), cool_down)
            }),
        );
        assert_eq!(slowest(&app, 1).await.1, [StatusCode::CREATED]);
        if outage == "stopped" {
            server.stop();
        } else {
            server.pause();
        }
        // Three failures (each up to the 100 ms store timeout) open the breaker.
        let (opening, _) = slowest(&app, 3).await;
        let (during, statuses) = slowest(&app, 20).await;
        let expected = if mode == FailMode::Closed {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::CREATED
        };
        println!(
            "store {outage}, {mode:?}: the requests that opened the breaker took up to \
             {opening:?}, the next 20 at most {during:?}"
        );
        assert!(
            statuses.iter().all(|status| *status == expected),
            "{statuses:?}"
        );
        assert!(
            during < Duration::from_millis(50),
            "{outage}, {mode:?}: once known down, no request waits for the store's 100 ms timeout; slowest {during:?}"
        );

        // Back: within one cool-down a probe finds it and requests are protected again.
        if outage == "stopped" {
            server.restart().unwrap();
        } else {
            server.resume();
        }
        let back = std::time::Instant::now();
        let mut protected_after = None;
        while back.elapsed() < 4 * cool_down {
            let answer = send(&app, request("POST", "/payments", Some("\"after\""), "{}")).await;
            let again = send(&app, request("POST", "/payments", Some("\"after\""), "{}")).await;
            if again.replayed() {
                protected_after = Some(back.elapsed());
                break;
            }
            let _ = answer;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let protected_after = protected_after.expect("protected again after the outage");
        assert!(
            protected_after <= cool_down + Duration::from_millis(300),
            "{outage}, {mode:?}: protected again {protected_after:?} after Redis answered (cool-down {cool_down:?})"
        );
    }
}

#[tokio::test]
async fn a_probe_whose_request_goes_away_does_not_leave_the_store_skipped() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let cool_down = Duration::from_millis(50);
    let store = store_on(&server.url());
    let handlers = Handlers::default();
    let app = app(
        &handlers,
        // Cancel: a request that goes away drops its store call with it.
        layer(&store, |b| {
            b.circuit_breaker(std::num::NonZeroU32::new(1).unwrap(), cool_down)
                .on_disconnect(perfkit_idempotency::OnDisconnect::Cancel)
        }),
    );
    server.stop();
    assert_eq!(slowest(&app, 1).await.1, [StatusCode::SERVICE_UNAVAILABLE]);
    server.restart().unwrap();
    server.pause();
    // Every request gives up after 10 ms, long before the 100 ms store timeout.
    let frozen_until = std::time::Instant::now() + 6 * cool_down;
    while std::time::Instant::now() < frozen_until {
        let _ = tokio::time::timeout(
            Duration::from_millis(10),
            send(&app, request("POST", "/payments", Some(&fresh_key()), "{}")),
        )
        .await;
    }
    server.resume();
    let mut answer = slowest(&app, 1).await.1;
    for _ in 0..100 {
        if answer == [StatusCode::CREATED] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        answer = slowest(&app, 1).await.1;
    }
    assert_eq!(
        answer,
        [StatusCode::CREATED],
        "a later probe closed the breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_first_used_on_a_runtime_that_shut_down_serves_the_next_runtime() {
    let Some(redis) = perfkit_test_support::redis().await else {
        return;
    };
    let store: Arc<dyn IdempotencyStore> = Arc::new(
        RedisStore::builder(redis.url())
            .prefix(redis.prefix())
            .build()
            .unwrap(),
    );
    let handlers = Handlers::default();
    let app = app(&handlers, layer(&store, |b| b));
    let first = app.clone();
    // The connection opens, and its driver task runs, on a runtime that then shuts down.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let answer = runtime.block_on(send(
            &first,
            request("POST", "/payments", Some(&fresh_key()), "{}"),
        ));
        assert_eq!(answer.status, StatusCode::CREATED);
    })
    .join()
    .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            send(&app, request("POST", "/payments", Some(&fresh_key()), "{}"))
                .await
                .status,
        );
    }
    assert!(
        statuses.iter().all(|status| *status == StatusCode::CREATED),
        "the first request on this runtime reconnects instead of failing: {statuses:?}"
    );
}

/// Built in a plain `fn`: no runtime and no reachable Redis are needed, and
/// a bad URL is a configuration error, not a store error or a panic.
#[test]
fn a_store_from_a_url_builds_without_a_runtime() {
    let store = RedisStore::builder("redis://127.0.0.1:1/0")
        .build()
        .unwrap();
    assert!(IdempotencyLayer::builder(store).unscoped().build().is_ok());
    assert!(matches!(
        RedisStore::builder("http://not-redis").build(),
        Err(perfkit_idempotency::ConfigError::RedisUrl(_))
    ));
    assert!(matches!(
        RedisStore::builder("redis://127.0.0.1:1/0")
            .timeout(Duration::ZERO)
            .build(),
        Err(perfkit_idempotency::ConfigError::ZeroStoreTimeout)
    ));
    for wait in [Duration::ZERO, Duration::from_millis(250)] {
        assert!(matches!(
            RedisStore::builder("redis://127.0.0.1:1/0")
                .wait_for_replicas(std::num::NonZeroU32::MIN, wait)
                .build(),
            Err(perfkit_idempotency::ConfigError::ReplicaWait { .. })
        ));
    }
}

/// A store that waits for a replica, on a Redis that has none: every new key
/// is refused (503) before its handler runs, and its claim is given back,
/// so the same key goes through at once on a store that does not wait.
#[tokio::test]
async fn a_store_waiting_for_a_replica_that_does_not_exist_refuses_new_keys_and_holds_none() {
    let Some(redis) = perfkit_test_support::redis().await else {
        return;
    };
    let store = |wait: bool| -> Arc<dyn IdempotencyStore> {
        let builder = RedisStore::builder(redis.url()).prefix(redis.prefix());
        let builder = if wait {
            builder.wait_for_replicas(std::num::NonZeroU32::MIN, Duration::from_millis(20))
        } else {
            builder
        };
        Arc::new(builder.build().unwrap())
    };
    let handlers = Handlers::default();
    let waiting = app(&handlers, layer(&store(true), |b| b));
    let key = fresh_key();
    let refused = send(&waiting, request("POST", "/payments", Some(&key), "{}")).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(handlers.payments(), 0);
    let plain = app(&handlers, layer(&store(false), |b| b));
    let answer = send(&plain, request("POST", "/payments", Some(&key), "{}")).await;
    assert_eq!(
        (answer.status, answer.replayed()),
        (StatusCode::CREATED, false),
        "the refused claim was given back: {}",
        answer.body
    );
    assert_eq!(handlers.payments(), 1);
}

/// A connection the application already has is used as it is.
#[tokio::test]
async fn a_store_runs_on_a_connection_the_application_has() {
    let Some(redis) = perfkit_test_support::redis().await else {
        return;
    };
    let store = RedisStore::builder_with_connection(redis.connection())
        .prefix(redis.prefix())
        .build()
        .unwrap();
    let key = StoreKey::new(None, &IdempotencyKey::new("k").unwrap());
    assert!(store.lookup(&key).await.unwrap().is_none());
}

/// A store on the cluster, in the test's key prefix.
fn cluster_store(cluster: &perfkit_test_support::TestRedisCluster) -> Arc<dyn IdempotencyStore> {
    Arc::new(
        RedisStore::builder_with_connection(cluster.connection())
            .prefix(cluster.prefix())
            .build()
            .unwrap(),
    )
}

/// The cluster tests of this binary, one at a time (one counts commands).
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// On a Redis Cluster the records of one layer spread over every master
/// (no hash tag for the whole store) and every request is answered: each
/// claim, completion and replay touches one key, so one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_records_spread_over_every_master() {
    let _serial = CLUSTER.lock().await;
    let Some(cluster) = perfkit_test_support::redis_cluster().await else {
        return;
    };
    let store = cluster_store(&cluster);
    let handlers = Handlers::default();
    let app = app(&handlers, layer(&store, |b| b));
    for n in 0..60 {
        let key = format!("spread-{n}");
        let first = send(&app, request("POST", "/payments", Some(&key), "{}")).await;
        assert_eq!(first.status, StatusCode::CREATED);
        let replay = send(&app, request("POST", "/payments", Some(&key), "{}")).await;
        assert!(replay.replayed());
    }
    assert_eq!(handlers.payments(), 60);
    let per_master = cluster.keys_per_master().await.unwrap();
    assert_eq!(per_master.len(), 3, "{per_master:?}");
    assert!(
        per_master.iter().all(|(_, keys)| *keys > 0),
        "every master holds some records: {per_master:?}"
    );
    assert_eq!(per_master.iter().map(|(_, keys)| keys).sum::<usize>(), 60);
}

/// Commands run on the cluster's masters since the last call, summed over
/// them; the commands the store's scripts run inside Redis left out.
async fn cluster_commands(cluster: &perfkit_test_support::TestRedisCluster) -> Vec<(String, u64)> {
    let mut totals: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (_, calls) in cluster.command_calls_per_master().await.unwrap() {
        for (name, calls) in calls {
            if !SCRIPT_INTERNAL.contains(&name.as_str()) {
                *totals.entry(name).or_default() += calls;
            }
        }
    }
    totals.into_iter().collect()
}

/// On a cluster a request costs the round trips it costs on one node: a
/// new key two (claim, record), a replay one read, a replay on another
/// instance one claim — each on the one master that holds the key's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_new_key_costs_two_round_trips_and_a_replay_one() {
    let _serial = CLUSTER.lock().await;
    let Some(cluster) = perfkit_test_support::redis_cluster().await else {
        return;
    };
    let store = cluster_store(&cluster);
    let handlers = Handlers::default();
    let a = app(&handlers, layer(&store, |b| b.name("a")));
    let b = app(&handlers, layer(&store, |b| b.name("b")));
    // Warm-up: scripts loaded on every master.
    for n in 0..30 {
        send(
            &a,
            request("POST", "/payments", Some(&format!("warm-{n}")), "{}"),
        )
        .await;
    }
    cluster_commands(&cluster).await;

    let key = fresh_key();
    send(&a, request("POST", "/payments", Some(&key), "{}")).await;
    assert_eq!(
        cluster_commands(&cluster).await,
        [("evalsha".to_owned(), 2)],
        "new key: claim + record"
    );
    assert!(
        send(&a, request("POST", "/payments", Some(&key), "{}"))
            .await
            .replayed()
    );
    assert_eq!(
        cluster_commands(&cluster).await,
        [("hmget".to_owned(), 1)],
        "replay on the instance that saw the key: one read"
    );
    assert!(
        send(&b, request("POST", "/payments", Some(&key), "{}"))
            .await
            .replayed()
    );
    assert_eq!(
        cluster_commands(&cluster).await,
        [("evalsha".to_owned(), 1)],
        "replay on another instance: one claim that returns the record"
    );
}
