//! Claim renewal: one task per layer extends every claim in flight, so a
//! handler slower than the lock TTL keeps its key.
//!
//! The state machine: a request that acquires its claim [`Renewals::hold`]s
//! it (an entry in `claims`, and the task started if none runs); the
//! [`Held`] guard removes the entry when the claim is settled or the request
//! dropped, *before* the claim is completed or released, so the task never
//! renews a claim its owner is done with. Every `every`, the task renews
//! each entry by compare-and-set on its token ([`IdempotencyStore::renew`]):
//! `true` extends the lock to the lock TTL from now; `false` means the claim
//! was lost (it expired in a store outage, or was removed) and is counted,
//! unless its owner deregistered it meanwhile (it settled the claim while
//! the renewal was in flight). The task holds the layer weakly: it ends
//! with the layer, and a task that died with its runtime is started again
//! by the next hold.
//!
//! Cost: nothing for requests shorter than the period; one store call per
//! period for each claim held longer, from one task, never a timer per
//! request.
//!
//! [`IdempotencyStore::renew`]: crate::IdempotencyStore::renew

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use dashmap::DashMap;

use crate::config::Config;
use crate::key::StoreKey;
use crate::metrics::count_failed;
use crate::store::ClaimToken;

/// The claims in flight of one layer, and the task that renews them.
pub(crate) struct Renewals {
    every: Duration,
    /// Held claims by registration id; set by `hold`, removed by `Held`'s drop
    /// or by the task when a renewal finds the claim lost.
    claims: DashMap<u64, (StoreKey, ClaimToken), foldhash::fast::RandomState>,
    next: AtomicU64,
    /// The renewing task, while one runs.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// Keeps a claim registered for renewal until dropped.
pub(crate) struct Held {
    config: Arc<Config>,
    id: u64,
}

impl Renewals {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            claims: DashMap::default(),
            next: AtomicU64::new(0),
            task: Mutex::new(None),
        }
    }

    /// Registers a claim for renewal (and starts the task if none runs).
    pub(crate) fn hold(config: &Arc<Config>, key: &StoreKey, token: &ClaimToken) -> Option<Held> {
        let renewals = config.renewals.as_ref()?;
        let id = renewals.next.fetch_add(1, Ordering::Relaxed);
        renewals.claims.insert(id, (key.clone(), token.clone()));
        renewals.ensure_task(config);
        Some(Held {
            config: Arc::clone(config),
            id,
        })
    }

    fn ensure_task(&self, config: &Arc<Config>) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *task = Some(
            runtime
                .spawn(renew_loop(Arc::downgrade(config), self.every))
                .abort_handle(),
        );
    }
}

impl Drop for Renewals {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(renewals) = &self.config.renewals {
            renewals.claims.remove(&self.id);
        }
    }
}

async fn renew_loop(config: Weak<Config>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(config) = config.upgrade() else {
            return;
        };
        let Some(renewals) = &config.renewals else {
            return;
        };
        let held: Vec<(u64, StoreKey, ClaimToken)> = renewals
            .claims
            .iter()
            .map(|entry| {
                (
                    *entry.key(),
                    entry.value().0.clone(),
                    entry.value().1.clone(),
                )
            })
            .collect();
        for (id, key, token) in held {
            let renewed = config
                .store_call(|store| store.renew(&key, &token, config.lock_ttl))
                .await;
            match renewed {
                Ok(true) => config.metrics.renewals.increment(1),
                // Settled by its owner meanwhile: nothing was lost.
                Ok(false) if renewals.claims.remove(&id).is_none() => {}
                Ok(false) => {
                    config.metrics.lost_claims.increment(1);
                    tracing::error!(
                        ?key,
                        lock_ttl = ?config.lock_ttl,
                        "a claim in flight was lost before its handler finished (expired during a store outage, or removed): a retry may run the handler again"
                    );
                }
                Err(error) => {
                    count_failed(&config.metrics.store_errors.renew, &error);
                    tracing::warn!(?key, %error, "renewing a claim failed; it is tried again next period");
                }
            }
        }
    }
}
