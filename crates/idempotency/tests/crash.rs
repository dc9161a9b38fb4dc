//! The crash between a handler's side effect and its record: no layer
//! outside the handler's transaction can close it alone, so the handler
//! makes its own write unique by the scope and key the layer hands it.
//!
//! Instance 1 runs a payment handler that commits its row and then "dies"
//! (its runtime shuts down before the response is recorded: the claim is
//! neither completed nor released, as in a killed process). After the lock
//! TTL the client's retry reaches instance 2 and runs the handler again:
//! with the UNIQUE remedy it finds the row it already wrote and answers
//! with it; without, it charges twice.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::post;
use common::{Backend, backends, layer, request, send};
use perfkit_idempotency::{
    Claim, ClaimToken, Existing, Fingerprint, IdempotencyStore, RecordedResponse, RedisStore,
    StoreError, StoreFuture, StoreKey,
};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tower::ServiceExt;

/// Long enough that the survivor's first request comes while the dead
/// request's claim holds, on a loaded machine (the claim was last renewed
/// up to a third of this before the crash).
const LOCK_TTL: Duration = Duration::from_millis(1_000);

/// The payments table: with the remedy, the scope and key are UNIQUE.
async fn create_table(pool: &PgPool, unique: bool) {
    let constraint = if unique {
        ", UNIQUE (scope, idempotency_key)"
    } else {
        ""
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE payments (id BIGSERIAL PRIMARY KEY, scope TEXT NOT NULL, \
         idempotency_key TEXT NOT NULL, amount BIGINT NOT NULL{constraint})"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// What the handler does after its commit.
#[derive(Clone)]
struct Payments {
    pool: PgPool,
    /// Instance 1 only: tells the test the row is committed, then never returns.
    dies_after_commit: Option<Arc<Dies>>,
}

/// How instance 1 dies after its commit: it says so, and from then on its
/// store calls reach nothing.
struct Dies {
    committed: std::sync::Mutex<mpsc::Sender<()>>,
    dead: Arc<AtomicBool>,
}

/// Instance 1's view of the store: cut off once it is dead. Shutting its
/// runtime down drops the request, and the claim guard's drop would give
/// the claim back (a cancelled request's right); a killed process never
/// does, so its calls must not arrive.
struct Mortal {
    store: Arc<dyn IdempotencyStore>,
    dead: Arc<AtomicBool>,
}

impl Mortal {
    fn gone<'a, T: Send + 'a>(&self) -> Option<StoreFuture<'a, T>> {
        self.dead
            .load(Ordering::SeqCst)
            .then(|| -> StoreFuture<'a, T> {
                Box::pin(async { Err(StoreError::Timeout(Duration::ZERO)) })
            })
    }
}

impl IdempotencyStore for Mortal {
    fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>> {
        self.gone().unwrap_or_else(|| self.store.lookup(key))
    }

    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        self.gone()
            .unwrap_or_else(|| self.store.claim(key, token, fingerprint, lock_ttl))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        response: &'a Arc<RecordedResponse>,
        key_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.gone()
            .unwrap_or_else(|| self.store.complete(key, token, response, key_ttl))
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        self.gone()
            .unwrap_or_else(|| self.store.release(key, token))
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.gone()
            .unwrap_or_else(|| self.store.renew(key, token, lock_ttl))
    }
}

/// The remedy: the row carries the request's scope and key under a UNIQUE
/// constraint; a handler that finds its row already written answers with it.
async fn pay(
    State(payments): State<Payments>,
    Extension(key): Extension<StoreKey>,
) -> (StatusCode, String) {
    let scope = key.scope().unwrap_or_default();
    let inserted: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO payments (scope, idempotency_key, amount) VALUES ($1, $2, 100) \
         ON CONFLICT (scope, idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(scope)
    .bind(key.key())
    .fetch_optional(&payments.pool)
    .await
    .unwrap();
    let id = match inserted {
        Some((id,)) => id,
        // Written by an earlier run of this request, whose record was lost.
        None => {
            sqlx::query_as::<_, (i64,)>(
                "SELECT id FROM payments WHERE scope = $1 AND idempotency_key = $2",
            )
            .bind(scope)
            .bind(key.key())
            .fetch_one(&payments.pool)
            .await
            .unwrap()
            .0
        }
    };
    die_if_told(&payments).await;
    (StatusCode::CREATED, format!("payment {id}"))
}

/// Without the remedy: a plain insert.
async fn pay_naively(State(payments): State<Payments>) -> (StatusCode, String) {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO payments (scope, idempotency_key, amount) VALUES ('', '', 100) RETURNING id",
    )
    .fetch_one(&payments.pool)
    .await
    .unwrap();
    die_if_told(&payments).await;
    (StatusCode::CREATED, format!("payment {id}"))
}

async fn die_if_told(payments: &Payments) {
    if let Some(dies) = &payments.dies_after_commit {
        dies.dead.store(true, Ordering::SeqCst);
        let _ = dies.committed.lock().unwrap().send(());
        std::future::pending::<()>().await;
    }
}

fn app(store: &Arc<dyn IdempotencyStore>, payments: Payments, unique: bool) -> Router {
    let route = if unique { post(pay) } else { post(pay_naively) };
    Router::new()
        .route("/payments", route)
        .with_state(payments)
        .layer(layer(store, |b| b.lock_ttl(LOCK_TTL)))
}

/// Instance 1: sends the request on a runtime of its own, which shuts down
/// once the handler has committed (the process dies before the record).
fn crash_after_commit(backend: &Backend, options: PgConnectOptions, key: &str, unique: bool) {
    let key = key.to_owned();
    // Its own connections, as another process would have (the memory store
    // is shared: the claim it leaves behind is what a crash leaves).
    let dead = Arc::new(AtomicBool::new(false));
    let store: Arc<dyn IdempotencyStore> = match &backend.redis {
        Some(redis) => Arc::new(
            RedisStore::builder(redis.url())
                .prefix(redis.prefix())
                .build()
                .unwrap(),
        ),
        None => Arc::clone(&backend.store),
    };
    let store: Arc<dyn IdempotencyStore> = Arc::new(Mortal {
        store,
        dead: Arc::clone(&dead),
    });
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (committed, on_commit) = mpsc::channel();
        runtime.block_on(async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            let payments = Payments {
                pool,
                dies_after_commit: Some(Arc::new(Dies {
                    committed: std::sync::Mutex::new(committed),
                    dead,
                })),
            };
            let app = app(&store, payments, unique);
            tokio::spawn(async move {
                app.oneshot(request("POST", "/payments", Some(&key), "{}"))
                    .await
            });
        });
        on_commit
            .recv_timeout(Duration::from_secs(30))
            .expect("the handler committed");
        runtime.shutdown_background();
    })
    .join()
    .unwrap();
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM payments")
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_commit_charges_once_when_the_row_is_unique_by_scope_and_key() {
    let Some(postgres) = perfkit_test_support::postgres().await else {
        return;
    };
    create_table(postgres.pool(), true).await;
    for (i, backend) in backends().await.into_iter().enumerate() {
        let key = format!("\"crash-{i}\"");
        crash_after_commit(&backend, postgres.connect_options(), &key, true);
        assert_eq!(
            rows(postgres.pool()).await,
            i64::try_from(i).unwrap() + 1,
            "{}: committed",
            backend.name
        );

        let survivor = app(
            &backend.store,
            Payments {
                pool: postgres.pool().clone(),
                dies_after_commit: None,
            },
            true,
        );
        // Within the lock TTL the claim of the dead request still holds the key.
        let early = send(&survivor, request("POST", "/payments", Some(&key), "{}")).await;
        assert_eq!(
            early.status,
            StatusCode::CONFLICT,
            "{}: {}",
            backend.name,
            early.body
        );
        tokio::time::sleep(LOCK_TTL + Duration::from_millis(100)).await;
        let retry = send(&survivor, request("POST", "/payments", Some(&key), "{}")).await;
        assert_eq!(
            retry.status,
            StatusCode::CREATED,
            "{}: {}",
            backend.name,
            retry.body
        );
        assert_eq!(
            rows(postgres.pool()).await,
            i64::try_from(i).unwrap() + 1,
            "{}: the retry ran the handler again, which found its row: one charge",
            backend.name
        );
        let replay = send(&survivor, request("POST", "/payments", Some(&key), "{}")).await;
        assert!(
            replay.replayed(),
            "{}: the retry's answer is recorded",
            backend.name
        );
        assert_eq!(replay.body, retry.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_unique_row_a_crash_after_commit_charges_twice() {
    let Some(postgres) = perfkit_test_support::postgres().await else {
        return;
    };
    create_table(postgres.pool(), false).await;
    let backend = Backend {
        name: "memory",
        store: Arc::new(perfkit_idempotency::MemoryStore::new()),
        redis: None,
        cluster: None,
    };
    crash_after_commit(&backend, postgres.connect_options(), "\"naive\"", false);
    let store = backend.store;
    let survivor = app(
        &store,
        Payments {
            pool: postgres.pool().clone(),
            dies_after_commit: None,
        },
        false,
    );
    tokio::time::sleep(LOCK_TTL + Duration::from_millis(100)).await;
    let retry = send(
        &survivor,
        request("POST", "/payments", Some("\"naive\""), "{}"),
    )
    .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(
        rows(postgres.pool()).await,
        2,
        "the layer alone cannot know the first run committed: the documented gap"
    );
}
