//! The in-process tier: a moka map of `Arc<V>`, no serialization.

use std::collections::{HashMap, HashSet};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache as Moka;

use crate::error::ConfigError;
use crate::tier::{Entry, Tier, TierFuture, Write};

/// The in-process tier (usually L1): values are held as `Arc<V>`, never
/// serialized. Backed by [moka](https://docs.rs/moka)'s concurrent map with
/// TinyLFU admission and per-entry expiry.
pub struct MemoryTier<V> {
    name: String,
    map: Moka<String, Slot<V>>,
    max_ttl: Option<Duration>,
    tags: Arc<TagIndex>,
    next_slot: AtomicU64,
}

struct Slot<V> {
    value: Arc<V>,
    expires_at: Option<Instant>,
    ttl: Option<Duration>,
    /// Identifies this write in the tag index, so that the eviction of a
    /// replaced value never unindexes the value that replaced it.
    id: u64,
    tags: Option<Arc<[String]>>,
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            expires_at: self.expires_at,
            ttl: self.ttl,
            id: self.id,
            tags: self.tags.clone(),
        }
    }
}

/// Tag → (key → the write that tagged it). Entries leave with their value
/// (moka's eviction listener), so the index never outgrows the map.
#[derive(Default)]
struct TagIndex(Mutex<HashMap<String, HashMap<String, u64>>>);

impl TagIndex {
    fn add(&self, key: &str, id: u64, tags: &[String]) {
        let mut index = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for tag in tags {
            index
                .entry(tag.clone())
                .or_default()
                .insert(key.to_owned(), id);
        }
    }

    fn remove(&self, key: &str, id: u64, tags: &[String]) {
        let mut index = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for tag in tags {
            if let Some(keys) = index.get_mut(tag) {
                if keys.get(key) == Some(&id) {
                    keys.remove(key);
                }
                if keys.is_empty() {
                    index.remove(tag);
                }
            }
        }
    }

    fn take(&self, tag: &str) -> HashSet<String> {
        let mut index = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        index
            .remove(tag)
            .map(|keys| keys.into_keys().collect())
            .unwrap_or_default()
    }
}

/// Each entry lives for the TTL it was written with.
struct PerEntryTtl;

impl<V> Expiry<String, Slot<V>> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, slot: &Slot<V>, _: Instant) -> Option<Duration> {
        slot.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        slot.ttl
    }
}

/// Configures a [`MemoryTier`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryTierBuilder {
    name: String,
    capacity: Capacity,
    max_ttl: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
enum Capacity {
    Entries(u64),
    Bytes(u64, fn(&str) -> u32),
}

impl MemoryTierBuilder {
    /// The tier's name in metrics and stats. Default: `"l1"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Holds at most `entries` entries. Default: 10,000.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.capacity = Capacity::Entries(entries);
        self
    }

    /// Holds entries up to `bytes` in total, as weighed by `weigh_key` (moka
    /// weighs each entry once, at insertion). Values are typed, so their size
    /// is the caller's estimate: weigh by key when values are of similar size.
    pub fn max_weight(mut self, bytes: u64, weigh_key: fn(&str) -> u32) -> Self {
        self.capacity = Capacity::Bytes(bytes, weigh_key);
        self
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
    /// [`ConfigError::ZeroDuration`] for a zero `max_ttl`.
    pub fn build<V: Send + Sync + 'static>(self) -> Result<MemoryTier<V>, ConfigError> {
        if self.max_ttl == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration("max_ttl"));
        }
        Ok(self.assemble())
    }
}

impl MemoryTierBuilder {
    fn assemble<V: Send + Sync + 'static>(self) -> MemoryTier<V> {
        let tags = Arc::new(TagIndex::default());
        let builder = Moka::builder()
            .expire_after(PerEntryTtl)
            .eviction_listener(unindex(Arc::clone(&tags)));
        let map = match self.capacity {
            Capacity::Entries(entries) => builder.max_capacity(entries).build(),
            Capacity::Bytes(bytes, weigh) => builder
                .max_capacity(bytes)
                .weigher(move |key: &String, _: &Slot<V>| weigh(key))
                .build(),
        };
        MemoryTier {
            name: self.name,
            map,
            max_ttl: self.max_ttl,
            tags,
            next_slot: AtomicU64::new(0),
        }
    }
}

// Not generic: the value type is chosen by `MemoryTierBuilder::build`.
impl MemoryTier<()> {
    /// Configures a memory tier.
    pub fn builder() -> MemoryTierBuilder {
        MemoryTierBuilder {
            name: "l1".to_owned(),
            capacity: Capacity::Entries(10_000),
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
            capacity: Capacity::Entries(entries),
            max_ttl: None,
        }
        .assemble()
    }

    /// Entries currently held (moka's estimate).
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.map.entry_count()
    }

    fn lookup(&self, key: &str) -> Option<Entry<V>> {
        self.map
            .get(key)
            .map(|slot| Entry::new(slot.value, slot.expires_at).with_written_ttl(slot.ttl))
    }

    fn insert(&self, key: &str, value: &Arc<V>, ttl: Option<Duration>, tags: &[String]) {
        let ttl = match (ttl, self.max_ttl) {
            (Some(ttl), Some(max)) => Some(ttl.min(max)),
            (ttl, max) => ttl.or(max),
        };
        if ttl == Some(Duration::ZERO) {
            self.map.invalidate(key);
            return;
        }
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let tags: Option<Arc<[String]>> = (!tags.is_empty()).then(|| tags.into());
        if let Some(tags) = &tags {
            // Indexed before the value is visible: an invalidation can never miss it.
            self.tags.add(key, id, tags);
        }
        let slot = Slot {
            value: Arc::clone(value),
            expires_at: ttl.and_then(|ttl| Instant::now().checked_add(ttl)),
            ttl,
            id,
            tags,
        };
        self.map.insert(key.to_owned(), slot);
    }
}

impl<V: Send + Sync + 'static> Tier<V> for MemoryTier<V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn get_now(&self, key: &str) -> Option<Option<Entry<V>>> {
        Some(self.lookup(key))
    }

    fn set_now(&self, write: &Write<'_, V>) -> bool {
        self.insert(write.key, write.value, write.ttl, write.tags);
        true
    }

    fn delete_now(&self, key: &str) -> bool {
        self.map.invalidate(key);
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
        let keys: Vec<String> = self.tags.take(tag).into_iter().collect();
        for key in &keys {
            self.map.invalidate(key);
        }
        Box::pin(async move { Ok(keys) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
        self.map.invalidate(key);
        Box::pin(async { Ok(()) })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        self.map.invalidate_all();
        Box::pin(async { Ok(()) })
    }
}

/// Takes an evicted, expired, removed or replaced value out of the tag index.
fn unindex<V: Send + Sync + 'static>(
    tags: Arc<TagIndex>,
) -> impl Fn(Arc<String>, Slot<V>, moka::notification::RemovalCause) + Send + Sync + 'static {
    move |key, slot, _cause| {
        if let Some(slot_tags) = &slot.tags {
            tags.remove(&key, slot.id, slot_tags);
        }
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
