//! Every endpoint over real HTTP on the embedded default (SQLite, in-process
//! cache and bus, in-memory idempotency store, built-in embeddings): happy
//! paths, error paths, and the concurrency claims.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{client, embedded_app};

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_created_replayed_and_scoped_by_account() {
    let app = embedded_app().await;
    let http = client();
    let pay = |account: &str, key: &str, body: Value| {
        http.post(app.url("/payments"))
            .bearer_auth(account)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = pay(
        "acct-a",
        "order-1",
        json!({"amount_cents": 1250, "currency": "EUR"}),
    )
    .await
    .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let created: Value = first.json().await.unwrap();
    assert_eq!(created["account"], "acct-a");
    assert_eq!(created["amount_cents"], 1250);

    // The retry: the same payment, replayed.
    let retry = pay(
        "acct-a",
        "order-1",
        json!({"amount_cents": 1250, "currency": "EUR"}),
    )
    .await
    .unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), created);
    // The same key with another body: 422.
    let reused = pay(
        "acct-a",
        "order-1",
        json!({"amount_cents": 9999, "currency": "EUR"}),
    )
    .await
    .unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The same key from another account is its own payment.
    let other = pay(
        "acct-b",
        "order-1",
        json!({"amount_cents": 1250, "currency": "EUR"}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), StatusCode::CREATED);
    assert!(other.headers().get("idempotent-replayed").is_none());
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["id"], created["id"]);
    assert_eq!(
        app.app.count_payments("acct-a", "order-1").await.unwrap(),
        1
    );
    assert_eq!(
        app.app.count_payments("acct-b", "order-1").await.unwrap(),
        1
    );

    // The account's payments.
    let listed: Value = http
        .get(app.url("/payments"))
        .bearer_auth("acct-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["latest"][0], created);

    // Bad input: each a problem+json, never a 500.
    let no_auth = http
        .post(app.url("/payments"))
        .header("Idempotency-Key", "k")
        .json(&json!({"amount_cents": 1, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    problem(no_auth, StatusCode::UNAUTHORIZED).await;
    let no_key = http
        .post(app.url("/payments"))
        .bearer_auth("acct-a")
        .json(&json!({"amount_cents": 1, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    problem(no_key, StatusCode::BAD_REQUEST).await;
    let malformed = http
        .post(app.url("/payments"))
        .bearer_auth("acct-a")
        .header("Idempotency-Key", "malformed")
        .header("content-type", "application/json")
        .body("{\"amount_cents\": ")
        .send()
        .await
        .unwrap();
    problem(malformed, StatusCode::BAD_REQUEST).await;
    let wrong_type = http
        .post(app.url("/payments"))
        .bearer_auth("acct-a")
        .header("Idempotency-Key", "wrong-type")
        .header("content-type", "text/plain")
        .body("12.50 EUR")
        .send()
        .await
        .unwrap();
    problem(wrong_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let invalid = pay(
        "acct-a",
        "invalid",
        json!({"amount_cents": -5, "currency": "eur"}),
    )
    .await
    .unwrap();
    problem(invalid, StatusCode::UNPROCESSABLE_ENTITY).await;
    let unknown_field = pay(
        "acct-a",
        "unknown",
        json!({"amount_cents": 5, "currency": "EUR", "tip": 1}),
    )
    .await
    .unwrap();
    problem(unknown_field, StatusCode::UNPROCESSABLE_ENTITY).await;
    let oversized = http
        .post(app.url("/payments"))
        .bearer_auth("acct-a")
        .header("Idempotency-Key", "big")
        .header("content-type", "application/json")
        .body(format!(
            "{{\"currency\": \"EUR\", \"amount_cents\": 1, \"pad\": \"{}\"}}",
            "x".repeat(2 << 20)
        ))
        .send()
        .await
        .unwrap();
    problem(oversized, StatusCode::PAYLOAD_TOO_LARGE).await;
    let bad_key = http
        .post(app.url("/payments"))
        .bearer_auth("acct-a")
        .header("Idempotency-Key", "k".repeat(300))
        .json(&json!({"amount_cents": 1, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    problem(bad_key, StatusCode::BAD_REQUEST).await;
    let bad_bearer = http
        .post(app.url("/payments"))
        .bearer_auth("not an account!")
        .header("Idempotency-Key", "k")
        .json(&json!({"amount_cents": 1, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    problem(bad_bearer, StatusCode::UNAUTHORIZED).await;
    // Past the app's own body limit (64 KiB) on a route without the layer.
    let big_update = http
        .put(app.url("/agents/1"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"name\": \"{}\", \"status\": \"active\"}}",
            "n".repeat(100_000)
        ))
        .send()
        .await
        .unwrap();
    problem(big_update, StatusCode::PAYLOAD_TOO_LARGE).await;
    app.stop().await;
}

/// 50 concurrent requests with one key: one row; every answer the same
/// payment or a 409 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_payments_with_one_key_charge_once() {
    let app = embedded_app().await;
    let http = client();
    let requests: Vec<_> = (0..50)
        .map(|_| {
            http.post(app.url("/payments"))
                .bearer_auth("acct-race")
                .header("Idempotency-Key", "the-one")
                .json(&json!({"amount_cents": 700, "currency": "USD"}))
                .send()
        })
        .collect();
    let mut payments = HashSet::new();
    let mut conflicts = 0;
    for response in futures_join(requests).await {
        let response = response.unwrap();
        match response.status() {
            StatusCode::CREATED => {
                let body: Value = response.json().await.unwrap();
                payments.insert(body["id"].as_i64().unwrap());
            }
            StatusCode::CONFLICT => {
                assert!(response.headers().contains_key("retry-after"));
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert_eq!(payments.len(), 1, "one payment for every answer");
    assert!(conflicts < 50);
    assert_eq!(
        app.app
            .count_payments("acct-race", "the-one")
            .await
            .unwrap(),
        1
    );
    app.stop().await;
}

/// Runs futures concurrently on the current task.
async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// 200 concurrent lookups of the same coins: the upstream is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_price_lookups_call_the_upstream_once() {
    let app = embedded_app().await;
    let http = client();
    let requests: Vec<_> = (0..200)
        .map(|_| http.get(app.url("/prices?coins=eth,btc")).send())
        .collect();
    let mut bodies = HashSet::new();
    for response in futures_join(requests).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        bodies.insert(response.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(app.app.upstream_calls(), 1);
    // The same coins in another order and case are the same quote.
    let again: Value = http
        .get(app.url("/prices?coins=BTC,eth,btc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["upstream_call"], 1);
    assert_eq!(app.app.upstream_calls(), 1);
    for bad in [
        "/prices",
        "/prices?coins=",
        "/prices?coins=a%20b",
        "/prices?coins=x;drop",
    ] {
        problem(
            http.get(app.url(bad)).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_cached_updated_and_invalidated() {
    let app = embedded_app().await;
    let http = client();
    let agent: Value = http
        .get(app.url("/agents/7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agent["name"], "agent 7");
    let updated = http
        .put(app.url("/agents/7"))
        .json(&json!({"name": "Ada", "status": "retired"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["version"], 2);
    // The cached copy is gone: the new row.
    let read: Value = http
        .get(app.url("/agents/7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read, updated);

    problem(
        http.get(app.url("/agents/999999")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        http.get(app.url("/agents/abc")).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        http.get(app.url("/agents/-3")).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let bad_status = http
        .put(app.url("/agents/7"))
        .json(&json!({"name": "Ada", "status": "sleeping"}))
        .send()
        .await
        .unwrap();
    problem(bad_status, StatusCode::UNPROCESSABLE_ENTITY).await;
    let missing = http
        .put(app.url("/agents/999999"))
        .json(&json!({"name": "Ada", "status": "active"}))
        .send()
        .await
        .unwrap();
    problem(missing, StatusCode::NOT_FOUND).await;
    problem(
        http.get(app.url("/nothing/here")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_batched_and_shaped_as_openai_answers() {
    let app = embedded_app().await;
    let http = client();
    let response = http
        .post(app.url("/v1/embeddings"))
        .json(&json!({"input": ["alpha", "beta", "gamma"], "model": "text-embedding-3-small"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["index"], index);
        assert_eq!(item["embedding"].as_array().unwrap().len(), 16);
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    // One text alone gets the same vector as in a batch.
    let one: Value = http
        .post(app.url("/v1/embeddings"))
        .json(&json!({"input": "beta"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["data"][0]["embedding"], data[1]["embedding"]);
    for bad in [
        json!({"input": []}),
        json!({"input": [""]}),
        json!({"input": "x", "model": "other"}),
        json!({"text": "x"}),
    ] {
        let response = http
            .post(app.url("/v1/embeddings"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_report_and_status_page_show_the_family_at_work() {
    let app = embedded_app().await;
    let http = client();
    // Traffic through every crate.
    let _ = http.get(app.url("/agents/3")).send().await.unwrap();
    let _ = http.get(app.url("/agents/3")).send().await.unwrap();
    let _ = http.get(app.url("/prices?coins=sol")).send().await.unwrap();
    let _ = http
        .post(app.url("/payments"))
        .bearer_auth("acct-m")
        .header("Idempotency-Key", "m-1")
        .json(&json!({"amount_cents": 1, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    let _ = http
        .post(app.url("/v1/embeddings"))
        .json(&json!({"input": "metrics"}))
        .send()
        .await
        .unwrap();
    let _ = http
        .get(app.url("/payments"))
        .bearer_auth("acct-m")
        .send()
        .await
        .unwrap();
    // The pool monitor samples every second.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;

    let metrics = http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for metric in [
        "perfkit_cache_hits_total",
        "perfkit_idempotency_requests_total",
        "perfkit_dedup_executions_total",
        "perfkit_batcher_batches_total",
        "perfkit_query_audit_calls_total",
        "perfkit_pool_connections",
        "perfkit_pool_acquire_seconds",
    ] {
        assert!(metrics.contains(metric), "/metrics lacks {metric}");
    }

    let health = http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"]["backend"], "sqlite");
    assert!(health["database"]["pool"]["max"].as_u64().unwrap() > 0);
    assert!(health["redis"].is_null());

    let report: Value = http
        .get(app.url("/debug/slow-queries"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statements = report["statements"].as_array().unwrap();
    assert!(
        statements.iter().any(|s| s["statement"]
            .as_str()
            .unwrap()
            .starts_with("insert into payments")),
        "{report}"
    );
    assert!(
        statements
            .iter()
            .all(|s| !s["statement"].as_str().unwrap().contains("acct-m")),
        "constants stay out of the report"
    );

    let page = http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    for figure in [
        "hit ratio, tier l1",
        "replays",
        "conflicts",
        "shared / executed",
        "upstream calls",
        "batches / mean size",
        "rate-limiter wait",
        "connections in use",
        "callers waiting",
        "Slowest statements",
    ] {
        assert!(page.contains(figure), "the status page lacks {figure:?}");
    }
    assert!(page.contains("http-equiv=\"refresh\""));
    app.stop().await;
}

/// Shutdown (SIGTERM in the binary) lets a request in flight finish, and
/// drains the batcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let app = embedded_app().await;
    let http = client();
    let slow = tokio::spawn(http.get(app.url("/prices?coins=ada")).send());
    let embedding = tokio::spawn(
        http.post(app.url("/v1/embeddings"))
            .json(&json!({"input": "in flight"}))
            .send(),
    );
    // The upstream answers after 200 ms; stop while it is asked.
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    let answered = slow.await.unwrap().unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!(embedding.await.unwrap().unwrap().status(), StatusCode::OK);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Redis configured but down: `/health` says so with a 503, payments are
/// refused (the idempotency store fails closed: 503 + Retry-After), reads
/// go on from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_is_a_503_on_health_and_payments_while_reads_go_on() {
    let (mut config, dir) = common::embedded();
    // Nothing listens on port 1.
    config.redis_url = Some("redis://127.0.0.1:1".to_owned());
    let app = common::serve(config, Some(dir)).await;
    let http = client();
    let agent = http.get(app.url("/agents/5")).send().await.unwrap();
    assert_eq!(agent.status(), StatusCode::OK);
    let payment = http
        .post(app.url("/payments"))
        .bearer_auth("acct-down")
        .header("Idempotency-Key", "k-down")
        .json(&json!({"amount_cents": 1, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(payment.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(payment.headers().contains_key("retry-after"));
    let health = http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "unavailable");
    assert_eq!(health["database"]["up"], true);
    assert_eq!(health["redis"]["up"], false, "{health}");
    assert_eq!(health["redis"]["answers_ping"], false, "{health}");
    assert_eq!(health["redis"]["bus_up"], false, "{health}");
    assert_eq!(
        app.app.count_payments("acct-down", "k-down").await.unwrap(),
        0
    );
    app.stop().await;
}

/// `BARE=1`, the load comparison's baseline: the same routes and answers
/// without the perfkit layers (no replay header, no cache, every price
/// lookup reaches the upstream), the same validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_mode_serves_the_same_routes_without_the_layers() {
    let (mut config, dir) = common::embedded();
    config.bare = true;
    config.upstream_latency_ms = 10;
    let app = common::serve(config, Some(dir)).await;
    let http = client();
    let pay = || {
        http.post(app.url("/payments"))
            .bearer_auth("acct-bare")
            .header("Idempotency-Key", "bare-1")
            .json(&json!({"amount_cents": 10, "currency": "EUR"}))
            .send()
    };
    let first: Value = pay().await.unwrap().json().await.unwrap();
    let second = pay().await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert!(second.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        second.json::<Value>().await.unwrap(),
        first,
        "the database's unique key"
    );
    assert_eq!(
        app.app.count_payments("acct-bare", "bare-1").await.unwrap(),
        1
    );
    for _ in 0..3 {
        let prices = http.get(app.url("/prices?coins=btc")).send().await.unwrap();
        assert_eq!(prices.status(), StatusCode::OK);
    }
    assert_eq!(app.app.upstream_calls(), 3);
    let agent: Value = http
        .get(app.url("/agents/9"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agent["id"], 9);
    let invalid = http
        .put(app.url("/agents/9"))
        .json(&json!({"name": "", "status": "active"}))
        .send()
        .await
        .unwrap();
    problem(invalid, StatusCode::UNPROCESSABLE_ENTITY).await;
    app.stop().await;
}
