//! The perfkit reference app: an axum service that composes every perfkit
//! crate, with SQLite and an L1-only cache by default so it runs with no setup.
//!
//! It is coming: it lands after the crates it composes. Until then this binary
//! only says so.

fn main() {
    println!(
        "perfkit reference app: coming soon. It lands once the crates it composes \
         (dedup, tiered-cache, idempotency, ...) do; see README.md for the status of each."
    );
}
