//! Errors.

/// A setting the monitor cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The pool's name is empty or blank.
    #[error("the pool's name is empty")]
    EmptyName,
}
