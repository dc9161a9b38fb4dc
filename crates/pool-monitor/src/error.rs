//! Errors.

/// A setting the monitor cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The pool's name is empty or blank.
    #[error("the pool's name is empty")]
    EmptyName,
    /// A duration or count that must not be zero is.
    #[error("{0} must not be zero")]
    Zero(&'static str),
    /// The monitor samples on a tokio task: build it inside a runtime.
    #[error("the monitor needs a tokio runtime: build it inside one")]
    NoRuntime,
}
