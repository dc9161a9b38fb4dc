//! The tower layer: [`IdempotencyLayer`], the [`Idempotency`] service and its
//! [`ResponseFuture`].
//!
//! For a request with a protected method (`POST`, `PATCH` by default) the
//! service reads the `Idempotency-Key`, buffers and fingerprints the body,
//! claims `(scope, key)` in the store and runs the inner service only if the
//! claim was acquired; then it records the response (or releases the claim)
//! with a compare-and-set on the claim's token. Every other request goes to
//! the inner service untouched.
//!
//! | situation | answer |
//! | --- | --- |
//! | first request with a key | the handler's response, recorded |
//! | same key, same request, completed | the recorded response + `Idempotent-Replayed: true` |
//! | same key while the first runs | `409` + `Retry-After` |
//! | same key, different request | `422` |
//! | key missing (required) or malformed | `400` |
//! | body over the limit | `413` |
//! | store unreachable | `503` + `Retry-After` (fail-closed) or the handler, unprotected (fail-open) |
//!
//! Every answer of the layer's own is `application/problem+json` (RFC 9457).
//!
//! ```
//! use axum::{Router, routing::post};
//! use perfkit_idempotency::{IdempotencyLayer, MemoryStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let idempotency = IdempotencyLayer::builder(MemoryStore::new())
//!     // Keys are per API key: nobody replays another client's response.
//!     .scope(|request| {
//!         let key = request.headers.get("x-api-key")?;
//!         key.to_str().ok().map(str::to_owned)
//!     })
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/payments", post(|| async { "charged" }))
//!     .layer(idempotency);
//! # Ok(())
//! # }
//! ```

mod flow;
mod service;

pub use flow::IDEMPOTENT_REPLAYED;
pub use service::{Idempotency, IdempotencyLayer, ResponseFuture};
