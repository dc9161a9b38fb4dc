//! # perfkit-dedup
//!
//! Single-flight: concurrent callers with one key share one execution, and it stays correct when callers are cancelled, the work panics or flights race.
//!
//! **Status:** Work in progress: the API lands with issue #3. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or through
//! the `perfkit` facade.
