//! Where the tier's keys live: one layout for a single Redis, one for a
//! Redis Cluster.
//!
//! On one node a cache key `k` is `<prefix>k`, and the tier's own keys (the
//! epoch, tag sets) are `<prefix>\xFF…`. On a cluster every key a script or
//! `MULTI` touches together must share a hash slot, yet the values must
//! spread over every master: keys fall into N buckets (`CRC16(k) mod N`),
//! and each bucket carries a hash tag of four hex digits, `{hhhh}`. A value
//! is `<prefix>{hhhh}k`; its bucket's epoch `<prefix>\xFF{hhhh}epoch`; its
//! bucket's share of a tag `<prefix>\xFF{hhhh}tags:<tag>`. The hash tag is
//! the first `{…}` of each key (the prefix may hold no brace), so no cache
//! key or tag can move a key out of its bucket's slot.
//!
//! Bucket `b`'s tag is the first of `0000`, `0001`, … `ffff` whose slot
//! (`CRC16 mod 16384`) falls in the `b`-th of N equal ranges of slots: the
//! buckets spread evenly over the slots, so over masters that own equal
//! ranges (as `redis-cli --cluster create` assigns them).

use super::scan::escape_glob;

/// The byte between the prefix and the name of every key the tier keeps for
/// itself (the epoch, tag sets). It never occurs in UTF-8 text, so no cache
/// key (a `&str`) can spell an internal key, and no internal key can match
/// what a pattern invalidation removes.
const INTERNAL: u8 = 0xFF;

/// Bytes of a bucket's hash tag: `{`, four hex digits, `}`.
const TAG_LEN: usize = 6;

/// The slots of a Redis Cluster.
#[cfg(feature = "cluster")]
const SLOTS: u32 = 16_384;

/// The most buckets a cluster layout may have: every range of 4 slots still
/// holds the slot of some four-hex-digit tag.
pub(crate) const MAX_BUCKETS: u16 = 4_096;

/// A cluster layout's default number of buckets.
pub(crate) const DEFAULT_BUCKETS: u16 = 64;

/// Which bucket a key is in; always the one bucket on a single node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bucket(Option<u16>);

/// The tier's key layout.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
    /// `Some(n)` on a cluster: keys fall into `n` buckets.
    buckets: Option<u16>,
    /// Each bucket's hash tag, `{hhhh}`, on a cluster.
    tags: Box<[[u8; TAG_LEN]]>,
}

impl Keys {
    /// One node: `<prefix>k`.
    pub(super) fn single(prefix: String) -> Self {
        Self {
            prefix,
            buckets: None,
            tags: Box::default(),
        }
    }

    /// A cluster: `<prefix>{bbbb}k` in `buckets` buckets.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(super) fn cluster(prefix: String, buckets: u16) -> Self {
        let buckets = buckets.clamp(1, MAX_BUCKETS);
        Self {
            prefix,
            buckets: Some(buckets),
            tags: bucket_tags(buckets),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(super) fn is_cluster(&self) -> bool {
        self.buckets.is_some()
    }

    /// The bucket of cache key `key`.
    pub(super) fn bucket(&self, key: &str) -> Bucket {
        #[cfg(feature = "cluster")]
        return Bucket(self.buckets.map(|n| crc16(key.as_bytes()) % n));
        #[cfg(not(feature = "cluster"))]
        {
            let _ = key;
            Bucket(None)
        }
    }

    /// Every bucket: the one bucket on a single node.
    pub(super) fn every_bucket(&self) -> impl Iterator<Item = Bucket> + use<> {
        let n = self.buckets;
        let range = match n {
            Some(n) => 0..n,
            None => 0..1,
        };
        range.map(move |b| Bucket(n.map(|_| b)))
    }

    /// A cache key as stored, to write into a command without building it
    /// as a `String` first (the hit path's `GET`).
    pub(super) fn value<'a>(&'a self, key: &'a str) -> ValueKey<'a> {
        self.value_in(key, self.bucket(key))
    }

    /// [`value`](Self::value), for a caller that knows the key's bucket.
    pub(super) fn value_in<'a>(&'a self, key: &'a str, bucket: Bucket) -> ValueKey<'a> {
        ValueKey {
            prefix: &self.prefix,
            tag: self.hash_tag(bucket),
            key,
        }
    }

    /// `{hhhh}` for a cluster bucket.
    fn hash_tag(&self, bucket: Bucket) -> Option<&[u8; TAG_LEN]> {
        bucket.0.and_then(|b| self.tags.get(usize::from(b)))
    }

    /// One of the tier's own keys in `bucket`: `<prefix>\xFF[{bbbb}]<name><suffix>`.
    fn internal(&self, bucket: Bucket, name: &str, suffix: &str) -> Vec<u8> {
        let tag = self.hash_tag(bucket).map_or(&[][..], |tag| &tag[..]);
        let mut full =
            Vec::with_capacity(self.prefix.len() + 1 + tag.len() + name.len() + suffix.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.push(INTERNAL);
        full.extend_from_slice(tag);
        full.extend_from_slice(name.as_bytes());
        full.extend_from_slice(suffix.as_bytes());
        full
    }

    /// The key whose value moves on every invalidation of many keys (tag,
    /// pattern, clear): a fill in `bucket` checks it has not moved since its
    /// lookup.
    pub(super) fn epoch(&self, bucket: Bucket) -> Vec<u8> {
        self.internal(bucket, "epoch", "")
    }

    /// Where the keys of `bucket` written with `tag` are listed.
    pub(super) fn tag(&self, tag: &str, bucket: Bucket) -> Vec<u8> {
        self.internal(bucket, "tags:", tag)
    }

    /// Whether `key` (a full Redis key under the prefix) is one of the tier's own.
    pub(super) fn is_internal(&self, key: &[u8]) -> bool {
        key.get(self.prefix.len()) == Some(&INTERNAL)
    }

    /// Whether `key` is an epoch: a clear must only ever move them forward.
    pub(super) fn is_epoch(&self, key: &[u8]) -> bool {
        let Some(rest) = self.is_internal(key).then(|| &key[self.prefix.len() + 1..]) else {
            return false;
        };
        let rest = if self.is_cluster() {
            rest.get(TAG_LEN..).unwrap_or_default()
        } else {
            rest
        };
        rest == b"epoch"
    }

    /// The cache key of a stored value's full key.
    pub(super) fn cache_key<'k>(&self, full: &'k [u8]) -> Option<&'k str> {
        let rest = full.strip_prefix(self.prefix.as_bytes())?;
        let rest = if self.is_cluster() {
            rest.get(TAG_LEN..)?
        } else {
            rest
        };
        std::str::from_utf8(rest).ok()
    }

    /// The `SCAN MATCH` pattern of the values whose cache keys match the
    /// glob `pattern` (the tier's own keys never match it: after the
    /// prefix they hold `0xFF`, which neither `{` nor a UTF-8 pattern
    /// matches).
    pub(super) fn values_matching(&self, pattern: &str) -> String {
        let bucket = if self.is_cluster() { "{????}" } else { "" };
        format!("{}{bucket}{pattern}", escape_glob(&self.prefix))
    }

    /// The `SCAN MATCH` pattern of every key under the prefix.
    pub(super) fn everything(&self) -> String {
        format!("{}*", escape_glob(&self.prefix))
    }
}

/// Each of `buckets` buckets' hash tag: bucket `b`'s is the first of
/// `{0000}`, `{0001}`, … whose slot falls in the `b`-th of `buckets` equal
/// ranges of slots (see the module's documentation).
#[cfg(feature = "cluster")]
fn bucket_tags(buckets: u16) -> Box<[[u8; TAG_LEN]]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tags: Vec<Option<[u8; TAG_LEN]>> = vec![None; usize::from(buckets)];
    let mut missing = tags.len();
    for candidate in 0..=u16::MAX {
        let digit = |shift: u16| HEX[usize::from((candidate >> shift) & 0xF)];
        let tag = [b'{', digit(12), digit(8), digit(4), digit(0), b'}'];
        let slot = u32::from(crc16(&tag[1..5])) % SLOTS;
        // slot × buckets / 16384 < buckets ≤ 4096: fits a usize.
        let bucket = usize::try_from(slot * u32::from(buckets) / SLOTS).unwrap_or(0);
        if let Some(free @ None) = tags.get_mut(bucket) {
            *free = Some(tag);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    // Every range of 4 or more slots holds some candidate's slot (a test
    // checks every bucket count); a hole would only share a tag.
    tags.into_iter()
        .map(|tag| tag.unwrap_or(*b"{0000}"))
        .collect()
}

#[cfg(not(feature = "cluster"))]
fn bucket_tags(_: u16) -> Box<[[u8; TAG_LEN]]> {
    Box::default()
}

#[cfg(feature = "cluster")]
/// CRC16-XMODEM, the checksum Redis Cluster hashes keys with (so another
/// program can find a key's bucket with its client's own slot function on
/// the bare key: `CRC16(key) mod 16384`, then `mod N` when N divides 16384).
fn crc16(bytes: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(bytes)
}

/// A cache key as stored: the prefix, the bucket's hash tag on a cluster,
/// the key.
pub(super) struct ValueKey<'a> {
    prefix: &'a str,
    tag: Option<&'a [u8; TAG_LEN]>,
    key: &'a str,
}

impl std::fmt::Display for ValueKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.prefix)?;
        if let Some(tag) = self.tag {
            // Four hex digits in braces.
            f.write_str(std::str::from_utf8(tag).map_err(|_| std::fmt::Error)?)?;
        }
        f.write_str(self.key)
    }
}

impl ValueKey<'_> {
    pub(super) fn to_vec(&self) -> Vec<u8> {
        let tag = self.tag.map_or(&[][..], |tag| &tag[..]);
        let mut full = Vec::with_capacity(self.prefix.len() + tag.len() + self.key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(tag);
        full.extend_from_slice(self.key.as_bytes());
        full
    }
}

impl redis::ToRedisArgs for ValueKey<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writes into the command's own buffer, which cannot fail.
        let _ = arg.write_all(self.prefix.as_bytes());
        if let Some(tag) = self.tag {
            let _ = arg.write_all(tag);
        }
        let _ = arg.write_all(self.key.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "cluster")]
    #[test]
    fn a_cluster_key_carries_its_bucket_as_the_first_hash_tag() {
        let keys = Keys::cluster("svc:".to_owned(), 256);
        // A hostile key with a hash tag of its own stays in its bucket's slot.
        let full = keys.value("{x}y").to_vec();
        assert!(
            full.starts_with(b"svc:{"),
            "{}",
            String::from_utf8_lossy(&full)
        );
        assert_eq!(&full[10..], b"{x}y");
        assert_eq!(keys.cache_key(&full), Some("{x}y"));
        let bucket = keys.bucket("{x}y");
        assert_eq!(keys.epoch(bucket)[4], INTERNAL);
        assert_eq!(&keys.epoch(bucket)[5..11], &full[4..10]);
        assert!(keys.is_epoch(&keys.epoch(bucket)));
        assert!(!keys.is_epoch(&keys.tag("epoch", bucket)));
        assert!(keys.is_internal(&keys.tag("t", bucket)));
        assert_eq!(keys.every_bucket().count(), 256);
        assert_eq!(keys.values_matching("a*"), "svc:{????}a*");
    }

    #[test]
    fn one_node_keeps_the_plain_layout() {
        let keys = Keys::single("svc:".to_owned());
        assert_eq!(keys.value("k").to_vec(), b"svc:k");
        assert_eq!(keys.epoch(keys.bucket("k")), b"svc:\xFFepoch");
        assert_eq!(keys.tag("t", keys.bucket("k")), b"svc:\xFFtags:t");
        assert_eq!(keys.every_bucket().count(), 1);
        assert_eq!(keys.cache_key(b"svc:k"), Some("k"));
        assert!(keys.is_epoch(b"svc:\xFFepoch"));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn buckets_spread_evenly_over_the_slots_for_every_bucket_count() {
        // Every 4 consecutive slots hold some candidate tag's slot, so every
        // range of a bucket count up to 4096 (4 slots or more) has a tag.
        let mut hit = vec![false; SLOTS as usize];
        for candidate in 0..=u16::MAX {
            hit[(u32::from(crc16(format!("{candidate:04x}").as_bytes())) % SLOTS) as usize] = true;
        }
        assert!(hit.windows(4).all(|window| window.contains(&true)));
        for buckets in [1, 2, 3, 7, 64, 100, 256, 1_000, 4_095, MAX_BUCKETS] {
            for (b, tag) in bucket_tags(buckets).iter().enumerate() {
                let slot = u32::from(crc16(&tag[1..5])) % SLOTS;
                let range = slot * u32::from(buckets) / SLOTS;
                assert_eq!(
                    range as usize, b,
                    "{buckets} buckets: bucket {b} has {tag:?}"
                );
            }
        }
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn crc16_is_redis_cluster_s() {
        // CLUSTER KEYSLOT foo = 12182, bar = 5061 (Redis's own figures).
        assert_eq!(u32::from(crc16(b"foo")) % SLOTS, 12_182);
        assert_eq!(u32::from(crc16(b"bar")) % SLOTS, 5_061);
    }
}
