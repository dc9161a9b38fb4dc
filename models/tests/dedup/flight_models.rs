//! Models of the single-flight state machine: callers of `Group::run` with
//! one key, under every interleaving (up to three preemptions) with the work's
//! own wake-up coming from another thread, as a reply from the network does.
//!
//! The promises checked: every caller ends (loom fails a model in which a
//! thread waits forever: a lost wake-up, a stalled hand-over) with the work's
//! value (or, when it panics, `Error::Panicked`); callers that share an
//! execution run the work once; the driver's cancellation or idleness hands
//! the work to a waiter; abandoned work is dropped (`Cancel`) or finished on
//! a task of its own (`RunToCompletion`), never leaked; a flight removes
//! only its own map entry; no entry is left in the map.
//!
//! Mutations of `flight.rs` each was seen to catch (each model run on its
//! own; "deadlock" is loom finding a caller that waits forever):
//! - no watchdog wake (the work's wake reaching only the driver), or a
//!   watchdog not allowed to drive: the idle driver, the forgotten flight
//!   (its second execution's driver is idle), both run-to-completion models
//!   (deadlock);
//! - the leader's waker not registered before its first poll *and* no
//!   re-wake after a poll during which the work woke the flight: the wake
//!   during the first poll, sharing, the panic, a caller arriving at
//!   abandoned work (deadlock). Either guard alone suffices (removing one is
//!   not caught, by design: each covers the other);
//! - `finish` waking nobody: sharing, the wake during the first poll, the
//!   panic, a caller arriving at abandoned work (deadlock);
//! - `leave` not waking a successor, or keeping the leaving caller as
//!   driver: a caller arriving at abandoned work (deadlock);
//! - `leave` abandoning the work while other callers still wait: the
//!   cancelled driver, a caller arriving at abandoned work (deadlock);
//! - `finish` leaving its map entry: every model; an abandoned flight
//!   leaving it: the lone abandoned call under `Cancel`;
//! - `RunToCompletion` cancelling: both run-to-completion models;
//! - (`group.rs`) a flight removing its key's entry without checking it is
//!   its own: the forgotten flight (deadlock: the third caller starts an
//!   execution of its own, whose event never comes).

// A model's setup that fails should fail the model (clippy does not see a
// `cfg(perfkit_loom)` test crate's helpers as tests), and a work that panics
// is one of the scenarios.
#![allow(clippy::expect_used, clippy::panic)]

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll, Waker};

use loom::future::block_on;
use loom::sync::Mutex;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;

use crate::builder::AbandonPolicy;
use crate::error::Error;
use crate::group::{Group, Outcome};

const KEY: u32 = 1;
const VALUE: u32 = 7;
const PREEMPTIONS: usize = 3;
const PANIC_MESSAGE: &str = "the model's work panicked";

type Fail = &'static str;

fn model(scenario: impl Fn() + Send + Sync + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTIONS);
    }
    builder.check(scenario);
}

fn group(policy: AbandonPolicy) -> Group<u32, u32, Fail> {
    Group::builder()
        .name("model")
        .abandon_policy(policy)
        .build()
        .expect("a valid group")
}

// The scenario's own shared state is in std's `Arc`s: loom's would panic
// when dropped while a failing model unwinds (its execution already gone),
// which aborts the test binary instead of failing the one model.

/// The work's outside world: an event (a reply arriving) that another
/// thread causes, waking whoever polled the work last.
#[derive(Clone)]
struct Gate(Arc<Mutex<(bool, Option<Waker>)>>);

impl Gate {
    fn new() -> Self {
        Self(Arc::new(Mutex::new((false, None))))
    }

    fn open(&self) {
        let waker = {
            let mut gate = self.0.lock().expect("gate lock");
            gate.0 = true;
            gate.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let gate = self.0.clone();
        poll_fn(move |cx| {
            let mut gate = gate.lock().expect("gate lock");
            if gate.0 {
                Poll::Ready(())
            } else {
                gate.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// How the work behaves.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Waits for the gate, then returns the value.
    Value,
    /// Wakes itself during its first poll and yields (the wake-up that was
    /// once lost), then waits for the gate.
    YieldsFirst,
    /// Waits for the gate, then panics.
    Panics,
}

/// The work of every caller of a model, and what became of each execution.
#[derive(Clone)]
struct Work {
    kind: Kind,
    gate: Gate,
    /// Executions started (the closure called).
    runs: Arc<AtomicUsize>,
    /// Executions that returned.
    finished: Arc<AtomicUsize>,
    /// Executions dropped before they returned (cancelled).
    cancelled: Arc<AtomicUsize>,
}

/// Counts an execution cancelled if it is dropped before it returns.
struct Execution {
    work: Work,
    done: bool,
}

impl Drop for Execution {
    fn drop(&mut self) {
        if !self.done {
            self.work.cancelled.fetch_add(1, SeqCst);
        }
    }
}

impl Work {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            gate: Gate::new(),
            runs: Arc::new(AtomicUsize::new(0)),
            finished: Arc::new(AtomicUsize::new(0)),
            cancelled: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What `Group::run` is given: the closure that starts one execution.
    fn start(
        &self,
    ) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<u32, Fail>> + Send>> + use<> {
        let work = self.clone();
        move || {
            work.runs.fetch_add(1, SeqCst);
            let mut execution = Execution { work, done: false };
            Box::pin(async move {
                if execution.work.kind == Kind::YieldsFirst {
                    let mut yielded = false;
                    poll_fn(|cx| {
                        if yielded {
                            Poll::Ready(())
                        } else {
                            yielded = true;
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    })
                    .await;
                }
                execution.work.gate.wait().await;
                execution.done = true;
                execution.work.finished.fetch_add(1, SeqCst);
                if execution.work.kind == Kind::Panics {
                    // Nothing of loom's left to drop while unwinding: loom
                    // switches threads at a reference count's drop, and the
                    // panic underway would poison the lock another thread
                    // holds (loom runs its threads on one OS thread).
                    drop(execution);
                    panic!("{PANIC_MESSAGE}");
                }
                Ok(VALUE)
            })
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(SeqCst)
    }
}

/// A caller that polls its call to the end.
fn call(group: &Group<u32, u32, Fail>, work: &Work) -> Outcome<u32, Fail> {
    block_on(group.run(KEY, work.start()))
}

/// One poll, with a waker nobody listens to: a caller that is then dropped,
/// or held and not polled again.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}

fn value(outcome: &Outcome<u32, Fail>) -> Option<u32> {
    outcome.result.as_ref().ok().copied()
}

/// The model's panics are expected; any other still reports.
fn quiet_model_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|message| message == PANIC_MESSAGE);
            if !ours {
                report(info);
            }
        }));
    });
}

/// Two callers, and the work's event from the main thread, in any order:
/// the second caller joins the first one's execution or, when that has
/// finished, runs its own. Every caller ends with the work's outcome, a
/// shared outcome is one execution, and no entry is left.
fn share(kind: Kind) {
    model(move || {
        let group = group(AbandonPolicy::Cancel);
        let work = Work::new(kind);
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (group, work) = (group.clone(), work.clone());
                thread::spawn(move || call(&group, &work))
            })
            .collect();
        work.gate.open();
        let outcomes: Vec<_> = callers
            .into_iter()
            .map(|caller| caller.join().expect("a caller"))
            .collect();
        for outcome in &outcomes {
            match kind {
                Kind::Panics => assert!(
                    matches!(&outcome.result, Err(Error::Panicked(message)) if &**message == PANIC_MESSAGE),
                    "a caller got {:?} from a panicking work",
                    outcome.result
                ),
                Kind::Value | Kind::YieldsFirst => assert_eq!(value(outcome), Some(VALUE)),
            }
        }
        let shared = outcomes[0].shared;
        assert_eq!(
            outcomes[1].shared, shared,
            "one caller shared, the other not"
        );
        assert_eq!(work.runs(), if shared { 1 } else { 2 });
        assert_eq!(work.finished.load(SeqCst), work.runs());
        assert_eq!(group.in_flight(), 0, "an entry was left behind");
    });
}

#[test]
fn callers_share_one_execution() {
    share(Kind::Value);
}

/// The regression stress once found by luck: the work wakes the flight
/// while the leader is still inside its first poll.
#[test]
fn a_wake_during_the_leaders_first_poll_is_not_lost() {
    share(Kind::YieldsFirst);
}

#[test]
fn a_panic_reaches_every_caller_and_frees_the_key() {
    quiet_model_panics();
    share(Kind::Panics);
}

/// What the first caller (the driver) does once the second has joined.
#[derive(Clone, Copy)]
enum Driver {
    /// Its future is dropped (a timeout, a disconnect).
    Cancelled,
    /// Its future is held but never polled again (moka#240).
    Idle,
}

/// The first caller starts the work and polls it once, the second joins
/// (both on the model's main thread, before anything runs concurrently);
/// then the work's event comes while the driver goes away or idles and the
/// second caller waits. The second caller must take the work over and end
/// with its value, from the one execution.
fn hand_over(driver: Driver) {
    model(move || {
        // Leaked (one small group per explored interleaving) so that the
        // calls, which borrow it, can move to other threads.
        let group: &'static Group<u32, u32, Fail> =
            Box::leak(Box::new(group(AbandonPolicy::Cancel)));
        let work = Work::new(Kind::Value);
        let mut first = group.run(KEY, work.start());
        assert!(poll_once(&mut first).is_pending(), "the gate is shut");
        let mut second = group.run(KEY, work.start());
        assert!(poll_once(&mut second).is_pending(), "the gate is shut");

        let second = thread::spawn(move || block_on(second));
        // Dropped on a thread of its own, at any point; or held, never
        // polled again, until the second caller has ended.
        let (dropping, idle) = match driver {
            Driver::Cancelled => (Some(thread::spawn(move || drop(first))), None),
            Driver::Idle => (None, Some(first)),
        };
        work.gate.open();
        let outcome = second.join().expect("the second caller");
        if let Some(dropping) = dropping {
            dropping.join().expect("the first caller");
        }
        drop(idle);

        assert_eq!(value(&outcome), Some(VALUE));
        assert_eq!(work.runs(), 1, "the work ran again");
        assert_eq!(
            work.cancelled.load(SeqCst),
            0,
            "the joined work was cancelled"
        );
        assert_eq!(group.in_flight(), 0, "an entry was left behind");
    });
}

#[test]
fn a_cancelled_driver_hands_the_work_to_a_waiter() {
    hand_over(Driver::Cancelled);
}

#[test]
fn an_idle_driver_does_not_stall_its_waiters() {
    hand_over(Driver::Idle);
}

/// The first caller starts the work, polls it once and is dropped while
/// the work's event comes (and, with `second_caller`, another caller arrives,
/// before or after). The second caller ends with the value; the abandoned
/// execution is cancelled (`Cancel`: dropped, its drop guards run) or
/// finished on a thread of its own (`RunToCompletion`), which a caller
/// arriving meanwhile joins; never leaked, and the key is free at the end.
fn abandon(policy: AbandonPolicy, second_caller: bool) {
    model(move || {
        let group = group(policy);
        let work = Work::new(Kind::Value);
        let first = {
            let (group, work) = (group.clone(), work.clone());
            thread::spawn(move || {
                let mut call = group.run(KEY, work.start());
                // Pending, or done if the work's event came first.
                let _ = poll_once(&mut call);
                drop(call);
            })
        };
        let second = second_caller.then(|| {
            let (group, work) = (group.clone(), work.clone());
            thread::spawn(move || call(&group, &work))
        });
        work.gate.open();
        if let Some(second) = second {
            let outcome = second.join().expect("the second caller");
            assert_eq!(value(&outcome), Some(VALUE));
        }
        first.join().expect("the first caller");
        crate::sync::join_spawned();

        let (runs, finished, cancelled) = (
            work.runs(),
            work.finished.load(SeqCst),
            work.cancelled.load(SeqCst),
        );
        assert!(runs <= 2, "{runs} executions for two callers");
        assert_eq!(finished + cancelled, runs, "an execution was leaked");
        if policy == AbandonPolicy::RunToCompletion {
            assert_eq!(cancelled, 0, "abandoned work was cancelled");
        } else {
            assert!(
                cancelled <= 1,
                "{cancelled} cancellations of one abandoned flight"
            );
        }
        assert_eq!(group.in_flight(), 0, "an entry was left behind");
    });
}

#[test]
fn abandoned_work_is_cancelled_under_cancel() {
    abandon(AbandonPolicy::Cancel, false);
}

#[test]
fn abandoned_work_is_finished_under_run_to_completion() {
    abandon(AbandonPolicy::RunToCompletion, false);
}

#[test]
fn a_caller_arriving_at_abandoned_work_under_cancel() {
    abandon(AbandonPolicy::Cancel, true);
}

#[test]
fn a_caller_arriving_at_abandoned_work_under_run_to_completion() {
    abandon(AbandonPolicy::RunToCompletion, true);
}

/// `forget` detaches a flight and a second call starts a new one; then the
/// first flight finishes while a third caller arrives. The first flight
/// must remove only its own entry (never the newer flight's), so the third
/// caller joins the second execution instead of starting a third.
#[test]
fn a_forgotten_flight_never_removes_its_successor() {
    model(|| {
        let group: &'static Group<u32, u32, Fail> =
            Box::leak(Box::new(group(AbandonPolicy::Cancel)));
        let (old, new, third) = (
            Work::new(Kind::Value),
            Work::new(Kind::Value),
            Work::new(Kind::Value),
        );
        let mut first = group.run(KEY, old.start());
        assert!(poll_once(&mut first).is_pending(), "the gate is shut");
        assert!(group.forget(&KEY), "nothing to forget");
        let mut second = group.run(KEY, new.start());
        assert!(poll_once(&mut second).is_pending(), "the gate is shut");

        let finishing = {
            let gate = old.gate.clone();
            thread::spawn(move || {
                gate.open();
                block_on(first)
            })
        };
        let arriving = {
            let third = third.clone();
            thread::spawn(move || block_on(group.run(KEY, third.start())))
        };
        assert_eq!(
            value(&finishing.join().expect("the first caller")),
            Some(VALUE)
        );
        new.gate.open();
        let outcome = arriving.join().expect("the third caller");
        assert_eq!(value(&outcome), Some(VALUE));
        assert_eq!(
            third.runs(),
            0,
            "a third execution started beside the second"
        );
        drop(second);
        assert_eq!(group.in_flight(), 0, "an entry was left behind");
    });
}
