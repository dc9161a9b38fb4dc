//! # perfkit-idempotency
//!
//! An `Idempotency-Key` tower layer for mutations, per the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header): a client that retries
//! `POST /payments` after a timeout gets the original response, and the
//! payment happens once — across tasks, instances and restarts.
//!
//! - **The claim decides.** An atomic claim of `(scope, key)` in the store is
//!   the only authority on whether a request runs ([exactly-once
//!   execution](IdempotencyStore)). A request that finds the key claimed
//!   gets the recorded response (`Idempotent-Replayed: true`), `409` while
//!   the first one runs, or `422` if it is a different request.
//! - **The Bloom filter only routes.** Keys this instance has certainly never
//!   seen go straight to the claim; keys it may have seen (retries) are read
//!   first. It never lets a request run: a per-instance "never seen" says
//!   nothing about other instances. It rotates, so its false-positive rate
//!   stays bounded in a server that runs for months.
//! - **Compare-and-set records.** Recording and releasing check the claim's
//!   owner token (a Lua script on Redis): a handler that outlived its lock can
//!   never overwrite another request's record.
//! - **Clients may leave.** By default a request whose client disconnects
//!   moves onto the runtime, runs to completion and is recorded, so the retry
//!   replays it (no task is spawned while the client stays).
//! - **Stores:** [`MemoryStore`] (embedded default, one process) and
//!   [`RedisStore`] (shared; one Redis hash per key, Cluster-safe). Store
//!   unreachable: `503` with `Retry-After` ([fail-closed](FailMode::Closed),
//!   default) or [pass-through](FailMode::Open), in microseconds once the
//!   store's circuit breaker has opened.
//! - **Only requests that ran are recorded:** validation, authentication and
//!   rate-limit answers (400, 401, 403, 408, 413, 415, 422, 429) and
//!   responses marked [`NotExecuted`] release the key, so a corrected retry
//!   runs ([`RecordPolicy`]). The media type is part of the [`Fingerprint`].
//! - **Crash after commit:** the handler finds its [`StoreKey`] in the
//!   request's extensions, to make its own write unique by scope and key
//!   (the one gap no layer can close; see the README).
//! - **Slow handlers:** [claim renewal](IdempotencyLayerBuilder::renew_claims)
//!   keeps a claim alive past the lock TTL (off by default).
//! - **Observability:** spans (`DEBUG`) `idempotency.claim`, `idempotency.record`,
//!   `idempotency.replay`; counters `perfkit_idempotency_requests_total{outcome}`
//!   (`new`, `replayed`, `conflict`, `mismatch`, `rejected`,
//!   `store_unavailable`, `passed_through`),
//!   `perfkit_idempotency_bloom_skipped_reads_total`,
//!   `perfkit_idempotency_store_errors_total{op}`,
//!   `perfkit_idempotency_released_total`, `perfkit_idempotency_lost_claims_total`,
//!   `perfkit_idempotency_renewals_total`, `perfkit_idempotency_store_skipped_total`;
//!   gauges `perfkit_idempotency_store_breaker_open` and the Bloom filter's.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use perfkit_idempotency::{IdempotencyLayer, MemoryStore};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = IdempotencyLayer::builder(MemoryStore::new())
//!     .scope(|request| request.headers.get("x-tenant")?.to_str().ok().map(str::to_owned))
//!     .build()?;
//! let service = ServiceBuilder::new().layer(layer).service_fn(|_request: Request<Full<Bytes>>| async {
//!     // Charge the card, once.
//!     let mut created = Response::new(Full::new(Bytes::from("payment 7")));
//!     *created.status_mut() = StatusCode::CREATED;
//!     Ok::<_, Infallible>(created)
//! });
//!
//! let payment = || {
//!     Request::post("/payments")
//!         .header("x-tenant", "acme")
//!         .header("idempotency-key", "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
//!         .body(Full::new(Bytes::from(r#"{"amount":100}"#)))
//! };
//! let first = service.clone().oneshot(payment()?).await?;
//! let retry = service.clone().oneshot(payment()?).await?;
//! assert_eq!(first.status(), StatusCode::CREATED);
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(retry.into_body().collect().await?.to_bytes(), "payment 7");
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bloom;
mod builder;
mod config;
mod error;
mod fingerprint;
mod key;
pub mod layer;
mod metrics;
mod problem;
mod record;
mod renewal;
mod store;
mod stores;
mod sync;

pub use bloom::BloomStats;
pub use builder::{
    DEFAULT_BLOOM_FP_RATE, DEFAULT_BLOOM_KEYS, DEFAULT_BREAKER_COOL_DOWN, DEFAULT_BREAKER_FAILURES,
    DEFAULT_KEY_TTL, DEFAULT_LOCK_TTL, DEFAULT_MAX_BODY_BYTES, IdempotencyLayerBuilder,
};
pub use config::{FailMode, OnDisconnect};
pub use error::{ConfigError, RecordError, StoreError};
pub use fingerprint::Fingerprint;
pub use key::{IDEMPOTENCY_KEY, IdempotencyKey, KeyError, MAX_KEY_LEN, StoreKey};
pub use layer::{IDEMPOTENT_REPLAYED, Idempotency, IdempotencyLayer, ResponseFuture};
pub use problem::Problem;
pub use record::{Existing, NotExecuted, RecordPolicy, RecordedResponse};
pub use store::{Claim, ClaimToken, IdempotencyStore, StoreFuture};
pub use stores::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use stores::redis::{RedisStore, RedisStoreBuilder};

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
