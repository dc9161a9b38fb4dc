//! The monitor: named pools sampled on an interval, gauges set, alerts
//! raised and cleared.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::acquires::{AcquireTotals, AcquireWindow};
use crate::error::ConfigError;
use crate::snapshot::{Gauges, PoolSnapshot, PoolSource};

/// A condition on a pool that an [`Alert`] watches, at every sample: on its
/// snapshot, or on its acquires over the alert's duration (an
/// [`AcquireWindow`], from the pools that count them: the instrumented
/// ones).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Condition {
    /// More than this many callers waiting for a connection.
    WaitingAbove(u64),
    /// More than this share of the pool's maximum in use (0 to 1).
    UtilizationAbove(f64),
    /// The 99th percentile wait of the acquires over the alert's last
    /// `after` (a sliding window of samples) is over this. A window without
    /// acquires does not hold it.
    AcquireP99Above(Duration),
    /// More than this share (0 to 1) of the acquires that ended over the
    /// alert's last `after` timed out.
    TimeoutRateAbove(f64),
}

impl Condition {
    /// Whether it reads a window of acquires (rather than a snapshot).
    fn on_acquires(self) -> bool {
        matches!(self, Self::AcquireP99Above(_) | Self::TimeoutRateAbove(_))
    }

    fn holds(self, snapshot: &PoolSnapshot, acquires: Option<&AcquireWindow>) -> bool {
        match self {
            Self::WaitingAbove(limit) => snapshot.waiting.is_some_and(|waiting| waiting > limit),
            Self::UtilizationAbove(share) => snapshot.utilization() > share,
            Self::AcquireP99Above(limit) => acquires
                .and_then(|window| window.p99)
                .is_some_and(|p99| p99 > limit),
            Self::TimeoutRateAbove(share) => {
                acquires.is_some_and(|window| window.timeout_rate() > share)
            }
        }
    }
}

/// An alert: raised once its condition has held for `after`, cleared once it
/// has not held for `after` — one event each way, never one per sample.
/// A condition on acquires is evaluated over the acquires of the last
/// `after` (a sliding window): raised when it holds over that window,
/// cleared when it no longer does.
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
    /// The acquires the alert read (over its `after`), or for a condition
    /// on the snapshot those since the sample before (pools that count them).
    pub acquires: Option<AcquireWindow>,
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
    /// The acquires counted at earlier samples, as far back as
    /// `history_span` (one entry per change), oldest first.
    history: VecDeque<(Instant, AcquireTotals)>,
    /// The longest window an alert on acquires reads (zero without one).
    history_span: Duration,
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
        let history_span = alerts
            .iter()
            .filter(|alert| alert.condition.on_acquires())
            .map(|alert| alert.after)
            .max()
            .unwrap_or(Duration::ZERO);
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
            history: pool
                .acquires()
                .map(|totals| (Instant::now(), totals))
                .into_iter()
                .collect(),
            history_span,
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
            let totals = source.acquires();
            source.sampled();
            watched.gauges.set(&snapshot);
            let last = totals
                .as_ref()
                .zip(watched.history.back())
                .map(|(totals, (_, before))| totals.since(before));
            for state in &mut watched.alerts {
                let acquires = if state.alert.condition.on_acquires() {
                    let cutoff = now.checked_sub(state.alert.after).unwrap_or(now);
                    totals
                        .as_ref()
                        .zip(as_of(&watched.history, cutoff))
                        .map(|(totals, before)| totals.since(before))
                } else {
                    last
                };
                if let Some(raised) = state.step(&snapshot, acquires.as_ref(), now) {
                    events.push(AlertEvent {
                        pool: name.clone(),
                        alert: state.alert.name.clone(),
                        raised,
                        snapshot,
                        acquires,
                    });
                }
            }
            if let Some(totals) = totals {
                watched.remember(now, totals);
            }
            true
        });
        for event in events {
            if event.raised {
                tracing::warn!(pool = %event.pool, alert = %event.alert, snapshot = ?event.snapshot, acquires = ?event.acquires, "pool alert raised");
            } else {
                tracing::info!(pool = %event.pool, alert = %event.alert, snapshot = ?event.snapshot, acquires = ?event.acquires, "pool alert cleared");
            }
            // Nobody subscribed: the log has it.
            let _ = monitor.events.send(event);
        }
        drop(monitor);
    }
    let _ = done.send(());
}

/// The totals as of `cutoff`: the last entry at or before it (the oldest
/// when the history starts after it).
fn as_of(history: &VecDeque<(Instant, AcquireTotals)>, cutoff: Instant) -> Option<&AcquireTotals> {
    history
        .iter()
        .rev()
        .find(|(at, _)| *at <= cutoff)
        .or_else(|| history.front())
        .map(|(_, totals)| totals)
}

impl Watched {
    /// Keeps `totals` (if they changed) and forgets what no alert reads.
    fn remember(&mut self, now: Instant, totals: AcquireTotals) {
        if self.history.back().is_none_or(|(_, last)| *last != totals) {
            self.history.push_back((now, totals));
        }
        let cutoff = now.checked_sub(self.history_span).unwrap_or(now);
        // The entry at or before the cutoff stays: it is the window's start.
        while self.history.len() > 1 && self.history.get(1).is_some_and(|(at, _)| *at <= cutoff) {
            self.history.pop_front();
        }
    }
}

impl AlertState {
    /// One sample: `Some(true)` when the alert is raised now, `Some(false)`
    /// when it is cleared now, `None` otherwise.
    fn step(
        &mut self,
        snapshot: &PoolSnapshot,
        acquires: Option<&AcquireWindow>,
        now: Instant,
    ) -> Option<bool> {
        let holds = self.alert.condition.holds(snapshot, acquires);
        if self.alert.condition.on_acquires() {
            // The window is the duration: no second wait.
            if holds == self.raised {
                return None;
            }
            self.raised = holds;
            return Some(holds);
        }
        // While raised, `since` counts the condition's absence; otherwise its presence.
        let changing = holds != self.raised;
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
        assert_eq!(state.step(&busy, None, at(0)), None);
        assert_eq!(state.step(&calm, None, at(50)), None);
        assert_eq!(state.step(&busy, None, at(60)), None);
        assert_eq!(state.step(&busy, None, at(160)), Some(true));
        // Raised once, not again on every busy sample.
        assert_eq!(state.step(&busy, None, at(200)), None);
        assert_eq!(state.step(&busy, None, at(900)), None);
        // A calm blip does not clear it; lasting calm does, once.
        assert_eq!(state.step(&calm, None, at(1_000)), None);
        assert_eq!(state.step(&busy, None, at(1_050)), None);
        assert_eq!(state.step(&calm, None, at(1_100)), None);
        assert_eq!(state.step(&calm, None, at(1_200)), Some(false));
        assert_eq!(state.step(&calm, None, at(1_300)), None);
    }

    #[test]
    fn acquire_conditions_read_the_window_and_no_acquires_hold_nothing() {
        let snapshot = PoolSnapshot::clamped(3, 0, 3, 0, Some(0));
        let window = |acquired: u64, timeouts: u64, p99_ms: Option<u64>| AcquireWindow {
            acquired,
            timeouts,
            p99: p99_ms.map(Duration::from_millis),
        };
        let slow = Condition::AcquireP99Above(Duration::from_millis(50));
        assert!(slow.holds(&snapshot, Some(&window(10, 0, Some(80)))));
        assert!(!slow.holds(&snapshot, Some(&window(10, 0, Some(20)))));
        assert!(!slow.holds(&snapshot, Some(&window(0, 0, None))));
        assert!(!slow.holds(&snapshot, None));
        let timeouts = Condition::TimeoutRateAbove(0.1);
        assert!(timeouts.holds(&snapshot, Some(&window(8, 2, Some(1)))));
        assert!(!timeouts.holds(&snapshot, Some(&window(95, 5, Some(1)))));
        assert!(!timeouts.holds(&snapshot, Some(&window(0, 0, None))));
        assert!(!timeouts.holds(&snapshot, None));
    }
}
