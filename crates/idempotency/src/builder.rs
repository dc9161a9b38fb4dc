//! `IdempotencyLayerBuilder`: every setting of the layer, validated in `build()`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::header::{HeaderName, SET_COOKIE};
use http::request::Parts;

use perfkit_breaker::Breaker;

use crate::bloom::SeenFilter;
use crate::config::{Config, FailMode, OnDisconnect, ScopeFn};
use crate::error::ConfigError;
use crate::layer::IdempotencyLayer;
use crate::metrics::Metrics;
use crate::record::RecordPolicy;
use crate::renewal::Renewals;
use crate::store::IdempotencyStore;

/// Default for [`IdempotencyLayerBuilder::key_ttl`]: 24 h.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default for [`IdempotencyLayerBuilder::lock_ttl`]: 60 s.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(60);
/// Default for [`IdempotencyLayerBuilder::max_body_bytes`] and
/// [`IdempotencyLayerBuilder::max_recorded_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default for [`IdempotencyLayerBuilder::circuit_breaker`]: consecutive failures.
pub const DEFAULT_BREAKER_FAILURES: NonZeroU32 = match NonZeroU32::new(5) {
    Some(failures) => failures,
    None => NonZeroU32::MIN,
};
/// Default for [`IdempotencyLayerBuilder::circuit_breaker`]: cool-down.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);
/// Default for [`IdempotencyLayerBuilder::bloom`]: keys per key TTL.
pub const DEFAULT_BLOOM_KEYS: usize = 100_000;
/// Default for [`IdempotencyLayerBuilder::bloom`]: false-positive rate per generation.
pub const DEFAULT_BLOOM_FP_RATE: f64 = 0.01;

impl IdempotencyLayer {
    /// Starts a layer on `store` ([`MemoryStore`](crate::MemoryStore) for one
    /// process, [`RedisStore`](crate::RedisStore) for several). The builder
    /// requires a scope choice ([`scope`](IdempotencyLayerBuilder::scope) or
    /// [`unscoped`](IdempotencyLayerBuilder::unscoped)); everything else has a default.
    pub fn builder(store: impl IdempotencyStore) -> IdempotencyLayerBuilder {
        IdempotencyLayerBuilder::new(Arc::new(store))
    }
}

/// Builds an [`IdempotencyLayer`]; see [`IdempotencyLayer::builder`].
#[must_use = "a builder does nothing until `build()` is called"]
pub struct IdempotencyLayerBuilder {
    store: Arc<dyn IdempotencyStore>,
    scope: Option<Option<ScopeFn>>,
    methods: Vec<Method>,
    require_key: bool,
    fingerprint_headers: Vec<HeaderName>,
    max_body_bytes: usize,
    max_recorded_body_bytes: usize,
    key_ttl: Duration,
    lock_ttl: Duration,
    retry_after: Duration,
    deny_headers: Vec<HeaderName>,
    record_policy: RecordPolicy,
    fail_mode: FailMode,
    on_disconnect: OnDisconnect,
    bloom: Option<(usize, f64)>,
    breaker: Option<(NonZeroU32, Duration)>,
    renew_every: Option<Duration>,
    name: String,
}

impl IdempotencyLayerBuilder {
    pub(crate) fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            store,
            scope: None,
            methods: vec![Method::POST, Method::PATCH],
            require_key: true,
            fingerprint_headers: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_recorded_body_bytes: DEFAULT_MAX_BODY_BYTES,
            key_ttl: DEFAULT_KEY_TTL,
            lock_ttl: DEFAULT_LOCK_TTL,
            retry_after: Duration::from_secs(1),
            deny_headers: vec![SET_COOKIE],
            record_policy: RecordPolicy::default(),
            fail_mode: FailMode::Closed,
            on_disconnect: OnDisconnect::RunToCompletion,
            bloom: Some((DEFAULT_BLOOM_KEYS, DEFAULT_BLOOM_FP_RATE)),
            breaker: Some((DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_COOL_DOWN)),
            renew_every: None,
            name: "http".to_owned(),
        }
    }

    /// Keeps each caller's keys apart: records are stored under
    /// `(scope(request), key)`, so one tenant can neither replay another's
    /// response nor block another's request by guessing or reusing its key.
    /// Return the tenant, API key or authenticated subject; a request for
    /// which `scope` returns `None` is answered `400` (it cannot be protected
    /// safely). Run the layer after authentication, so that what `scope`
    /// reads is verified. Either this or [`unscoped`](Self::unscoped) is required.
    pub fn scope<F>(mut self, scope: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.scope = Some(Some(Arc::new(scope)));
        self
    }

    /// Stores records under the key alone. **Replay-leak risk:** any client
    /// that sends another client's key (guessed, logged, or shared) gets that
    /// client's recorded response, with whatever it contains, and can block
    /// its retries with `409`/`422`. Choose this only when keys are
    /// unguessable server-issued secrets or when one client owns the service.
    pub fn unscoped(mut self) -> Self {
        self.scope = Some(None);
        self
    }

    /// The methods the layer protects; requests with other methods pass
    /// through untouched. Default: `POST` and `PATCH` (`PUT` and `DELETE` are
    /// idempotent by definition).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Lets requests without an `Idempotency-Key` through unprotected instead
    /// of answering `400`. Default: the key is required.
    pub fn key_optional(mut self) -> Self {
        self.require_key = false;
        self
    }

    /// Request headers that are part of the fingerprint besides method, path,
    /// query, media type (`Content-Type`, always included) and body (e.g. an
    /// account header, or `Content-Encoding`). Default: none.
    pub fn fingerprint_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.fingerprint_headers = headers.into_iter().collect();
        self
    }

    /// The largest request body that is buffered and fingerprinted; a larger
    /// one is answered `413`. Default: 1 MiB.
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// The largest response body that is recorded. A larger response still
    /// reaches its client and the key stays completed (the handler ran once),
    /// but retries get `409` with the original status instead of a replay.
    /// Default: 1 MiB.
    pub fn max_recorded_body_bytes(mut self, limit: usize) -> Self {
        self.max_recorded_body_bytes = limit;
        self
    }

    /// How long a recorded response is replayed. Default: 24 h. Also the
    /// Bloom filter's rotation period.
    pub fn key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl;
        self
    }

    /// How long a claim holds the key while its handler runs. A handler that
    /// runs longer loses the claim: a retry may then run the handler again,
    /// and the late handler's response is not recorded (its completion is
    /// refused, counted and logged). Default: 60 s; set it above your
    /// slowest handler's timeout.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Keeps claims whose handlers run longer than `every` alive: one task
    /// per layer extends each claim in flight to the lock TTL every `every`
    /// (compare-and-set on the claim's token), so a handler slower than the
    /// lock TTL still runs once. `every` must be shorter than the lock TTL
    /// (a third of it leaves room for two missed renewals). Cost: nothing for
    /// requests that finish within `every`; one store round trip per period
    /// for each claim held longer, from one task (no timer per request).
    /// Renewals are counted (`perfkit_idempotency_renewals_total`), and a
    /// claim found lost (expired during a store outage) is counted
    /// (`perfkit_idempotency_lost_claims_total`) and logged. A crashed
    /// process renews nothing: its claims still expire after the lock TTL.
    /// Default: off.
    pub fn renew_claims(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// The `Retry-After` of `409` (in progress) and `503` (store
    /// unavailable) answers, rounded up to whole seconds. Default: 1 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// Response headers never recorded (so never replayed), besides the
    /// hop-by-hop headers and `Content-Length`. Default: `Set-Cookie`, so that
    /// a replay never hands out the first caller's session.
    pub fn deny_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.deny_headers = headers.into_iter().collect();
        self
    }

    /// Which responses are recorded. Default: [`RecordPolicy::default`],
    /// every status below 500 except those that mean the request never ran
    /// (400, 401, 403, 408, 413, 415, 422, 429); responses a handler marks
    /// [`NotExecuted`](crate::NotExecuted) are never recorded.
    pub fn record_policy(mut self, policy: RecordPolicy) -> Self {
        self.record_policy = policy;
        self
    }

    /// What happens when the store is unreachable. Default: [`FailMode::Closed`].
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// What happens to a running handler when the client disconnects.
    /// Default: [`OnDisconnect::RunToCompletion`].
    pub fn on_disconnect(mut self, behaviour: OnDisconnect) -> Self {
        self.on_disconnect = behaviour;
        self
    }

    /// Sizes the Bloom filter: `expected_keys` new keys per key TTL at
    /// `fp_rate` per generation. Default: 100,000 keys at 1 % (about 120 KB
    /// per generation, two generations).
    pub fn bloom(mut self, expected_keys: usize, fp_rate: f64) -> Self {
        self.bloom = Some((expected_keys, fp_rate));
        self
    }

    /// Drops the Bloom filter: every request claims first (one round trip, as
    /// with the filter), and retries take the claim path instead of a read.
    pub fn without_bloom(mut self) -> Self {
        self.bloom = None;
        self
    }

    /// After `failures` consecutive store failures (timeouts, connection
    /// errors), skip the store for `cool_down`, then let one call through
    /// as a probe; its success closes the breaker. While the breaker is
    /// open, requests get their `503` (fail-closed) or pass through
    /// (fail-open) in microseconds instead of one store timeout each. A
    /// probe whose request goes away before the store answers counts as
    /// failed (the breaker never sticks half-open). Exported as the gauge
    /// `perfkit_idempotency_store_breaker_open` and the counter
    /// `perfkit_idempotency_store_skipped_total`. Default: 5 failures, 5 s.
    pub fn circuit_breaker(mut self, failures: NonZeroU32, cool_down: Duration) -> Self {
        self.breaker = Some((failures, cool_down));
        self
    }

    /// No circuit breaker: every request tries the store and waits for its
    /// timeout while it is down.
    pub fn without_circuit_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Names the layer in metrics (`name` label) and spans (`idempotency.name`); `build` rejects
    /// an empty name. Default: `"http"`.
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// [`ConfigError`] when no scope choice was made, no method is
    /// protected, the lock TTL is zero, the key TTL is shorter than the lock
    /// TTL, or the Bloom filter parameters are out of range.
    pub fn build(self) -> Result<IdempotencyLayer, ConfigError> {
        let scope = self.scope.ok_or(ConfigError::NoScope)?;
        if self.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.methods.is_empty() {
            return Err(ConfigError::NoMethods);
        }
        if self.lock_ttl.is_zero() {
            return Err(ConfigError::ZeroLockTtl);
        }
        if self.key_ttl < self.lock_ttl {
            return Err(ConfigError::KeyTtlBelowLockTtl {
                key_ttl: self.key_ttl,
                lock_ttl: self.lock_ttl,
            });
        }
        let bloom = self
            .bloom
            .map(|(keys, fp_rate)| SeenFilter::new(keys, fp_rate, self.key_ttl))
            .transpose()?;
        if let Some(every) = self.renew_every
            && (every.is_zero() || every >= self.lock_ttl)
        {
            return Err(ConfigError::RenewalPeriod {
                every,
                lock_ttl: self.lock_ttl,
            });
        }
        if self
            .breaker
            .is_some_and(|(_, cool_down)| cool_down.is_zero())
        {
            return Err(ConfigError::ZeroCoolDown);
        }
        let metrics = Metrics::new(&self.name);
        metrics.store_breaker_open.set(0.0);
        Ok(IdempotencyLayer::from_config(Config {
            store: self.store,
            scope,
            methods: self.methods,
            require_key: self.require_key,
            fingerprint_headers: self.fingerprint_headers,
            max_body_bytes: self.max_body_bytes,
            max_recorded_body_bytes: self.max_recorded_body_bytes,
            key_ttl: self.key_ttl,
            lock_ttl: self.lock_ttl,
            retry_after: self.retry_after,
            deny_headers: self.deny_headers,
            record_policy: self.record_policy,
            fail_mode: self.fail_mode,
            on_disconnect: self.on_disconnect,
            bloom,
            breaker: self
                .breaker
                .map(|(failures, cool_down)| Breaker::new(failures, cool_down)),
            renewals: self.renew_every.map(Renewals::new),
            metrics,
            name: self.name,
        }))
    }
}

impl std::fmt::Debug for IdempotencyLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("methods", &self.methods)
            .field("scoped", &self.scope.as_ref().map(Option::is_some))
            .field("key_ttl", &self.key_ttl)
            .field("lock_ttl", &self.lock_ttl)
            .field("fail_mode", &self.fail_mode)
            .field("on_disconnect", &self.on_disconnect)
            .finish_non_exhaustive()
    }
}
