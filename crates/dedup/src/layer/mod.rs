//! Coalescing of identical in-flight HTTP requests, as a tower middleware.
//!
//! [`DedupLayer`] sits in front of a service and lets concurrent requests with
//! the same key share one call of the inner service: the first request is
//! sent, the others wait, and every one of them gets its own copy of the
//! response (status, headers, body and trailers; response extensions are not
//! copied). Only `GET` and `HEAD` requests are coalesced by default; every
//! other request passes through untouched.
//!
//! The default key ([`RequestKey`]) is the method, the URI and the values of
//! the request headers that can change a response: `Authorization` and
//! `Cookie` (so one user's response is never handed to another), `Accept*`
//! (content negotiation), `Range` and the conditional `If-*` headers. A custom
//! key function can widen or narrow that, see [`DedupLayerBuilder::key`].
//!
//! Sharing needs the whole body in memory. A response whose body grows past
//! [`DedupLayerBuilder::max_body_bytes`] (default 1 MiB), or an error from the inner
//! service, is not shared: it goes to the request that was sent, streamed
//! (already read chunks first), and each of the other waiting requests is
//! then sent to the inner service on its own. If the inner service panics, every waiting
//! request gets a `500 Internal Server Error` with an RFC 9457 `application/problem+json`
//! body (type `urn:perfkit:dedup:handler-failed`), as the idempotency layer answers.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use perfkit_dedup::DedupLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! async fn handler(request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::from(format!("report for {}", request.uri().path()))))
//! }
//!
//! let service = ServiceBuilder::new()
//!     .layer(DedupLayer::builder().max_body_bytes(4 * 1024 * 1024).build()?)
//!     .service_fn(handler);
//!
//! let request = Request::get("/reports/7").body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "report for /reports/7");
//! # Ok(())
//! # }
//! ```
//!
//! One [`DedupLayer`] value is one coalescing scope: services made by the same
//! layer (and its clones) share in-flight requests, so build the layer once
//! and apply it to every connection.

mod body;
mod builder;
mod key;
mod service;

pub use self::body::DedupBody;
pub use self::builder::DedupLayerBuilder;
pub use self::key::RequestKey;
pub use self::service::{Dedup, DedupLayer, DefaultKeyFn, ResponseFuture};
