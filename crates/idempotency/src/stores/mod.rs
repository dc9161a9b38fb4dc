//! The built-in stores.

pub(crate) mod claims;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
