//! TTL jitter: spreads the expiry of entries written together, so that they
//! are not all reloaded in the same instant.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Shortens each TTL by a pseudo-random part of at most `fraction` of it
/// (never lengthens it).
pub(crate) struct Jitter {
    fraction: f64,
    hasher: foldhash::fast::RandomState,
    sequence: AtomicU64,
}

impl Jitter {
    pub(crate) fn new(fraction: f64) -> Self {
        Self {
            fraction,
            hasher: foldhash::fast::RandomState::default(),
            sequence: AtomicU64::new(0),
        }
    }

    pub(crate) fn apply(&self, ttl: Duration) -> Duration {
        let draw = self
            .hasher
            .hash_one(self.sequence.fetch_add(1, Ordering::Relaxed));
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
    }
}
