//! The header in front of every value this tier stores (see
//! [`RedisTier`](super::RedisTier)'s value format).

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
