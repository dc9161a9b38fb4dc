//! The built-in stores.

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
