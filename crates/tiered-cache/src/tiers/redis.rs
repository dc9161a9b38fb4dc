//! The shared tier: Redis, through an auto-reconnecting multiplexed connection.

use std::future::Future;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use perfkit_redis::{LazyConnection, run_once_more};
use redis::aio::ConnectionLike;

use crate::codec::{Codec, Postcard};
use crate::error::{ConfigError, TierError};
use crate::tier::{
    Entry, MAX_TTL, Tier, TierFuture, Version, Write, capped_ttl, ttl_setting_error,
};

/// Keys deleted per command when clearing a prefix.
const CLEAR_BATCH: usize = 500;

/// The byte between the prefix and the name of every key the tier keeps for
/// itself (the epoch, tag sets). It never occurs in UTF-8 text, so no cache
/// key (a `&str`) can spell an internal key, and no internal key can match
/// what a pattern invalidation removes.
const INTERNAL: u8 = 0xFF;

/// Default [`RedisTierBuilder::max_value_size`]: 1 MiB.
const DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;

/// What a lookup saw, for the fill that may follow.
struct Seen {
    /// The bytes under the key (a tombstone, a foreign value), or nothing.
    bytes: Option<Vec<u8>>,
    /// The tier's epoch.
    epoch: Option<Vec<u8>>,
    at: Instant,
}

/// The conditional fill: writes only if the key and the epoch are as the
/// lookup saw them, tags indexed before the value is visible.
///
/// `KEYS`: the key, the epoch, then tag sets. `ARGV`: key seen (`1`/`0`),
/// its bytes, epoch seen (`1`/`0`), its value, the new bytes, TTL in ms or `""`.
static FILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
local epoch = redis.call('GET', KEYS[2])
if ARGV[3] == '1' then
  if epoch ~= ARGV[4] then return 0 end
elseif epoch then
  return 0
end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if ARGV[6] == '' then
    redis.call('PERSIST', KEYS[i])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[6], 'NX')
    redis.call('PEXPIRE', KEYS[i], ARGV[6], 'GT')
  end
end
if ARGV[6] == '' then
  redis.call('SET', KEYS[1], ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
end
return 1
",
    )
});

/// A Redis tier (usually L2, shared by every instance of a service).
///
/// Every key carries the tier's prefix. Values are encoded with a [`Codec`]
/// ([`Postcard`] by default) behind a small header that records when the
/// entry expires, so a lookup is one plain `GET` and promotion still keeps
/// the TTL the entry has left (see [Value format](#value-format)). The connection is a redis-rs [`ConnectionManager`]
/// (multiplexed, reconnecting), opened on first use: a cache can be built
/// while Redis is down. The cache wraps this tier in a timeout and a circuit
/// breaker, so a Redis outage costs callers a miss, never a reconnect wait.
///
/// Tags: a value written with tags is listed in one Redis set per tag,
/// which lives as long as its longest-lived member (`PEXPIRE ... NX/GT`:
/// Redis 7.0 or later). Invalidating a tag walks that set with `SSCAN`, never
/// the keyspace.
///
/// # Key layout
///
/// A cache key `k` is stored at `<prefix>k`, exactly (programs in other
/// languages can share it). The tier's own bookkeeping lives under
/// `<prefix>` followed by the byte `0xFF`, which never occurs in UTF-8, so
/// no cache key can reach it: `<prefix>\xFFepoch` (moved by every tag,
/// pattern and clear invalidation; it expires twice the tombstone TTL after
/// its last move, so an idle prefix keeps nothing) and
/// `<prefix>\xFFtags:<tag>` (a tag's members). Pattern invalidation and
/// `clear` never touch these keys; `clear` removes the tag sets with the
/// values.
///
/// # Limits
///
/// - Values over [`RedisTierBuilder::max_value_size`] (1 MiB by default)
///   once encoded are never sent: a `set` of one removes the key instead
///   (so no older value survives it), a load's fill skips this tier, and
///   both count a value error (`perfkit_cache_value_errors_total`).
/// - A value that cannot be decoded (written by another version of the
///   type, or by another program) is a miss, counted as a value error, never
///   against the tier's circuit breaker; the next load's fill overwrites it.
///
/// # Value format
///
/// Each Redis value is a header followed by the codec's bytes (integers
/// big-endian):
///
/// | bytes | content |
/// | --- | --- |
/// | 0–1 | `pk` |
/// | 2 | format, `1` |
/// | 3 | kind: `v` for a value |
/// | 4–11 | expiry, Unix time in milliseconds; 0 for none |
/// | 12–19 | the TTL it was written with, in milliseconds; 0 for none |
/// | 20–21 | the number of tags, then each tag as a 2-byte length and UTF-8 |
///
/// The tags travel with the value, so that a copy promoted into another
/// instance's L1 is indexed by them and a tag invalidation received from the
/// invalidation bus reaches it.
///
/// A value without the header is not one of ours: a lookup counts it as a
/// tier error (a miss) and the next fill overwrites it. For keys shared with
/// programs that do not know the header (services in other languages, with
/// the [`Json`] codec), [`RedisTierBuilder::plain_values`] stores the codec's
/// bytes alone and reads the TTL with `PTTL` in the same round trip.
///
/// The remaining TTL of a hit is the stored expiry minus this instance's
/// clock, never more than the TTL the value was written with: instances
/// whose clocks disagree promote with TTLs off by that much (Redis itself
/// expires the key by its own clock).
///
/// [`Json`]: crate::Json
pub struct RedisTier<V, C = Postcard, R = LazyConnection> {
    name: String,
    prefix: String,
    connection: R,
    codec: C,
    max_ttl: Option<Duration>,
    plain: bool,
    tombstone_ttl: Duration,
    max_value_size: usize,
    tombstones: envelope::Tombstones,
    _values: PhantomData<fn() -> V>,
}

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
    /// the [`Json`](crate::Json) codec). A lookup is then `GET` and `PTTL`
    /// pipelined in one round trip instead of one `GET`. Default: off.
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
        }
    }

    /// Builds the tier; a connection made from a URL opens on first use.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an unparsable URL, an empty prefix or a zero duration.
    pub fn build<V>(self) -> Result<RedisTier<V, C, R>, ConfigError>
    where
        C: Codec<V>,
        V: Send + Sync + 'static,
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
        Ok(RedisTier {
            name: self.name,
            prefix: self.prefix,
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

/// A key under the tier's prefix, written into a command as one argument
/// without being built as a `String` first (the hit path's `GET`).
struct FullKey<'a> {
    prefix: &'a str,
    key: &'a str,
}

impl redis::ToRedisArgs for FullKey<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writes into the command's own buffer, which cannot fail.
        let _ = arg.write_all(self.prefix.as_bytes());
        let _ = arg.write_all(self.key.as_bytes());
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
}

impl<V, C, R> RedisTier<V, C, R>
where
    V: Send + Sync + 'static,
    C: Codec<V>,
    R: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `op` on the connection, once more if it did not reach a live
    /// one (see [`run_once_more`]): every command this tier sends is safe to
    /// repeat (a repeated fill finds its own write and reports a refusal,
    /// which only skips the faster tiers).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, TierError>
    where
        F: Fn(R) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        run_once_more(&self.connection, op)
            .await
            .map_err(TierError::backend)
    }

    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    /// One of the tier's own keys (see [`INTERNAL`]).
    fn internal_key(&self, name: &str, suffix: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + 1 + name.len() + suffix.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.push(INTERNAL);
        full.extend_from_slice(name.as_bytes());
        full.extend_from_slice(suffix.as_bytes());
        full
    }

    /// Whether `key` (a full Redis key under the prefix) is one of the tier's own.
    fn is_internal(&self, key: &[u8]) -> bool {
        key.get(self.prefix.len()) == Some(&INTERNAL)
    }

    /// Where the keys written with `tag` are listed.
    fn tag_key(&self, tag: &str) -> Vec<u8> {
        self.internal_key("tags:", tag)
    }

    fn cap(&self, ttl: Option<Duration>) -> Option<Duration> {
        capped_ttl(ttl, self.max_ttl)
    }

    /// The key whose value moves on every invalidation of many keys (tag,
    /// pattern, clear): a fill checks it has not moved since its lookup.
    fn epoch_key(&self) -> Vec<u8> {
        self.internal_key("epoch", "")
    }

    /// Moves the epoch, which then lives twice the tombstone TTL: a fill
    /// older than a tombstone never lands, so an epoch that has expired
    /// since a lookup can only refuse fills (absent ≠ what was seen), never
    /// let one through.
    async fn move_epoch(&self, connection: &mut R) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_epoch_move(&mut pipe);
        pipe.exec_async(connection).await
    }

    /// Adds the epoch's move to `pipe`: `INCR`, then the epoch lives twice
    /// the tombstone TTL.
    fn add_epoch_move(&self, pipe: &mut redis::Pipeline) {
        let epoch = self.epoch_key();
        let ttl_ms =
            i64::try_from(millis(self.tombstone_ttl).saturating_mul(2)).unwrap_or(i64::MAX);
        pipe.incr(&epoch, 1)
            .ignore()
            .pexpire(&epoch, ttl_ms)
            .ignore();
    }

    /// A write's bytes as stored, and its TTL in milliseconds (Redis
    /// rejects `PX 0`: a sub-millisecond TTL becomes 1 ms, though the cache
    /// never sends one). Over the size limit: [`TierError::TooLarge`].
    fn encode(&self, write: &Write<'_, V>) -> Result<(Vec<u8>, Option<u64>), TierError> {
        let ms = self
            .cap(write.ttl)
            .map(|ttl| millis(ttl.min(MAX_TTL)).max(1));
        let mut bytes = if self.plain {
            Vec::with_capacity(64)
        } else {
            envelope::header(ms, write.tags)?
        };
        self.codec.encode(write.value, &mut bytes)?;
        if bytes.len() > self.max_value_size {
            return Err(TierError::TooLarge {
                size: bytes.len(),
                max: self.max_value_size,
            });
        }
        Ok((bytes, ms))
    }

    /// A stored value read back: `None` for a tombstone.
    fn decode(&self, bytes: &[u8]) -> Result<Option<Entry<V>>, TierError> {
        let Some(stored) = envelope::open(bytes)? else {
            return Ok(None);
        };
        let value = self.codec.decode(stored.payload)?;
        Ok(Some(
            Entry::new(Arc::new(value), stored.expires_at)
                .with_written_ttl(stored.ttl)
                .with_tags(stored.tags),
        ))
    }

    /// A lookup of a value stored without header: `GET` and `PTTL` in one
    /// round trip.
    async fn get_plain(&self, key: &str) -> Result<Option<Entry<V>>, TierError> {
        let key = self.key(key);
        let (bytes, pttl): (Option<Vec<u8>>, i64) = self
            .run(|mut connection| {
                let key = &key;
                async move {
                    redis::pipe()
                        .get(key)
                        .pttl(key)
                        .query_async(&mut connection)
                        .await
                }
            })
            .await?;
        match bytes {
            Some(bytes) => self.plain_entry(&bytes, pttl).map(Some),
            None => Ok(None),
        }
    }

    /// Removes `key` (a `set` of a value this tier does not take): a
    /// tombstone, or for plain values a delete and an epoch move.
    async fn remove(&self, key: &str) -> Result<(), TierError> {
        if self.plain {
            // No tombstones among foreign readers: move the epoch instead,
            // which refuses every fill in flight (of any key).
            let mut pipe = redis::pipe();
            pipe.atomic().del(self.key(key)).ignore();
            self.add_epoch_move(&mut pipe);
            return self
                .run(|mut connection| {
                    let pipe = &pipe;
                    async move { pipe.exec_async(&mut connection).await }
                })
                .await;
        }
        // One write, which also refuses every fill that looked before it.
        let ms = millis(self.tombstone_ttl).max(1);
        let (key, tombstone) = (self.key(key), envelope::tombstone(&self.tombstones));
        self.run(|mut connection| {
            let (key, tombstone) = (&key, &tombstone);
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(tombstone)
                    .arg("PX")
                    .arg(ms)
                    .exec_async(&mut connection)
                    .await
            }
        })
        .await
    }

    /// A value stored without header, with the `PTTL` read beside it.
    fn plain_entry(&self, bytes: &[u8], pttl: i64) -> Result<Entry<V>, TierError> {
        let value = self.codec.decode(bytes)?;
        let now = Instant::now();
        let expires_at = match pttl {
            // No TTL.
            -1 => None,
            // Gone since the GET: expired now, so it is not promoted.
            ms => Some(
                now.checked_add(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
                    .unwrap_or(now),
            ),
        };
        Ok(Entry::new(Arc::new(value), expires_at))
    }
}

impl<V, C, R> Tier<V> for RedisTier<V, C, R>
where
    V: Send + Sync + 'static,
    C: Codec<V>,
    R: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<V>>> {
        if self.plain {
            return Box::pin(self.get_plain(key));
        }
        Box::pin(async move {
            let full = FullKey {
                prefix: &self.prefix,
                key,
            };
            let bytes: Option<Vec<u8>> = self
                .run(|mut connection| {
                    let full = &full;
                    async move {
                        redis::cmd("GET")
                            .arg(full)
                            .query_async(&mut connection)
                            .await
                    }
                })
                .await?;
            match bytes {
                Some(bytes) => self.decode(&bytes),
                None => Ok(None),
            }
        })
    }

    fn set<'a>(&'a self, write: &'a Write<'a, V>) -> TierFuture<'a, ()> {
        Box::pin(async move {
            let (bytes, ms) = match self.encode(write) {
                Ok(encoded) => encoded,
                Err(error) => {
                    // Not stored: no older value may outlive this write.
                    self.remove(write.key).await?;
                    return Err(error);
                }
            };
            let key = self.key(write.key);
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(bytes);
            if let Some(ms) = ms {
                set.arg("PX").arg(ms);
            }
            if write.tags.is_empty() {
                return self
                    .run(|mut connection| {
                        let set = &set;
                        async move { set.exec_async(&mut connection).await }
                    })
                    .await;
            }
            // Indexed before the value is visible: a tag invalidation never misses it.
            let mut pipe = redis::pipe();
            pipe.atomic();
            for tag in write.tags {
                // A tag's set of keys lives as long as its longest-lived member.
                let tag_key = self.tag_key(tag);
                pipe.cmd("SADD").arg(&tag_key).arg(&key).ignore();
                match ms {
                    Some(ms) => {
                        pipe.cmd("PEXPIRE").arg(&tag_key).arg(ms).arg("NX").ignore();
                        pipe.cmd("PEXPIRE").arg(&tag_key).arg(ms).arg("GT").ignore();
                    }
                    None => {
                        pipe.cmd("PERSIST").arg(&tag_key).ignore();
                    }
                }
            }
            pipe.add_command(set).ignore();
            self.run(|mut connection| {
                let pipe = &pipe;
                async move { pipe.exec_async(&mut connection).await }
            })
            .await
        })
    }

    fn lookup<'a>(&'a self, key: &'a str) -> TierFuture<'a, (Option<Entry<V>>, Version)>
    where
        V: 'a,
    {
        Box::pin(async move {
            let key = self.key(key);
            // The TTL is in the header, except for plain values.
            let mut pipe = redis::pipe();
            pipe.get(&key).get(self.epoch_key());
            if self.plain {
                pipe.pttl(&key);
            }
            let (bytes, epoch, pttl): (Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>) =
                if self.plain {
                    self.run(|mut connection| {
                        let pipe = &pipe;
                        async move { pipe.query_async(&mut connection).await }
                    })
                    .await?
                } else {
                    let (bytes, epoch): (Option<Vec<u8>>, Option<Vec<u8>>) = self
                        .run(|mut connection| {
                            let pipe = &pipe;
                            async move { pipe.query_async(&mut connection).await }
                        })
                        .await?;
                    (bytes, epoch, None)
                };
            let found = match (&bytes, pttl) {
                (Some(bytes), Some(pttl)) => self.plain_entry(bytes, pttl).map(Some),
                (Some(bytes), None) => self.decode(bytes),
                (None, _) => Ok(None),
            };
            let seen = Version::new(Seen {
                bytes,
                epoch,
                at: Instant::now(),
            });
            // A value we cannot read is a miss that the fill may replace.
            Ok(match found {
                Ok(found) => (found, seen),
                Err(error) => (None, seen.with_unreadable_value(error)),
            })
        })
    }

    fn fill<'a>(&'a self, write: &'a Write<'a, V>, seen: &'a Version) -> TierFuture<'a, bool> {
        Box::pin(async move {
            let Some(seen) = seen.get::<Seen>() else {
                // Not a version of ours: nothing to check against, so no write.
                return Ok(false);
            };
            // Older than a tombstone lives: an invalidation it missed may be gone.
            if seen.at.elapsed() >= self.tombstone_ttl {
                return Ok(false);
            }
            let (bytes, ms) = self.encode(write)?;
            let mut invocation = FILL.prepare_invoke();
            invocation.key(self.key(write.key)).key(self.epoch_key());
            for tag in write.tags {
                invocation.key(self.tag_key(tag));
            }
            invocation
                .arg(if seen.bytes.is_some() { "1" } else { "0" })
                .arg(seen.bytes.as_deref().unwrap_or_default())
                .arg(if seen.epoch.is_some() { "1" } else { "0" })
                .arg(seen.epoch.as_deref().unwrap_or_default())
                .arg(bytes)
                .arg(ms.map_or_else(String::new, |ms| ms.to_string()));
            let stored: i64 = self
                .run(|mut connection| {
                    let invocation = &invocation;
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(stored == 1)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
        Box::pin(self.remove(key))
    }

    fn delete_tag<'a>(&'a self, tag: &'a str) -> TierFuture<'a, Vec<String>> {
        Box::pin(async move {
            let tag_key = self.tag_key(tag);
            self.run(|mut connection| {
                let tag_key = &tag_key;
                async move {
                    self.move_epoch(&mut connection).await?;
                    let mut removed = Vec::new();
                    unlink_scanned(
                        &mut connection,
                        |cursor| {
                            let mut page = redis::cmd("SSCAN");
                            page.arg(tag_key).arg(cursor).arg("COUNT").arg(CLEAR_BATCH);
                            page
                        },
                        |_| true,
                        |keys| {
                            removed.extend(keys.iter().filter_map(|key| {
                                key.strip_prefix(self.prefix.as_bytes())
                                    .and_then(|key| std::str::from_utf8(key).ok())
                                    .map(str::to_owned)
                            }));
                        },
                    )
                    .await?;
                    redis::cmd("UNLINK")
                        .arg(tag_key)
                        .exec_async(&mut connection)
                        .await?;
                    Ok(removed)
                }
            })
            .await
        })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            let pattern = format!("{}*", escape_glob(&self.prefix));
            let epoch = self.epoch_key();
            self.run(|mut connection| {
                let (pattern, epoch) = (&pattern, &epoch);
                async move {
                    self.move_epoch(&mut connection).await?;
                    unlink_scanned(
                        &mut connection,
                        |cursor| scan_page(cursor, pattern),
                        // The epoch must only ever move forward (tag sets go).
                        |key| key != epoch.as_slice(),
                        |_| {},
                    )
                    .await
                }
            })
            .await
        })
    }

    fn delete_matching<'a>(&'a self, pattern: &'a str) -> TierFuture<'a, u64> {
        Box::pin(async move {
            let pattern = format!("{}{pattern}", escape_glob(&self.prefix));
            self.run(|mut connection| {
                let pattern = &pattern;
                async move {
                    self.move_epoch(&mut connection).await?;
                    let mut removed = 0_u64;
                    unlink_scanned(
                        &mut connection,
                        |cursor| scan_page(cursor, pattern),
                        // Tag sets and the epoch are the tier's own bookkeeping.
                        |key| !self.is_internal(key),
                        |keys| removed += keys.len() as u64,
                    )
                    .await?;
                    Ok(removed)
                }
            })
            .await
        })
    }

    fn keeps_tags(&self) -> bool {
        !self.plain
    }
}

/// Walks a cursor (`SCAN`, `SSCAN`) page by page and unlinks each page's
/// keys that `select` accepts: bounded memory and one round trip pair per
/// page, never the whole set at once. `seen` gets every page after it is
/// unlinked. Keys are bytes: the tier's own keys are not UTF-8.
async fn unlink_scanned(
    connection: &mut impl ConnectionLike,
    page: impl Fn(u64) -> redis::Cmd,
    select: impl Fn(&[u8]) -> bool,
    mut seen: impl FnMut(&[Vec<u8>]),
) -> redis::RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, mut keys): (u64, Vec<Vec<u8>>) = page(cursor).query_async(connection).await?;
        keys.retain(|key| select(key));
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .exec_async(connection)
                .await?;
            seen(&keys);
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The header in front of every value this tier stores (see
/// [`RedisTier`]'s value format).
mod envelope {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use crate::error::TierError;

    const MAGIC: [u8; 3] = [b'p', b'k', 1];
    const VALUE: u8 = b'v';
    const TOMBSTONE: u8 = b't';

    /// Makes tombstones that no other write (of this or another instance)
    /// can equal: a random seed and a counter.
    pub(super) struct Tombstones {
        seed: u64,
        next: std::sync::atomic::AtomicU64,
    }

    impl Tombstones {
        pub(super) fn new() -> Self {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(unix_ms().into());
            Self {
                seed: hasher.finish(),
                next: std::sync::atomic::AtomicU64::new(0),
            }
        }
    }

    /// A tombstone: the magic, `t`, then 16 unique bytes.
    pub(super) fn tombstone(tombstones: &Tombstones) -> Vec<u8> {
        let n = tombstones
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(20);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(TOMBSTONE);
        bytes.extend_from_slice(&tombstones.seed.to_be_bytes());
        bytes.extend_from_slice(&n.to_be_bytes());
        bytes
    }
    /// The fixed part: magic, kind, expiry, TTL, tag count.
    const FIXED: usize = 22;

    /// A value's header for a TTL of `ttl_ms` (`None`: no TTL) and `tags`,
    /// with room for a small encoded value after it.
    pub(super) fn header(ttl_ms: Option<u64>, tags: &[String]) -> Result<Vec<u8>, TierError> {
        let tag_bytes: usize = tags.iter().map(|tag| 2 + tag.len()).sum();
        let mut bytes = Vec::with_capacity(FIXED + tag_bytes + 64);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VALUE);
        let expires = ttl_ms.map_or(0, |ms| unix_ms().saturating_add(ms));
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes.extend_from_slice(&ttl_ms.unwrap_or(0).to_be_bytes());
        let too_many = || TierError::Codec("more than 65,535 tags, or a tag over 64 KiB".into());
        bytes.extend_from_slice(
            &u16::try_from(tags.len())
                .map_err(|_| too_many())?
                .to_be_bytes(),
        );
        for tag in tags {
            bytes.extend_from_slice(
                &u16::try_from(tag.len())
                    .map_err(|_| too_many())?
                    .to_be_bytes(),
            );
            bytes.extend_from_slice(tag.as_bytes());
        }
        Ok(bytes)
    }

    /// What a stored value says.
    pub(super) struct Stored<'a> {
        pub(super) expires_at: Option<Instant>,
        pub(super) ttl: Option<Duration>,
        pub(super) tags: Vec<String>,
        pub(super) payload: &'a [u8],
    }

    /// Reads a stored value's header; `None` for a tombstone.
    pub(super) fn open(bytes: &[u8]) -> Result<Option<Stored<'_>>, TierError> {
        let foreign = || TierError::Codec("not a perfkit cache value (no header)".into());
        if bytes.get(..3) == Some(&MAGIC[..]) && bytes.get(3) == Some(&TOMBSTONE) {
            return Ok(None);
        }
        let (header, mut rest) = bytes.split_at_checked(FIXED).ok_or_else(foreign)?;
        if header.get(..3) != Some(&MAGIC[..]) || header.get(3) != Some(&VALUE) {
            return Err(foreign());
        }
        let field = |at: usize| {
            header
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes)
        };
        let (expires, ttl_ms) = (field(4), field(12));
        let count = header
            .get(20..22)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let mut tags = Vec::new();
        for _ in 0..count {
            let (length, after) = rest.split_at_checked(2).ok_or_else(foreign)?;
            let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
            let (tag, after) = after.split_at_checked(length).ok_or_else(foreign)?;
            tags.push(String::from_utf8(tag.to_vec()).map_err(|_| foreign())?);
            rest = after;
        }
        let (expires_at, ttl) = if expires == 0 {
            (None, None)
        } else {
            // By this instance's clock, and never longer than the written TTL.
            let left = expires.saturating_sub(unix_ms()).min(ttl_ms);
            (
                Instant::now().checked_add(Duration::from_millis(left)),
                Some(Duration::from_millis(ttl_ms)),
            )
        };
        Ok(Some(Stored {
            expires_at,
            ttl,
            tags,
            payload: rest,
        }))
    }

    fn unix_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// One page of `SCAN cursor MATCH pattern COUNT <batch>`.
fn scan_page(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut page = redis::cmd("SCAN");
    page.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(CLEAR_BATCH);
    page
}

/// Escapes Redis glob metacharacters so a prefix matches only itself.
pub(crate) fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl<V, C, R> std::fmt::Debug for RedisTier<V, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}
