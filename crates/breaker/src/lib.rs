//! # perfkit-breaker
//!
//! The circuit breaker behind perfkit's remote calls (the tiered cache's
//! Redis tier and invalidation publishes, the idempotency layer's store):
//! once a dependency is known to be down, callers learn it in nanoseconds
//! instead of one timeout each, and one probe at a time finds when it is
//! back.
//!
//! - **Closed:** calls go through; `failures` consecutive failures open it.
//! - **Open:** calls are refused ([`Breaker::allow`] returns `None`) until
//!   the cool-down has passed.
//! - **Half-open:** one call, the probe, goes through; its success closes
//!   the breaker, its failure opens it for another cool-down.
//!
//! An allowed call holds a [`Permit`] and reports through it. **A probe
//! dropped before it reports counts as a failed probe** (its caller timed
//! out, or went away): the breaker opens for another cool-down and the next
//! call after it probes again. A breaker that waited for the report of a
//! cancelled probe would stay half-open, refusing every call, for the life of
//! the process. Calls allowed while closed report nothing when dropped.
//!
//! Every decision is O(1) under a mutex held for a few instructions; no
//! task, no timer.
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use perfkit_breaker::{Breaker, Transition};
//!
//! let breaker = Breaker::new(NonZeroU32::new(2).unwrap(), Duration::from_millis(20));
//! for _ in 0..2 {
//!     let call = breaker.allow().expect("closed: calls go through");
//!     let failed = false; // ... the call failed
//!     if let Some(Transition::Opened) = call.record(failed) {
//!         println!("dependency down: skipping it for the cool-down");
//!     }
//! }
//! assert!(breaker.allow().is_none(), "open: refused at once");
//!
//! std::thread::sleep(Duration::from_millis(30));
//! let probe = breaker.allow().expect("cool-down over: one probe");
//! assert!(probe.is_probe());
//! assert!(breaker.allow().is_none(), "one probe at a time");
//! drop(probe); // its caller went away: counts as failed
//! assert!(breaker.allow().is_none(), "open for another cool-down, not stuck half-open");
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod sync;

pub use crate::breaker::{Breaker, Permit, State, Transition};

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
