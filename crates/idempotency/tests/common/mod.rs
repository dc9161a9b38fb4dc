//! The app every idempotency test drives: an axum router with counting
//! handlers behind the layer, and the stores the suite runs against.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode, header};
use axum::routing::post;
use http_body_util::BodyExt;
use perfkit_idempotency::{
    IdempotencyLayer, IdempotencyLayerBuilder, IdempotencyStore, MemoryStore, RedisStore,
};
use perfkit_test_support::TestRedis;
use tower::ServiceExt;

/// Counts handler executions per route.
#[derive(Clone, Default)]
pub struct Handlers {
    pub payments: Arc<AtomicUsize>,
    pub finished: Arc<AtomicUsize>,
    pub failures: Arc<AtomicUsize>,
    pub panics: Arc<AtomicUsize>,
}

impl Handlers {
    pub fn payments(&self) -> usize {
        self.payments.load(Ordering::SeqCst)
    }
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

/// `POST /payments`: 201 with a body naming the execution; `?delay_ms=N`
/// sleeps first. `/fail` answers 500 the first time and 201 after; `/panic`
/// panics the first time; `/big` answers 64 KiB.
pub fn router(handlers: &Handlers) -> Router {
    Router::new()
        .route(
            "/payments",
            post(pay).patch(pay).get(|| async { "listing" }),
        )
        .route("/fail", post(fail))
        .route("/panic", post(panic_once))
        .route("/big", post(|| async { "x".repeat(64 * 1024) }))
        .with_state(handlers.clone())
}

async fn pay(State(handlers): State<Handlers>, request: Request<Body>) -> Response<Body> {
    let n = handlers.payments.fetch_add(1, Ordering::SeqCst) + 1;
    let delay = request
        .uri()
        .query()
        .and_then(|query| query.strip_prefix("delay_ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    let body = request.into_body().collect().await.unwrap().to_bytes();
    tokio::time::sleep(Duration::from_millis(delay)).await;
    handlers.finished.fetch_add(1, Ordering::SeqCst);
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/payments/{n}"))
        .header(header::SET_COOKIE, "session=first-caller")
        .header("x-execution", n.to_string())
        .body(Body::from(format!(
            "payment {n} for {}",
            String::from_utf8_lossy(&body)
        )))
        .unwrap()
}

async fn fail(State(handlers): State<Handlers>) -> (StatusCode, String) {
    let n = handlers.failures.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "database down".to_owned(),
        )
    } else {
        (StatusCode::CREATED, format!("created on attempt {n}"))
    }
}

async fn panic_once(State(handlers): State<Handlers>) -> (StatusCode, String) {
    let n = handlers.panics.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(n > 1, "the handler panics on its first run");
    (StatusCode::CREATED, format!("created on attempt {n}"))
}

/// A store the conformance suite runs against, with what keeps it alive.
pub struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn IdempotencyStore>,
    pub redis: Option<TestRedis>,
    pub cluster: Option<perfkit_test_support::TestRedisCluster>,
}

/// The in-memory store, and the Redis store when Redis is available (the
/// test-support rules: skipped with a reason, or a failure in CI).
pub async fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend {
        name: "memory",
        store: Arc::new(MemoryStore::new()),
        redis: None,
        cluster: None,
    }];
    if let Some(redis) = perfkit_test_support::redis().await {
        let store = RedisStore::builder(redis.url())
            .prefix(redis.prefix())
            .build()
            .unwrap();
        backends.push(Backend {
            name: "redis",
            store: Arc::new(store),
            redis: Some(redis),
            cluster: None,
        });
    }
    // The same store on a Redis Cluster: every operation touches one key,
    // so one slot; keys spread over every master. (`tests/redis.rs` runs
    // one on a cluster connection the application opened.)
    #[cfg(feature = "cluster")]
    if let Some(cluster) = perfkit_test_support::redis_cluster().await {
        let store = RedisStore::cluster_builder(cluster.urls())
            .prefix(cluster.prefix())
            .build()
            .unwrap();
        backends.push(Backend {
            name: "redis-cluster",
            store: Arc::new(store),
            redis: None,
            cluster: Some(cluster),
        });
    }
    backends
}

/// A layer on `store`, scoped by the `x-tenant` header, with `configure` applied.
pub fn layer(
    store: &Arc<dyn IdempotencyStore>,
    configure: impl FnOnce(IdempotencyLayerBuilder) -> IdempotencyLayerBuilder,
) -> IdempotencyLayer {
    let builder = IdempotencyLayer::builder(Arc::clone(store)).scope(|request| {
        request
            .headers
            .get("x-tenant")?
            .to_str()
            .ok()
            .map(str::to_owned)
    });
    configure(builder).build().unwrap()
}

/// The app: `router` behind `layer`.
pub fn app(handlers: &Handlers, layer: IdempotencyLayer) -> Router {
    router(handlers).layer(layer)
}

/// A request to `uri` with `method`, tenant `acme`, `key` (raw header value) and `body`.
pub fn request(method: &str, uri: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-tenant", "acme");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|value| value == "true")
    }

    /// The problem `type`, checking that the body is problem+json with the status.
    pub fn problem_type(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{}",
            self.body
        );
        let problem: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(problem["status"], self.status.as_u16());
        assert!(!problem["detail"].as_str().unwrap().is_empty());
        assert!(!problem["title"].as_str().unwrap().is_empty());
        problem["type"].as_str().unwrap().to_owned()
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = perfkit_test_support::concurrency::within(
        "a request through the idempotency layer",
        app.clone().oneshot(request),
    )
    .await
    .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A fresh key for one test iteration (stores are per test, so unique within the process suffices).
pub fn fresh_key() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("\"key-{}\"", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends `request()` until it is no longer answered `409` (a claim released
/// or recorded on a spawned task lands a moment after the first answer), for
/// at most a second.
pub async fn send_when_settled(app: &Router, request: impl Fn() -> Request<Body>) -> Answer {
    let mut answer = send(app, request()).await;
    for _ in 0..100 {
        if answer.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        answer = send(app, request()).await;
    }
    answer
}

/// Starts `method uri` with `key` on its own task, as a client whose
/// connection may be dropped (abort the handle) or whose handler may panic.
pub fn spawn_request(app: &Router, uri: &str, key: &str) -> tokio::task::JoinHandle<Answer> {
    let (app, request) = (app.clone(), request("POST", uri, Some(key), "{}"));
    tokio::spawn(async move { send(&app, request).await })
}
