//! The cache's side of the invalidation bus: publishing what this instance
//! invalidates, and applying what the others publish to the first tier.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use metrics::{Gauge, Histogram, counter, gauge, histogram};
use tokio::sync::mpsc;

use crate::breaker::{Breaker, Transition};
use crate::bus::{BusEvent, InvalidationBus, Message, Target, unix_micros};
use crate::cache::Inner;
use crate::metrics::Local;

/// A cache's connection to its invalidation bus.
pub(crate) struct BusLink {
    pub(crate) bus: Arc<dyn InvalidationBus>,
    /// This instance, as its messages name it.
    pub(crate) instance: u64,
    sequence: AtomicU64,
    publish_timeout: Duration,
    /// Publishes fail fast while the bus is known to be unreachable.
    publish_breaker: Breaker,
    /// Strict mode's bound.
    strict: Option<Duration>,
    /// When the bus went down, in milliseconds since `started`, plus one;
    /// 0 while it is up.
    down_since: AtomicU64,
    started: Instant,
    /// Whether the bus has been up once (later `Up`s are reconnects).
    subscribed_once: std::sync::atomic::AtomicBool,
    task: OnceLock<tokio::task::AbortHandle>,
    pub(crate) metrics: BusMetrics,
}

/// Metrics of the invalidation bus, per cache.
pub(crate) struct BusMetrics {
    pub(crate) sent: Local,
    pub(crate) publish_errors: Local,
    /// Publishes not attempted because the publish breaker was open.
    pub(crate) publish_skipped: Local,
    publish_breaker_open: Gauge,
    pub(crate) received: Local,
    pub(crate) flushed_down: Local,
    pub(crate) flushed_up: Local,
    pub(crate) flushed_lagged: Local,
    pub(crate) reconnects: Local,
    delay: Histogram,
    up: Gauge,
}

impl BusMetrics {
    fn new(cache: &str) -> Self {
        let labels = [("cache", cache.to_owned())];
        let flushed = |reason: &str| {
            let labels = [("cache", cache.to_owned()), ("reason", reason.to_owned())];
            Local::new(counter!("perfkit_cache_l1_flushes_total", &labels))
        };
        Self {
            sent: Local::new(counter!("perfkit_cache_invalidations_sent_total", &labels)),
            publish_errors: Local::new(counter!(
                "perfkit_cache_invalidation_publish_errors_total",
                &labels
            )),
            publish_skipped: Local::new(counter!(
                "perfkit_cache_invalidation_publish_skipped_total",
                &labels
            )),
            publish_breaker_open: gauge!("perfkit_cache_publish_breaker_open", &labels),
            received: Local::new(counter!(
                "perfkit_cache_invalidations_received_total",
                &labels
            )),
            flushed_down: flushed("bus_down"),
            flushed_up: flushed("bus_up"),
            flushed_lagged: flushed("bus_lagged"),
            reconnects: Local::new(counter!("perfkit_cache_bus_reconnects_total", &labels)),
            delay: histogram!("perfkit_cache_invalidation_delay_seconds", &labels),
            up: gauge!("perfkit_cache_bus_up", &labels),
        }
    }

    /// First-tier flushes because the bus may have lost messages.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushed_down.get() + self.flushed_up.get() + self.flushed_lagged.get()
    }
}

impl BusLink {
    pub(crate) fn new(
        bus: Arc<dyn InvalidationBus>,
        cache: &str,
        strict: Option<Duration>,
        publish_timeout: Duration,
        breaker: (u32, Duration),
    ) -> Self {
        let metrics = BusMetrics::new(cache);
        metrics.up.set(0.0);
        metrics.publish_breaker_open.set(0.0);
        Self {
            bus,
            instance: random_instance(),
            sequence: AtomicU64::new(0),
            publish_timeout,
            publish_breaker: Breaker::new(breaker.0, breaker.1),
            strict,
            // Down until the first subscription.
            down_since: AtomicU64::new(1),
            started: Instant::now(),
            subscribed_once: std::sync::atomic::AtomicBool::new(false),
            task: OnceLock::new(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Strict mode: whether the first tier must not be served because the
    /// bus has been down for longer than the bound.
    #[inline]
    pub(crate) fn first_tier_suspect(&self) -> bool {
        let Some(bound) = self.strict else {
            return false;
        };
        let since = self.down_since.load(Ordering::Acquire);
        if since == 0 {
            return false;
        }
        let bound = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_sub(since - 1) >= bound
    }

    /// Starts applying `events` to the cache behind `inner`; the task ends
    /// when the cache is dropped.
    pub(crate) fn start<V: Send + Sync + 'static>(&self, inner: Weak<Inner<V>>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let events = self.bus.subscribe();
        let task = runtime.spawn(receive(inner, events));
        let _ = self.task.set(task.abort_handle());
    }
}

impl Drop for BusLink {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

fn random_instance() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

async fn receive<V: Send + Sync + 'static>(
    inner: Weak<Inner<V>>,
    mut events: mpsc::Receiver<BusEvent>,
) {
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.apply(event).await;
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Publishes an invalidation this instance has applied to its tiers.
    /// Failures are logged and counted: the caller's own change stands, and
    /// other instances keep their first-tier copy until its TTL (or until
    /// their own subscription reports the outage and they flush). Behind a
    /// circuit breaker like the remote tiers: while publishing is known to
    /// fail, a publish costs nothing and is counted as skipped.
    pub(crate) async fn publish(&self, target: Target) {
        let Some(link) = &self.bus else {
            return;
        };
        let Some(permit) = link.publish_breaker.allow() else {
            link.metrics.publish_skipped.increment();
            link.metrics.publish_errors.increment();
            tracing::debug!(cache.name = &*self.name, target = ?target, "invalidation not published: the bus is failing (circuit open)");
            return;
        };
        let sequence = link.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let message = Message::new(&self.name, link.instance, sequence, target);
        let outcome = tokio::time::timeout(link.publish_timeout, link.bus.publish(&message)).await;
        let published = matches!(outcome, Ok(Ok(())));
        match permit.record(published) {
            Some(Transition::Opened) => {
                link.metrics.publish_breaker_open.set(1.0);
                tracing::warn!(
                    cache.name = &*self.name,
                    "invalidation publishes failing: skipping them for the breaker's cool-down"
                );
            }
            Some(Transition::Closed) => {
                link.metrics.publish_breaker_open.set(0.0);
                tracing::info!(
                    cache.name = &*self.name,
                    "invalidation publishes succeed again"
                );
            }
            None => {}
        }
        match outcome {
            Ok(Ok(())) => link.metrics.sent.increment(),
            Ok(Err(error)) => {
                link.metrics.publish_errors.increment();
                tracing::error!(cache.name = &*self.name, %error, target = ?message.target, "invalidation not published: other instances keep their L1 copy until its TTL");
            }
            Err(_) => {
                link.metrics.publish_errors.increment();
                tracing::error!(cache.name = &*self.name, timeout = ?link.publish_timeout, target = ?message.target, "invalidation not published in time: other instances keep their L1 copy until its TTL");
            }
        }
    }

    /// Whether strict mode keeps the first tier out of lookups now.
    #[inline]
    pub(crate) fn first_tier_suspect(&self) -> bool {
        self.bus.as_ref().is_some_and(BusLink::first_tier_suspect)
    }

    async fn apply(&self, event: BusEvent) {
        let Some(link) = &self.bus else {
            return;
        };
        match event {
            BusEvent::Message(message) => {
                if message.cache != *self.name || message.origin == link.instance {
                    return;
                }
                self.apply_target(message.target).await;
                // Counted once applied: a test (or a dashboard) that sees the
                // count sees the change.
                link.metrics.received.increment();
                #[allow(clippy::cast_precision_loss)] // a delay in seconds, for a histogram
                let delay = unix_micros().saturating_sub(message.sent_at_micros) as f64 / 1e6;
                link.metrics.delay.record(delay);
            }
            BusEvent::Up => {
                // Whatever was published while we were not subscribed is lost.
                self.flush_first_tier().await;
                link.down_since.store(0, Ordering::Release);
                link.metrics.up.set(1.0);
                link.metrics.flushed_up.increment();
                if link.subscribed_once.swap(true, Ordering::Relaxed) {
                    link.metrics.reconnects.increment();
                    tracing::info!(
                        cache.name = &*self.name,
                        "invalidation bus back: L1 flushed"
                    );
                }
            }
            BusEvent::Down { reason } => {
                let since = link.now_ms().saturating_add(1);
                let _ =
                    link.down_since
                        .compare_exchange(0, since, Ordering::AcqRel, Ordering::Relaxed);
                link.metrics.up.set(0.0);
                self.flush_first_tier().await;
                link.metrics.flushed_down.increment();
                tracing::warn!(cache.name = &*self.name, %reason, "invalidation bus down: L1 flushed; invalidations from other instances may be missed until it is back");
            }
            BusEvent::Lagged(lost) => {
                self.flush_first_tier().await;
                link.metrics.flushed_lagged.increment();
                tracing::warn!(
                    cache.name = &*self.name,
                    lost,
                    "invalidation bus lagged: L1 flushed"
                );
            }
        }
    }

    /// Applies another instance's invalidation to the first tier only: the
    /// sender has already changed the shared tiers.
    async fn apply_target(&self, target: Target) {
        match target {
            Target::Key(key) => {
                // New callers must not join a load that began before.
                self.loads.forget(&key);
                self.lookups.forget(&key);
                self.delete_from_first(&key).await;
            }
            Target::Pattern(pattern) => {
                self.delete_matching_from_first(&pattern).await;
            }
            Target::Tag(tag) => {
                // Copies promoted from a tier that does not keep tags are
                // not in the first tier's tag index: flush instead.
                let untagged_copies = self.levels.iter().skip(1).any(|l| !l.tier.keeps_tags());
                if untagged_copies {
                    self.flush_first_tier().await;
                } else {
                    self.generations.bump_all();
                    if let Some(first) = self.levels.first() {
                        first.delete_tag(&tag).await;
                    }
                }
            }
            Target::Clear => self.flush_first_tier().await,
        }
    }

    /// Empties the first tier; loads and promotions that began earlier will
    /// not refill it.
    pub(crate) async fn flush_first_tier(&self) {
        self.generations.bump_all();
        self.forget_negatives();
        if let Some(first) = self.levels.first() {
            first.clear().await;
        }
    }
}
