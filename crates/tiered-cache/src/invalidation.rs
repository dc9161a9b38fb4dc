//! The cache's side of the invalidation bus: publishing what this instance
//! invalidates, and applying what the others publish to the first tier.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use metrics::{Gauge, Histogram, counter, gauge, histogram};
use tokio::sync::mpsc;

use crate::bus::{BusEvent, InvalidationBus, Message, Target, unix_micros};
use crate::engine::Inner;
use crate::metrics::Local;
use perfkit_breaker::{Breaker, Transition};

/// Subscribes a link again, for the cache it belongs to.
type Resubscribe = Box<dyn Fn(&BusLink) + Send + Sync>;

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
    /// Whether the subscription is down (not yet up, lost, or its task gone).
    down: AtomicBool,
    /// The last time the subscription was known to deliver, in milliseconds
    /// since `started`: when it came up, when a health check it sent was
    /// answered (every message published before that check had arrived),
    /// or, for buses that send no checks, when it was reported down.
    alive_at: AtomicU64,
    /// Whether the bus reports health checks ([`BusEvent::Alive`]): strict
    /// mode then counts from the last one even while the bus says it is up.
    heartbeats: AtomicBool,
    started: Instant,
    /// Whether the bus has been up once (later `Up`s are reconnects).
    subscribed_once: AtomicBool,
    /// The task applying events, while there is one.
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The subscription's task ended without the cache being dropped (the
    /// runtime that ran it shut down): the next call from a runtime
    /// subscribes again.
    dead: AtomicBool,
    /// Subscribes again, for the cache this link belongs to.
    resubscribe: OnceLock<Resubscribe>,
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
        let labels = [("name", cache.to_owned())];
        let flushed = |reason: &str| {
            let labels = [("name", cache.to_owned()), ("reason", reason.to_owned())];
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
    /// Whether the subscription is up now.
    pub(crate) fn is_up(&self) -> bool {
        !self.down.load(Ordering::Acquire)
    }

    pub(crate) fn new(
        bus: Arc<dyn InvalidationBus>,
        cache: &str,
        strict: Option<Duration>,
        publish_timeout: Duration,
        breaker: (std::num::NonZeroU32, Duration),
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
            // Down until the first subscription; strict mode counts from now.
            down: AtomicBool::new(true),
            alive_at: AtomicU64::new(0),
            heartbeats: AtomicBool::new(false),
            started: Instant::now(),
            subscribed_once: AtomicBool::new(false),
            task: Mutex::new(None),
            dead: AtomicBool::new(false),
            resubscribe: OnceLock::new(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn ms_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// Strict mode: whether the first tier must not be served because the
    /// bus has not been known to deliver for the bound (down that long, or,
    /// with health checks, no check answered that long).
    #[inline]
    pub(crate) fn first_tier_suspect(&self) -> bool {
        let Some(bound) = self.strict else {
            return false;
        };
        if !self.down.load(Ordering::Acquire) && !self.heartbeats.load(Ordering::Relaxed) {
            return false;
        }
        let bound = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        self.now_ms()
            .saturating_sub(self.alive_at.load(Ordering::Acquire))
            >= bound
    }

    /// How often strict mode asks the bus to check its link: a quarter of
    /// the bound, so that a healthy link never looks stale.
    fn check_every(&self) -> Option<Duration> {
        self.strict
            .map(|bound| (bound / 4).max(Duration::from_millis(1)))
    }

    /// Starts applying the bus's events to the cache behind `inner`; the
    /// task ends when the cache is dropped.
    pub(crate) fn start<V: Send + Sync + 'static>(&self, inner: Weak<Inner<V>>) {
        let again = inner.clone();
        let _ = self.resubscribe.set(Box::new(move |link: &BusLink| {
            link.subscribe(again.clone());
        }));
        self.subscribe(inner);
    }

    fn subscribe<V: Send + Sync + 'static>(&self, inner: Weak<Inner<V>>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.dead.store(true, Ordering::Release);
            return;
        };
        let events = match self.check_every() {
            Some(every) => self.bus.subscribe_with_checks(every),
            None => self.bus.subscribe(),
        };
        let task = runtime.spawn(receive(inner, events));
        let previous = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task.abort_handle());
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// After the subscription's task died with its runtime, subscribes
    /// again from the runtime of the current call (one caller does).
    #[inline]
    pub(crate) fn revive(&self) {
        if !self.dead.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || self
                .dead
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Some(resubscribe) = self.resubscribe.get() {
            tracing::info!("invalidation bus: subscribing again from the current runtime");
            resubscribe(self);
        }
    }
}

impl Drop for BusLink {
    fn drop(&mut self) {
        let task = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
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
    // Whatever ends this task while the cache lives (the bus closed the
    // subscription, the runtime shut down and dropped it) is a death.
    let _death = Death(inner.clone());
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.apply(event).await;
    }
}

/// Reports the end of the subscription task to its cache, if it still lives.
struct Death<V: Send + Sync + 'static>(Weak<Inner<V>>);

impl<V: Send + Sync + 'static> Drop for Death<V> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.bus_died();
        }
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
        link.revive();
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
                link.alive_at.store(link.now_ms(), Ordering::Release);
                link.down.store(false, Ordering::Release);
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
            BusEvent::Alive { checked_at } => {
                link.heartbeats.store(true, Ordering::Relaxed);
                link.alive_at
                    .fetch_max(link.ms_since_start(checked_at), Ordering::AcqRel);
            }
            BusEvent::Down { reason } => {
                self.mark_down(link);
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

    /// Records that the subscription is down. Buses that report health
    /// checks keep the time of the last one answered; others count from now.
    fn mark_down(&self, link: &BusLink) {
        if !link.down.swap(true, Ordering::AcqRel) && !link.heartbeats.load(Ordering::Relaxed) {
            link.alive_at.store(link.now_ms(), Ordering::Release);
        }
    }

    /// The subscription task ended while the cache lives (its runtime shut
    /// down): a loss like [`BusEvent::Down`], handled without awaiting. The
    /// first tier is flushed when it can be flushed at once (strict mode
    /// bypasses it in any case after the bound), and the next call from a
    /// runtime subscribes again.
    fn bus_died(&self) {
        let Some(link) = &self.bus else {
            return;
        };
        self.mark_down(link);
        link.metrics.up.set(0.0);
        self.generations.bump_all();
        self.forget_negatives();
        let flushed = self
            .levels
            .first()
            .is_some_and(|first| first.tier.clear_now());
        if flushed {
            link.metrics.flushed_down.increment();
        }
        link.dead.store(true, Ordering::Release);
        tracing::warn!(
            cache.name = &*self.name,
            l1_flushed = flushed,
            "invalidation bus subscription ended with the runtime that ran it; it resumes on the next call made from a runtime"
        );
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
