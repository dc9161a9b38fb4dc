//! Configuration of a [`DedupLayer`].

use std::hash::Hash;
use std::sync::Arc;

use http::request::Parts;

use super::key::RequestKey;
use super::service::{DedupLayer, DefaultKeyFn};
use crate::error::ConfigError;

/// Default for [`DedupLayerBuilder::max_body_bytes`]: 1 MiB.
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_NAME: &str = "http";

/// Builds a [`DedupLayer`]: `DedupLayer::builder().name("api").build()?`.
///
/// ```
/// use perfkit_dedup::DedupLayer;
///
/// let layer = DedupLayer::builder()
///     .max_body_bytes(4 * 1024 * 1024) // share bodies up to 4 MiB
///     .name("reports")                 // metrics label and span field
///     .build()?;
/// # Ok::<(), perfkit_dedup::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct DedupLayerBuilder<K = RequestKey, F = DefaultKeyFn> {
    pub(super) key: F,
    pub(super) max_body_bytes: usize,
    pub(super) name: Arc<str>,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl DedupLayerBuilder {
    pub(super) fn new() -> Self {
        Self {
            key: RequestKey::for_safe_methods,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            name: Arc::from(DEFAULT_NAME),
            _key: std::marker::PhantomData,
        }
    }
}

impl<K, F> DedupLayerBuilder<K, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Replaces the key function: requests for which it returns the same
    /// `Some(key)` share a response, `None` passes a request through. It sees
    /// the request's head as [`http::request::Parts`] (the same view the
    /// idempotency layer's scope function gets). Start from
    /// [`RequestKey::of`] to keep the default's safety (credentials and
    /// content negotiation in the key).
    ///
    /// ```
    /// use http::request::Parts;
    /// use perfkit_dedup::{DedupLayer, RequestKey};
    ///
    /// // Also coalesce the idempotent, read-only `POST /search` of this API.
    /// let layer = DedupLayer::builder()
    ///     .key(|head: &Parts| {
    ///         (head.method == http::Method::GET || head.uri.path() == "/search")
    ///             .then(|| RequestKey::of(head))
    ///     })
    ///     .build()?;
    /// # Ok::<(), perfkit_dedup::ConfigError>(())
    /// ```
    ///
    /// A request body is never part of the key: only coalesce a method with a
    /// body when the URI alone identifies the result.
    pub fn key<K2, F2>(self, key: F2) -> DedupLayerBuilder<K2, F2>
    where
        K2: Hash + Eq + Clone + Send + Sync + 'static,
        F2: Fn(&Parts) -> Option<K2>,
    {
        DedupLayerBuilder {
            key,
            max_body_bytes: self.max_body_bytes,
            name: self.name,
            _key: std::marker::PhantomData,
        }
    }

    /// The largest response body that is buffered and shared. A larger one
    /// goes, streamed, to the request that was sent; each of the others is
    /// then sent to the inner service on its own. Default: 1 MiB. `0` shares
    /// only empty bodies.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Names the layer in metrics (`name` label) and spans (`dedup.name`).
    /// Default: `"http"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }

    /// Builds the layer. Metric handles are taken from the `metrics`
    /// recorder installed at this moment.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyName`] when the name is empty or blank.
    pub fn build(self) -> Result<DedupLayer<K, F>, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        Ok(DedupLayer::from_builder(self))
    }
}

impl<K, F> std::fmt::Debug for DedupLayerBuilder<K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupLayerBuilder")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
