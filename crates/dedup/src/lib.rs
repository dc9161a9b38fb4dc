//! # perfkit-dedup
//!
//! Single-flight for async Rust: concurrent callers with one key share one
//! execution of the work, as with Go's `golang.org/x/sync/singleflight`, and
//! it stays correct where the usual ports do not: when the caller that started
//! the work is cancelled, when the work panics, and when flights race.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//!
//! use perfkit_dedup::Group;
//!
//! # #[tokio::main]
//! # async fn main() {
//! // Values are cloned to every caller: share an `Arc` when cloning is costly.
//! let prices: Group<u64, Arc<String>, std::io::Error> = Group::builder()
//!     .name("prices")
//!     .build()
//!     .expect("valid configuration");
//! let upstream_calls = Arc::new(AtomicUsize::new(0));
//!
//! let mut callers = Vec::new();
//! for _ in 0..100 {
//!     let (prices, upstream_calls) = (prices.clone(), upstream_calls.clone());
//!     callers.push(tokio::spawn(async move {
//!         prices
//!             .run(42, || async move {
//!                 upstream_calls.fetch_add(1, Ordering::SeqCst);
//!                 tokio::time::sleep(Duration::from_millis(50)).await; // the slow lookup
//!                 Ok(Arc::new("42.00 EUR".to_owned()))
//!             })
//!             .await
//!     }));
//! }
//! for caller in callers {
//!     let outcome = caller.await.unwrap();
//!     assert_eq!(*outcome.result.unwrap(), "42.00 EUR");
//! }
//! assert_eq!(upstream_calls.load(Ordering::SeqCst), 1); // one execution, 100 callers
//! assert_eq!(prices.in_flight(), 0); // nothing is remembered afterwards
//! # }
//! ```
//!
//! ## Guarantees
//!
//! See [`Group`] for the precise statement. In short: one execution per key
//! while in flight; the work survives the cancellation of the caller that
//! started it and is cancelled (or, by [`AbandonPolicy::RunToCompletion`],
//! finished) only when every waiter has gone; a panic reaches every waiter as
//! [`Error::Panicked`]; errors are shared as `Arc<E>` and never cached; a
//! finished flight never removes a newer one; no lock is held across an
//! `.await`.
//!
//! ## HTTP
//!
//! With the `tower` feature (on by default), [`DedupLayer`] coalesces identical
//! in-flight `GET` and `HEAD` requests in a tower or axum stack; see [`layer`].
//!
//! ## Observability
//!
//! - Span `dedup.run` (level `DEBUG`) around every poll of the work, one per
//!   execution, with `dedup.name` and `dedup.shared`.
//! - Counters `perfkit_dedup_executions_total`, `perfkit_dedup_coalesced_total`,
//!   `perfkit_dedup_panics_total` and `perfkit_dedup_abandoned_total`, labelled
//!   `name` (the group's name). Install the `metrics` recorder before building groups.
//! - [`Group::in_flight`]: keys with work in flight.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod error;
mod flight;
mod group;
#[cfg(feature = "tower")]
pub mod layer;
mod metrics;
mod sync;

pub use crate::builder::{AbandonPolicy, GroupBuilder};
pub use crate::error::{ConfigError, Error};
pub use crate::group::{Call, Group, Outcome};
#[cfg(feature = "tower")]
pub use crate::layer::{
    Dedup, DedupBody, DedupLayer, DedupLayerBuilder, DefaultKeyFn, RequestKey, ResponseFuture,
};

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(all(doctest, feature = "tower"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
