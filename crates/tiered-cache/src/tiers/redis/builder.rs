//! Configuring a [`RedisTier`]: from a URL or from a connection.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::time::Duration;

use perfkit_redis::LazyConnection;
use redis::aio::ConnectionLike;

#[cfg(feature = "cluster")]
use super::keys::MAX_BUCKETS;
use super::keys::{DEFAULT_BUCKETS, Keys};
use super::{RedisTier, envelope};
use crate::codec::{Codec, Postcard};
use crate::error::ConfigError;
use crate::tier::{MAX_TTL, ttl_setting_error};

/// Default [`RedisTierBuilder::max_value_size`]: 1 MiB.
const DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;

/// Makes the tier's connection at `build`, given the connect timeout.
type Connect<R> = Box<dyn FnOnce(Duration) -> Result<R, ConfigError> + Send + Sync>;

/// Configures a [`RedisTier`]: [`RedisTier::builder`] from a URL,
/// [`RedisTier::builder_with_connection`] from a connection you have.
#[must_use]
pub struct RedisTierBuilder<C = Postcard, R = LazyConnection> {
    connect: Connect<R>,
    name: String,
    prefix: String,
    codec: C,
    max_ttl: Option<Duration>,
    connect_timeout: Duration,
    plain: bool,
    tombstone_ttl: Duration,
    max_value_size: NonZeroUsize,
    buckets: u16,
}

impl<R> RedisTierBuilder<Postcard, R> {
    fn new(connect: Connect<R>) -> Self {
        Self {
            connect,
            name: "redis".to_owned(),
            prefix: "perfkit:cache:".to_owned(),
            codec: Postcard,
            max_ttl: None,
            connect_timeout: Duration::from_millis(250),
            plain: false,
            tombstone_ttl: Duration::from_secs(60),
            max_value_size: NonZeroUsize::new(DEFAULT_MAX_VALUE_SIZE).unwrap_or(NonZeroUsize::MIN),
            buckets: DEFAULT_BUCKETS,
        }
    }
}

impl<C: std::fmt::Debug, R> std::fmt::Debug for RedisTierBuilder<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTierBuilder")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("codec", &self.codec)
            .field("max_ttl", &self.max_ttl)
            .field("plain", &self.plain)
            .finish_non_exhaustive()
    }
}

impl<C, R> RedisTierBuilder<C, R> {
    /// The tier's name in metrics and stats. Default: `"redis"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Prepended to every key this tier writes. Default: `"perfkit:cache:"`.
    /// Give each service (and each value type) its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Keeps no entry longer than `ttl` in Redis, whatever TTL it was written
    /// with. Default: no cap.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = Some(ttl);
        self
    }

    /// How long one connection attempt may take, for a tier built from a
    /// URL (a connection you pass keeps its own settings). Default: 250 ms.
    /// Calls are bounded by the cache's tier timeout in any case.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Stores each value as the codec's bytes alone, without the header
    /// described in [`RedisTier`]'s value format, so that programs that
    /// know nothing of perfkit can read and write the same keys (pair it with
    /// the [`Json`](crate::Json) codec). A lookup then reads the `PTTL` too,
    /// pipelined in the same round trip. Default: off.
    pub fn plain_values(mut self) -> Self {
        self.plain = true;
        self
    }

    /// How long a removed key keeps a tombstone (a small marker in place of
    /// the value, a miss for lookups) that refuses the fills of loads which
    /// looked before the removal. A load that takes longer than this never
    /// fills this tier. Default: 60 s.
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// The largest value, in encoded bytes (header included), this tier
    /// stores. Larger values are never sent: one large value on the shared
    /// connection would delay every other call behind it past its timeout.
    /// A `set` of a larger value removes the key here instead; a load's
    /// fill skips this tier. Default: 1 MiB.
    pub fn max_value_size(mut self, bytes: NonZeroUsize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// On a Redis Cluster: how many buckets the keys fall into (see
    /// [Redis Cluster](RedisTier#redis-cluster)). More buckets spread the
    /// values more evenly over the masters; each tag, pattern or clear
    /// invalidation moves every bucket's epoch, and a tag invalidation reads
    /// every bucket's share of the tag, so it costs a few commands per
    /// bucket. At most 4096. Ignored on a single node.
    /// Default: 64.
    pub fn cluster_buckets(mut self, buckets: u16) -> Self {
        self.buckets = buckets;
        self
    }

    /// Encodes values with `codec` instead of [`Postcard`].
    pub fn codec<C2>(self, codec: C2) -> RedisTierBuilder<C2, R> {
        RedisTierBuilder {
            connect: self.connect,
            name: self.name,
            prefix: self.prefix,
            codec,
            max_ttl: self.max_ttl,
            connect_timeout: self.connect_timeout,
            plain: self.plain,
            tombstone_ttl: self.tombstone_ttl,
            max_value_size: self.max_value_size,
            buckets: self.buckets,
        }
    }

    /// Builds the tier; a connection made from a URL opens on first use.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an unparsable URL, an empty prefix, a zero
    /// duration; on a cluster, a prefix with a brace or a bucket count
    /// outside `1..=4096`.
    pub fn build<V>(self) -> Result<RedisTier<V, C, R>, ConfigError>
    where
        C: Codec<V>,
        V: Send + Sync + 'static,
        R: 'static,
    {
        if self.prefix.is_empty() {
            return Err(ConfigError::EmptyPrefix);
        }
        if let Some(error) = self
            .max_ttl
            .and_then(|ttl| ttl_setting_error("max_ttl", ttl))
        {
            return Err(error);
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("connect_timeout"));
        }
        if self.tombstone_ttl.is_zero() {
            return Err(ConfigError::ZeroDuration("tombstone_ttl"));
        }
        let connection = (self.connect)(self.connect_timeout)?;
        #[cfg(feature = "cluster")]
        let nodes = cluster_of(&connection);
        #[cfg(feature = "cluster")]
        let keys = match &nodes {
            Some(_) => {
                if self.prefix.contains(['{', '}']) {
                    // The bucket's hash tag must be each key's first `{…}`.
                    return Err(ConfigError::ClusterPrefix(self.prefix));
                }
                if !(1..=MAX_BUCKETS).contains(&self.buckets) {
                    return Err(ConfigError::ClusterBuckets(self.buckets));
                }
                Keys::cluster(self.prefix, self.buckets)
            }
            None => Keys::single(self.prefix),
        };
        #[cfg(not(feature = "cluster"))]
        let keys = Keys::single(self.prefix);
        Ok(RedisTier {
            name: self.name,
            keys,
            #[cfg(feature = "cluster")]
            nodes,
            connection,
            codec: self.codec,
            max_ttl: self.max_ttl,
            plain: self.plain,
            tombstone_ttl: self.tombstone_ttl.min(MAX_TTL),
            max_value_size: self.max_value_size.get(),
            tombstones: envelope::Tombstones::new(),
            _values: PhantomData,
        })
    }
}

// Not generic: the value type is chosen by `RedisTierBuilder::build`.
impl RedisTier<(), Postcard> {
    /// Configures a tier on the Redis at `url` (`redis://host:port/db`),
    /// through a [`LazyConnection`]: `build` needs no runtime and no
    /// reachable Redis (a bad URL is reported by `build`).
    pub fn builder(url: &str) -> RedisTierBuilder<Postcard> {
        let url = url.to_owned();
        RedisTierBuilder::new(Box::new(move |connect_timeout| {
            LazyConnection::open(&url, connect_timeout)
                .map_err(|error| ConfigError::RedisUrl(error.to_string()))
        }))
    }

    /// Configures a tier on a connection you already have: a redis-rs
    /// `ConnectionManager`, a `MultiplexedConnection`, or any
    /// [`ConnectionLike`] that clones cheaply onto one shared connection.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use perfkit_tiered_cache::{Cache, RedisTier};
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let connection = redis::aio::ConnectionManager::new(client).await?;
    /// let cache: Cache<String> = Cache::builder()
    ///     .tier(RedisTier::builder_with_connection(connection).prefix("svc:").build()?)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder_with_connection<R>(connection: R) -> RedisTierBuilder<Postcard, R>
    where
        R: ConnectionLike + Clone + Send + Sync + 'static,
    {
        RedisTierBuilder::new(Box::new(move |_| Ok(connection)))
    }

    /// Configures a tier on the Redis Cluster reached through `urls` (one
    /// node or more, `redis://host:port`; the others are discovered),
    /// through a [`LazyConnection`] opened by the first command: `build`
    /// needs no runtime and no reachable node. Keys are laid out in
    /// buckets, each in one hash slot (see [Redis Cluster](RedisTier#redis-cluster)).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), perfkit_tiered_cache::ConfigError> {
    /// use perfkit_tiered_cache::{Cache, MemoryTier, RedisTier};
    ///
    /// let nodes = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"];
    /// let cache: Cache<String> = Cache::builder()
    ///     .tier(MemoryTier::with_max_entries(10_000))
    ///     .tier(RedisTier::cluster_builder(&nodes).prefix("svc:").build()?)
    ///     .build()?;
    /// # let _ = cache;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster_builder<S: AsRef<str>>(urls: &[S]) -> RedisTierBuilder<Postcard> {
        let urls: Vec<String> = urls.iter().map(|url| url.as_ref().to_owned()).collect();
        RedisTierBuilder::new(Box::new(move |connect_timeout| {
            LazyConnection::open_cluster(&urls, connect_timeout)
                .map_err(|error| ConfigError::RedisUrl(error.to_string()))
        }))
    }
}

/// The cluster behind `connection`, when it is one: a [`LazyConnection`]
/// on a cluster, or redis-rs's cluster connection (wrapped, to reach each
/// master).
#[cfg(feature = "cluster")]
fn cluster_of<R: 'static>(connection: &R) -> Option<LazyConnection> {
    let connection: &dyn std::any::Any = connection;
    if let Some(lazy) = connection.downcast_ref::<LazyConnection>() {
        return lazy.is_cluster().then(|| lazy.clone());
    }
    connection
        .downcast_ref::<redis::cluster_async::ClusterConnection>()
        .map(|cluster| LazyConnection::from_cluster_connection(cluster.clone()))
}
