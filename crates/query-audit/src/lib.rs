//! # perfkit-query-audit
//!
//! A slow-query auditor for sqlx (PostgreSQL, SQLite), from inside the
//! service: per-statement statistics like `pg_stat_statements`, slow
//! statements and N+1 loops logged with their constants redacted.
//!
//! Two ways in, one auditor behind both: sqlx's own query events
//! ([`Auditor::layer`], one `tracing` layer) or the call site (with feature
//! `postgres` or `sqlite`, `auditor.on(&pool)`: an sqlx executor that
//! audits the queries run through it; or [`Auditor::audited`] around any
//! query future). EXPLAIN runs off the hot path with index advice
//! (`explain`, features `postgres` and `sqlite`).
//!
//! ```
//! use std::time::Duration;
//!
//! use perfkit_query_audit::Auditor;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let auditor = Auditor::builder().slow_threshold(Duration::from_millis(100)).build()?;
//! let subscriber = tracing_subscriber::registry().with(auditor.layer());
//! tracing::subscriber::with_default(subscriber, || {
//!     // sqlx emits this after every query (target `sqlx::query`, DEBUG):
//!     tracing::debug!(target: "sqlx::query", summary = "select …", db.statement = "\n\nSELECT * FROM users WHERE id = 42\n", rows_affected = 0_u64, rows_returned = 1_u64, elapsed_secs = 0.000_8);
//! });
//! let top = auditor.report(10);
//! assert_eq!(top[0].text, "select * from users where id = ?");
//! # Ok::<(), perfkit_query_audit::ConfigError>(())
//! ```
//!
//! This crate is part of the [perfkit](https://github.com/perfkit-rs/perfkit)
//! family; use it alone or through the `perfkit` facade (feature `audit`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod audited;
mod auditor;
mod error;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "any"))]
mod executor;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub mod explain;
mod fingerprint;
mod layer;
mod stats;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod worker;

pub use crate::audited::{Audited, RowCount};
pub use crate::auditor::{Auditor, AuditorBuilder, Recorded};
pub use crate::error::ConfigError;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "any"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "sqlite", feature = "any")))
)]
pub use crate::executor::{AuditedExecutor, AuditedPool};
pub use crate::fingerprint::{Fingerprint, MAX_TEXT_LEN};
pub use crate::layer::{AuditLayer, FilteredAuditLayer, SQLX_TARGET, SqlxQueries};
pub use crate::stats::{OVERFLOW_TEXT, QueryStats};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
