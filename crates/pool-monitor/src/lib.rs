//! # perfkit-pool-monitor
//!
//! Gauges for sqlx, deadpool and bb8 pools: total/idle/in-use/waiting
//! connections, acquire latency, timeouts, usage time, leak detection and
//! exhaustion alerts, on the `metrics` facade.
//!
//! - [`PoolSnapshot`] (clamped, never torn) from any [`PoolSource`]: sqlx's
//!   `Pool` (feature `sqlx`), deadpool's managed pools (feature `deadpool`),
//!   bb8's pools (feature `bb8`), or a pool of your own.
//! - Instrumented pools (`InstrumentedPool`, `InstrumentedDeadpool`,
//!   `InstrumentedBb8`) add what each pool lacks: acquire time, waiters (a
//!   cancelled acquire leaves the count), timeouts, usage time, leaks.
//! - [`PoolMonitor`]: pools sampled on an interval and held weakly, gauges,
//!   [`Alert`]s with hysteresis on waiters, utilization, acquire p99 and
//!   timeout rate.
//!
//! ```
//! use perfkit_pool_monitor::PoolSnapshot;
//!
//! // Counters read one after the other can tear; a snapshot never does.
//! let snapshot = PoolSnapshot::clamped(10, 2, 12, 3, Some(4));
//! assert_eq!((snapshot.size, snapshot.idle, snapshot.in_use), (10, 3, 7));
//! assert_eq!(snapshot.utilization(), 0.7);
//! ```
//!
//! This crate is part of the [perfkit](https://github.com/perfkit-rs/perfkit)
//! family; use it alone or through the `perfkit` facade (feature `pool`).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acquires;
#[cfg(feature = "bb8")]
mod bb8;
#[cfg(feature = "deadpool")]
mod deadpool;
mod error;
#[cfg(any(feature = "sqlx", feature = "deadpool", feature = "bb8"))]
mod instrument;
#[cfg(feature = "sqlx")]
mod instrumented;
mod monitor;
mod snapshot;

pub use crate::acquires::{AcquireTotals, AcquireWindow};
#[cfg(feature = "bb8")]
#[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
pub use crate::bb8::{Checkout, InstrumentedBb8, InstrumentedBb8Builder};
#[cfg(feature = "deadpool")]
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
pub use crate::deadpool::{InstrumentedDeadpool, InstrumentedDeadpoolBuilder, Lent};
pub use crate::error::ConfigError;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub use crate::instrumented::{Held, InstrumentedPool, InstrumentedPoolBuilder};
pub use crate::monitor::{Alert, AlertEvent, Condition, PoolMonitor, PoolMonitorBuilder};
pub use crate::snapshot::{PoolSnapshot, PoolSource};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
