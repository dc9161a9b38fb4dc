#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::post;
use perfkit_idempotency::{IdempotencyLayer, MemoryStore};
use tower::ServiceExt;

fn handler() -> Router {
    Router::new().route("/payments", post(|| async { (StatusCode::CREATED, "ok") }))
}

fn payment(key: u64) -> Request<Body> {
    Request::post("/payments")
        .header("x-tenant", "acme")
        .header("idempotency-key", HeaderValue::from(key))
        .body(Body::from(r#"{"amount":100,"currency":"eur"}"#))
        .unwrap()
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = if mode == "bare" {
            handler()
        } else {
            handler().layer(
                IdempotencyLayer::builder(MemoryStore::new())
                    .scope(|r| r.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
                    .build()
                    .unwrap(),
            )
        };
        for key in 0..std::env::args()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000u64)
        {
            let key = if mode == "replay" { 0 } else { key };
            let response = app.clone().oneshot(payment(key)).await.unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
        }
    });
}
