//! The monitor: named pools sampled on an interval, gauges set, alerts
//! raised and cleared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::error::ConfigError;
use crate::snapshot::{Gauges, PoolSnapshot, PoolSource};

/// A condition on a pool's snapshot that an [`Alert`] watches.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Condition {
    /// More than this many callers waiting for a connection.
    WaitingAbove(u64),
    /// More than this share of the pool's maximum in use (0 to 1).
    UtilizationAbove(f64),
}

impl Condition {
    fn holds(self, snapshot: &PoolSnapshot) -> bool {
        match self {
            Self::WaitingAbove(limit) => snapshot.waiting.is_some_and(|waiting| waiting > limit),
            Self::UtilizationAbove(share) => snapshot.utilization() > share,
        }
    }
}

/// An alert: raised once its condition has held for `after`, cleared once it
/// has not held for `after` — one event each way, never one per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    name: String,
    condition: Condition,
    after: Duration,
}

impl Alert {
    /// An alert named `name` on `condition`, raised after it held for
    /// `after` and cleared after it stopped holding for as long.
    pub fn new(name: impl Into<String>, condition: Condition, after: Duration) -> Self {
        Self {
            name: name.into(),
            condition,
            after,
        }
    }
}

/// An alert raised or cleared, as [`PoolMonitor::subscribe`] delivers it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AlertEvent {
    /// The pool's name.
    pub pool: String,
    /// The alert's name.
    pub alert: String,
    /// `true` when raised, `false` when cleared.
    pub raised: bool,
    /// The snapshot that decided it.
    pub snapshot: PoolSnapshot,
}

/// Samples named pools on an interval: sets their gauges
/// (`perfkit_pool_connections{pool,state}`, `perfkit_pool_waiting{pool}`)
/// and raises and clears [`Alert`]s (a `WARN` on raising, an `INFO` on
/// clearing, and an [`AlertEvent`] to subscribers).
///
/// Pools are held weakly: the monitor never keeps one alive, and forgets it
/// once it is dropped. The sampling task stops when the monitor is dropped
/// or [`shutdown`](Self::shutdown).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use perfkit_pool_monitor::{Alert, Condition, PoolMonitor, PoolSnapshot, PoolSource};
///
/// struct Fixed;
/// impl PoolSource for Fixed {
///     fn snapshot(&self) -> PoolSnapshot {
///         PoolSnapshot::clamped(10, 0, 10, 0, Some(12))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let monitor = PoolMonitor::builder().interval(Duration::from_millis(100)).build()?;
/// let mut events = monitor.subscribe();
/// let pool = Arc::new(Fixed);
/// monitor.watch("main", &pool, vec![Alert::new("exhausted", Condition::WaitingAbove(5), Duration::from_secs(1))])?;
/// let raised = events.recv().await?;
/// assert!(raised.raised && raised.alert == "exhausted");
/// # Ok(()) }
/// ```
pub struct PoolMonitor {
    inner: Arc<Inner>,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

struct Inner {
    pools: Mutex<HashMap<String, Watched>>,
    events: broadcast::Sender<AlertEvent>,
    shutdown: tokio::sync::Notify,
}

struct Watched {
    source: Weak<dyn PoolSource>,
    alerts: Vec<AlertState>,
    gauges: Gauges,
}

struct AlertState {
    alert: Alert,
    raised: bool,
    /// Since when the condition has held (or, once raised, not held).
    since: Option<Instant>,
}

/// Configures a [`PoolMonitor`]: `PoolMonitor::builder()…build()?`.
#[derive(Debug, Clone)]
#[must_use]
pub struct PoolMonitorBuilder {
    interval: Duration,
}

impl PoolMonitorBuilder {
    /// How often every pool is sampled. Default: 1 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Starts the sampling task on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero interval, [`ConfigError::NoRuntime`]
    /// outside a runtime.
    pub fn build(self) -> Result<PoolMonitor, ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::Zero("interval"));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let inner = Arc::new(Inner {
            pools: Mutex::new(HashMap::new()),
            events: broadcast::channel(64).0,
            shutdown: tokio::sync::Notify::new(),
        });
        let (done, stopped) = oneshot::channel();
        runtime.spawn(sample(Arc::downgrade(&inner), self.interval, done));
        Ok(PoolMonitor {
            inner,
            stopped: Mutex::new(Some(stopped)),
        })
    }
}

impl PoolMonitor {
    /// A builder with the defaults each setter names.
    pub fn builder() -> PoolMonitorBuilder {
        PoolMonitorBuilder {
            interval: Duration::from_secs(1),
        }
    }

    /// Samples `pool` under `name` (the `pool` label) with `alerts`, holding
    /// it weakly. A name watched again replaces the earlier pool.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyName`] for a blank name.
    pub fn watch<S: PoolSource + 'static>(
        &self,
        name: impl Into<String>,
        pool: &Arc<S>,
        alerts: Vec<Alert>,
    ) -> Result<(), ConfigError> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        let source: Arc<dyn PoolSource> = Arc::clone(pool) as Arc<dyn PoolSource>;
        let watched = Watched {
            source: Arc::downgrade(&source),
            alerts: alerts
                .into_iter()
                .map(|alert| AlertState {
                    alert,
                    raised: false,
                    since: None,
                })
                .collect(),
            gauges: Gauges::new(&name),
        };
        self.inner.pools().insert(name, watched);
        Ok(())
    }

    /// The names of the pools still watched (a dropped pool is forgotten
    /// at the next sample).
    #[must_use]
    pub fn watched(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.pools().keys().cloned().collect();
        names.sort();
        names
    }

    /// Alert events from now on (raised and cleared); a subscriber too slow
    /// to keep up misses the oldest (`RecvError::Lagged`).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.inner.events.subscribe()
    }

    /// Resolves when the sampling task has stopped (after [`shutdown`](Self::shutdown)
    /// or the monitor's drop); immediately for the second caller.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        async move {
            if let Some(stopped) = stopped {
                let _ = stopped.await;
            }
        }
    }

    /// Stops the sampling task and waits for it.
    pub async fn shutdown(self) {
        let stopped = self.stopped();
        self.inner.shutdown.notify_one();
        drop(self);
        stopped.await;
    }
}

impl std::fmt::Debug for PoolMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMonitor")
            .field("watched", &self.watched())
            .finish()
    }
}

impl Inner {
    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sampling task: ends when the monitor is gone or shut down.
async fn sample(inner: Weak<Inner>, interval: Duration, done: oneshot::Sender<()>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(monitor) = inner.upgrade() else {
            break;
        };
        tokio::select! {
            _ = ticks.tick() => {}
            () = monitor.shutdown.notified() => break,
        }
        let now = Instant::now();
        let mut events = Vec::new();
        monitor.pools().retain(|name, watched| {
            let Some(source) = watched.source.upgrade() else {
                tracing::debug!(pool = %name, "pool dropped: no longer monitored");
                return false;
            };
            let snapshot = source.snapshot();
            source.sampled();
            watched.gauges.set(&snapshot);
            for state in &mut watched.alerts {
                if let Some(raised) = state.step(&snapshot, now) {
                    events.push(AlertEvent {
                        pool: name.clone(),
                        alert: state.alert.name.clone(),
                        raised,
                        snapshot,
                    });
                }
            }
            true
        });
        for event in events {
            if event.raised {
                tracing::warn!(pool = %event.pool, alert = %event.alert, snapshot = ?event.snapshot, "pool alert raised");
            } else {
                tracing::info!(pool = %event.pool, alert = %event.alert, snapshot = ?event.snapshot, "pool alert cleared");
            }
            // Nobody subscribed: the log has it.
            let _ = monitor.events.send(event);
        }
        drop(monitor);
    }
    let _ = done.send(());
}

impl AlertState {
    /// One sample: `Some(true)` when the alert is raised now, `Some(false)`
    /// when it is cleared now, `None` otherwise.
    fn step(&mut self, snapshot: &PoolSnapshot, now: Instant) -> Option<bool> {
        // While raised, `since` counts the condition's absence; otherwise its presence.
        let changing = self.alert.condition.holds(snapshot) != self.raised;
        if !changing {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < self.alert.after {
            return None;
        }
        self.raised = !self.raised;
        self.since = None;
        Some(self.raised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_needs_its_condition_to_last_and_to_stop_lasting() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        let busy = PoolSnapshot::clamped(3, 0, 3, 0, Some(7));
        let calm = PoolSnapshot::clamped(3, 0, 3, 3, Some(0));
        let mut state = AlertState {
            alert: Alert::new(
                "waiting",
                Condition::WaitingAbove(5),
                Duration::from_millis(100),
            ),
            raised: false,
            since: None,
        };
        // A blip shorter than `after` raises nothing.
        assert_eq!(state.step(&busy, at(0)), None);
        assert_eq!(state.step(&calm, at(50)), None);
        assert_eq!(state.step(&busy, at(60)), None);
        assert_eq!(state.step(&busy, at(160)), Some(true));
        // Raised once, not again on every busy sample.
        assert_eq!(state.step(&busy, at(200)), None);
        assert_eq!(state.step(&busy, at(900)), None);
        // A calm blip does not clear it; lasting calm does, once.
        assert_eq!(state.step(&calm, at(1_000)), None);
        assert_eq!(state.step(&busy, at(1_050)), None);
        assert_eq!(state.step(&calm, at(1_100)), None);
        assert_eq!(state.step(&calm, at(1_200)), Some(false));
        assert_eq!(state.step(&calm, at(1_300)), None);
    }
}
