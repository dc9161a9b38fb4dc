//! `perfkit-idempotency` against a bare handler and `axum-idempotent` 0.6.0,
//! in one run, all in memory (our `MemoryStore`; axum-idempotent's
//! required session stack: `ruts` 0.13 with its moka store and
//! `tower-cookies`), on one trivial axum handler (`201 "ok"`).
//!
//! - `idempotency/layer`: a request with a new key (claim, run, record) and
//!   a replay (same key, same request). The layer's overhead is its time
//!   minus the bare handler's. New keys go to a fresh layer every
//!   10,000 requests, so the store stays at a realistic size; only the
//!   requests are timed.
//! - `idempotency/bloom`: what the Bloom filter costs, as the layer uses it:
//!   the 64-bit foldhash digest of a `StoreKey`, bloomfilter 3's check (key
//!   absent, key present) and set of that digest in a filter sized as the
//!   layer's default (100,000 keys at 1 %, half full), and a rotation
//!   (allocating the next generation).
//!
//! `cargo bench -p perfkit-benches-http --bench idempotency`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::post;
use axum_idempotent::{IdempotentLayer, IdempotentOptions};
use bloomfilter::Bloom;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use perfkit_idempotency::{IdempotencyKey, IdempotencyLayer, MemoryStore, StoreKey};
use ruts::store::moka::MokaStore;
use ruts::{CookieOptions, SessionLayer};
use tokio::runtime::{Builder, Runtime};
use tower::ServiceExt;
use tower_cookies::CookieManagerLayer;

/// Requests per fresh layer in the new-key benchmarks.
const KEYS_PER_LAYER: u64 = 10_000;

fn runtime() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn handler() -> Router {
    Router::new().route("/payments", post(|| async { (StatusCode::CREATED, "ok") }))
}

fn ours(bloom: bool) -> Router {
    let builder = IdempotencyLayer::builder(MemoryStore::new()).scope(|request| {
        request
            .headers
            .get("x-tenant")?
            .to_str()
            .ok()
            .map(str::to_owned)
    });
    let builder = if bloom {
        builder
    } else {
        builder.without_bloom()
    };
    handler().layer(builder.build().expect("layer"))
}

/// axum-idempotent keyed by the `Idempotency-Key` header, with the session
/// and cookie layers it needs, and the session cookie a client would send.
async fn theirs() -> (Router, HeaderValue) {
    let store = Arc::new(MokaStore::builder().build());
    let options = IdempotentOptions::default()
        .expire_after(86_400)
        .use_idempotency_key_header(Some("idempotency-key"), true);
    let app = handler()
        .route(
            "/session",
            post(|session: ruts::Session<MokaStore>| async move {
                session
                    .set(
                        "user",
                        &"bench".to_owned(),
                        ruts::store::Ttl::new(86_400).expect("ttl"),
                        None,
                    )
                    .await
                    .expect("session set");
                "session"
            }),
        )
        .layer(IdempotentLayer::<MokaStore>::new(options))
        .layer(
            SessionLayer::new(store).with_cookie_options(
                CookieOptions::build()
                    .name("session")
                    .max_age(86_400)
                    .path("/"),
            ),
        )
        .layer(CookieManagerLayer::new());
    let response = app
        .clone()
        .oneshot(
            Request::post("/session")
                .header("idempotency-key", "session-setup")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("session");
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .find(|cookie| cookie.as_bytes().starts_with(b"session="))
        .unwrap_or_else(|| panic!("no session cookie: {response:?}"))
        .clone();
    let cookie = HeaderValue::from_bytes(
        cookie
            .as_bytes()
            .split(|&b| b == b';')
            .next()
            .expect("cookie pair"),
    )
    .expect("cookie");
    (app, cookie)
}

fn payment(key: u64, cookie: Option<&HeaderValue>) -> Request<Body> {
    let mut request = Request::post("/payments")
        .header("x-tenant", "acme")
        .header("content-type", "application/json")
        .header("idempotency-key", HeaderValue::from(key))
        .body(Body::from(r#"{"amount":100,"currency":"eur"}"#))
        .expect("request");
    if let Some(cookie) = cookie {
        request.headers_mut().insert("cookie", cookie.clone());
    }
    request
}

async fn send(app: &Router, request: Request<Body>) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert!(
        response.status() == StatusCode::CREATED,
        "{}",
        response.status()
    );
    black_box(response);
}

/// Times `iters` requests with new keys, on a fresh app every `KEYS_PER_LAYER`.
async fn time_new_keys<F, Fut>(iters: u64, fresh: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Router, Option<HeaderValue>)>,
{
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let (app, cookie) = fresh().await;
        let batch = KEYS_PER_LAYER.min(iters - done);
        let start = Instant::now();
        for key in done..done + batch {
            send(&app, payment(key, cookie.as_ref())).await;
        }
        total += start.elapsed();
        done += batch;
    }
    total
}

async fn time_replays(iters: u64, app: &Router, cookie: Option<&HeaderValue>) -> Duration {
    send(app, payment(0, cookie)).await;
    let start = Instant::now();
    for _ in 0..iters {
        send(app, payment(0, cookie)).await;
    }
    start.elapsed()
}

fn layer(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("idempotency/layer");
    let bare = handler();
    group.bench_function(BenchmarkId::from_parameter("bare handler"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for key in 0..iters {
                    send(&bare, payment(key, None)).await;
                }
                start.elapsed()
            })
        });
    });
    group.bench_function(
        BenchmarkId::from_parameter("perfkit-idempotency new key"),
        |b| {
            b.iter_custom(|iters| {
                runtime.block_on(time_new_keys(iters, || async { (ours(true), None) }))
            });
        },
    );
    group.bench_function(
        BenchmarkId::from_parameter("perfkit-idempotency new key, no Bloom filter"),
        |b| {
            b.iter_custom(|iters| {
                runtime.block_on(time_new_keys(iters, || async { (ours(false), None) }))
            });
        },
    );
    let replaying = ours(true);
    group.bench_function(
        BenchmarkId::from_parameter("perfkit-idempotency replay"),
        |b| {
            b.iter_custom(|iters| runtime.block_on(time_replays(iters, &replaying, None)));
        },
    );
    group.bench_function(
        BenchmarkId::from_parameter("axum-idempotent new key"),
        |b| {
            b.iter_custom(|iters| {
                runtime.block_on(time_new_keys(iters, || async {
                    let (app, cookie) = theirs().await;
                    (app, Some(cookie))
                }))
            });
        },
    );
    let (their_app, their_cookie) = runtime.block_on(theirs());
    group.bench_function(BenchmarkId::from_parameter("axum-idempotent replay"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(time_replays(iters, &their_app, Some(&their_cookie)))
        });
    });
    group.finish();
}

fn bloom(c: &mut Criterion) {
    use std::hash::BuildHasher;

    let mut group = c.benchmark_group("idempotency/bloom");
    let hasher = foldhash::fast::RandomState::default();
    let key = |i: u64| {
        StoreKey::new(
            Some("acme"),
            &IdempotencyKey::new(&format!("8e03978e-40d5-43e8-bc93-{i:012}")).expect("key"),
        )
    };
    let mut filter: Bloom<u64> = Bloom::new_for_fp_rate(100_000, 0.01).expect("bloom");
    for i in 0..50_000 {
        filter.set(&hasher.hash_one(key(i)));
    }
    let key_7 = key(7);
    let present = hasher.hash_one(&key_7);
    let absent = hasher.hash_one(key(1_000_000));
    group.bench_function("digest of a StoreKey (foldhash)", |b| {
        b.iter(|| black_box(hasher.hash_one(black_box(&key_7))));
    });
    group.bench_function("check, key absent", |b| {
        b.iter(|| black_box(filter.check(black_box(&absent))));
    });
    group.bench_function("check, key present", |b| {
        b.iter(|| black_box(filter.check(black_box(&present))));
    });
    group.bench_function("set", |b| b.iter(|| filter.set(black_box(&absent))));
    group.bench_function("rotation (new 100,000-key generation)", |b| {
        b.iter(|| black_box(Bloom::<u64>::new_for_fp_rate(100_000, 0.01).expect("bloom")));
    });
    group.finish();
}

criterion_group!(benches, layer, bloom);
criterion_main!(benches);
