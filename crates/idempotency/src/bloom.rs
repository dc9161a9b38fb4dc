//! The Bloom filter of keys this instance has seen, in rotating generations.

use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use bloomfilter::Bloom;

use crate::error::ConfigError;
use crate::sync::{Instant, PoisonError, RwLock};

/// Inserts between two reads of the clock: 64, or 2 in the loom models
/// (`models/tests/idempotency/`), so that a rotation comes within a few of
/// their operations.
const CLOCK_STRIDE: u32 = if cfg!(perfkit_loom) { 2 } else { 64 };

/// Keys this instance has seen within the last key TTL, or more: a key is
/// remembered for at least one and at most two rotation periods.
///
/// Two generations, each a Bloom filter sized for `expected_keys` at
/// `fp_rate`: keys go into the current one, a check asks both, and every
/// `rotate_every` (the key TTL) the current generation becomes the previous
/// one and an empty filter takes its place. The false-positive rate therefore
/// stays near `1 - (1 - fp_rate)²` in a server that runs for months, instead of
/// climbing towards 1 as a single filter fills up.
///
/// Keys enter as a 64-bit foldhash [`digest`](Self::digest), computed once per
/// request (a digest collision only adds a false positive, with probability
/// ~n/2⁶⁴). Cost: a check is two SipHash-1-3 passes over the 8-byte digest and
/// `k` bit probes per generation; an insert the same for one generation; a
/// rotation allocates one filter (on the request that triggers it).
pub(crate) struct SeenFilter {
    generations: RwLock<Generations>,
    hasher: foldhash::fast::RandomState,
    rotate_every: Duration,
    expected_keys: usize,
    fp_rate: f64,
}

struct Generations {
    current: Bloom<u64>,
    previous: Bloom<u64>,
    current_items: usize,
    previous_items: usize,
    rotated_at: Instant,
    /// Inserts since the clock was last read.
    unclocked_inserts: u32,
    rotations: u64,
}

/// What [`SeenFilter::see`] found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// The key may have been seen before (`false`: certainly not).
    pub(crate) before: bool,
    /// The stats changed enough to be published again (a rotation, or
    /// another 1,024 keys).
    pub(crate) publish_stats: bool,
}

/// The state of a layer's Bloom filter, from [`IdempotencyLayer::bloom_stats`](crate::IdempotencyLayer::bloom_stats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BloomStats {
    /// Memory held by both generations' bitmaps, in bytes.
    pub bytes: usize,
    /// Hash functions per generation.
    pub hash_functions: u32,
    /// Keys inserted into the current generation.
    pub current_keys: usize,
    /// Keys inserted into the previous generation.
    pub previous_keys: usize,
    /// The false-positive rate of a check right now, estimated from the keys
    /// inserted: `1 - (1 - p_current)(1 - p_previous)`, with
    /// `p = (1 - e^(-k·n/m))^k` per generation.
    pub estimated_fp_rate: f64,
    /// Rotations since the layer was built.
    pub rotations: u64,
}

impl SeenFilter {
    pub(crate) fn new(
        expected_keys: usize,
        fp_rate: f64,
        rotate_every: Duration,
    ) -> Result<Self, ConfigError> {
        let invalid = ConfigError::Bloom {
            expected_keys,
            fp_rate,
        };
        if expected_keys == 0 || !(fp_rate > 0.0 && fp_rate < 1.0) {
            return Err(invalid);
        }
        let fresh = || Bloom::new_for_fp_rate(expected_keys, fp_rate).map_err(|_| invalid.clone());
        Ok(Self {
            generations: RwLock::new(Generations {
                current: fresh()?,
                previous: fresh()?,
                current_items: 0,
                previous_items: 0,
                rotated_at: Instant::now(),
                unclocked_inserts: 0,
                rotations: 0,
            }),
            hasher: foldhash::fast::RandomState::default(),
            rotate_every,
            expected_keys,
            fp_rate,
        })
    }

    /// What the filter stores for `key`.
    pub(crate) fn digest(&self, key: &(impl Hash + ?Sized)) -> u64 {
        self.hasher.hash_one(key)
    }

    /// `false` only for keys this instance has certainly not seen within the rotation period.
    #[cfg(test)]
    pub(crate) fn may_have_seen(&self, digest: u64) -> bool {
        let generations = self
            .generations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        generations.current.check(&digest) || generations.previous.check(&digest)
    }

    /// Remembers `key` and says whether it may have been seen before, in one
    /// pass under one lock (a check, then a set, would hash the key twice).
    pub(crate) fn see(&self, digest: u64) -> Seen {
        let mut generations = self
            .generations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // The clock is read every 64th insert: a rotation (hours apart) may come
        // 63 inserts late, which only delays forgetting.
        generations.unclocked_inserts += 1;
        let mut rotated = false;
        if generations.unclocked_inserts >= CLOCK_STRIDE {
            generations.unclocked_inserts = 0;
            let now = Instant::now();
            rotated = now.duration_since(generations.rotated_at) >= self.rotate_every;
            if rotated {
                self.rotate(&mut generations, now);
            }
        }
        if generations.current.check_and_set(&digest) {
            return Seen {
                before: true,
                publish_stats: rotated,
            };
        }
        generations.current_items += 1;
        Seen {
            before: generations.previous.check(&digest),
            publish_stats: rotated || generations.current_items.is_multiple_of(1024),
        }
    }

    fn rotate(&self, generations: &mut Generations, now: Instant) {
        // Parameters were validated in `new`; should the allocation be refused, keep
        // the current filter (a fuller filter costs store reads, never correctness).
        let Ok(fresh) = Bloom::new_for_fp_rate(self.expected_keys, self.fp_rate) else {
            return;
        };
        generations.previous = std::mem::replace(&mut generations.current, fresh);
        generations.previous_items = std::mem::take(&mut generations.current_items);
        generations.rotated_at = now;
        generations.rotations += 1;
        tracing::debug!(
            rotations = generations.rotations,
            "idempotency Bloom filter rotated"
        );
    }

    pub(crate) fn stats(&self) -> BloomStats {
        let generations = self
            .generations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let bits = generations.current.len();
        let hash_functions = generations.current.number_of_hash_functions();
        let fp = |items: usize| {
            #[allow(clippy::cast_precision_loss)]
            let fill = -f64::from(hash_functions) * items as f64 / bits as f64;
            (1.0 - fill.exp()).powi(i32::try_from(hash_functions).unwrap_or(i32::MAX))
        };
        BloomStats {
            bytes: usize::try_from(bits / 8 * 2).unwrap_or(usize::MAX),
            hash_functions,
            current_keys: generations.current_items,
            previous_keys: generations.previous_items,
            estimated_fp_rate: 1.0
                - (1.0 - fp(generations.current_items)) * (1.0 - fp(generations.previous_items)),
            rotations: generations.rotations,
        }
    }
}

impl std::fmt::Debug for SeenFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenFilter")
            .field("expected_keys", &self.expected_keys)
            .field("fp_rate", &self.fp_rate)
            .field("rotate_every", &self.rotate_every)
            .finish_non_exhaustive()
    }
}

// Ordinary tests only; under `perfkit_loom` this file is built by the models.
#[cfg(test)]
#[cfg(not(perfkit_loom))]
mod tests {
    use super::*;
    use crate::key::{IdempotencyKey, StoreKey};

    fn key(i: usize) -> StoreKey {
        StoreKey::new(None, &IdempotencyKey::new(&format!("key-{i}")).unwrap())
    }

    #[test]
    fn rejects_impossible_parameters() {
        for (keys, fp) in [(0, 0.01), (10, 0.0), (10, 1.0), (10, f64::NAN)] {
            assert!(SeenFilter::new(keys, fp, Duration::from_secs(1)).is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_keys_for_one_to_two_periods_and_keeps_its_fp_rate_bounded() {
        let period = Duration::from_secs(60);
        let filter = SeenFilter::new(1_000, 0.01, period).unwrap();
        let mut next = 0;
        for round in 0..20 {
            // A full generation's worth of new keys every period, for 20 periods.
            let first = next;
            for _ in 0..1_000 {
                filter.see(filter.digest(&key(next)));
                next += 1;
            }
            assert!(
                (first..next).all(|i| filter.may_have_seen(filter.digest(&key(i)))),
                "round {round}"
            );
            tokio::time::advance(period).await;
            for _ in 0..64 {
                filter.see(filter.digest(&key(usize::MAX))); // rotates (the clock is read every 64th insert)
            }
            assert!(
                (first..next).all(|i| filter.may_have_seen(filter.digest(&key(i)))),
                "kept one more period, round {round}"
            );
            let stats = filter.stats();
            assert!(stats.estimated_fp_rate < 0.03, "round {round}: {stats:?}");
        }
        let never_seen = (next..next + 10_000)
            .filter(|&i| filter.may_have_seen(filter.digest(&key(i))))
            .count();
        assert!(
            never_seen < 300,
            "{never_seen} false positives in 10,000 after 20 periods"
        );
        assert_eq!(filter.stats().rotations, 20);
    }

    #[test]
    fn seeing_a_key_says_whether_it_was_seen_and_remembers_it() {
        let filter = SeenFilter::new(1_000, 0.001, Duration::from_secs(60)).unwrap();
        let digest = filter.digest(&key(1));
        assert!(!filter.see(digest).before);
        assert!(filter.see(digest).before);
        assert!(filter.may_have_seen(digest));
        assert!(!filter.see(filter.digest(&key(2))).before);
        assert_eq!(filter.stats().current_keys, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_keys_after_two_periods() {
        let period = Duration::from_secs(60);
        let filter = SeenFilter::new(1_000, 0.001, period).unwrap();
        filter.see(filter.digest(&key(1)));
        for _ in 0..2 {
            tokio::time::advance(period).await;
            for _ in 0..64 {
                filter.see(filter.digest(&key(2)));
            }
        }
        assert!(!filter.may_have_seen(filter.digest(&key(1))));
    }
}
