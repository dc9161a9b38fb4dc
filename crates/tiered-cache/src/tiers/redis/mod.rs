//! The shared tier: Redis, through an auto-reconnecting multiplexed connection.
//!
//! One concern per file: the builder, the fill script, the value header
//! (envelope), and the walks over the keyspace; the tier itself here.

mod builder;
mod envelope;
mod scan;
mod script;

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use perfkit_redis::{LazyConnection, run_once_more};
use redis::aio::ConnectionLike;

use crate::codec::{Codec, Postcard};
use crate::error::TierError;
use crate::tier::{Entry, MAX_TTL, Tier, TierFuture, Version, Write, capped_ttl};

pub use self::builder::RedisTierBuilder;
pub(crate) use self::scan::escape_glob;
use self::scan::{scan_page, unlink_scanned};
use self::script::FILL;

/// Keys deleted per command when clearing a prefix.
const CLEAR_BATCH: usize = 500;

/// The byte between the prefix and the name of every key the tier keeps for
/// itself (the epoch, tag sets). It never occurs in UTF-8 text, so no cache
/// key (a `&str`) can spell an internal key, and no internal key can match
/// what a pattern invalidation removes.
const INTERNAL: u8 = 0xFF;

/// What a lookup saw, for the fill that may follow.
struct Seen {
    /// The bytes under the key (a tombstone, a foreign value), or nothing.
    bytes: Option<Vec<u8>>,
    /// The tier's epoch.
    epoch: Option<Vec<u8>>,
    at: Instant,
}

/// A Redis tier (usually L2, shared by every instance of a service).
///
/// Every key carries the tier's prefix. Values are encoded with a [`Codec`]
/// ([`Postcard`] by default) behind a small header that records when the
/// entry expires, so a lookup is one plain `GET` and promotion still keeps
/// the TTL the entry has left (see [Value format](#value-format)). From a
/// URL ([`RedisTier::builder`]) the connection is a [`LazyConnection`]
/// (multiplexed, reconnecting), opened on first use: a cache can be built
/// while Redis is down, without a runtime; or it is one the service already
/// has ([`RedisTier::builder_with_connection`]). The cache wraps this tier in a timeout and a circuit
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

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
