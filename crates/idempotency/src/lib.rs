//! # perfkit-idempotency
//!
//! A tower layer for the `Idempotency-Key` header on mutations: a Bloom-filter fast path, an atomic claim in a store (Redis or in-memory), replay of the recorded response, and 409/422/400 per the IETF draft.
//!
//! **Status:** Work in progress: the API lands with issue #6. This crate is part of the
//! [perfkit](https://github.com/perfkit-rs/perfkit) family; use it alone or through
//! the `perfkit` facade.
