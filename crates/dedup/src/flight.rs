//! One execution of the work, shared by every caller waiting on it.
//!
//! The work is a boxed future owned by the flight, not by any caller. One
//! waiter at a time, the *driver*, polls it; the others sleep until the
//! outcome is ready. The work is polled with the flight's own waker, which
//! wakes the driver and, as a watchdog, one other waiter: if the driver does
//! not poll the flight before that waiter does (it was dropped, or its
//! future is held but no longer polled), that waiter takes over as driver.
//! When the driver leaves, one remaining waiter is woken to take over. So the
//! work keeps running for whoever is still waiting and runs exactly once,
//! while a quiet flight costs its sleeping waiters nothing. When the last
//! waiter leaves, the [`AbandonPolicy`] decides: drop the work, or hand it to
//! a spawned task. No lock is held while the work is polled.

use std::future::Future;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;
use tracing::Span;

use crate::builder::AbandonPolicy;
use crate::error::{Error, panic_message};
use crate::group::{Group, Outcome};
use crate::sync::{Mutex, MutexGuard, Spawner};

/// The work, boxed so that it can outlive the caller that started it.
pub(crate) type Work<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The slot of the caller that created the flight.
pub(crate) const LEADER: usize = 0;

pub(crate) struct Flight<K, T, E> {
    /// Kept to remove this flight's own map entry, and only its own.
    pub(crate) key: K,
    span: Span,
    state: Mutex<State<T, E>>,
}

struct State<T, E> {
    /// The work while nobody polls it; `None` while a waiter polls it (or the
    /// leader is still building it) and once it has finished.
    work: Option<Work<T, E>>,
    /// The callers waiting on the flight, with the waker of their last pending poll.
    waiters: Waiters,
    /// The waiter that polls the work.
    driver: Option<usize>,
    /// The work woke the flight and has not been polled since.
    notified: bool,
    /// Set once, when the work finishes; taken by the last waiter to collect it.
    outcome: Option<Result<T, Error<E>>>,
    /// Whether the outcome went to more than one caller.
    shared: bool,
    /// No caller may join any more: the work finished or was abandoned.
    closed: bool,
}

impl<K, T, E> Flight<K, T, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    /// A flight whose leader (waiter [`LEADER`]) is about to build and poll the work.
    pub(crate) fn new(key: K, span: Span) -> Arc<Self> {
        Arc::new(Self {
            key,
            span,
            state: Mutex::new(State {
                work: None,
                waiters: Waiters::with_leader(),
                driver: Some(LEADER),
                notified: false,
                outcome: None,
                shared: false,
                closed: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T, E>> {
        // The lock never spans user code, so a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a waiter, unless the flight no longer takes any.
    pub(crate) fn join(&self, waker: &Waker) -> Option<usize> {
        let mut state = self.lock();
        (!state.closed).then(|| state.waiters.insert(Some(waker.clone())))
    }

    /// The leader's first poll: build the work, then drive it.
    pub(crate) fn start<F, Fut>(
        self: &Arc<Self>,
        make: F,
        cx: &mut Context<'_>,
        group: &Group<K, T, E>,
    ) -> Poll<Outcome<T, E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        group.metrics().executions.increment(1);
        // Known before the first poll, so that a wake during it reaches us.
        self.lock().waiters.register(LEADER, cx.waker());
        let built = {
            let _entered = self.span.enter();
            catch_unwind(AssertUnwindSafe(|| Box::pin(make()) as Work<T, E>))
        };
        match built {
            Ok(work) => self.drive(LEADER, work, cx, group),
            Err(payload) => {
                group.metrics().panics.increment(1);
                self.finish(
                    LEADER,
                    Err(Error::Panicked(panic_message(&*payload))),
                    group,
                )
            }
        }
    }

    /// Any later poll by any waiter: collect the outcome, drive the idle work,
    /// or wait for whoever is polling it.
    pub(crate) fn poll_waiter(
        self: &Arc<Self>,
        waiter: usize,
        cx: &mut Context<'_>,
        group: &Group<K, T, E>,
    ) -> Poll<Outcome<T, E>> {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return Poll::Ready(state.collect(waiter));
        }
        state.waiters.register(waiter, cx.waker());
        // Drive when nobody does, when we do, or when the work woke the flight
        // and its driver has not polled since (a watchdog wake).
        let may_drive = state
            .driver
            .is_none_or(|driver| driver == waiter || state.notified);
        if !may_drive {
            return Poll::Pending;
        }
        let Some(work) = state.work.take() else {
            // Another waiter is polling the work right now; it wakes us when it finishes.
            return Poll::Pending;
        };
        state.driver = Some(waiter);
        state.notified = false;
        drop(state);
        self.drive(waiter, work, cx, group)
    }

    fn drive(
        self: &Arc<Self>,
        waiter: usize,
        mut work: Work<T, E>,
        cx: &mut Context<'_>,
        group: &Group<K, T, E>,
    ) -> Poll<Outcome<T, E>> {
        let polled = {
            let _entered = self.span.enter();
            let waker = Waker::from(Arc::clone(self));
            let mut flight_cx = Context::from_waker(&waker);
            catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut flight_cx)))
        };
        let outcome = match polled {
            Ok(Poll::Pending) => {
                let mut state = self.lock();
                state.work = Some(work);
                state.waiters.register(waiter, cx.waker());
                // Woken while we polled it (from this thread or another): the
                // wake may have gone to a waker we had not registered yet, so
                // make sure we come back. `notified` stays set for the watchdog.
                let woken = state.notified;
                drop(state);
                if woken {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            Ok(Poll::Ready(result)) => result.map_err(|e| Error::Failed(Arc::new(e))),
            Err(payload) => {
                group.metrics().panics.increment(1);
                Err(Error::Panicked(panic_message(&*payload)))
            }
        };
        drop(work);
        self.finish(waiter, outcome, group)
    }

    /// Publishes the outcome, frees the key, wakes everyone and hands the
    /// finishing waiter its share.
    fn finish(
        self: &Arc<Self>,
        waiter: usize,
        outcome: Result<T, Error<E>>,
        group: &Group<K, T, E>,
    ) -> Poll<Outcome<T, E>> {
        let mut state = self.lock();
        state.closed = true;
        state.driver = None;
        state.waiters.remove(waiter);
        let shared = !state.waiters.is_empty();
        let others: Vec<Waker> = if shared {
            // Stored for the others to clone; the last of them takes it.
            state.shared = true;
            state.outcome = Some(outcome.clone());
            state
                .waiters
                .iter_mut()
                .filter_map(|(_, waker)| waker.take())
                .collect()
        } else {
            Vec::new()
        };
        drop(state);
        self.span.record("dedup.shared", shared);
        // Before returning: the next call for this key must start a fresh flight.
        group.remove_flight(self);
        for waker in others {
            waker.wake();
        }
        Poll::Ready(Outcome {
            result: outcome,
            shared,
        })
    }

    /// A waiter goes away before collecting (its future was dropped).
    pub(crate) fn leave(
        self: &Arc<Self>,
        waiter: usize,
        group: &Group<K, T, E>,
        policy: AbandonPolicy,
    ) {
        let mut state = self.lock();
        if !state.waiters.remove(waiter) || state.closed {
            return;
        }
        if state.waiters.is_empty() {
            if policy == AbandonPolicy::RunToCompletion {
                if let Some(runtime) = Spawner::current() {
                    let detached = state.waiters.insert(None);
                    drop(state);
                    runtime.spawn(Detached {
                        flight: Arc::clone(self),
                        waiter: detached,
                        group: group.clone(),
                    });
                    return;
                }
                tracing::warn!(
                    dedup.name = group.name(),
                    "every waiter left and there is no tokio runtime to finish the work on; cancelling it"
                );
            }
            state.closed = true;
            let work = state.work.take();
            drop(state);
            group.metrics().abandoned.increment(1);
            group.remove_flight(self);
            // Dropped last and outside the lock: this is where the work's own drop guards run.
            drop(work);
            return;
        }
        if state.driver == Some(waiter) {
            state.driver = None;
        }
        // The work is idle and nobody holds its waker: wake one waiter to drive it.
        let successor = if state.driver.is_none() && state.work.is_some() {
            state
                .waiters
                .iter_mut()
                .find_map(|(_, waker)| waker.clone())
        } else {
            None
        };
        drop(state);
        if let Some(waker) = successor {
            waker.wake();
        }
    }
}

/// The waker the work is polled with: wakes the driver, and one other waiter
/// that takes over if the driver does not poll first.
impl<K, T, E> Wake for Flight<K, T, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.notified = true;
        let driver = state.driver;
        let mut driver_waker = None;
        let mut watchdog = None;
        for (id, waker) in state.waiters.iter_mut() {
            if Some(id) == driver {
                driver_waker = waker.clone();
            } else if watchdog.is_none() {
                watchdog = waker.clone();
            }
            if driver_waker.is_some() && watchdog.is_some() {
                break;
            }
        }
        drop(state);
        for waker in [driver_waker, watchdog].into_iter().flatten() {
            waker.wake();
        }
    }
}

impl<T: Clone, E> State<T, E> {
    /// Removes `waiter` and hands it the outcome: the last one takes it, the others clone it.
    fn collect(&mut self, waiter: usize) -> Outcome<T, E> {
        self.waiters.remove(waiter);
        let result = if self.waiters.is_empty() {
            self.outcome.take()
        } else {
            self.outcome.clone()
        };
        Outcome {
            // Only the last waiter takes the outcome, and there is one last waiter.
            result: result.unwrap_or_else(|| {
                Err(Error::Panicked(Arc::from(
                    "perfkit-dedup: outcome collected twice",
                )))
            }),
            shared: self.shared,
        }
    }
}

/// The callers waiting on a flight. Most flights have no caller but their
/// leader, so it is kept inline and the slab of followers stays unallocated.
/// Ids: [`LEADER`] is 0, follower slot `n` is `n + 1`.
struct Waiters {
    /// `Some` while the leader waits, holding the waker of its last pending poll.
    leader: Option<Option<Waker>>,
    followers: Slab<Option<Waker>>,
}

impl Waiters {
    fn with_leader() -> Self {
        Self {
            leader: Some(None),
            followers: Slab::new(),
        }
    }

    fn insert(&mut self, waker: Option<Waker>) -> usize {
        self.followers.insert(waker) + 1
    }

    /// Whether `id` was still waiting.
    fn remove(&mut self, id: usize) -> bool {
        match id.checked_sub(1) {
            None => self.leader.take().is_some(),
            Some(slot) => self.followers.try_remove(slot).is_some(),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.leader.is_some()) + self.followers.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers the waker of `id`'s latest pending poll.
    fn register(&mut self, id: usize, waker: &Waker) {
        let slot = match id.checked_sub(1) {
            None => self.leader.as_mut(),
            Some(slot) => self.followers.get_mut(slot),
        };
        if let Some(slot) = slot {
            match slot {
                Some(known) if known.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        }
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Option<Waker>)> {
        let leader = self.leader.as_mut().map(|waker| (LEADER, waker));
        leader.into_iter().chain(
            self.followers
                .iter_mut()
                .map(|(slot, waker)| (slot + 1, waker)),
        )
    }
}

/// Finishes abandoned work under [`AbandonPolicy::RunToCompletion`]: a waiter
/// of its own, polled by a spawned task, that discards the outcome.
struct Detached<K, T, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    flight: Arc<Flight<K, T, E>>,
    waiter: usize,
    group: Group<K, T, E>,
}

impl<K, T, E> Future for Detached<K, T, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.flight
            .poll_waiter(this.waiter, cx, &this.group)
            .map(|_outcome| this.waiter = usize::MAX)
    }
}

impl<K, T, E> Drop for Detached<K, T, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
    E: Send + Sync + 'static,
{
    fn drop(&mut self) {
        let waiter = mem::replace(&mut self.waiter, usize::MAX);
        if waiter != usize::MAX {
            // Dropped unfinished (the runtime is shutting down): cancel, never respawn.
            self.flight
                .leave(waiter, &self.group, AbandonPolicy::Cancel);
        }
    }
}
