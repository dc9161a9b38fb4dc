//! # perfkit-tiered-cache
//!
//! L1 in-process (moka) + L2 Redis (+ any tier you plug in), promotion of lower-tier hits, a stampede-proof `get_or_load`, and invalidation across instances over Redis pub/sub.
//!
//! **Status:** Work in progress: the API lands with issue #4. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or through
//! the `perfkit` facade.
