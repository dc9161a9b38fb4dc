//! The shared tier: Redis, through an auto-reconnecting multiplexed connection.
//!
//! One concern per file: the builder, the fill script, the value header
//! (envelope), and the walks over the keyspace; the tier itself here.

mod builder;
mod envelope;
mod keys;
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
use self::keys::{Bucket, Keys};
#[cfg(test)]
pub(crate) use self::scan::escape_glob;
use self::scan::{scan_page, sscan_page, unlink_scanned};
use self::script::{DELETE_TAG, FILL};

/// Keys deleted per command when clearing a prefix.
const CLEAR_BATCH: usize = 500;

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
/// # Redis Cluster
///
/// With the feature `cluster`, [`RedisTier::cluster_builder`] (or
/// [`RedisTier::builder_with_connection`] given redis-rs's cluster
/// connection) lays keys out so that every script and `MULTI` touches one
/// hash slot while the values spread over every master: a cache key `k` is
/// in bucket `CRC16(k) mod N` ([`RedisTierBuilder::cluster_buckets`], 64 by
/// default), stored at `<prefix>{hhhh}k` where `{hhhh}` is the bucket's
/// hash tag (four hex digits, chosen so the buckets spread evenly over the
/// slots); the bucket's epoch is `<prefix>\xFF{hhhh}epoch` and its share of
/// a tag `<prefix>\xFF{hhhh}tags:<tag>`. A fill checks its bucket's epoch;
/// a tag, pattern or clear invalidation moves every bucket's epoch before
/// it deletes anything of that bucket; pattern invalidation and `clear`
/// walk each master with `SCAN`. [`RedisTier::stored_key`] says where a key
/// is. The crate's README has the costs per operation and what a failover
/// does.
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
    keys: Keys,
    /// On a cluster: the connection that reaches each master, for `SCAN`.
    #[cfg(feature = "cluster")]
    nodes: Option<LazyConnection>,
    connection: R,
    codec: C,
    max_ttl: Option<Duration>,
    plain: bool,
    tombstone_ttl: Duration,
    max_value_size: usize,
    tombstones: envelope::Tombstones,
    _values: PhantomData<fn() -> V>,
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
        self.keys.prefix()
    }

    /// The Redis key cache key `key` is stored at: the prefix and the key,
    /// with its bucket's hash tag between them on a cluster (see
    /// [Key layout](#key-layout)).
    #[must_use]
    pub fn stored_key(&self, key: &str) -> String {
        self.keys.value(key).to_string()
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

    /// A cache key as stored.
    fn key(&self, key: &str) -> Vec<u8> {
        self.keys.value(key).to_vec()
    }

    fn cap(&self, ttl: Option<Duration>) -> Option<Duration> {
        capped_ttl(ttl, self.max_ttl)
    }

    /// Moves `bucket`'s epoch, which then lives twice the tombstone TTL: a
    /// fill older than a tombstone never lands, so an epoch that has expired
    /// since a lookup can only refuse fills (absent ≠ what was seen), never
    /// let one through.
    async fn move_epoch(&self, connection: &mut R, bucket: Bucket) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_epoch_move(&mut pipe, bucket);
        pipe.exec_async(connection).await
    }

    /// Moves every bucket's epoch (the one epoch on a single node), all
    /// buckets at once: each move is its own slot's.
    async fn move_every_epoch(&self, connection: &R) -> redis::RedisResult<()> {
        futures_util::future::try_join_all(self.keys.every_bucket().map(|bucket| {
            let mut connection = connection.clone();
            async move { self.move_epoch(&mut connection, bucket).await }
        }))
        .await
        .map(drop)
    }

    /// How long an epoch lives after its last move: twice the tombstone TTL.
    fn epoch_ttl_ms(&self) -> i64 {
        i64::try_from(millis(self.tombstone_ttl).saturating_mul(2)).unwrap_or(i64::MAX)
    }

    /// Adds the move of `bucket`'s epoch to `pipe`: `INCR`, then the epoch
    /// lives twice the tombstone TTL.
    fn add_epoch_move(&self, pipe: &mut redis::Pipeline, bucket: Bucket) {
        let epoch = self.keys.epoch(bucket);
        let ttl_ms = self.epoch_ttl_ms();
        pipe.incr(&epoch, 1)
            .ignore()
            .pexpire(&epoch, ttl_ms)
            .ignore();
    }

    /// Removes the keys of `bucket` listed under `tag`, then the list; moves
    /// the bucket's epoch first, in the same script as the first page (one
    /// round trip for a bucket whose share of the tag fits in a page).
    /// Returns the cache keys removed.
    async fn delete_tag_in(
        &self,
        connection: &mut R,
        tag: &str,
        bucket: Bucket,
    ) -> redis::RedisResult<Vec<String>> {
        let tag_key = self.keys.tag(tag, bucket);
        let (cursor, first): (u64, Vec<Vec<u8>>) = DELETE_TAG
            .key(self.keys.epoch(bucket))
            .key(&tag_key)
            .arg(self.epoch_ttl_ms())
            .arg(CLEAR_BATCH)
            .invoke_async(connection)
            .await?;
        let mut removed = Vec::new();
        let mut seen = |keys: &[Vec<u8>]| {
            removed.extend(
                keys.iter()
                    .filter_map(|key| self.keys.cache_key(key).map(str::to_owned)),
            );
        };
        seen(&first);
        if cursor == 0 {
            return Ok(removed);
        }
        // A large share: the rest page by page (the set stays whole until
        // the end, so the cursor holds).
        let scanner = connection.clone();
        unlink_scanned(
            connection,
            cursor,
            |page| {
                let (mut scanner, page) = (scanner.clone(), sscan_page(&tag_key, page));
                async move { page.query_async(&mut scanner).await }
            },
            |_| true,
            seen,
        )
        .await?;
        redis::cmd("UNLINK")
            .arg(&tag_key)
            .exec_async(connection)
            .await?;
        Ok(removed)
    }

    /// Unlinks the keys matching the `SCAN` pattern that `select` accepts,
    /// page by page: on a cluster, each master's keys in turn (a `SCAN`
    /// cursor is one node's), every `UNLINK` routed by slot.
    async fn unlink_matching(
        &self,
        connection: &mut R,
        pattern: &str,
        select: impl Fn(&[u8]) -> bool,
        seen: impl FnMut(&[Vec<u8>]),
    ) -> redis::RedisResult<()> {
        #[cfg(feature = "cluster")]
        if let Some(nodes) = &self.nodes {
            let mut seen = seen;
            for node in nodes.primaries().await? {
                unlink_scanned(
                    connection,
                    0,
                    |cursor| {
                        let (node, page) = (&node, scan_page(cursor, pattern));
                        async move {
                            let page = nodes.on_node(node, &page).await?;
                            redis::from_redis_value(page).map_err(redis::RedisError::from)
                        }
                    },
                    &select,
                    &mut seen,
                )
                .await?;
            }
            return Ok(());
        }
        let scanner = connection.clone();
        unlink_scanned(
            connection,
            0,
            |cursor| {
                let (mut scanner, page) = (scanner.clone(), scan_page(cursor, pattern));
                async move { page.query_async(&mut scanner).await }
            },
            select,
            seen,
        )
        .await
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
            self.add_epoch_move(&mut pipe, self.keys.bucket(key));
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
            let full = self.keys.value(key);
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
            let bucket = self.keys.bucket(write.key);
            let key = self.keys.value_in(write.key, bucket).to_vec();
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
                let tag_key = self.keys.tag(tag, bucket);
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
            let bucket = self.keys.bucket(key);
            let key = self.keys.value_in(key, bucket).to_vec();
            // The value and its bucket's epoch in one command: on a cluster
            // whose slot is moving, Redis answers TRYAGAIN while the two are
            // on different nodes, where two GETs could read one of them on
            // the wrong node as missing. The TTL is in the header, except
            // for plain values.
            let mut mget = redis::cmd("MGET");
            mget.arg(&key).arg(self.keys.epoch(bucket));
            type Found = (Option<Vec<u8>>, Option<Vec<u8>>);
            let ((bytes, epoch), pttl): (Found, Option<i64>) = if self.plain {
                let mut pipe = redis::pipe();
                pipe.add_command(mget).pttl(&key);
                self.run(|mut connection| {
                    let pipe = &pipe;
                    async move { pipe.query_async(&mut connection).await }
                })
                .await?
            } else {
                let found = self
                    .run(|mut connection| {
                        let mget = &mget;
                        async move { mget.query_async(&mut connection).await }
                    })
                    .await?;
                (found, None)
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
            // Every key in the write's bucket: one slot on a cluster.
            let bucket = self.keys.bucket(write.key);
            let mut invocation = FILL.prepare_invoke();
            invocation
                .key(self.keys.value_in(write.key, bucket))
                .key(self.keys.epoch(bucket));
            for tag in write.tags {
                invocation.key(self.keys.tag(tag, bucket));
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
            self.run(|connection| async move {
                // Bucket by bucket (the one bucket on a single node), all at
                // once: the epoch moves before its bucket's share of the tag
                // is read, so a fill that looked before cannot land after.
                let removed =
                    futures_util::future::try_join_all(self.keys.every_bucket().map(|bucket| {
                        let mut connection = connection.clone();
                        async move { self.delete_tag_in(&mut connection, tag, bucket).await }
                    }))
                    .await?;
                Ok(removed.into_iter().flatten().collect())
            })
            .await
        })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            let pattern = self.keys.everything();
            self.run(|mut connection| {
                let pattern = &pattern;
                async move {
                    self.move_every_epoch(&connection).await?;
                    self.unlink_matching(
                        &mut connection,
                        pattern,
                        // The epochs must only ever move forward (tag sets go).
                        |key| !self.keys.is_epoch(key),
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
            let pattern = self.keys.values_matching(pattern);
            self.run(|mut connection| {
                let pattern = &pattern;
                async move {
                    self.move_every_epoch(&connection).await?;
                    let mut removed = 0_u64;
                    self.unlink_matching(
                        &mut connection,
                        pattern,
                        // Tag sets and epochs are the tier's own bookkeeping.
                        |key| !self.keys.is_internal(key),
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
            .field("prefix", &self.keys.prefix())
            .field("cluster", &self.keys.is_cluster())
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}
