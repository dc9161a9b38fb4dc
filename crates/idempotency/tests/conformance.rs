//! The conformance suite: every behaviour of the layer, run against every
//! store (in-memory, and Redis when available).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use common::{
    Handlers, app, backends, fresh_key, layer, request, send, send_when_settled, spawn_request,
};
use perfkit_idempotency::{
    Claim, ClaimToken, Existing, Fingerprint, IdempotencyStore, OnDisconnect, RecordPolicy,
    RecordedResponse, StoreFuture, StoreKey,
};
use perfkit_test_support::concurrency::until;

#[tokio::test]
async fn replays_recorded_response_for_same_key() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(&handlers, layer(&backend.store, |b| b));
        let key = fresh_key();
        let first = send(
            &app,
            request("POST", "/payments", Some(&key), "{\"amount\":100}"),
        )
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", backend.name);
        assert!(!first.replayed());
        assert_eq!(
            first.headers[header::SET_COOKIE],
            "session=first-caller",
            "the first caller gets its cookie"
        );
        for _ in 0..3 {
            let retry = send(
                &app,
                request("POST", "/payments", Some(&key), "{\"amount\":100}"),
            )
            .await;
            assert_eq!(retry.status, StatusCode::CREATED, "{}", backend.name);
            assert!(retry.replayed(), "{}", backend.name);
            assert_eq!(retry.body, first.body);
            assert_eq!(
                retry.headers[header::LOCATION],
                first.headers[header::LOCATION]
            );
            assert_eq!(retry.headers["x-execution"], "1");
            assert!(
                retry.headers.get(header::SET_COOKIE).is_none(),
                "{}: a replay must not hand out the first caller's cookie",
                backend.name
            );
        }
        assert_eq!(handlers.payments(), 1, "{}", backend.name);
    }
}

#[tokio::test]
async fn quoted_and_bare_keys_name_one_record() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(&handlers, layer(&backend.store, |b| b));
        send(
            &app,
            request("POST", "/payments", Some("\"order-7\""), "{}"),
        )
        .await;
        let bare = send(&app, request("POST", "/payments", Some("order-7"), "{}")).await;
        assert!(bare.replayed(), "{}", backend.name);
        assert_eq!(handlers.payments(), 1);
    }
}

#[tokio::test]
async fn bad_keys_are_rejected_with_400_problems() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(&handlers, layer(&backend.store, |b| b));
        let too_long = "k".repeat(256);
        for key in [
            None,
            Some("\"\""),
            Some("\"unterminated"),
            Some("with space"),
            Some(too_long.as_str()),
        ] {
            let answer = send(&app, request("POST", "/payments", key, "{}")).await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{}: {key:?}",
                backend.name
            );
            assert_eq!(answer.problem_type(), "urn:perfkit:idempotency:bad-key");
        }
        let max = "k".repeat(255);
        assert_eq!(
            send(&app, request("POST", "/payments", Some(&max), "{}"))
                .await
                .status,
            StatusCode::CREATED
        );

        let mut repeated = request("POST", "/payments", Some("a"), "{}");
        repeated
            .headers_mut()
            .append("idempotency-key", "b".parse().unwrap());
        let answer = send(&app, repeated).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.body.contains("more than one"), "{}", answer.body);

        let mut unscoped = request("POST", "/payments", Some("a"), "{}");
        unscoped.headers_mut().remove("x-tenant");
        let answer = send(&app, unscoped).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.problem_type(), "urn:perfkit:idempotency:no-scope");
        assert_eq!(handlers.payments(), 1, "only the 255-character key ran");
    }
}

#[tokio::test]
async fn unprotected_methods_and_optional_keys_pass_through() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(&handlers, layer(&backend.store, |b| b));
        let listing = send(&app, request("GET", "/payments", None, "")).await;
        assert_eq!(
            (listing.status, listing.body.as_str()),
            (StatusCode::OK, "listing")
        );

        let optional = common::app(
            &handlers,
            layer(
                &backend.store,
                perfkit_idempotency::IdempotencyLayerBuilder::key_optional,
            ),
        );
        for _ in 0..2 {
            assert_eq!(
                send(&optional, request("POST", "/payments", None, "{}"))
                    .await
                    .status,
                StatusCode::CREATED
            );
        }
        assert_eq!(
            handlers.payments(),
            2,
            "{}: requests without a key are not deduplicated",
            backend.name
        );
    }
}

#[tokio::test]
async fn same_key_with_another_request_is_422() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(&handlers, layer(&backend.store, |b| b));
        let key = fresh_key();
        send(
            &app,
            request("POST", "/payments", Some(&key), "{\"amount\":100}"),
        )
        .await;
        for (method, uri, body) in [
            ("POST", "/payments", "{\"amount\":999}"),
            ("PATCH", "/payments", "{\"amount\":100}"),
            ("POST", "/payments?currency=eur", "{\"amount\":100}"),
        ] {
            let answer = send(&app, request(method, uri, Some(&key), body)).await;
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}: {method} {uri} {body}",
                backend.name
            );
            assert_eq!(answer.problem_type(), "urn:perfkit:idempotency:key-reused");
        }
        assert_eq!(handlers.payments(), 1);
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(&handlers, layer(&backend.store, |b| b.max_body_bytes(16)));
        let answer = send(
            &app,
            request("POST", "/payments", Some(&fresh_key()), &"x".repeat(17)),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            backend.name
        );
        assert_eq!(
            answer.problem_type(),
            "urn:perfkit:idempotency:body-too-large"
        );
        assert_eq!(
            send(
                &app,
                request("POST", "/payments", Some(&fresh_key()), &"x".repeat(16))
            )
            .await
            .status,
            StatusCode::CREATED
        );
        assert_eq!(handlers.payments(), 1);
    }
}

#[tokio::test]
async fn same_key_while_in_progress_is_409_with_retry_after() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(
            &handlers,
            layer(&backend.store, |b| b.retry_after(Duration::from_secs(2))),
        );
        let key = fresh_key();
        let first = spawn_request(&app, "/payments?delay_ms=300", &key);
        until("the first request runs", || handlers.payments() == 1).await;
        let second = send(
            &app,
            request("POST", "/payments?delay_ms=300", Some(&key), "{}"),
        )
        .await;
        assert_eq!(second.status, StatusCode::CONFLICT, "{}", backend.name);
        assert_eq!(second.headers[header::RETRY_AFTER], "2");
        assert_eq!(second.problem_type(), "urn:perfkit:idempotency:in-progress");
        let first = first.await.unwrap();
        assert_eq!(first.status, StatusCode::CREATED);
        let third = send(
            &app,
            request("POST", "/payments?delay_ms=300", Some(&key), "{}"),
        )
        .await;
        assert!(third.replayed());
        assert_eq!(handlers.payments(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_share_one_execution() {
    for backend in backends().await {
        for round in 0..5 {
            let handlers = Handlers::default();
            let app = app(&handlers, layer(&backend.store, |b| b));
            let key = fresh_key();
            let requests: Vec<_> = (0..64)
                .map(|_| {
                    let app = app.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        send(
                            &app,
                            request("POST", "/payments?delay_ms=20", Some(&key), "{}"),
                        )
                        .await
                    })
                })
                .collect();
            let mut created = 0;
            for request in requests {
                let answer = request.await.unwrap();
                match answer.status {
                    StatusCode::CREATED if answer.replayed() => {
                        assert_eq!(answer.headers["x-execution"], "1");
                    }
                    StatusCode::CREATED => created += 1,
                    StatusCode::CONFLICT => {
                        assert_eq!(answer.problem_type(), "urn:perfkit:idempotency:in-progress");
                    }
                    other => panic!("{}: unexpected {other}: {}", backend.name, answer.body),
                }
            }
            assert_eq!(
                (created, handlers.payments()),
                (1, 1),
                "{} round {round}",
                backend.name
            );
        }
    }
}

#[tokio::test]
async fn two_layers_on_one_store_share_records_and_a_restarted_layer_replays() {
    for backend in backends().await {
        let handlers = Handlers::default();
        // Two instances: separate layers, so separate Bloom filters.
        let a = app(&handlers, layer(&backend.store, |b| b.name("instance-a")));
        let b = app(&handlers, layer(&backend.store, |b| b.name("instance-b")));
        let key = fresh_key();
        let first = send(&a, request("POST", "/payments", Some(&key), "{}")).await;
        let through_b = send(&b, request("POST", "/payments", Some(&key), "{}")).await;
        assert!(through_b.replayed(), "{}", backend.name);
        assert_eq!(through_b.body, first.body);
        // A restarted instance: a new layer with an empty Bloom filter.
        let restarted = app(&handlers, layer(&backend.store, |b| b));
        assert!(
            send(&restarted, request("POST", "/payments", Some(&key), "{}"))
                .await
                .replayed()
        );
        assert_eq!(handlers.payments(), 1, "{}", backend.name);
    }
}

#[tokio::test]
async fn server_errors_and_panics_release_the_claim_so_a_retry_runs() {
    for backend in backends().await {
        for disconnect in [OnDisconnect::RunToCompletion, OnDisconnect::Cancel] {
            let handlers = Handlers::default();
            let app = app(
                &handlers,
                layer(&backend.store, |b| b.on_disconnect(disconnect)),
            );
            let key = fresh_key();
            let failed = send(&app, request("POST", "/fail", Some(&key), "{}")).await;
            assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
            let retried = send(&app, request("POST", "/fail", Some(&key), "{}")).await;
            assert_eq!(
                (retried.status, retried.body.as_str()),
                (StatusCode::CREATED, "created on attempt 2"),
                "{} {disconnect:?}",
                backend.name
            );
            assert!(
                send(&app, request("POST", "/fail", Some(&key), "{}"))
                    .await
                    .replayed()
            );

            let key = fresh_key();
            let panicked = spawn_request(&app, "/panic", &key).await;
            let answer = panicked.unwrap();
            assert_eq!(
                answer.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{} {disconnect:?}",
                backend.name
            );
            // The release runs on a spawned task: allow it to land.
            let retried =
                send_when_settled(&app, || request("POST", "/panic", Some(&key), "{}")).await;
            assert_eq!(
                (retried.status, retried.body.as_str()),
                (StatusCode::CREATED, "created on attempt 2"),
                "{} {disconnect:?}",
                backend.name
            );
        }
    }
}

#[tokio::test]
async fn record_policy_decides_what_is_replayed() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(
            &handlers,
            layer(&backend.store, |b| {
                b.record_policy(RecordPolicy::records(|status| {
                    status.is_success() || status.is_server_error()
                }))
            }),
        );
        let key = fresh_key();
        send(&app, request("POST", "/fail", Some(&key), "{}")).await;
        let retry = send(&app, request("POST", "/fail", Some(&key), "{}")).await;
        assert_eq!(
            retry.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            backend.name
        );
        assert!(
            retry.replayed(),
            "{}: a recorded 500 is replayed",
            backend.name
        );
    }
}

#[tokio::test]
async fn expired_lock_is_reclaimable_and_the_late_handler_cannot_overwrite_the_new_record() {
    for backend in backends().await {
        // The late handler finishes after the new one has recorded, then while the new one still runs.
        for (late_ms, second_ms) in [(800, 0), (600, 800)] {
            let handlers = Handlers::default();
            // The late request holds a 200 ms lock; the one that takes over holds a long one.
            let app = app(
                &handlers,
                layer(&backend.store, |b| b.lock_ttl(Duration::from_millis(200))),
            );
            let other = common::app(
                &handlers,
                layer(&backend.store, |b| b.lock_ttl(Duration::from_secs(10))),
            );
            let key = fresh_key();
            let late = spawn_request(&app, &format!("/payments?delay_ms={late_ms}"), &key);
            until("the first request runs", || handlers.payments() == 1).await;
            tokio::time::sleep(Duration::from_millis(350)).await;
            let second = send(
                &other,
                request(
                    "POST",
                    &format!("/payments?delay_ms={second_ms}"),
                    Some(&key),
                    "{}",
                ),
            )
            .await;
            let case = format!("{}, late {late_ms} ms, second {second_ms} ms", backend.name);
            assert_eq!(
                (second.status, second.replayed()),
                (StatusCode::CREATED, false),
                "{case}: the expired claim was taken over"
            );
            assert_eq!(second.headers["x-execution"], "2");
            let late = late.await.unwrap();
            assert_eq!(
                late.headers["x-execution"], "1",
                "the late handler still answers its own client"
            );
            let replay = send(
                &app,
                request(
                    "POST",
                    &format!("/payments?delay_ms={second_ms}"),
                    Some(&key),
                    "{}",
                ),
            )
            .await;
            assert!(
                replay.replayed(),
                "{case}: {} {}",
                replay.status,
                replay.body
            );
            assert_eq!(
                replay.headers["x-execution"], "2",
                "{case}: the late handler overwrote the record"
            );
        }
    }
}

#[tokio::test]
async fn client_disconnect_mid_handler_completes_once_and_the_retry_replays_unless_cancel_is_chosen()
 {
    for backend in backends().await {
        for disconnect in [OnDisconnect::RunToCompletion, OnDisconnect::Cancel] {
            let case = format!("{} {disconnect:?}", backend.name);
            let handlers = Handlers::default();
            let app = app(
                &handlers,
                layer(&backend.store, |b| b.on_disconnect(disconnect)),
            );
            let key = fresh_key();
            let abandoned = spawn_request(&app, "/payments?delay_ms=300", &key);
            until("the handler runs", || handlers.payments() == 1).await;
            abandoned.abort(); // the client goes away
            let retry = send_when_settled(&app, || {
                request("POST", "/payments?delay_ms=300", Some(&key), "{}")
            })
            .await;
            assert_eq!(retry.status, StatusCode::CREATED, "{case}: {}", retry.body);
            tokio::time::sleep(Duration::from_millis(400)).await;
            if disconnect == OnDisconnect::RunToCompletion {
                // The abandoned handler finished in the background; the retry got its record.
                assert!(retry.replayed(), "{case}");
                assert_eq!((handlers.payments(), handlers.finished()), (1, 1), "{case}");
            } else {
                // The abandoned handler was dropped and its claim released; the retry ran.
                assert!(!retry.replayed(), "{case}");
                assert_eq!((handlers.payments(), handlers.finished()), (2, 1), "{case}");
            }
        }
    }
}

#[tokio::test]
async fn tenant_b_cannot_replay_tenant_a_response_with_a_key() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(&handlers, layer(&backend.store, |b| b));
        let key = fresh_key();
        let tenant_a = send(&app, request("POST", "/payments", Some(&key), "{}")).await;
        let mut as_b = request("POST", "/payments", Some(&key), "{}");
        as_b.headers_mut()
            .insert("x-tenant", "globex".parse().unwrap());
        let tenant_b = send(&app, as_b).await;
        assert!(
            !tenant_b.replayed(),
            "{}: tenant B got tenant A's response",
            backend.name
        );
        assert_ne!(tenant_b.body, tenant_a.body);
        assert_eq!(handlers.payments(), 2);
    }
}

#[tokio::test]
async fn a_response_over_the_recording_limit_runs_once_and_retries_get_409() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = app(
            &handlers,
            layer(&backend.store, |b| b.max_recorded_body_bytes(1024)),
        );
        let key = fresh_key();
        let first = send(&app, request("POST", "/big", Some(&key), "{}")).await;
        assert_eq!(
            (first.status, first.body.len()),
            (StatusCode::OK, 64 * 1024),
            "{}: the client gets the whole body",
            backend.name
        );
        let retry = send(&app, request("POST", "/big", Some(&key), "{}")).await;
        assert_eq!(retry.status, StatusCode::CONFLICT, "{}", backend.name);
        assert_eq!(
            retry.problem_type(),
            "urn:perfkit:idempotency:not-replayable"
        );
        assert!(retry.body.contains("status 200"), "{}", retry.body);
    }
}

/// A store whose claims take effect at once but answer late, as a claim does
/// when the connection is slow: the window in which a client can go away
/// after its claim was taken.
struct SlowClaims(Arc<dyn IdempotencyStore>);

impl IdempotencyStore for SlowClaims {
    fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>> {
        self.0.lookup(key)
    }

    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let claim = self.0.claim(key, token, fingerprint, lock_ttl).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            claim
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        response: &'a Arc<RecordedResponse>,
        key_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.0.complete(key, token, response, key_ttl)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        self.0.release(key, token)
    }
}

#[tokio::test]
async fn a_request_dropped_while_its_claim_is_in_flight_finishes_or_leaves_no_claim_behind() {
    for backend in backends().await {
        for disconnect in [OnDisconnect::RunToCompletion, OnDisconnect::Cancel] {
            let slow: Arc<dyn IdempotencyStore> = Arc::new(SlowClaims(Arc::clone(&backend.store)));
            let handlers = Handlers::default();
            let app = app(&handlers, layer(&slow, |b| b.on_disconnect(disconnect)));
            let key = fresh_key();
            let abandoned = spawn_request(&app, "/payments", &key);
            tokio::time::sleep(Duration::from_millis(100)).await;
            abandoned.abort(); // while the claim's answer is on its way
            assert!(abandoned.await.unwrap_err().is_cancelled());
            let direct = common::app(&handlers, layer(&backend.store, |b| b));
            let retry =
                send_when_settled(&direct, || request("POST", "/payments", Some(&key), "{}")).await;
            let case = format!("{} {disconnect:?}", backend.name);
            assert_eq!(retry.status, StatusCode::CREATED, "{case}: {}", retry.body);
            // Run to completion: the abandoned request ran in the background and the retry
            // replays it. Cancel: its claim was released and the retry ran.
            assert_eq!(
                retry.replayed(),
                disconnect == OnDisconnect::RunToCompletion,
                "{case}"
            );
            assert_eq!(handlers.payments(), 1, "{case}");
        }
    }
}

/// `POST /orders`: axum's `Json` extractor (415 for another media type, 400
/// for broken JSON, 422 for the wrong shape), then 201; `/orders/marked`
/// answers 402 marked `NotExecuted`; every route echoes the key and scope
/// the layer put in the request's extensions.
fn orders(handlers: &Handlers) -> axum::Router {
    use axum::Json;
    use axum::extract::{Extension, State};
    use axum::response::IntoResponse;
    use perfkit_idempotency::NotExecuted;

    #[derive(serde::Deserialize)]
    struct Order {
        amount: u64,
    }
    async fn create(
        State(handlers): State<Handlers>,
        Extension(key): Extension<StoreKey>,
        Json(order): Json<Order>,
    ) -> (StatusCode, String) {
        let n = handlers
            .payments
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        (
            StatusCode::CREATED,
            format!(
                "order {n} of {} for {:?}/{}",
                order.amount,
                key.scope(),
                key.key()
            ),
        )
    }
    async fn marked(State(handlers): State<Handlers>) -> axum::response::Response {
        handlers
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut response = (StatusCode::PAYMENT_REQUIRED, "top up first").into_response();
        response.extensions_mut().insert(NotExecuted);
        response
    }
    axum::Router::new()
        .route("/orders", axum::routing::post(create))
        .route("/orders/marked", axum::routing::post(marked))
        .with_state(handlers.clone())
}

fn typed(media_type: &str, key: &str, body: &str) -> axum::http::Request<axum::body::Body> {
    let mut request = request("POST", "/orders", Some(key), body);
    request
        .headers_mut()
        .insert(header::CONTENT_TYPE, media_type.parse().unwrap());
    request
}

#[tokio::test]
async fn a_request_rejected_as_the_wrong_media_type_runs_when_retried_as_json() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = orders(&handlers).layer(layer(&backend.store, |b| b));
        let key = fresh_key();
        let body = r#"{"amount":5}"#;
        let rejected = send(&app, typed("text/plain", &key, body)).await;
        assert_eq!(
            rejected.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{}",
            backend.name
        );
        let json = send(&app, typed("application/json", &key, body)).await;
        assert_eq!(
            (json.status, json.replayed()),
            (StatusCode::CREATED, false),
            "{}: {}",
            backend.name,
            json.body
        );
        let replay = send(&app, typed("Application/JSON", &key, body)).await;
        assert!(
            replay.replayed(),
            "{}: media types compare case-insensitively",
            backend.name
        );
        assert_eq!(handlers.payments(), 1);

        // Even where 415s are recorded, the JSON retry is another request: 422, never the 415.
        let recording = orders(&handlers).layer(layer(&backend.store, |b| {
            b.record_policy(RecordPolicy::records(|status| !status.is_server_error()))
        }));
        let key = fresh_key();
        send(&recording, typed("text/plain", &key, body)).await;
        let retried = send(&recording, typed("application/json", &key, body)).await;
        assert_eq!(
            retried.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            backend.name
        );
        assert_eq!(retried.problem_type(), "urn:perfkit:idempotency:key-reused");
    }
}

#[tokio::test]
async fn validation_failures_are_not_recorded_so_a_corrected_request_runs() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = orders(&handlers).layer(layer(&backend.store, |b| b));
        for broken in [r#"{"amount":"#, r#"{"amount":"five"}"#] {
            let key = fresh_key();
            let first = send(&app, typed("application/json", &key, broken)).await;
            assert!(
                [StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY].contains(&first.status),
                "{}: {first:?}",
                backend.name
            );
            assert!(!first.replayed());
            let again = send(&app, typed("application/json", &key, broken)).await;
            assert!(
                !again.replayed(),
                "{}: not recorded, so not replayed",
                backend.name
            );
            // The client fixes its body and retries with the same key.
            let fixed = send(&app, typed("application/json", &key, r#"{"amount":5}"#)).await;
            assert_eq!(
                (fixed.status, fixed.replayed()),
                (StatusCode::CREATED, false),
                "{}: {}",
                backend.name,
                fixed.body
            );
        }
        assert_eq!(handlers.payments(), 2);
    }
}

#[tokio::test]
async fn a_response_the_handler_marks_not_executed_is_not_recorded() {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = orders(&handlers).layer(layer(&backend.store, |b| b));
        let key = fresh_key();
        for attempt in 1..=2 {
            let answer = send(&app, request("POST", "/orders/marked", Some(&key), "{}")).await;
            assert_eq!(
                answer.status,
                StatusCode::PAYMENT_REQUIRED,
                "{}",
                backend.name
            );
            assert!(
                !answer.replayed(),
                "{}: attempt {attempt} ran",
                backend.name
            );
        }
        assert_eq!(
            handlers.failures.load(std::sync::atomic::Ordering::SeqCst),
            2
        );
    }
}

#[tokio::test]
async fn a_quoted_key_with_parameters_names_the_key_without_them_and_the_handler_sees_key_and_scope()
 {
    for backend in backends().await {
        let handlers = Handlers::default();
        let app = orders(&handlers).layer(layer(&backend.store, |b| b));
        let first = send(
            &app,
            typed("application/json", "\"order-9\";v=1", r#"{"amount":5}"#),
        )
        .await;
        assert_eq!(
            first.status,
            StatusCode::CREATED,
            "{}: {}",
            backend.name,
            first.body
        );
        assert!(
            first.body.ends_with(r#"for Some("acme")/order-9"#),
            "{}: {}",
            backend.name,
            first.body
        );
        for same in ["\"order-9\"", "order-9", "\"order-9\"; v=2"] {
            let retry = send(&app, typed("application/json", same, r#"{"amount":5}"#)).await;
            assert!(retry.replayed(), "{}: {same}", backend.name);
        }
        let bad = send(&app, typed("application/json", "\"order-9\";V", "{}")).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_lock_ttl_runs_once_when_claims_are_renewed() {
    for backend in backends().await {
        for renew in [true, false] {
            let handlers = Handlers::default();
            let app = app(
                &handlers,
                layer(&backend.store, |b| {
                    let b = b.lock_ttl(Duration::from_millis(300));
                    if renew {
                        b.renew_claims(Duration::from_millis(100))
                    } else {
                        b
                    }
                }),
            );
            let key = fresh_key();
            let slow = spawn_request(&app, "/payments?delay_ms=1000", &key);
            // Well past the lock TTL, while the handler still runs.
            tokio::time::sleep(Duration::from_millis(600)).await;
            let duplicate = send(
                &app,
                request("POST", "/payments?delay_ms=1000", Some(&key), "{}"),
            )
            .await;
            let first = slow.await.unwrap();
            assert_eq!(first.status, StatusCode::CREATED);
            if renew {
                assert_eq!(
                    duplicate.status,
                    StatusCode::CONFLICT,
                    "{}: the renewed claim still holds the key: {}",
                    backend.name,
                    duplicate.body
                );
                assert_eq!(handlers.payments(), 1, "{}", backend.name);
                let replay = send(
                    &app,
                    request("POST", "/payments?delay_ms=1000", Some(&key), "{}"),
                )
                .await;
                assert!(
                    replay.replayed(),
                    "{}: the slow response was recorded",
                    backend.name
                );
            } else {
                assert_eq!(
                    handlers.payments(),
                    2,
                    "{}: without renewal the expired claim lets the duplicate run",
                    backend.name
                );
            }
        }
    }
}

#[tokio::test]
async fn a_renewal_period_not_shorter_than_the_lock_ttl_is_rejected() {
    let store: Arc<dyn IdempotencyStore> = Arc::new(perfkit_idempotency::MemoryStore::new());
    for every in [
        Duration::ZERO,
        Duration::from_secs(60),
        Duration::from_secs(61),
    ] {
        let built = perfkit_idempotency::IdempotencyLayer::builder(Arc::clone(&store))
            .unscoped()
            .renew_claims(every)
            .build();
        assert!(
            matches!(
                built,
                Err(perfkit_idempotency::ConfigError::RenewalPeriod { .. })
            ),
            "{every:?}: {:?}",
            built.err()
        );
    }
}

#[tokio::test]
async fn a_claim_repeated_under_its_own_token_is_acquired_again() {
    for backend in backends().await {
        let store = &backend.store;
        let key = StoreKey::new(
            Some("acme"),
            &perfkit_idempotency::IdempotencyKey::new("repeat").unwrap(),
        );
        let (token, other) = (ClaimToken::new(), ClaimToken::new());
        let fingerprint = Fingerprint::from_bytes([7; 32]);
        let lock = Duration::from_secs(60);
        for attempt in 0..2 {
            let claim = store.claim(&key, &token, &fingerprint, lock).await.unwrap();
            assert!(
                matches!(claim, Claim::Acquired),
                "{}: attempt {attempt}",
                backend.name
            );
        }
        let held = store.claim(&key, &other, &fingerprint, lock).await.unwrap();
        assert!(
            matches!(held, Claim::Existing(Existing::InProgress { .. })),
            "{}: another token finds it held",
            backend.name
        );
    }
}

#[tokio::test]
async fn an_empty_layer_name_is_rejected() {
    let store: Arc<dyn IdempotencyStore> = Arc::new(perfkit_idempotency::MemoryStore::new());
    for name in ["", "  "] {
        let built = perfkit_idempotency::IdempotencyLayer::builder(Arc::clone(&store))
            .unscoped()
            .name(name)
            .build();
        assert!(
            matches!(built, Err(perfkit_idempotency::ConfigError::EmptyName)),
            "{name:?}: {:?}",
            built.err()
        );
    }
}
