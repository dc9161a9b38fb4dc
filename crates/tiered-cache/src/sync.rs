//! The locks of the state machines the loom models check (`generations`):
//! std's here; the models crate (`models/` in the workspace) builds the same
//! source files against a `sync` module of loom's.

pub(crate) use std::sync::{Mutex, MutexGuard, RwLock};
