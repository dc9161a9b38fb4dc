//! TTL jitter: spreads the expiry of entries written together, so that they
//! are not all reloaded in the same instant.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Shortens each TTL by a pseudo-random part of at most `fraction` of it
/// (never lengthens it).
pub(crate) struct Jitter {
    fraction: f64,
    /// A splitmix64 state: a well-mixed sequence from a random start.
    state: AtomicU64,
}

impl Jitter {
    pub(crate) fn new(fraction: f64) -> Self {
        Self {
            fraction,
            state: AtomicU64::new(foldhash::fast::RandomState::default().hash_one(0_u64)),
        }
    }

    pub(crate) fn apply(&self, ttl: Duration) -> Duration {
        // splitmix64 (a hash of sequential integers is not uniform enough
        // in its top bits).
        let mut draw = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        draw = (draw ^ (draw >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        draw = (draw ^ (draw >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        draw ^= draw >> 31;
        // The top 53 bits as a uniform number in [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let unit = (draw >> 11) as f64 / (1_u64 << 53) as f64;
        ttl.mul_f64(1.0 - self.fraction * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_shortens_within_the_fraction_and_spreads() {
        let jitter = Jitter::new(0.2);
        let ttl = Duration::from_secs(100);
        let draws: Vec<Duration> = (0..1_000).map(|_| jitter.apply(ttl)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d <= ttl && *d >= Duration::from_secs(80))
        );
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 900, "spread out, not one value");
        // Uniform: each fifth of the range gets its share (200 expected).
        for fifth in 0..5 {
            let low = Duration::from_secs(80 + 4 * fifth);
            let high = low + Duration::from_secs(4);
            let count = draws.iter().filter(|d| **d >= low && **d < high).count();
            assert!(
                (120..=280).contains(&count),
                "{count} draws in [{low:?}, {high:?})"
            );
        }
    }
}
