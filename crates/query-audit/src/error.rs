//! Errors.

/// A setting the auditor cannot work with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The name is empty or blank.
    #[error("the auditor's name is empty")]
    EmptyName,
    /// A count that must be at least 1 is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// The thread that logs the auditor's findings could not be started.
    #[error("the auditor's notice thread could not be started: {0}")]
    Thread(#[source] std::io::Error),
}
