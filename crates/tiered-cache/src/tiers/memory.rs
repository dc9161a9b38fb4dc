//! The in-process tier: a concurrent map of `Arc<V>`, no serialization,
//! on `quick_cache` (the default) or moka.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache as Moka;

use crate::clock;
use crate::error::ConfigError;
use crate::glob::Glob;
use crate::tier::{Entry, Now, Tier, TierFuture, Write, capped_ttl, ttl_setting_error};

/// The in-process tier (usually L1): values are held as `Arc<V>`, never
/// serialized, in a sharded concurrent map with per-entry expiry and a size
/// or weight bound. Two maps are offered ([`MemoryBackend`]): `quick_cache`'s
/// (the default, the fastest hit) and moka's.
pub struct MemoryTier<V> {
    name: String,
    map: Map<V>,
    /// Weighs values for a weighted capacity.
    weigher: Option<Weigher<V>>,
    max_ttl: Option<Duration>,
    tags: Arc<TagIndex>,
    next_slot: AtomicU64,
    /// How long past its TTL an entry is kept as a stale fallback.
    stale_grace: Option<Duration>,
    /// The grace, shared with moka's expiry policy, in nanoseconds.
    grace: Arc<AtomicU64>,
    /// Inserts since the last sweep of expired entries (`quick_cache`).
    since_sweep: AtomicU64,
    /// Inserts between two sweeps: about the entries the map can hold, so
    /// that sweeping costs O(1) per insert, amortized.
    sweep_every: u64,
}

/// Which concurrent map a [`MemoryTier`] keeps its entries in.
///
/// Both hold every guarantee of the tier (expiry exact to the millisecond,
/// the size or weight bound, tags, generations, a warm hit that allocates
/// nothing); they differ in speed and eviction policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryBackend {
    /// [quick_cache](https://docs.rs/quick_cache)'s sharded map with
    /// CLOCK-Pro-style eviction (hot and cold entries, a ghost list of
    /// recently evicted keys). The default: a hit costs a third of moka's.
    /// Entries are checked for expiry when read; expired entries nobody
    /// reads are swept out once per about as many inserts as the tier holds
    /// entries, or evicted first when the tier is full.
    #[default]
    QuickCache,
    /// [moka](https://docs.rs/moka)'s map: TinyLFU admission (a new key may
    /// be refused when the tier is full of more frequently used ones), LRU
    /// eviction and timer-wheel expiry, at about three times the cost of a
    /// hit.
    Moka,
}

/// What the map holds for a key. Kept small (40 bytes): the map clones it
/// on every hit.
struct Slot<V> {
    value: Arc<V>,
    /// When it expires, on [`clock`]'s scale ([`NEVER`] without a TTL).
    deadline: u64,
    /// The TTL it was written with, in nanoseconds ([`NEVER`] without one).
    ttl: u64,
    /// Identifies this write in the tag index: a tag only invalidates the
    /// write it tagged, never a later write of the same key.
    id: u64,
    /// Its weight, from the weigher at insertion (1 when unweighted).
    weight: u32,
}

/// The deadline (and TTL) of an entry without a TTL.
const NEVER: u64 = u64::MAX;

impl<V> Slot<V> {
    fn written_ttl(&self) -> Option<Duration> {
        (self.ttl != NEVER).then(|| Duration::from_nanos(self.ttl))
    }
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            deadline: self.deadline,
            ttl: self.ttl,
            id: self.id,
            weight: self.weight,
        }
    }
}

/// Where an entry is in its life.
enum Age {
    Fresh,
    /// Past its TTL, kept as a stale fallback.
    Stale,
    /// Past its TTL and any grace: as good as absent.
    Gone,
}

/// A slot's weight for `quick_cache`, computed once at insertion.
#[derive(Clone, Copy)]
struct SlotWeight;

impl<V> quick_cache::Weighter<String, Slot<V>> for SlotWeight {
    fn weight(&self, _: &String, slot: &Slot<V>) -> u64 {
        u64::from(slot.weight)
    }
}

type Quick<V> = quick_cache::sync::Cache<
    String,
    Slot<V>,
    SlotWeight,
    foldhash::fast::RandomState,
    quick_cache::sync::DefaultLifecycle<String, Slot<V>>,
>;

/// The map behind a tier.
enum Map<V> {
    Quick(Quick<V>),
    Moka(Moka<String, Slot<V>>),
}

impl<V: Send + Sync + 'static> Map<V> {
    #[inline]
    fn get(&self, key: &str) -> Option<Slot<V>> {
        match self {
            Self::Quick(map) => map.get(key),
            Self::Moka(map) => map.get(key),
        }
    }

    /// The slot without marking it used (where the map can tell).
    fn peek(&self, key: &str) -> Option<Slot<V>> {
        match self {
            Self::Quick(map) => map.peek(key),
            Self::Moka(map) => map.get(key),
        }
    }

    fn insert(&self, key: &str, slot: Slot<V>) {
        match self {
            Self::Quick(map) => map.insert(key.to_owned(), slot),
            Self::Moka(map) => map.insert(key.to_owned(), slot),
        }
    }

    fn remove(&self, key: &str) {
        match self {
            Self::Quick(map) => drop(map.remove(key)),
            Self::Moka(map) => map.invalidate(key),
        }
    }

    /// Removes the key if its value is still the write `id`.
    fn remove_write(&self, key: &str, id: u64) -> bool {
        match self {
            Self::Quick(map) => map.remove_if(key, |slot| slot.id == id).is_some(),
            Self::Moka(map) => {
                if map.get(key).is_some_and(|slot| slot.id == id) {
                    map.invalidate(key);
                    true
                } else {
                    false
                }
            }
        }
    }

    fn clear(&self) {
        match self {
            Self::Quick(map) => map.clear(),
            Self::Moka(map) => map.invalidate_all(),
        }
    }

    fn keys(&self) -> Vec<String> {
        match self {
            Self::Quick(map) => map.iter().map(|(key, _)| key).collect(),
            Self::Moka(map) => map.iter().map(|(key, _)| String::clone(&key)).collect(),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::Quick(map) => u64::try_from(map.len()).unwrap_or(u64::MAX),
            Self::Moka(map) => map.entry_count(),
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
        slot.written_ttl().map(|ttl| ttl.saturating_add(grace))
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
    backend: MemoryBackend,
}

/// Weighs an entry for a weighted-capacity tier.
type Weigher<V> = Arc<dyn Fn(&str, &V) -> u32 + Send + Sync>;

impl MemoryTierBuilder {
    /// The tier's name in metrics and stats. Default: `"l1"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Holds at most `entries` entries. Default: 10,000. With
    /// [`MemoryTierBuilder::build_weighted`], the number of entries you
    /// expect the weight to hold (it sizes the map's tables).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// The concurrent map behind the tier. Default:
    /// [`MemoryBackend::QuickCache`], the faster (see the crate's README for
    /// the figures); [`MemoryBackend::Moka`] for moka's TinyLFU admission.
    ///
    /// ```
    /// use perfkit_tiered_cache::{MemoryBackend, MemoryTier};
    ///
    /// let l1 = MemoryTier::builder()
    ///     .backend(MemoryBackend::Moka)
    ///     .max_entries(50_000)
    ///     .build::<String>()?;
    /// # let _ = l1;
    /// # Ok::<(), perfkit_tiered_cache::ConfigError>(())
    /// ```
    pub fn backend(mut self, backend: MemoryBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Builds a tier that holds entries up to `max_weight` in total, each
    /// weighed once, at insertion, by `weigher(key, value)` (typically the
    /// value's size in bytes: values are typed, so the estimate is yours).
    /// A weight of 0 counts as 1. Replaces the bound of
    /// [`MemoryTierBuilder::max_entries`].
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

/// Fewest inserts between two sweeps of a small tier.
const MIN_SWEEP_EVERY: u64 = 1_024;

impl MemoryTierBuilder {
    fn assemble<V: Send + Sync + 'static>(
        self,
        weighted: Option<(u64, Weigher<V>)>,
    ) -> MemoryTier<V> {
        let grace = Arc::new(AtomicU64::new(0));
        let (weigher, capacity) = match weighted {
            Some((max_weight, weigher)) => (Some(weigher), max_weight),
            None => (None, self.max_entries),
        };
        let map = match self.backend {
            MemoryBackend::QuickCache => {
                let items = usize::try_from(self.max_entries).unwrap_or(usize::MAX);
                Map::Quick(Quick::with(
                    items,
                    capacity,
                    SlotWeight,
                    foldhash::fast::RandomState::default(),
                    quick_cache::sync::DefaultLifecycle::default(),
                ))
            }
            MemoryBackend::Moka => {
                let builder = Moka::builder()
                    .max_capacity(capacity)
                    .expire_after(PerEntryTtl {
                        grace: Arc::clone(&grace),
                    });
                Map::Moka(if weigher.is_some() {
                    builder
                        .weigher(|_: &String, slot: &Slot<V>| slot.weight)
                        .build()
                } else {
                    builder.build()
                })
            }
        };
        MemoryTier {
            name: self.name,
            map,
            weigher,
            max_ttl: self.max_ttl,
            tags: Arc::new(TagIndex::default()),
            next_slot: AtomicU64::new(0),
            stale_grace: None,
            grace,
            since_sweep: AtomicU64::new(0),
            sweep_every: self.max_entries.max(MIN_SWEEP_EVERY),
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
            backend: MemoryBackend::default(),
        }
    }
}

impl<V: Send + Sync + 'static> MemoryTier<V> {
    /// A memory tier named `"l1"` holding at most `entries` entries, on the
    /// default map.
    #[must_use]
    pub fn with_max_entries(entries: u64) -> Self {
        MemoryTier::builder().max_entries(entries).assemble(None)
    }

    /// Entries currently held (moka's is an estimate). Expired entries
    /// count until they are swept out or evicted.
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.map.len()
    }

    /// The map behind the tier.
    #[must_use]
    pub fn backend(&self) -> MemoryBackend {
        match self.map {
            Map::Quick(_) => MemoryBackend::QuickCache,
            Map::Moka(_) => MemoryBackend::Moka,
        }
    }

    #[inline]
    fn age(&self, slot: &Slot<V>) -> Age {
        if slot.deadline == NEVER || !clock::reached(slot.deadline) {
            return Age::Fresh;
        }
        let grace = self.grace.load(Ordering::Relaxed);
        if self.stale_grace.is_some() && !clock::reached(slot.deadline.saturating_add(grace)) {
            Age::Stale
        } else {
            Age::Gone
        }
    }

    /// The key's slot if it is fresh, or also if stale when `stale`.
    #[inline]
    fn slot(&self, key: &str, stale: bool) -> Option<Slot<V>> {
        let slot = self.map.get(key)?;
        // moka hides expired entries itself; a read checks the deadline only
        // on quick_cache (no expiry of its own), or on moka to tell a stale
        // entry from a live one.
        if matches!(self.map, Map::Moka(_)) && (stale || self.stale_grace.is_none()) {
            return Some(slot);
        }
        match self.age(&slot) {
            Age::Fresh => Some(slot),
            Age::Stale => stale.then_some(slot),
            Age::Gone => {
                self.map.remove_write(key, slot.id);
                None
            }
        }
    }

    fn entry(slot: Slot<V>) -> Entry<V> {
        let ttl = slot.written_ttl();
        Entry::new(slot.value, clock::instant(slot.deadline)).with_written_ttl(ttl)
    }

    fn insert(&self, key: &str, value: &Arc<V>, ttl: Option<Duration>, tags: &[String]) {
        let ttl = capped_ttl(ttl, self.max_ttl);
        if ttl == Some(Duration::ZERO) {
            self.map.remove(key);
            return;
        }
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        if !tags.is_empty() {
            // Indexed before the value is visible: an invalidation can never miss it.
            self.tags.add(key, id, tags, |key, id| {
                self.map.peek(key).is_some_and(|slot| slot.id == id)
            });
        }
        // (`MAX_TTL` is far below `NEVER` nanoseconds.)
        let ttl = ttl.map_or(NEVER, |ttl| u64::try_from(ttl.as_nanos()).unwrap_or(NEVER));
        let deadline = if ttl == NEVER {
            NEVER
        } else {
            clock::now_ns().saturating_add(ttl)
        };
        let slot = Slot {
            value: Arc::clone(value),
            deadline,
            ttl,
            id,
            weight: self
                .weigher
                .as_ref()
                .map_or(1, |weigh| weigh(key, value).max(1)),
        };
        self.map.insert(key, slot);
        self.sweep_if_due();
    }

    /// Removes expired entries (past any stale grace) from a `quick_cache`
    /// map once per `sweep_every` inserts.
    fn sweep_if_due(&self) {
        let Map::Quick(map) = &self.map else {
            return;
        };
        // Exactly one insert sees the count reach the mark.
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) + 1 != self.sweep_every {
            return;
        }
        self.since_sweep.store(0, Ordering::Relaxed);
        // (Zero unless a stale grace was set.)
        let grace = self.grace.load(Ordering::Relaxed);
        let now = clock::now_ns();
        map.retain(|_, slot| slot.deadline.saturating_add(grace) > now);
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
        self.slot(key, true).map(Self::entry)
    }

    fn get_now(&self, key: &str) -> Now<Entry<V>> {
        Now::found(self.slot(key, false).map(Self::entry))
    }

    #[inline]
    fn get_value_now(&self, key: &str) -> Now<Arc<V>> {
        match self.slot(key, false) {
            Some(slot) => Now::Hit(slot.value),
            None => Now::Miss,
        }
    }

    fn set_now(&self, write: &Write<'_, V>) -> bool {
        self.insert(write.key, write.value, write.ttl, write.tags);
        true
    }

    fn delete_now(&self, key: &str) -> bool {
        self.map.remove(key);
        true
    }

    fn clear_now(&self) -> bool {
        self.map.clear();
        true
    }

    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<V>>> {
        let found = self.slot(key, false).map(Self::entry);
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
            .filter(|(key, id)| self.map.remove_write(key, *id))
            .map(|(key, _)| key)
            .collect();
        Box::pin(async move { Ok(keys) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
        self.map.remove(key);
        Box::pin(async { Ok(()) })
    }

    fn delete_matching<'a>(&'a self, pattern: &'a str) -> TierFuture<'a, u64> {
        let glob = Glob::new(pattern);
        let mut removed = 0;
        for key in self.map.keys() {
            if glob.matches(&key) {
                self.map.remove(&key);
                removed += 1;
            }
        }
        Box::pin(async move { Ok(removed) })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        self.map.clear();
        Box::pin(async { Ok(()) })
    }
}

impl<V: Send + Sync + 'static> std::fmt::Debug for MemoryTier<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("name", &self.name)
            .field("backend", &self.backend())
            .field("entries", &self.map.len())
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKENDS: [MemoryBackend; 2] = [MemoryBackend::QuickCache, MemoryBackend::Moka];

    impl<V: Send + Sync + 'static> MemoryTier<V> {
        /// Lets moka finish its pending evictions.
        fn settle(&self) {
            if let Map::Moka(map) = &self.map {
                map.run_pending_tasks();
            }
        }
    }

    #[test]
    fn weighted_capacity_evicts_by_the_weight_of_values() {
        for backend in BACKENDS {
            let tier: MemoryTier<Vec<u8>> = MemoryTier::builder()
                .backend(backend)
                .build_weighted(10_000, |_key: &str, value: &Vec<u8>| {
                    u32::try_from(value.len()).unwrap_or(u32::MAX)
                })
                .unwrap();
            for i in 0..100 {
                tier.insert(&format!("k{i}"), &Arc::new(vec![0_u8; 1_000]), None, &[]);
            }
            tier.settle();
            assert!(
                tier.entry_count() <= 10,
                "{backend:?}: 1 kB values in a 10 kB tier: {} kept",
                tier.entry_count()
            );
        }
    }

    #[test]
    fn the_entry_bound_holds() {
        for backend in BACKENDS {
            let tier: MemoryTier<u32> = MemoryTier::builder()
                .backend(backend)
                .max_entries(1_000)
                .build()
                .unwrap();
            for i in 0..10_000_u32 {
                tier.insert(&format!("k{i}"), &Arc::new(i), None, &[]);
            }
            tier.settle();
            assert!(
                tier.entry_count() <= 1_000,
                "{backend:?}: {} entries kept in a tier of 1,000",
                tier.entry_count()
            );
        }
    }

    #[test]
    fn the_tag_index_stays_proportional_to_live_entries() {
        for backend in BACKENDS {
            let tier: MemoryTier<u32> = MemoryTier::builder()
                .backend(backend)
                .max_entries(100)
                .build()
                .unwrap();
            let tags = ["everyone".to_owned()];
            for i in 0..20_000_u32 {
                tier.insert(&format!("k{i}"), &Arc::new(i), None, &tags);
                if i % 1_000 == 0 {
                    tier.settle();
                }
            }
            tier.settle();
            let pairs = tier.tags.0.lock().unwrap().pairs;
            assert!(
                pairs <= 2 * MIN_PRUNE_AT,
                "{backend:?}: {pairs} index entries for at most 100 live ones"
            );
        }
    }

    #[test]
    fn expired_entries_nobody_reads_are_swept_out() {
        let tier: MemoryTier<u32> = MemoryTier::builder().max_entries(10_000).build().unwrap();
        for i in 0..5_000_u32 {
            tier.insert(
                &format!("short{i}"),
                &Arc::new(i),
                Some(Duration::from_millis(1)),
                &[],
            );
        }
        std::thread::sleep(Duration::from_millis(5));
        // Short-lived entries are never read again; longer-lived ones keep coming.
        for i in 0..u32::try_from(MIN_SWEEP_EVERY.max(10_000)).unwrap() {
            tier.insert(
                &format!("long{}", i % 100),
                &Arc::new(i),
                Some(Duration::from_secs(60)),
                &[],
            );
        }
        assert!(
            tier.entry_count() <= 100,
            "{} entries held, of which 100 live",
            tier.entry_count()
        );
    }

    #[test]
    fn an_expired_entry_read_is_removed_and_a_stale_one_kept_for_its_grace() {
        for backend in BACKENDS {
            let mut tier: MemoryTier<u32> = MemoryTier::builder().backend(backend).build().unwrap();
            tier.keep_stale_for(Duration::from_millis(300));
            tier.insert("k", &Arc::new(1), Some(Duration::from_millis(20)), &[]);
            assert!(tier.get_value_now("k").known().flatten().is_some());
            std::thread::sleep(Duration::from_millis(40));
            assert!(
                tier.get_value_now("k").known().flatten().is_none(),
                "{backend:?}: expired"
            );
            assert!(tier.get_stale("k").is_some(), "{backend:?}: kept as stale");
            std::thread::sleep(Duration::from_millis(400));
            assert!(tier.get_stale("k").is_none(), "{backend:?}: past its grace");
            if backend == MemoryBackend::QuickCache {
                // (moka removes it on its own schedule.)
                assert_eq!(tier.entry_count(), 0, "removed once read past its grace");
            }
        }
    }
}
