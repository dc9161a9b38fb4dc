//! Per-call options: how a `set` writes and how a load stores.

use std::time::Duration;

/// How a [`Cache::set_with`](crate::Cache::set_with) writes.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SetOptions {
    pub(crate) ttl: Option<Option<Duration>>,
    pub(crate) tags: Vec<String>,
}

impl SetOptions {
    /// Expire after `ttl` (instead of the cache's default TTL). Tiers keep
    /// time in whole milliseconds: under 1 ms means "do not cache" (the
    /// `set` removes the key instead), over [`MAX_TTL`](crate::MAX_TTL) is
    /// clamped to it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(Some(ttl));
        self
    }

    /// Never expire (instead of the cache's default TTL).
    pub fn no_ttl(mut self) -> Self {
        self.ttl = Some(None);
        self
    }

    /// Tags the entry: [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) removes every entry written
    /// with the tag, from every tier.
    ///
    /// ```
    /// use perfkit_tiered_cache::SetOptions;
    ///
    /// // Dropped together by `cache.invalidate_tag("org:1")` or `("plan:pro")`.
    /// let options = SetOptions::default().tags(["org:1", "plan:pro"]);
    /// # let _ = options;
    /// ```
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }
}

/// How a [`Cache::get_or_load_with`](crate::Cache::get_or_load_with) loads and stores. Concurrent callers
/// of one key share one load: the options of the caller that starts it
/// apply (to the stored entry and to the load), and each caller keeps its
/// own timeout.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct LoadOptions {
    /// How the loaded value is stored: what a `set` with these options does.
    pub(crate) store: SetOptions,
    pub(crate) timeout: Option<Duration>,
}

impl LoadOptions {
    /// Store the loaded value for `ttl` (instead of the cache's default
    /// TTL); the rules of [`SetOptions::ttl`] apply.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.store = self.store.ttl(ttl);
        self
    }

    /// Store the loaded value without TTL.
    pub fn no_ttl(mut self) -> Self {
        self.store = self.store.no_ttl();
        self
    }

    /// Tags the loaded value as [`SetOptions::tags`] does, so that
    /// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) removes it, from every tier, and a tag
    /// invalidation that races the load keeps it from being stored.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use perfkit_tiered_cache::LoadOptions;
    ///
    /// // Tagged, and bounded: callers wait at most 2 s for this load.
    /// let options = LoadOptions::default().tags(["org:1"]).timeout(Duration::from_secs(2));
    /// # let _ = options;
    /// ```
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.store = self.store.tags(tags);
        self
    }

    /// Gives up on the load after `timeout` for this caller (instead of the
    /// cache's [`CacheBuilder::load_timeout`](crate::CacheBuilder::load_timeout)):
    /// see [`Error::LoadTimeout`](crate::Error::LoadTimeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}
