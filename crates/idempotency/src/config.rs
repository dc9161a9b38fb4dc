//! The configuration a built layer's services share, and the choices it
//! records (fail mode, disconnect policy, scope function).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::header::HeaderName;
use http::request::Parts;
use perfkit_breaker::{Breaker, Transition};

use crate::bloom::{BloomStats, SeenFilter};
use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::record::RecordPolicy;
use crate::renewal::Renewals;
use crate::store::{IdempotencyStore, StoreFuture};

pub(crate) type ScopeFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// What the layer does with a request when its store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Answer `503 Service Unavailable` with `Retry-After`, without running
    /// the handler: a mutation never runs unprotected. The default.
    #[default]
    Closed,
    /// Run the handler without protection (nothing is claimed or recorded): the
    /// service stays up, and a retry during the outage may run twice.
    Open,
}

/// What happens to a running handler when the client disconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnDisconnect {
    /// The request runs in the caller's task; if the client goes away first,
    /// it moves onto the runtime (a spawned task), runs to completion and is
    /// recorded, so the client's retry gets the replay instead of running the
    /// mutation a second time. The default.
    #[default]
    RunToCompletion,
    /// The handler is dropped with the request (tower's usual behaviour) and
    /// the claim is released, so a retry runs the handler again: choose this
    /// only for handlers that are safe to cut anywhere (e.g. one transaction).
    Cancel,
}

/// Everything a layer's services share.
pub(crate) struct Config {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    /// `None`: unscoped (an explicit choice in the builder).
    pub(crate) scope: Option<ScopeFn>,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_recorded_body_bytes: usize,
    pub(crate) key_ttl: Duration,
    pub(crate) lock_ttl: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) deny_headers: Vec<HeaderName>,
    pub(crate) record_policy: RecordPolicy,
    pub(crate) fail_mode: FailMode,
    pub(crate) on_disconnect: OnDisconnect,
    pub(crate) bloom: Option<SeenFilter>,
    /// Skips the store while it is known to be failing; `None`: disabled.
    pub(crate) breaker: Option<Breaker>,
    /// Extends claims in flight; `None`: off.
    pub(crate) renewals: Option<Renewals>,
    pub(crate) metrics: Metrics,
    pub(crate) name: String,
}

impl Config {
    /// One store call behind the circuit breaker: while the store is known
    /// to be failing, refused at once ([`StoreError::CircuitOpen`]); a probe
    /// dropped with this future counts as failed.
    pub(crate) async fn store_call<'a, T>(
        &'a self,
        call: impl FnOnce(&'a dyn IdempotencyStore) -> StoreFuture<'a, T>,
    ) -> Result<T, StoreError> {
        let Some(breaker) = &self.breaker else {
            return call(&*self.store).await;
        };
        let Some(permit) = breaker.allow() else {
            self.metrics.store_skipped.increment(1);
            return Err(StoreError::CircuitOpen);
        };
        let result = call(&*self.store).await;
        let failed = result.as_ref().is_err_and(StoreError::is_outage);
        match permit.record(!failed) {
            Some(Transition::Opened) => {
                self.metrics.store_breaker_open.set(1.0);
                tracing::warn!(idempotency.name = %self.name, "idempotency store failing: skipping it for the breaker's cool-down");
            }
            Some(Transition::Closed) => {
                self.metrics.store_breaker_open.set(0.0);
                tracing::info!(idempotency.name = %self.name, "idempotency store answers again");
            }
            None => {}
        }
        result
    }

    /// Reads the Bloom filter's stats and sets the gauges from them.
    pub(crate) fn publish_bloom_stats(&self) -> Option<BloomStats> {
        let stats = self.bloom.as_ref()?.stats();
        #[allow(clippy::cast_precision_loss)]
        self.metrics.bloom_bytes.set(stats.bytes as f64);
        self.metrics.bloom_fp_rate.set(stats.estimated_fp_rate);
        Some(stats)
    }
}
