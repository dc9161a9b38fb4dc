//! The synchronization the breaker's state machine uses, from std, or from
//! loom when built with `--cfg perfkit_loom` so that the models in
//! `src/breaker/models.rs` explore every interleaving of the same code. Outside
//! that cfg these are std's types, re-exported: no cost.

#[cfg(not(perfkit_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(perfkit_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(perfkit_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(perfkit_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
