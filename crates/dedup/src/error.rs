//! What a caller gets when the shared work does not produce a value.

use std::sync::Arc;

/// Why a [`Group::run`](crate::Group::run) call has no value.
///
/// Every caller that shared the flight gets a clone of the same error: the
/// work's own error is behind an [`Arc`], never collapsed into `None`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The work ran and returned this error. It is shared with every waiter and
    /// not remembered: the next call for the key runs the work again.
    #[error("the shared work failed: {0}")]
    Failed(#[source] Arc<E>),
    /// The work panicked with this message. Every waiter gets this error, none
    /// hangs, and the next call for the key runs the work again.
    #[error("the shared work panicked: {0}")]
    Panicked(Arc<str>),
}

impl<E> Error<E> {
    /// The work's own error, when it returned one.
    #[must_use]
    pub fn failure(&self) -> Option<&Arc<E>> {
        match self {
            Self::Failed(e) => Some(e),
            Self::Panicked(_) => None,
        }
    }

    /// Whether the work panicked.
    #[must_use]
    pub fn is_panic(&self) -> bool {
        matches!(self, Self::Panicked(_))
    }
}

// By hand: a derive would require `E: Clone`, and sharing is what the `Arc` is for.
impl<E> Clone for Error<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Failed(e) => Self::Failed(Arc::clone(e)),
            Self::Panicked(m) => Self::Panicked(Arc::clone(m)),
        }
    }
}

/// A [`GroupBuilder`](crate::GroupBuilder) or `DedupLayerBuilder` setting
/// that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The shard count must be a power of two greater than one.
    #[error("shards must be a power of two greater than 1, got {0}")]
    Shards(usize),
    /// The name labels metrics and spans, so it cannot be empty or blank.
    #[error("the name must not be empty or blank")]
    EmptyName,
}

/// Turns a panic payload into the message waiters see.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("a panic with a non-string payload")
    }
}
