//! # perfkit-tiered-cache
//!
//! A cache over an ordered list of tiers: an in-process L1 ([`MemoryTier`],
//! on `quick_cache`'s or moka's map, see [`MemoryBackend`]; values held as
//! `Arc<V>`), a shared L2 in Redis ([`RedisTier`]), and
//! any [`Tier`] you write. Hits in a slower tier are promoted into the faster
//! ones with the TTL they have left; concurrent misses of one key run the
//! loader once; Redis calls are bounded by a timeout and a circuit breaker,
//! so an outage costs a miss, never a hang.
//!
//! ```
//! use std::time::Duration;
//! use perfkit_tiered_cache::{Cache, MemoryTier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Embedded default: memory only, no server needed.
//! let agents: Cache<String> = Cache::builder()
//!     .name("agents")
//!     .tier(MemoryTier::with_max_entries(10_000))
//!     .default_ttl(Duration::from_secs(60))
//!     .build()?;
//!
//! let name = agents
//!     .get_or_load("agent:42", || async { Ok::<_, std::io::Error>("Ada".to_owned()) })
//!     .await?;
//! assert_eq!(*name, "Ada");
//! assert_eq!(agents.get("agent:42").await.as_deref().map(String::as_str), Some("Ada"));
//! # Ok(())
//! # }
//! ```
//!
//! With Redis as L2 (the connection opens on first use, so this builds even
//! while Redis is down):
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # fn example() -> Result<(), perfkit_tiered_cache::ConfigError> {
//! use std::time::Duration;
//! use perfkit_tiered_cache::{Cache, MemoryTier, RedisTier};
//!
//! let cache: Cache<Vec<u8>> = Cache::builder()
//!     .name("agents")
//!     .tier(MemoryTier::builder().max_entries(10_000).max_ttl(Duration::from_secs(30)).build()?)
//!     .tier(RedisTier::builder("redis://127.0.0.1:6379").prefix("svc:agents:").build()?)
//!     .default_ttl(Duration::from_secs(300))
//!     .remote_timeout(Duration::from_millis(50))
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! Instances invalidate each other's L1 through an [`InvalidationBus`]:
//! [`RedisBus`] between processes, [`LocalBus`] within one (here, two
//! "instances" in one process):
//!
//! ```
//! use perfkit_tiered_cache::{Cache, LocalBus, MemoryTier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = LocalBus::new();
//! let instance = || {
//!     Cache::<String>::builder()
//!         .name("agents")
//!         .tier(MemoryTier::with_max_entries(1_000))
//!         .invalidation_bus(bus.clone())
//!         .build()
//! };
//! let (a, b) = (instance()?, instance()?);
//! # tokio::task::yield_now().await;
//! b.set("agent:42", "Ada".to_owned()).await;
//! a.invalidate("agent:42").await;
//! // B drops its copy as soon as it applies A's message.
//! while b.get("agent:42").await.is_some() {
//!     tokio::task::yield_now().await;
//! }
//! assert_eq!(b.stats().invalidations_received, 1);
//! # Ok(())
//! # }
//! ```
//!
//! See [`Cache`] for the guarantees (no stale sets among them), [`CacheBuilder`] for the policies (TTL
//! jitter, negative caching, eager refresh, serve-stale), [`Tier`] for writing a tier of
//! your own.
//!
//! ## Observability
//!
//! - Span `cache.get` (`DEBUG`) on every lookup that goes past L1, with
//!   `cache.hit`, `cache.tier` and, for loads, `cache.loaded`.
//! - Metrics labelled `name` (the cache's) and `tier`: `perfkit_cache_hits_total`,
//!   `perfkit_cache_misses_total`, `perfkit_cache_promotions_total`,
//!   `perfkit_cache_tier_errors_total`, `perfkit_cache_value_errors_total`
//!   (undecodable, unencodable or oversized values: misses that never open
//!   the breaker), `perfkit_cache_tier_skipped_total`,
//!   `perfkit_cache_breaker_open` (gauge); per cache:
//!   `perfkit_cache_loads_total`, `perfkit_cache_load_errors_total`,
//!   `perfkit_cache_load_timeouts_total`,
//!   `perfkit_cache_refreshes_total`, `perfkit_cache_negative_hits_total`,
//!   `perfkit_cache_stale_served_total`, `perfkit_cache_load_duration_seconds`.
//! - Invalidation: `perfkit_cache_invalidations_sent_total`,
//!   `perfkit_cache_invalidations_received_total`,
//!   `perfkit_cache_invalidation_publish_errors_total`,
//!   `perfkit_cache_invalidation_publish_skipped_total`,
//!   `perfkit_cache_publish_breaker_open` (gauge),
//!   `perfkit_cache_l1_flushes_total` (`reason`), `perfkit_cache_bus_reconnects_total`,
//!   `perfkit_cache_bus_up` (gauge), `perfkit_cache_invalidation_delay_seconds`.
//! - [`Cache::stats`]: the same counters, with the hit ratio per tier.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod bus;
mod cache;
mod clock;
mod codec;
mod engine;
mod error;
mod generations;
mod glob;
mod invalidation;
mod jitter;
mod level;
mod lookups;
mod metrics;
mod options;
#[cfg(feature = "redis")]
mod redis_bus;
mod stats;
mod sync;
mod tier;
mod tiers;

pub use crate::builder::CacheBuilder;
pub use crate::bus::{BusEvent, BusFuture, InvalidationBus, LocalBus, Message, Target};
pub use crate::cache::{Cache, WarmReport};
#[cfg(feature = "json")]
pub use crate::codec::Json;
pub use crate::codec::{Codec, Postcard};
pub use crate::error::{ConfigError, Error, LoadError, TierError};
pub use crate::options::{LoadOptions, SetOptions};
#[cfg(feature = "redis")]
pub use crate::redis_bus::{RedisBus, RedisBusBuilder};
pub use crate::stats::{Stats, TierStats};
pub use crate::tier::{Entry, MAX_TTL, Now, Tier, TierFuture, Version, Write};
pub use crate::tiers::memory::{MemoryBackend, MemoryTier, MemoryTierBuilder};
#[cfg(feature = "redis")]
pub use crate::tiers::redis::{RedisTier, RedisTierBuilder};

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(all(doctest, feature = "redis", feature = "json"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
