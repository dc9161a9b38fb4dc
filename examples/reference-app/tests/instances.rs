//! Two instances sharing Redis and PostgreSQL, as two replicas of a service:
//! an update on one is read on the other once the invalidation crosses the
//! bus; a retry sent to the other replays the first's response; another
//! account's key is its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use perfkit_reference_app::Config;
use perfkit_test_support::{postgres, redis};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{client, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_updates_and_idempotent_retries() {
    let Some(db) = postgres().await else { return };
    let Some(redis) = redis().await else { return };
    let mut config = Config::embedded();
    // Both instances in the test's own schema and key prefix.
    config.database_url = format!("{}?options=-c%20search_path%3D{}", db.url(), db.schema());
    config.redis_url = Some(redis.url().to_owned());
    config.redis_prefix = redis.key("app:");
    config.seed_agents = 200;
    config.seed_payments = 2_000;
    let a = serve(config.clone(), None).await;
    let b = serve(config, None).await;
    let http = client();

    let health: Value = http
        .get(b.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["database"]["backend"], "postgres");
    assert_eq!(health["redis"]["up"], true, "{health}");
    assert_eq!(health["redis"]["bus_up"], true, "{health}");

    // B holds agent 11 in its first tier; A updates it.
    let before: Value = http
        .get(b.url("/agents/11"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["version"], 1);
    let updated: Value = http
        .put(a.url("/agents/11"))
        .json(&json!({"name": "Grace", "status": "active"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["version"], 2);
    let started = Instant::now();
    loop {
        let read: Value = http
            .get(b.url("/agents/11"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if read == updated {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "B still serves {read} after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "B read A's update {:?} after it was acknowledged",
        started.elapsed()
    );

    // A payment made through A, retried through B: replayed, charged once.
    let pay = |base: &common::Running, account: &str| {
        http.post(base.url("/payments"))
            .bearer_auth(account)
            .header("Idempotency-Key", "shared-key")
            .json(&json!({"amount_cents": 4200, "currency": "EUR"}))
            .send()
    };
    let first = pay(&a, "acct-x").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let retry = pay(&b, "acct-x").await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    assert_eq!(
        a.app.count_payments("acct-x", "shared-key").await.unwrap(),
        1
    );
    // The same key from another account, through B: a payment of its own.
    let other = pay(&b, "acct-y").await.unwrap();
    assert_eq!(other.status(), StatusCode::CREATED);
    assert!(other.headers().get("idempotent-replayed").is_none());
    assert_ne!(other.json::<Value>().await.unwrap()["id"], first["id"]);

    a.stop().await;
    b.stop().await;
}
