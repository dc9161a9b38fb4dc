//! The first tier the suites run on: moka's map with `PERFKIT_CACHE_L1=moka`,
//! otherwise the default (`quick_cache`). `.ci/run` runs the suites once with
//! each, so every guarantee test covers both backends.
#![allow(dead_code, clippy::expect_used)]

use perfkit_tiered_cache::{MemoryBackend, MemoryTier};

/// The backend chosen for this run.
pub(crate) fn backend() -> MemoryBackend {
    match std::env::var("PERFKIT_CACHE_L1").as_deref() {
        Ok("moka") => MemoryBackend::Moka,
        Ok("quick_cache") | Err(_) => MemoryBackend::QuickCache,
        Ok(other) => panic!("PERFKIT_CACHE_L1={other}: expected `moka` or `quick_cache`"),
    }
}

/// A memory tier of at most `entries` entries on this run's backend.
pub(crate) fn l1<V: Send + Sync + 'static>(entries: u64) -> MemoryTier<V> {
    MemoryTier::builder()
        .backend(backend())
        .max_entries(entries)
        .build()
        .expect("a memory tier")
}
