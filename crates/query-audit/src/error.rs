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
    /// A share outside 0 to 1.
    #[error("{0} must be between 0 and 1, not {1}")]
    Rate(&'static str, f64),
    /// EXPLAIN runs on a tokio task: build the auditor inside a runtime.
    #[error("an explainer needs a tokio runtime: build the auditor inside one")]
    NoRuntime,
    /// The thread that logs the auditor's findings could not be started.
    #[error("the auditor's notice thread could not be started: {0}")]
    Thread(#[source] std::io::Error),
}
