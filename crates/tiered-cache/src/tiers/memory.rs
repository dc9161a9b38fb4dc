//! The in-process tier: a moka map of `Arc<V>`, no serialization.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache as Moka;

use crate::error::ConfigError;
use crate::glob::Glob;
use crate::tier::{Entry, Now, Tier, TierFuture, Write, capped_ttl, ttl_setting_error};

/// The in-process tier (usually L1): values are held as `Arc<V>`, never
/// serialized. Backed by [moka](https://docs.rs/moka)'s concurrent map with
/// TinyLFU admission and per-entry expiry.
pub struct MemoryTier<V> {
    name: String,
    map: Moka<String, Slot<V>>,
    max_ttl: Option<Duration>,
    tags: Arc<TagIndex>,
    next_slot: AtomicU64,
    /// How long past its TTL an entry is kept as a stale fallback.
    stale_grace: Option<Duration>,
    /// The grace, shared with the map's expiry policy, in nanoseconds.
    grace: Arc<AtomicU64>,
}

/// What the map holds for a key. Kept small: moka clones it on every hit.
struct Slot<V> {
    value: Arc<V>,
    expires_at: Option<Instant>,
    /// The TTL it was written with.
    ttl: Option<Duration>,
    /// Identifies this write in the tag index: a tag only invalidates the
    /// write it tagged, never a later write of the same key.
    id: u64,
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            expires_at: self.expires_at,
            ttl: self.ttl,
            id: self.id,
        }
    }
}

/// Tag → (key → the write that tagged it).
///
/// Entries are not unindexed when moka evicts or expires them (an eviction
/// listener would make moka allocate during reads); instead the index prunes
/// pairs whose write is no longer in the map whenever it has doubled since
/// the last prune, so it stays within a constant factor of the live tagged
/// entries at amortized O(1) per write.
#[derive(Default)]
struct TagIndex(Mutex<IndexState>);

#[derive(Default)]
struct IndexState {
    tags: HashMap<String, HashMap<String, u64>>,
    pairs: usize,
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 1_024;

impl TagIndex {
    /// Indexes a write, pruning first if due; `live` says whether a write is
    /// still the key's current value.
    fn add(&self, key: &str, id: u64, tags: &[String], live: impl Fn(&str, u64) -> bool) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.pairs >= state.prune_at.max(MIN_PRUNE_AT) {
            state.tags.retain(|_, keys| {
                keys.retain(|key, id| live(key, *id));
                !keys.is_empty()
            });
            state.pairs = state.tags.values().map(HashMap::len).sum();
            state.prune_at = state.pairs.saturating_mul(2);
        }
        for tag in tags {
            if state
                .tags
                .entry(tag.clone())
                .or_default()
                .insert(key.to_owned(), id)
                .is_none()
            {
                state.pairs += 1;
            }
        }
    }

    /// Removes a tag, returning the writes it indexed.
    fn take(&self, tag: &str) -> HashMap<String, u64> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = state.tags.remove(tag).unwrap_or_default();
        state.pairs = state.pairs.saturating_sub(keys.len());
        keys
    }
}

/// Each entry stays in the map for the TTL it was written with, plus the
/// stale grace.
struct PerEntryTtl {
    grace: Arc<AtomicU64>,
}

impl PerEntryTtl {
    fn retain<V>(&self, slot: &Slot<V>) -> Option<Duration> {
        let grace = Duration::from_nanos(self.grace.load(Ordering::Relaxed));
        slot.ttl.map(|ttl| ttl.saturating_add(grace))
    }
}

impl<V> Expiry<String, Slot<V>> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, slot: &Slot<V>, _: Instant) -> Option<Duration> {
        self.retain(slot)
    }

    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.retain(slot)
    }
}

/// Configures a [`MemoryTier`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryTierBuilder {
    name: String,
    max_entries: u64,
    max_ttl: Option<Duration>,
}

/// Weighs an entry for a weighted-capacity tier.
type Weigher<V> = Arc<dyn Fn(&str, &V) -> u32 + Send + Sync>;

impl MemoryTierBuilder {
    /// The tier's name in metrics and stats. Default: `"l1"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Holds at most `entries` entries. Default: 10,000.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// Builds a tier that holds entries up to `max_weight` in total, each
    /// weighed once, at insertion, by `weigher(key, value)` (typically the
    /// value's size in bytes: values are typed, so the estimate is yours).
    /// Replaces [`MemoryTierBuilder::max_entries`].
    ///
    /// # Errors
    ///
    /// As [`MemoryTierBuilder::build`].
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use perfkit_tiered_cache::{Cache, MemoryTier};
    ///
    /// // At most 64 MiB of page bodies in L1, each weighed by its length.
    /// let pages = MemoryTier::builder()
    ///     .build_weighted(64 * 1024 * 1024, |_key: &str, page: &Arc<str>| {
    ///         u32::try_from(page.len()).unwrap_or(u32::MAX)
    ///     })?;
    /// let cache: Cache<Arc<str>> = Cache::builder().name("pages").tier(pages).build()?;
    /// # let _ = cache;
    /// # Ok::<(), perfkit_tiered_cache::ConfigError>(())
    /// ```
    pub fn build_weighted<V, W>(
        self,
        max_weight: u64,
        weigher: W,
    ) -> Result<MemoryTier<V>, ConfigError>
    where
        V: Send + Sync + 'static,
        W: Fn(&str, &V) -> u32 + Send + Sync + 'static,
    {
        self.validate()?;
        let weigher: Weigher<V> = Arc::new(weigher);
        Ok(self.assemble(Some((max_weight, weigher))))
    }

    /// Keeps no entry longer than `ttl` in this tier, whatever TTL it was
    /// written or promoted with. Default: no cap.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = Some(ttl);
        self
    }

    /// Builds the tier.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] for a zero `max_ttl`,
    /// [`ConfigError::TtlOutOfRange`] for one under 1 ms or over
    /// [`MAX_TTL`](crate::MAX_TTL).
    pub fn build<V: Send + Sync + 'static>(self) -> Result<MemoryTier<V>, ConfigError> {
        self.validate()?;
        Ok(self.assemble(None))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(error) = self
            .max_ttl
            .and_then(|ttl| ttl_setting_error("max_ttl", ttl))
        {
            return Err(error);
        }
        Ok(())
    }
}

impl MemoryTierBuilder {
    fn assemble<V: Send + Sync + 'static>(
        self,
        weighted: Option<(u64, Weigher<V>)>,
    ) -> MemoryTier<V> {
        let tags = Arc::new(TagIndex::default());
        let grace = Arc::new(AtomicU64::new(0));
        let builder = Moka::builder().expire_after(PerEntryTtl {
            grace: Arc::clone(&grace),
        });
        let map = match weighted {
            Some((max_weight, weigh)) => builder
                .max_capacity(max_weight)
                .weigher(move |key: &String, slot: &Slot<V>| weigh(key, &slot.value))
                .build(),
            None => builder.max_capacity(self.max_entries).build(),
        };
        MemoryTier {
            name: self.name,
            map,
            max_ttl: self.max_ttl,
            tags,
            next_slot: AtomicU64::new(0),
            stale_grace: None,
            grace,
        }
    }
}

// Not generic: the value type is chosen by `MemoryTierBuilder::build`.
impl MemoryTier<()> {
    /// Configures a memory tier.
    pub fn builder() -> MemoryTierBuilder {
        MemoryTierBuilder {
            name: "l1".to_owned(),
            max_entries: 10_000,
            max_ttl: None,
        }
    }
}

impl<V: Send + Sync + 'static> MemoryTier<V> {
    /// A memory tier named `"l1"` holding at most `entries` entries.
    #[must_use]
    pub fn with_max_entries(entries: u64) -> Self {
        MemoryTierBuilder {
            name: "l1".to_owned(),
            max_entries: entries,
            max_ttl: None,
        }
        .assemble(None)
    }

    /// Entries currently held (moka's estimate).
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.map.entry_count()
    }

    fn lookup(&self, key: &str) -> Option<Entry<V>> {
        let entry = Self::entry(self.map.get(key)?);
        // Kept past its TTL as a stale fallback: not a hit.
        if self.stale_grace.is_some() && entry.expires_at.is_some_and(|at| at <= Instant::now()) {
            return None;
        }
        Some(entry)
    }

    fn entry(slot: Slot<V>) -> Entry<V> {
        Entry::new(slot.value, slot.expires_at).with_written_ttl(slot.ttl)
    }

    fn insert(&self, key: &str, value: &Arc<V>, ttl: Option<Duration>, tags: &[String]) {
        let ttl = capped_ttl(ttl, self.max_ttl);
        if ttl == Some(Duration::ZERO) {
            self.map.invalidate(key);
            return;
        }
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        if !tags.is_empty() {
            // Indexed before the value is visible: an invalidation can never miss it.
            self.tags.add(key, id, tags, |key, id| {
                self.map.get(key).is_some_and(|slot| slot.id == id)
            });
        }
        let slot = Slot {
            value: Arc::clone(value),
            expires_at: ttl.and_then(|ttl| Instant::now().checked_add(ttl)),
            ttl,
            id,
        };
        self.map.insert(key.to_owned(), slot);
    }
}

impl<V: Send + Sync + 'static> Tier<V> for MemoryTier<V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn keep_stale_for(&mut self, grace: Duration) -> bool {
        self.stale_grace = Some(grace);
        self.grace.store(
            u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        true
    }

    fn get_stale(&self, key: &str) -> Option<Entry<V>> {
        self.map.get(key).map(Self::entry)
    }

    fn get_now(&self, key: &str) -> Now<Entry<V>> {
        Now::found(self.lookup(key))
    }

    fn get_value_now(&self, key: &str) -> Now<Arc<V>> {
        let Some(slot) = self.map.get(key) else {
            return Now::Miss;
        };
        // Kept past its TTL as a stale fallback: not a hit.
        if self.stale_grace.is_some() && slot.expires_at.is_some_and(|at| at <= Instant::now()) {
            return Now::Miss;
        }
        Now::Hit(slot.value)
    }

    fn set_now(&self, write: &Write<'_, V>) -> bool {
        self.insert(write.key, write.value, write.ttl, write.tags);
        true
    }

    fn delete_now(&self, key: &str) -> bool {
        self.map.invalidate(key);
        true
    }

    fn clear_now(&self) -> bool {
        self.map.invalidate_all();
        true
    }

    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<V>>> {
        let found = self.lookup(key);
        Box::pin(async move { Ok(found) })
    }

    fn set<'a>(&'a self, write: &'a Write<'a, V>) -> TierFuture<'a, ()> {
        self.set_now(write);
        Box::pin(async { Ok(()) })
    }

    fn delete_tag<'a>(&'a self, tag: &'a str) -> TierFuture<'a, Vec<String>> {
        // Only keys whose current value is the tagged write: a key rewritten
        // without the tag since is left alone.
        let keys: Vec<String> = self
            .tags
            .take(tag)
            .into_iter()
            .filter(|(key, id)| self.map.get(key).is_some_and(|slot| slot.id == *id))
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            self.map.invalidate(key);
        }
        Box::pin(async move { Ok(keys) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
        self.map.invalidate(key);
        Box::pin(async { Ok(()) })
    }

    fn delete_matching<'a>(&'a self, pattern: &'a str) -> TierFuture<'a, u64> {
        let glob = Glob::new(pattern);
        let mut removed = 0;
        for (key, _) in &self.map {
            if glob.matches(&key) {
                self.map.invalidate(key.as_str());
                removed += 1;
            }
        }
        Box::pin(async move { Ok(removed) })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        self.map.invalidate_all();
        Box::pin(async { Ok(()) })
    }
}

impl<V> std::fmt::Debug for MemoryTier<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("name", &self.name)
            .field("entries", &self.map.entry_count())
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_capacity_evicts_by_the_weight_of_values() {
        let tier: MemoryTier<Vec<u8>> = MemoryTier::builder()
            .build_weighted(10_000, |_key: &str, value: &Vec<u8>| {
                u32::try_from(value.len()).unwrap_or(u32::MAX)
            })
            .unwrap();
        for i in 0..100 {
            tier.insert(&format!("k{i}"), &Arc::new(vec![0_u8; 1_000]), None, &[]);
        }
        tier.map.run_pending_tasks();
        assert!(
            tier.entry_count() <= 10,
            "1 kB values in a 10 kB tier: {} kept",
            tier.entry_count()
        );
    }

    #[test]
    fn the_tag_index_stays_proportional_to_live_entries() {
        let tier: MemoryTier<u32> = MemoryTier::with_max_entries(100);
        let tags = ["everyone".to_owned()];
        for i in 0..20_000_u32 {
            tier.insert(&format!("k{i}"), &Arc::new(i), None, &tags);
            if i % 1_000 == 0 {
                tier.map.run_pending_tasks();
            }
        }
        tier.map.run_pending_tasks();
        let pairs = tier.tags.0.lock().unwrap().pairs;
        assert!(
            pairs <= 2 * MIN_PRUNE_AT,
            "{pairs} index entries for at most 100 live ones"
        );
    }
}
