//! The [`Tier`] trait: one level of the cache.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{ConfigError, TierError};

/// The future a tier operation returns. Boxed: tiers are kept as trait
/// objects, and a network round trip dwarfs one allocation. The in-process
/// hit path avoids it through [`Tier::get_now`].
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TierError>> + Send + 'a>>;

/// A value found in a tier, with when it expires there.
#[derive(Debug)]
#[non_exhaustive]
pub struct Entry<V> {
    /// The value, shared: in-process tiers hand out the `Arc` they hold.
    pub value: Arc<V>,
    /// When the entry expires in the tier it was read from; `None` when it
    /// has no TTL.
    pub expires_at: Option<Instant>,
    /// The TTL the entry was written with, when the tier knows it (eager
    /// refresh measures how much of it has passed).
    pub written_ttl: Option<Duration>,
    /// The tags it was written with, when the tier keeps them with the value
    /// (a promotion carries them into the faster tiers).
    pub tags: Vec<String>,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            expires_at: self.expires_at,
            written_ttl: self.written_ttl,
            tags: self.tags.clone(),
        }
    }
}

impl<V> Entry<V> {
    /// An entry expiring at `expires_at` (`None`: no TTL).
    #[must_use]
    pub fn new(value: Arc<V>, expires_at: Option<Instant>) -> Self {
        Self {
            value,
            expires_at,
            written_ttl: None,
            tags: Vec::new(),
        }
    }

    /// Records the tags the entry was written with.
    #[must_use]
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// Records the TTL the entry was written with.
    #[must_use]
    pub fn with_written_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.written_ttl = ttl;
        self
    }

    /// The time left before the entry expires (zero once past), or `None`
    /// when it has no TTL.
    #[must_use]
    pub fn ttl(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// The longest TTL the cache writes: about 100 years. Every tier accepts it
/// (Redis, moka's timer wheel, `Instant` arithmetic); longer TTLs given to
/// `set_with` are clamped to it, and builder settings over it are rejected.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The shortest TTL the cache writes. Every tier keeps time in whole
/// milliseconds (Redis's `PX`), so a shorter TTL means "do not cache".
pub(crate) const MIN_TTL: Duration = Duration::from_millis(1);

/// A TTL as the cache writes it: `None` for "do not cache" (under 1 ms),
/// else the TTL clamped to [`MAX_TTL`] (`Some(None)`: no TTL).
pub(crate) fn storable_ttl(ttl: Option<Duration>) -> Option<Option<Duration>> {
    match ttl {
        Some(ttl) if ttl < MIN_TTL => None,
        Some(ttl) => Some(Some(ttl.min(MAX_TTL))),
        None => Some(None),
    }
}

/// Checks a TTL setting: `None` when it is within what every tier accepts.
pub(crate) fn ttl_setting_error(setting: &'static str, ttl: Duration) -> Option<ConfigError> {
    if ttl.is_zero() {
        Some(ConfigError::ZeroDuration(setting))
    } else if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        Some(ConfigError::TtlOutOfRange { setting, ttl })
    } else {
        None
    }
}

/// `ttl` capped by a tier's `max_ttl`; an entry without TTL gets the cap.
pub(crate) fn capped_ttl(ttl: Option<Duration>, max_ttl: Option<Duration>) -> Option<Duration> {
    match (ttl, max_ttl) {
        (Some(ttl), Some(max)) => Some(ttl.min(max)),
        (ttl, max) => ttl.or(max),
    }
}

/// What a lookup saw in a tier where it missed, so that a later fill of
/// the same key can be made conditional on nothing having changed there
/// since (see [`Tier::lookup`] and [`Tier::fill`]). Opaque to the cache:
/// each tier keeps what it needs in it.
#[derive(Clone, Default)]
pub struct Version {
    seen: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// Why the value found could not be read, when it could not.
    unreadable: Option<Arc<TierError>>,
}

impl Version {
    /// No version: a fill with it is unconditional.
    #[must_use]
    pub fn unversioned() -> Self {
        Self::default()
    }

    /// A version holding a tier's own record of what it saw.
    #[must_use]
    pub fn new<T: std::any::Any + Send + Sync>(seen: T) -> Self {
        Self {
            seen: Some(Arc::new(seen)),
            unreadable: None,
        }
    }

    /// Records that the lookup found a value it could not read (a
    /// [`TierError::Codec`]): the lookup reports a miss, the cache counts a
    /// value error, and a fill with this version may replace the value.
    #[must_use]
    pub fn with_unreadable_value(mut self, error: TierError) -> Self {
        self.unreadable = Some(Arc::new(error));
        self
    }

    /// Why the value the lookup found could not be read, if it could not.
    #[must_use]
    pub fn unreadable_value(&self) -> Option<&TierError> {
        self.unreadable.as_deref()
    }

    /// The tier's record, if this version holds one of type `T`.
    #[must_use]
    pub fn get<T: std::any::Any>(&self) -> Option<&T> {
        self.seen.as_deref().and_then(|seen| seen.downcast_ref())
    }

    /// Whether the version holds nothing (an unconditional fill).
    #[must_use]
    pub fn is_unversioned(&self) -> bool {
        self.seen.is_none()
    }
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.seen.is_some() {
            "Version(..)"
        } else {
            "Version(unversioned)"
        })
    }
}

/// A write into a tier: what [`Tier::set`] receives.
#[derive(Debug)]
#[non_exhaustive]
pub struct Write<'a, V> {
    /// The cache key (without any tier prefix).
    pub key: &'a str,
    /// The value.
    pub value: &'a Arc<V>,
    /// How long the entry lives, or `None` for no TTL. Already capped by the
    /// tier's own maximum and jittered, when configured.
    pub ttl: Option<Duration>,
    /// Tags the entry can be invalidated by.
    pub tags: &'a [String],
}

/// A lookup a tier answers without awaiting ([`Tier::get_now`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now<T> {
    /// The key is in the tier.
    Hit(T),
    /// The key is not in the tier.
    Miss,
    /// The tier cannot tell without awaiting: the cache calls [`Tier::get`].
    Ask,
}

impl<T> Now<T> {
    /// [`Now::Hit`] for `Some`, [`Now::Miss`] for `None`.
    pub fn found(value: Option<T>) -> Self {
        value.map_or(Self::Miss, Self::Hit)
    }

    /// The hit's value mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Now<U> {
        match self {
            Self::Hit(value) => Now::Hit(f(value)),
            Self::Miss => Now::Miss,
            Self::Ask => Now::Ask,
        }
    }

    /// `None` for [`Now::Ask`], else whether (and what) the tier found.
    pub(crate) fn known(self) -> Option<Option<T>> {
        match self {
            Self::Hit(value) => Some(Some(value)),
            Self::Miss => Some(None),
            Self::Ask => None,
        }
    }
}

/// One level of a [`Cache`](crate::Cache): an in-process map, Redis, or
/// anything you plug in.
///
/// Tiers are ordered from the fastest (index 0, usually [`MemoryTier`]) to
/// the slowest. A tier never decides cache policy (promotion, loading,
/// fail-safe): it stores and returns entries, and reports failures as
/// [`TierError`]s, which the cache turns into misses. Remote tiers are wrapped
/// by the cache in a timeout and a circuit breaker (see
/// [`Tier::is_remote`]).
///
/// [`MemoryTier`]: crate::MemoryTier
///
/// # Implementing a tier
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
///
/// use perfkit_tiered_cache::{Entry, Tier, TierFuture, Write};
///
/// /// A third tier that only remembers values, forever (think: a local disk).
/// #[derive(Default)]
/// struct Archive(Mutex<HashMap<String, Arc<String>>>);
///
/// impl Tier<String> for Archive {
///     fn name(&self) -> &str {
///         "archive"
///     }
///     fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<String>>> {
///         let found = self.0.lock().unwrap().get(key).cloned();
///         Box::pin(async move { Ok(found.map(|value| Entry::new(value, None))) })
///     }
///     fn set<'a>(&'a self, write: &'a Write<'a, String>) -> TierFuture<'a, ()> {
///         self.0.lock().unwrap().insert(write.key.to_owned(), Arc::clone(write.value));
///         Box::pin(async { Ok(()) })
///     }
///     fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
///         self.0.lock().unwrap().remove(key);
///         Box::pin(async { Ok(()) })
///     }
///     fn clear(&self) -> TierFuture<'_, ()> {
///         self.0.lock().unwrap().clear();
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait Tier<V>: Send + Sync + 'static {
    /// The tier's name in metrics, spans and stats (`"l1"`, `"redis"`, ...).
    fn name(&self) -> &str;

    /// Whether the tier lives across a network: the cache then bounds every
    /// call with a timeout and a circuit breaker. Default: `false`.
    fn is_remote(&self) -> bool {
        false
    }

    /// Answers a lookup without awaiting, when the tier can (an in-process
    /// map): [`Now::Hit`], [`Now::Miss`], or [`Now::Ask`] for "ask
    /// [`Tier::get`]". This is what keeps a warm L1 hit free of allocations.
    /// Default: [`Now::Ask`].
    fn get_now(&self, key: &str) -> Now<Entry<V>> {
        let _ = key;
        Now::Ask
    }

    /// [`Tier::get_now`] for a caller that needs only the value (a plain
    /// [`Cache::get`](crate::Cache::get)): an in-process tier can skip
    /// building the entry's expiry. Default: derived from [`Tier::get_now`].
    fn get_value_now(&self, key: &str) -> Now<Arc<V>> {
        self.get_now(key).map(|entry| entry.value)
    }

    /// Stores a value without awaiting, when the tier can (an in-process
    /// map); returns whether it did. The cache uses it to make L1 writes
    /// atomic with respect to `set` and `remove` of the same key, so a load
    /// that began earlier never overwrites them. Default: `false`.
    fn set_now(&self, write: &Write<'_, V>) -> bool {
        let _ = write;
        false
    }

    /// Removes `key` without awaiting, when the tier can; returns whether it
    /// did. Default: `false`.
    fn delete_now(&self, key: &str) -> bool {
        let _ = key;
        false
    }

    /// Removes every entry without awaiting, when the tier can; returns
    /// whether it did. The cache uses it where it cannot await (the
    /// invalidation bus's task ending with its runtime). Default: `false`.
    fn clear_now(&self) -> bool {
        false
    }

    /// Keeps entries for `grace` past their TTL, invisible to lookups, as a
    /// fallback for when a reload fails (see [`Tier::get_stale`]). Returns
    /// whether the tier can. Called once, when the cache is built. Default:
    /// `false`.
    fn keep_stale_for(&mut self, grace: Duration) -> bool {
        let _ = grace;
        false
    }

    /// The entry for `key` even if its TTL has passed (within the grace set
    /// by [`Tier::keep_stale_for`]). Default: `None`.
    fn get_stale(&self, key: &str) -> Option<Entry<V>> {
        let _ = key;
        None
    }

    /// Looks `key` up: `Ok(None)` is a miss.
    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<V>>>;

    /// Stores a value.
    fn set<'a>(&'a self, write: &'a Write<'a, V>) -> TierFuture<'a, ()>;

    /// Looks `key` up for a load or a promotion that may fill this tier
    /// afterwards: a hit, or a miss with the [`Version`] a later
    /// [`Tier::fill`] is conditioned on. The default is [`Tier::get`] with
    /// no version (fills are then unconditional).
    fn lookup<'a>(&'a self, key: &'a str) -> TierFuture<'a, (Option<Entry<V>>, Version)>
    where
        V: 'a,
    {
        let get = self.get(key);
        Box::pin(async move { Ok((get.await?, Version::unversioned())) })
    }

    /// Stores a value a load (or a promotion) produced, unless the key
    /// changed in this tier since [`Tier::lookup`] returned `seen` (a write,
    /// a delete, an invalidation): this is what keeps a load that began
    /// before an invalidation from writing its old value back ("no stale
    /// sets"). Returns whether it stored. The default stores unconditionally.
    fn fill<'a>(&'a self, write: &'a Write<'a, V>, seen: &'a Version) -> TierFuture<'a, bool> {
        let _ = seen;
        let set = self.set(write);
        Box::pin(async move {
            set.await?;
            Ok(true)
        })
    }

    /// Removes `key`; removing a missing key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()>;

    /// Removes every entry written with `tag` and returns their keys (the
    /// cache then removes those keys from the other tiers, where promoted
    /// copies carry no tags). Tiers that keep no tag index remove nothing.
    /// Default: `Ok(vec![])`.
    fn delete_tag<'a>(&'a self, tag: &'a str) -> TierFuture<'a, Vec<String>> {
        let _ = tag;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Removes every entry whose key matches `pattern`, a Redis-style glob
    /// (`*`, `?`, `[a-z]`, `\` escapes) over cache keys (without any tier
    /// prefix), and returns how many it removed. The default clears the whole
    /// tier, which removes at least what was asked: override it when the tier
    /// can enumerate its keys.
    fn delete_matching<'a>(&'a self, pattern: &'a str) -> TierFuture<'a, u64> {
        let _ = pattern;
        Box::pin(async move {
            self.clear().await?;
            Ok(0)
        })
    }

    /// Whether [`Tier::get`] returns the tags an entry was written with
    /// ([`Entry::tags`]). When a tier below the first does not, a copy
    /// promoted from it carries no tags, so the cache flushes its first tier
    /// on a tag invalidation from another instance. Default: `false`.
    fn keeps_tags(&self) -> bool {
        false
    }

    /// Removes every entry of this tier (for a prefixed tier, every key under its prefix).
    fn clear(&self) -> TierFuture<'_, ()>;
}
