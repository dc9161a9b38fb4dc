//! Single-flight behaviour under real concurrency: many tasks on two worker
//! threads, callers cancelled by timeout and abort, panics, races with `forget()`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use perfkit_dedup::{AbandonPolicy, Error, Group, Outcome};
use perfkit_test_support::concurrency::{HANG_GUARD, count_first_poll, until, within};
use tokio::sync::watch;

#[derive(Debug, PartialEq, Eq)]
struct Upstream(&'static str);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Upstream {}

type Prices = Group<u32, u64, Upstream>;

/// A gate the test opens when it is ready for the work to finish.
#[derive(Clone)]
struct Gate(watch::Sender<bool>, watch::Receiver<bool>);

impl Gate {
    fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self(tx, rx)
    }
    fn open(&self) {
        self.0.send_replace(true);
    }
    async fn passed(mut rx: watch::Receiver<bool>) {
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Sets its flag when dropped: shows whether the work future was dropped.
struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Counts executions and finishes with `value` once the gate opens.
#[derive(Clone)]
struct Probe {
    executions: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    completed: Arc<AtomicBool>,
    gate: Gate,
}

impl Probe {
    fn new() -> Self {
        Self {
            executions: Arc::default(),
            dropped: Arc::default(),
            completed: Arc::default(),
            gate: Gate::new(),
        }
    }

    fn work(
        &self,
        value: u64,
    ) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<u64, Upstream>> + Send>> + use<> {
        let probe = self.clone();
        move || {
            probe.executions.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let _guard = DropGuard(probe.dropped.clone());
                Gate::passed(probe.gate.1.clone()).await;
                probe.completed.store(true, Ordering::SeqCst);
                Ok(value)
            })
        }
    }

    fn executions(&self) -> usize {
        self.executions.load(Ordering::SeqCst)
    }
}

/// Awaits a caller's task; a hang guard, not a speed target.
async fn finished<T>(caller: tokio::task::JoinHandle<T>) -> T {
    within("a caller", caller)
        .await
        .expect("a caller's task failed")
}

fn spawn_callers(
    group: &Prices,
    probe: &Probe,
    key: u32,
    value: u64,
    count: usize,
    joined: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Outcome<u64, Upstream>>> {
    (0..count)
        .map(|_| {
            let (group, work, joined) = (group.clone(), probe.work(value), joined.clone());
            tokio::spawn(async move { count_first_poll(group.run(key, work), joined).await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_callers_share_one_execution() {
    let group = Prices::new();
    let probe = Probe::new();
    let joined = Arc::new(AtomicUsize::new(0));
    let callers = spawn_callers(&group, &probe, 7, 700, 10_000, &joined);

    until("the awaited state", || {
        joined.load(Ordering::SeqCst) == 10_000
    })
    .await;
    assert_eq!(group.in_flight(), 1);
    probe.gate.open();

    for caller in callers {
        let outcome = finished(caller).await;
        assert_eq!(outcome.result.unwrap(), 700);
        assert!(outcome.shared);
    }
    assert_eq!(probe.executions(), 1);
    assert_eq!(group.in_flight(), 0);
}

#[tokio::test]
async fn a_lone_call_is_not_shared() {
    let group = Prices::new();
    let outcome = group.run(1, || async { Ok(5) }).await;
    assert_eq!(outcome.result.unwrap(), 5);
    assert!(!outcome.shared);
}

/// The leader is cancelled by `cancel` after 10 followers joined; the work
/// must finish once, for the followers.
async fn leader_cancelled_mid_work(cancel: impl FnOnce(&tokio::task::JoinHandle<()>)) {
    let group = Prices::new();
    let probe = Probe::new();
    let leader = {
        let (group, work) = (group.clone(), probe.work(11));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(10), group.run(3, work)).await;
        })
    };
    until("the awaited state", || probe.executions() == 1).await;
    let joined = Arc::new(AtomicUsize::new(0));
    let followers = spawn_callers(&group, &probe, 3, 99, 10, &joined);
    until("the awaited state", || joined.load(Ordering::SeqCst) == 10).await;

    cancel(&leader);
    let _ = leader.await;
    assert!(
        !probe.dropped.load(Ordering::SeqCst),
        "the work survives its starter"
    );
    probe.gate.open();

    for follower in followers {
        let outcome = finished(follower).await;
        assert_eq!(
            outcome.result.unwrap(),
            11,
            "the leader's work, not a second execution"
        );
        assert!(outcome.shared);
    }
    assert_eq!(probe.executions(), 1);
    assert_eq!(group.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_timed_out_mid_work_leaves_one_execution_for_its_waiters() {
    leader_cancelled_mid_work(|_| {}).await; // its own 10 ms timeout fires
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_aborted_mid_work_leaves_one_execution_for_its_waiters() {
    leader_cancelled_mid_work(tokio::task::JoinHandle::abort).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_is_cancelled_when_every_waiter_is_gone() {
    let group = Prices::new();
    let probe = Probe::new();
    let joined = Arc::new(AtomicUsize::new(0));
    let callers = spawn_callers(&group, &probe, 5, 1, 8, &joined);
    until("the awaited state", || joined.load(Ordering::SeqCst) == 8).await;
    assert!(!probe.dropped.load(Ordering::SeqCst));

    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        assert!(caller.await.unwrap_err().is_cancelled());
    }
    assert!(
        probe.dropped.load(Ordering::SeqCst),
        "the work's drop guard fired"
    );
    assert!(!probe.completed.load(Ordering::SeqCst));
    assert_eq!(group.in_flight(), 0, "the key is free");

    probe.gate.open();
    let fresh = group.run(5, probe.work(2)).await;
    assert_eq!(fresh.result.unwrap(), 2);
    assert_eq!(probe.executions(), 2, "the next call runs afresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_to_completion_policy_finishes_abandoned_work() {
    let group: Prices = Group::builder()
        .abandon_policy(AbandonPolicy::RunToCompletion)
        .build()
        .unwrap();
    let probe = Probe::new();
    let joined = Arc::new(AtomicUsize::new(0));
    let callers = spawn_callers(&group, &probe, 5, 1, 8, &joined);
    until("the awaited state", || joined.load(Ordering::SeqCst) == 8).await;
    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        assert!(caller.await.unwrap_err().is_cancelled());
    }
    assert!(!probe.dropped.load(Ordering::SeqCst), "not cancelled");
    assert_eq!(group.in_flight(), 1, "still running, detached");

    // A caller arriving now joins the detached execution.
    let late_joined = Arc::new(AtomicUsize::new(0));
    let late = {
        let (group, work, joined) = (group.clone(), probe.work(2), late_joined.clone());
        tokio::spawn(async move { count_first_poll(group.run(5, work), joined).await })
    };
    until("the awaited state", || {
        late_joined.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        probe.executions(),
        1,
        "the late caller joined, it did not start the work again"
    );
    probe.gate.open();
    until("the awaited state", || {
        probe.completed.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(
        finished(late).await.result.unwrap(),
        1,
        "joined the running work"
    );
    until("the awaited state", || group.in_flight() == 0).await;
    assert_eq!(probe.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_reaches_every_waiter_and_frees_the_key() {
    let group = Prices::new();
    let gate = Gate::new();
    let joined = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (group, joined, rx) = (group.clone(), joined.clone(), gate.1.clone());
            tokio::spawn(async move {
                let work = move || async move {
                    Gate::passed(rx).await;
                    panic!("upstream returned garbage");
                };
                count_first_poll(group.run(9, work), joined).await
            })
        })
        .collect();
    until("the awaited state", || joined.load(Ordering::SeqCst) == 20).await;
    gate.open();
    for caller in callers {
        let outcome = finished(caller).await;
        match outcome.result {
            Err(Error::Panicked(message)) => assert!(message.contains("upstream returned garbage")),
            other => panic!("expected the panic error, got {other:?}"),
        }
    }
    assert_eq!(group.in_flight(), 0);
    let next = group.run(9, || async { Ok(3) }).await;
    assert_eq!(next.result.unwrap(), 3, "the next call runs fresh");
}

#[tokio::test]
async fn panic_while_building_the_work_is_reported() {
    let group = Prices::new();
    let outcome = group
        .run(1, || -> std::future::Ready<Result<u64, Upstream>> {
            panic!("bad closure")
        })
        .await;
    assert!(matches!(outcome.result, Err(Error::Panicked(m)) if m.contains("bad closure")));
    assert_eq!(group.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_is_shared_with_every_waiter_and_not_remembered() {
    let group = Prices::new();
    let gate = Gate::new();
    let executions = Arc::new(AtomicUsize::new(0));
    let joined = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (group, joined, rx, executions) = (
                group.clone(),
                joined.clone(),
                gate.1.clone(),
                executions.clone(),
            );
            tokio::spawn(async move {
                let work = move || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    Gate::passed(rx).await;
                    Err(Upstream("503 from upstream"))
                };
                count_first_poll(group.run(4, work), joined).await
            })
        })
        .collect();
    until("the awaited state", || joined.load(Ordering::SeqCst) == 50).await;
    gate.open();
    let mut errors = Vec::new();
    for caller in callers {
        let error = finished(caller).await.result.unwrap_err();
        assert_eq!(**error.failure().unwrap(), Upstream("503 from upstream"));
        errors.push(error.failure().unwrap().clone());
    }
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "one error, shared"
    );
    assert_eq!(executions.load(Ordering::SeqCst), 1);

    let again = group.run(4, || async { Ok(1) }).await;
    assert_eq!(again.result.unwrap(), 1, "the error was not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_starts_a_fresh_flight_and_old_waiters_get_the_old_result() {
    let group = Prices::new();
    let old = Probe::new();
    let joined = Arc::new(AtomicUsize::new(0));
    let old_callers = spawn_callers(&group, &old, 6, 100, 5, &joined);
    until("the awaited state", || joined.load(Ordering::SeqCst) == 5).await;

    assert!(group.forget(&6));
    assert!(!group.forget(&6), "nothing left to forget");
    let new = Probe::new();
    let new_callers = spawn_callers(&group, &new, 6, 200, 5, &joined);
    until("the awaited state", || joined.load(Ordering::SeqCst) == 10).await;
    assert_eq!(new.executions(), 1, "a fresh execution after forget()");

    old.gate.open();
    for caller in old_callers {
        assert_eq!(finished(caller).await.result.unwrap(), 100);
    }
    assert_eq!(
        group.in_flight(),
        1,
        "the old flight did not remove the new one"
    );
    new.gate.open();
    for caller in new_callers {
        assert_eq!(finished(caller).await.result.unwrap(), 200);
    }
    assert_eq!((old.executions(), new.executions()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_flight_never_removes_a_newer_one_under_stress() {
    let group = Prices::new();
    for round in 0..2_000_u64 {
        let old = Probe::new();
        let old_call = {
            let (group, work) = (group.clone(), old.work(round));
            tokio::spawn(async move { group.run(1, work).await })
        };
        until("the awaited state", || old.executions() == 1).await;
        group.forget(&1);

        let new = Probe::new();
        let new_call = {
            let (group, work) = (group.clone(), new.work(round + 1_000_000));
            tokio::spawn(async move { group.run(1, work).await })
        };
        until("the awaited state", || new.executions() == 1).await;

        // Finish the old flight on one thread while a late caller joins on the other.
        let late_probe = Probe::new();
        let joined = Arc::new(AtomicUsize::new(0));
        let late = {
            let (group, work, joined) = (group.clone(), late_probe.work(0), joined.clone());
            tokio::spawn(async move { count_first_poll(group.run(1, work), joined).await })
        };
        old.gate.open();
        assert_eq!(finished(old_call).await.result.unwrap(), round);
        assert_eq!(
            group.in_flight(),
            1,
            "round {round}: the new flight is still in the map"
        );

        until("the awaited state", || joined.load(Ordering::SeqCst) == 1).await;
        assert_eq!(
            late_probe.executions(),
            0,
            "round {round}: the late caller joined, it did not lead"
        );
        new.gate.open();
        assert_eq!(finished(new_call).await.result.unwrap(), round + 1_000_000);
        assert_eq!(
            finished(late).await.result.unwrap(),
            round + 1_000_000,
            "round {round}: the late caller joined the newer flight"
        );
        assert_eq!(new.executions(), 1);
        assert_eq!(group.in_flight(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_never_stall_behind_a_leader_that_is_not_polled() {
    let group = Prices::new();
    let executions = Arc::new(AtomicUsize::new(0));
    let work = {
        let executions = executions.clone();
        move || async move {
            executions.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(8)
        }
    };
    // Start the flight, then keep the leader's future alive without polling it again.
    let mut idle_leader = group.run(2, work.clone());
    let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut idle_leader).poll(cx))).await;
    assert!(first.is_pending());

    let followers: Vec<_> = (0..10)
        .map(|_| {
            let (group, work) = (group.clone(), work.clone());
            tokio::spawn(async move { group.run(2, work).await })
        })
        .collect();
    for follower in followers {
        let outcome = finished(follower).await;
        assert_eq!(outcome.result.unwrap(), 8);
    }
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    // The idle leader gets the same outcome when it is polled at last.
    let last = tokio::time::timeout(HANG_GUARD, idle_leader)
        .await
        .expect("the idle leader hung");
    assert_eq!(last.result.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_keys_run_independently() {
    let group = Prices::new();
    let executions = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..1_000_u32)
        .map(|key| {
            let (group, executions) = (group.clone(), executions.clone());
            tokio::spawn(async move {
                group
                    .run(key, move || async move {
                        executions.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(u64::from(key) * 2)
                    })
                    .await
            })
        })
        .collect();
    for (key, caller) in (0..1_000_u64).zip(callers) {
        assert_eq!(finished(caller).await.result.unwrap(), key * 2);
    }
    assert_eq!(executions.load(Ordering::SeqCst), 1_000);
    assert_eq!(group.in_flight(), 0);
}

#[test]
fn builder_rejects_impossible_settings() {
    assert!(Prices::builder().shards(3).build().is_err());
    assert!(Prices::builder().shards(1).build().is_err());
    assert!(Prices::builder().name(" ").build().is_err());
    assert!(Prices::builder().shards(64).name("prices").build().is_ok());
}

/// Work that is woken while it is being polled: synchronously on the first
/// poll (as a future does when it is ready again at once), and from another
/// thread on later polls (as an I/O driver on another worker does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_woken_during_its_own_poll_is_polled_again() {
    let group: Group<u32, u32, ()> = Group::new();
    for round in 0..1_000 {
        let mut polls = 0;
        let outcome = within(
            "a flight whose work wakes itself while polled",
            group.run(round, move || {
                poll_fn(move |cx| {
                    polls += 1;
                    match polls {
                        1 => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        2 => {
                            let waker = cx.waker().clone();
                            std::thread::spawn(move || waker.wake());
                            Poll::Pending
                        }
                        _ => Poll::Ready(Ok(round)),
                    }
                })
            }),
        )
        .await;
        assert_eq!(outcome.result.unwrap(), round);
    }
}
