//! Configuration of a [`Group`].

use std::marker::PhantomData;

use crate::error::ConfigError;
use crate::group::Group;

/// What happens to the work when every caller waiting on it has gone away
/// (their futures were dropped: a timeout, a client disconnect, an abort).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AbandonPolicy {
    /// Drop the work future at once: nobody wants the result. The default.
    #[default]
    Cancel,
    /// Hand the work to a task spawned on the current tokio runtime and let it
    /// finish; the outcome is discarded. A caller arriving meanwhile joins it.
    /// Use it when the work has side effects that must not stop half-way.
    /// Without a runtime at that moment the work is cancelled (and a warning logged).
    RunToCompletion,
}

/// The group's type parameters, without owning (or requiring `Send` of) any.
type Types<K, T, E> = PhantomData<fn() -> (K, T, E)>;

/// Builds a [`Group`]: `Group::builder().name("prices").build()`.
///
/// ```
/// use perfkit_dedup::{AbandonPolicy, Group};
///
/// // Writes must not stop half-way when every caller times out: finish them.
/// let writes: Group<u64, (), std::io::Error> = Group::builder()
///     .name("profile-writes")
///     .abandon_policy(AbandonPolicy::RunToCompletion)
///     .shards(64)
///     .build()?;
/// # Ok::<(), perfkit_dedup::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct GroupBuilder<K, T, E> {
    pub(crate) name: String,
    pub(crate) policy: AbandonPolicy,
    pub(crate) shards: Option<usize>,
    _types: Types<K, T, E>,
}

impl<K, T, E> Default for GroupBuilder<K, T, E> {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            policy: AbandonPolicy::default(),
            shards: None,
            _types: PhantomData,
        }
    }
}

impl<K, T, E> GroupBuilder<K, T, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Names the group in metrics (`name` label) and spans (`dedup.name`).
    /// Default: `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What happens to the work when every waiter has gone. Default:
    /// [`AbandonPolicy::Cancel`].
    pub fn abandon_policy(mut self, policy: AbandonPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Shards of the key map (a power of two greater than one). Default:
    /// dashmap's, four times the number of CPUs rounded to a power of two.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Builds the group. Metric handles are taken from the `metrics` recorder
    /// installed at this moment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the name is empty or the shard count is not a
    /// power of two greater than one.
    pub fn build(self) -> Result<Group<K, T, E>, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if let Some(shards) = self.shards
            && (shards < 2 || !shards.is_power_of_two())
        {
            return Err(ConfigError::Shards(shards));
        }
        Ok(Group::from_builder(self))
    }
}
