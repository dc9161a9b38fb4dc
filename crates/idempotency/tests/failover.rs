//! The store on a private Redis Cluster whose master fails. While the key's
//! slot has no master the layer answers 503 (fail-closed); once the replica
//! has taken over, a key whose record had reached it is replayed, never run
//! again. Redis replicates asynchronously: a record the master acknowledged
//! but had not yet sent to its replica is lost with the master, and its key
//! runs again (shown here with the replica's link down during the request).
//! A slot resharded under traffic: every request answered, no key run twice.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use common::{Handlers, app, fresh_key, layer, request, send};
use perfkit_idempotency::{IdempotencyStore, RedisStore};
use perfkit_test_support::{PrivateCluster, TestRedisCluster};

/// A layer on a store on `cluster`, in `view`'s prefix, each call bounded
/// by `timeout`; waiting up to `wait` for a replica's acknowledgement of
/// each claim and record when given.
fn service(
    cluster: &PrivateCluster,
    view: &TestRedisCluster,
    handlers: &Handlers,
    (timeout, wait): (Duration, Option<Duration>),
) -> Router {
    let builder = RedisStore::cluster_builder(&cluster.urls())
        .prefix(view.prefix())
        .timeout(timeout);
    let builder = match wait {
        Some(wait) => builder.wait_for_replicas(NonZeroU32::MIN, wait),
        None => builder,
    };
    let store: Arc<dyn IdempotencyStore> = Arc::new(builder.build().unwrap());
    app(
        handlers,
        layer(&store, |b| b.retry_after(Duration::from_secs(1))),
    )
}

/// A key sent once (201), and where its record is: the Redis key, its
/// master and that master's replica (indexes into the cluster's nodes).
struct Sent {
    key: String,
    stored: String,
    master: usize,
    replica: usize,
}

async fn sent_once(cluster: &PrivateCluster, view: &TestRedisCluster, app: &Router) -> Sent {
    let key = fresh_key();
    let first = send(app, request("POST", "/payments", Some(&key), "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let stored = view.raw_keys().await.unwrap();
    assert_eq!(stored.len(), 1, "one hash per idempotency key");
    let stored = String::from_utf8(stored[0].clone()).unwrap();
    let master = cluster.master_of(&stored);
    let replica = cluster.replica_of(master);
    Sent {
        key,
        stored,
        master,
        replica,
    }
}

/// Waits until the replica of `sent` holds its record, or (`held` false) no longer does.
async fn until_replica_holds(cluster: &PrivateCluster, sent: &Sent, held: bool) {
    let started = Instant::now();
    while holds(cluster, sent.replica, &sent.stored).await != held {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether node `index` holds `key` (a replica answers with `READONLY`).
async fn holds(cluster: &PrivateCluster, index: usize, key: &str) -> bool {
    let mut node = redis::Client::open(cluster.urls()[index].as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("READONLY").exec_async(&mut node).await.unwrap();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut node)
        .await
        .unwrap()
        == 1
}

/// Sends `key` until the answer is not a 503; every 503 and the final
/// answer are returned. Panics after 30 s.
async fn until_answered(app: &Router, key: &str) -> (usize, common::Answer) {
    let started = Instant::now();
    let mut unavailable = 0;
    loop {
        let answer = send(app, request("POST", "/payments", Some(key), "{}")).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            return (unavailable, answer);
        }
        unavailable += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still 503 after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_keys_master_fails_over_the_layer_answers_503_then_replays_the_key() {
    let Some(mut cluster) = tokio::task::block_in_place(PrivateCluster::start) else {
        return;
    };
    let view = cluster.connect().await;
    let handlers = Handlers::default();
    let app = service(
        &cluster,
        &view,
        &handlers,
        (Duration::from_millis(200), None),
    );
    let sent = sent_once(&cluster, &view, &app).await;
    // Asynchronous replication: the record reaches the replica shortly.
    until_replica_holds(&cluster, &sent, true).await;

    cluster.kill(sent.master);
    let (unavailable, answer) = until_answered(&app, &sent.key).await;
    eprintln!("{unavailable} answers of 503 before the replay");
    assert!(unavailable > 0, "the slot had no master for a while");
    assert_eq!(answer.status, StatusCode::CREATED);
    assert!(answer.replayed(), "{}", answer.body);
    assert_eq!(
        handlers.payments(),
        1,
        "the handler ran once, before the failure"
    );
    for _ in 0..20 {
        let answer = send(&app, request("POST", "/payments", Some(&fresh_key()), "{}")).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
}

/// The trade-off of asynchronous replication, shown: the replica's link is
/// down while a request completes (frozen, its connection cut), the master
/// dies before it could send the record, the replica takes over without
/// it, and the key runs a second time — unless the store waits for a
/// replica's acknowledgement: then the request is refused (503) before its
/// handler runs, and once the replica is back it runs once and is replayed
/// after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_replica_never_got_is_lost_with_its_master_unless_the_store_waits_for_it() {
    for wait in [false, true] {
        let Some(mut cluster) = tokio::task::block_in_place(PrivateCluster::start) else {
            return;
        };
        let view = cluster.connect().await;
        let handlers = Handlers::default();
        let bounds = (
            Duration::from_millis(200),
            wait.then_some(Duration::from_millis(100)),
        );
        let app = service(&cluster, &view, &handlers, bounds);
        // Where the key's record lives: made once to find its master, then
        // deleted everywhere.
        let sent = sent_once(&cluster, &view, &app).await;
        let mut master = redis::Client::open(cluster.urls()[sent.master].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("DEL")
            .arg(&sent.stored)
            .exec_async(&mut master)
            .await
            .unwrap();
        until_replica_holds(&cluster, &sent, false).await;
        let before = handlers.payments();

        // The replica frozen and its link cut: nothing the master writes now
        // reaches it.
        cluster.pause(sent.replica);
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .exec_async(&mut master)
            .await
            .unwrap();
        let answer = send(&app, request("POST", "/payments", Some(&sent.key), "{}")).await;
        if wait {
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "no replica acknowledged the claim: refused before the handler ran: {}",
                answer.body
            );
            assert_eq!(handlers.payments(), before);
            // The replica back: the key runs once, acknowledged.
            cluster.resume(sent.replica);
            let (_, answer) = until_answered(&app, &sent.key).await;
            assert_eq!(
                (answer.status, answer.replayed()),
                (StatusCode::CREATED, false)
            );
            assert_eq!(handlers.payments(), before + 1);
            cluster.kill(sent.master);
            let (_, answer) = until_answered(&app, &sent.key).await;
            assert_eq!(
                (answer.status, answer.replayed()),
                (StatusCode::CREATED, true),
                "acknowledged by the replica: replayed after the failover"
            );
            assert_eq!(handlers.payments(), before + 1, "the handler ran once");
        } else {
            assert_eq!(answer.status, StatusCode::CREATED);
            assert!(!answer.replayed());
            cluster.kill(sent.master);
            cluster.resume(sent.replica);
            let (_, answer) = until_answered(&app, &sent.key).await;
            assert_eq!(
                (answer.status, answer.replayed()),
                (StatusCode::CREATED, false),
                "the record was lost with the master: the key ran again"
            );
            assert_eq!(handlers.payments(), before + 2);
        }
    }
}

/// Each of `keys` sent once, four requests at a time; the answers, in order.
async fn send_all(app: &Router, keys: &[String]) -> Vec<common::Answer> {
    let mut answers = Vec::with_capacity(keys.len());
    for four in keys.chunks(4) {
        let sent: Vec<_> = four
            .iter()
            .map(|key| common::spawn_request(app, "/payments", key))
            .collect();
        for answer in sent {
            answers.push(answer.await.unwrap());
        }
    }
    answers
}

/// A slot resharded to another master while requests for its keys come in
/// (the store waiting for a replica, so claims and records are pipelined
/// with `WAIT`): every request is answered (no 503), a key recorded before
/// or during the move is replayed, never run again, and every record ends
/// on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_resharded_under_traffic_loses_no_record_and_runs_no_key_twice() {
    let Some(cluster) = tokio::task::block_in_place(PrivateCluster::start) else {
        return;
    };
    let cluster = Arc::new(cluster);
    let view = cluster.connect().await;
    let handlers = Handlers::default();
    // Generous bounds: this test is about what the move loses, not about
    // latency (a replica on a loaded CI machine once took over 100 ms to
    // acknowledge, and the claim was refused with a 503).
    let bounds = (Duration::from_secs(3), Some(Duration::from_secs(2)));
    let app = service(&cluster, &view, &handlers, bounds);
    // One hash tag: every record in one slot.
    let key = |name: String| format!("\"{{moving}}{name}\"");
    let old: Vec<String> = (0..300).map(|n| key(format!("old-{n}"))).collect();
    for answer in send_all(&app, &old).await {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    assert_eq!(handlers.payments(), old.len());
    let stored = String::from_utf8(view.raw_keys().await.unwrap()[0].clone()).unwrap();

    let moving = tokio::task::spawn_blocking({
        let (cluster, stored) = (Arc::clone(&cluster), stored.clone());
        move || cluster.migrate_slot_of(&stored, 10, Duration::from_millis(30))
    });
    let mut new = Vec::new();
    let (mut round, mut during) = (0, 0);
    while round < 20 || !moving.is_finished() {
        during += usize::from(!moving.is_finished());
        // Four old keys (replays) and four new ones, then the new ones again.
        let fresh: Vec<String> = (0..4).map(|n| key(format!("new-{round}-{n}"))).collect();
        let replays: Vec<String> = (0..4)
            .map(|n| old[(round * 4 + n) % old.len()].clone())
            .collect();
        for (answer, replay) in send_all(&app, &[replays, fresh.clone()].concat())
            .await
            .into_iter()
            .zip([true, true, true, true, false, false, false, false])
        {
            assert_eq!(
                (answer.status, answer.replayed()),
                (StatusCode::CREATED, replay),
                "round {round}: {}",
                answer.body
            );
        }
        for answer in send_all(&app, &fresh).await {
            assert_eq!(
                (answer.status, answer.replayed()),
                (StatusCode::CREATED, true)
            );
        }
        new.extend(fresh);
        round += 1;
    }
    let migration = moving.await.unwrap().unwrap();
    eprintln!("{migration:?}; {during} rounds during the move");
    assert!(migration.keys >= old.len() && migration.batches >= 25);
    assert!(during >= 5, "the traffic met the slot half moved");

    // Every key, old and new, is replayed from the new master.
    for answer in send_all(&app, &[old.clone(), new.clone()].concat()).await {
        assert_eq!(
            (answer.status, answer.replayed()),
            (StatusCode::CREATED, true)
        );
    }
    assert_eq!(
        handlers.payments(),
        old.len() + new.len(),
        "each key ran once"
    );
    let on = tokio::task::block_in_place(|| cluster.master_of(&stored));
    assert_eq!(on, migration.to);
}
