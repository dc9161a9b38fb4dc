//! The built-in tiers.

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
