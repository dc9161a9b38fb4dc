//! How tiers that store bytes (Redis) encode values.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::TierError;

/// Turns values into bytes and back, for tiers that store bytes.
///
/// [`Postcard`] is the default: compact and fast, for caches read only by
/// Rust services using the same type. [`Json`] (feature `json`) is for keys
/// shared with services in other languages.
pub trait Codec<V>: Send + Sync + 'static {
    /// Encodes `value`, appending its bytes to `out` (which may already hold
    /// a tier's header).
    ///
    /// # Errors
    ///
    /// [`TierError::Codec`] when the value cannot be represented.
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), TierError>;

    /// Decodes bytes written by [`Codec::encode`].
    ///
    /// # Errors
    ///
    /// [`TierError::Codec`] when the bytes are not a valid `V` (for example
    /// written by an older version of the type): the cache counts it as a miss.
    fn decode(&self, bytes: &[u8]) -> Result<V, TierError>;
}

/// The default codec: [postcard](https://docs.rs/postcard), a compact binary
/// serde format. Not self-describing: readers must use the same Rust type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl<V> Codec<V> for Postcard
where
    V: Serialize + DeserializeOwned,
{
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), TierError> {
        let buffer = std::mem::take(out);
        *out = postcard::to_extend(value, buffer).map_err(TierError::codec)?;
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, TierError> {
        postcard::from_bytes(bytes).map_err(TierError::codec)
    }
}

/// JSON, for values other languages read and write under the same keys.
///
/// ```no_run
/// # fn main() -> Result<(), perfkit_tiered_cache::ConfigError> {
/// use perfkit_tiered_cache::{Cache, Json, RedisTier};
///
/// // Values readable (and writable) by services in other languages under the
/// // same keys: plain JSON, no perfkit header.
/// let shared = RedisTier::builder("redis://127.0.0.1:6379")
///     .prefix("shared:prices:")
///     .codec(Json)
///     .plain_values()
///     .build()?;
/// let prices: Cache<serde_json::Value> = Cache::builder().name("prices").tier(shared).build()?;
/// # let _ = prices;
/// # Ok(()) }
/// ```
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl<V> Codec<V> for Json
where
    V: Serialize + DeserializeOwned,
{
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), TierError> {
        serde_json::to_writer(out, value).map_err(TierError::codec)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, TierError> {
        serde_json::from_slice(bytes).map_err(TierError::codec)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_decoding_failure_keeps_the_codec_error_as_its_source() {
        let error = Codec::<String>::decode(&Postcard, &[0xFF, 0xFF, 0xFF]).unwrap_err();
        assert!(error.is_value_error());
        let source = error.source().expect("the codec's own error");
        assert!(
            source.downcast_ref::<postcard::Error>().is_some(),
            "{source:?}"
        );
    }
}
