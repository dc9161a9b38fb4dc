//! The user-facing single-flight group and the future of one call.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::builder::{AbandonPolicy, GroupBuilder};
use crate::error::Error;
use crate::flight::{Flight, LEADER};
use crate::metrics::Metrics;
use crate::sync::KeyMap;

/// Single-flight: concurrent [`run`](Group::run) calls with one key share one
/// execution of the work.
///
/// `K` is the key, `T` the value every caller receives a clone of (use an
/// [`Arc`] for values that are costly to clone) and `E` the work's error,
/// shared with every caller as `Arc<E>`.
///
/// A `Group` is a cheap handle: clones share the same flights.
///
/// # Guarantees
///
/// - **Exactly-once execution while in flight.** From the first call for a key
///   until its work finishes (or is abandoned), every other call with that key
///   joins the same flight: the work runs once, and every caller still waiting
///   when it finishes receives its outcome.
/// - **The work does not belong to its starter.** Dropping the future of the
///   call that started the work (a timeout, an abort, a client disconnect) does
///   not stop it while other callers wait: one of them takes over polling it.
///   It is never started a second time.
/// - **No stall behind an idle caller.** The work is polled with the flight's
///   own waker, which also wakes one other waiter: if the driving caller's
///   future is held but no longer polled (moka#240), that waiter takes over.
/// - **Abandonment.** When every waiting caller is gone the work is dropped
///   (its drop guards run), or, with [`AbandonPolicy::RunToCompletion`], it is
///   finished on a spawned task.
/// - **Panics.** A panic in the work (or in the closure that builds it) reaches
///   every waiter as [`Error::Panicked`]; nobody hangs and the key is free again.
/// - **Nothing is remembered.** When the work finishes its key is removed
///   before any caller gets the outcome, so a later call runs the work afresh:
///   neither values nor errors are cached. A flight only ever removes its own
///   map entry, never a newer flight's for the same key.
/// - **No lock across an `.await`.** The key map is sharded (dashmap); its
///   locks and the flight's own lock are held for a few instructions, never
///   while the work is polled.
pub struct Group<K, T, E> {
    inner: Arc<Inner<K, T, E>>,
}

type FlightMap<K, T, E> = KeyMap<K, Arc<Flight<K, T, E>>>;

struct Inner<K, T, E> {
    flights: FlightMap<K, T, E>,
    policy: AbandonPolicy,
    metrics: Metrics,
    name: Box<str>,
}

/// What a call returns: the shared result, and whether it was shared.
#[derive(Debug, Clone)]
#[must_use]
pub struct Outcome<T, E> {
    /// The work's value, or why there is none.
    pub result: Result<T, Error<E>>,
    /// Whether this outcome went to more than one caller (Go's `shared`):
    /// `true` when other callers were waiting on the same execution when it
    /// finished.
    pub shared: bool,
}

impl<T, E> Outcome<T, E> {
    /// The result alone.
    ///
    /// # Errors
    ///
    /// The work's [`Error`], shared with every caller of the flight.
    pub fn into_result(self) -> Result<T, Error<E>> {
        self.result
    }
}

impl<K, T, E> Clone for Group<K, T, E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq, T, E> fmt::Debug for Group<K, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.inner.name)
            .field("policy", &self.inner.policy)
            .field("in_flight", &self.inner.flights.len())
            .finish_non_exhaustive()
    }
}

impl<K, T, E> Default for Group<K, T, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn default() -> Self {
        Self::from_builder(GroupBuilder::default())
    }
}

impl<K, T, E> Group<K, T, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A group with the defaults: name `"default"`, [`AbandonPolicy::Cancel`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Configures a group.
    pub fn builder() -> GroupBuilder<K, T, E> {
        GroupBuilder::default()
    }

    pub(crate) fn from_builder(builder: GroupBuilder<K, T, E>) -> Self {
        Self {
            inner: Arc::new(Inner {
                flights: KeyMap::new(builder.shards),
                policy: builder.policy,
                metrics: Metrics::new(&builder.name),
                name: builder.name.into_boxed_str(),
            }),
        }
    }

    /// Runs `work` for `key`, unless a call with the same key is already in
    /// flight, in which case this call waits for that execution's outcome.
    ///
    /// `work` is called at most once, and only by the call that starts the
    /// flight, on its first poll. The future it returns must be `Send +
    /// 'static` because it may outlive this call (see the type's guarantees).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use perfkit_dedup::Group;
    ///
    /// let group: Group<u64, String, std::io::Error> = Group::new();
    /// let outcome = group.run(42, || async { Ok("price of 42".to_owned()) }).await;
    /// assert_eq!(outcome.result.unwrap(), "price of 42");
    /// assert!(!outcome.shared);
    /// # }
    /// ```
    pub fn run<F, Fut>(&self, key: K, work: F) -> Call<'_, K, T, E, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        Call {
            group: self,
            state: CallState::Start { key, work },
        }
    }

    /// Detaches the flight in progress for `key`, if any: the next call starts
    /// a fresh execution, while the callers already waiting still get the
    /// current one's outcome. Returns whether a flight was detached.
    pub fn forget<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.flights.remove(key).is_some()
    }

    /// Whether work for `key` is in flight right now.
    pub fn is_in_flight<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.flights.contains_key(key)
    }

    /// Keys with work in flight right now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// The group's name, as in metrics and spans.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Joins the flight for `key`, or starts one (replacing a finished or
    /// abandoned flight still in the map).
    fn enter(&self, key: K, waker: &Waker) -> (Arc<Flight<K, T, E>>, usize) {
        self.inner.flights.join_or_insert(
            key,
            |current| {
                let waiter = current.join(waker)?;
                self.inner.metrics.coalesced.increment(1);
                Some((Arc::clone(current), waiter))
            },
            |key| {
                let flight = self.new_flight(key.clone());
                (Arc::clone(&flight), (flight, LEADER))
            },
        )
    }

    fn new_flight(&self, key: K) -> Arc<Flight<K, T, E>> {
        let span = tracing::debug_span!(
            "dedup.run",
            dedup.name = &*self.inner.name,
            dedup.shared = tracing::field::Empty,
        );
        Flight::new(key, span)
    }

    /// Removes `flight`'s map entry if it is still the current one for its key.
    pub(crate) fn remove_flight(&self, flight: &Arc<Flight<K, T, E>>) {
        self.inner
            .flights
            .remove_if(&flight.key, |current| Arc::ptr_eq(current, flight));
    }
}

/// The future of one [`Group::run`] call. Dropping it leaves the flight
/// without disturbing the other callers.
#[must_use = "futures do nothing unless polled"]
pub struct Call<'g, K, T, E, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    group: &'g Group<K, T, E>,
    state: CallState<K, T, E, F>,
}

enum CallState<K, T, E, F> {
    Start {
        key: K,
        work: F,
    },
    Waiting {
        flight: Arc<Flight<K, T, E>>,
        waiter: usize,
    },
    Done,
}

// Nothing in a `Call` is ever pinned: the work lives boxed in the flight.
impl<K, T, E, F> Unpin for Call<'_, K, T, E, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
}

impl<K, T, E, F, Fut> Future for Call<'_, K, T, E, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    type Output = Outcome<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let group = this.group;
        let polled = match mem::replace(&mut this.state, CallState::Done) {
            CallState::Start { key, work } => {
                let (flight, waiter) = group.enter(key, cx.waker());
                this.state = CallState::Waiting {
                    flight: Arc::clone(&flight),
                    waiter,
                };
                if waiter == LEADER {
                    flight.start(work, cx, group)
                } else {
                    flight.poll_waiter(waiter, cx, group)
                }
            }
            CallState::Waiting { flight, waiter } => {
                let polled = flight.poll_waiter(waiter, cx, group);
                this.state = CallState::Waiting { flight, waiter };
                polled
            }
            // Polled after completion: a contract violation; stay pending rather than panic.
            CallState::Done => return Poll::Pending,
        };
        if polled.is_ready() {
            this.state = CallState::Done;
        }
        polled
    }
}

impl<K, T, E, F> Drop for Call<'_, K, T, E, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn drop(&mut self) {
        if let CallState::Waiting { flight, waiter } = &self.state {
            flight.leave(*waiter, self.group, self.group.inner.policy);
        }
    }
}

impl<K, T, E, F> fmt::Debug for Call<'_, K, T, E, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            CallState::Start { .. } => "start",
            CallState::Waiting { .. } => "waiting",
            CallState::Done => "done",
        };
        f.debug_struct("Call")
            .field("group", &self.group.name())
            .field("state", &state)
            .finish()
    }
}
