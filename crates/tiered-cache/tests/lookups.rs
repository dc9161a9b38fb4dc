//! `get`'s shared lookups: concurrent misses of one key ask the lower tiers
//! once; a first caller that goes away or stops being polled never strands
//! the others.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod first_tier;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use perfkit_test_support::concurrency::{count_first_poll, until, within};
use perfkit_tiered_cache::{Cache, Entry, Tier, TierFuture, Write};
use tokio::sync::watch;

/// A user-written second tier that holds one value for every key, counts its
/// lookups and holds them at a gate: every lookup, or only the first.
#[derive(Clone)]
struct Gated {
    lookups: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    first_only: bool,
}

impl Gated {
    fn new(first_only: bool) -> (Self, watch::Sender<bool>) {
        let (open, gate) = watch::channel(false);
        let tier = Self {
            lookups: Arc::new(AtomicUsize::new(0)),
            gate,
            first_only,
        };
        (tier, open)
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl Tier<String> for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn get<'a>(&'a self, _key: &'a str) -> TierFuture<'a, Option<Entry<String>>> {
        let call = self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gate.clone();
        let held = call == 0 || !self.first_only;
        Box::pin(async move {
            if held {
                let _ = gate.wait_for(|open| *open).await;
            }
            Ok(Some(Entry::new(Arc::new("lower".to_owned()), None)))
        })
    }
    fn set<'a>(&'a self, _write: &'a Write<'a, String>) -> TierFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(&'a self, _key: &'a str) -> TierFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// L1 over `lower`; waiters wait on another caller's lookup at most twice
/// `remote_timeout`.
fn cache(lower: &Gated, remote_timeout: Duration) -> Cache<String> {
    Cache::builder()
        .tier(first_tier::l1(1_000))
        .tier(lower.clone())
        .remote_timeout(remote_timeout)
        .build()
        .unwrap()
}

/// A timeout long enough that no waiter gives up on a held lookup here.
const PATIENT: Duration = Duration::from_secs(10);

/// `callers` tasks calling `get("k")`, each counted once it has been polled.
fn spawn_gets(
    cache: &Cache<String>,
    callers: usize,
    started: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Option<Arc<String>>>> {
    (0..callers)
        .map(|_| {
            let (cache, started) = (cache.clone(), Arc::clone(started));
            tokio::spawn(async move { count_first_poll(cache.get("k"), started).await })
        })
        .collect()
}

type Get = tokio::task::JoinHandle<Option<Arc<String>>>;

/// A first `get("k")` whose lookup of `lower` has started, then `waiters`
/// more `get("k")` calls, all polled once (waiting on the first's lookup).
async fn first_and_waiters(
    cache: &Cache<String>,
    lower: &Gated,
    waiters: usize,
) -> (Get, Vec<Get>) {
    let first = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get("k").await })
    };
    until("the first lookup started", || lower.lookups() == 1).await;
    let started = Arc::new(AtomicUsize::new(0));
    let tasks = spawn_gets(cache, waiters, &started);
    until("every waiter started", || {
        started.load(Ordering::SeqCst) == waiters
    })
    .await;
    (first, tasks)
}

async fn values(tasks: Vec<tokio::task::JoinHandle<Option<Arc<String>>>>) -> Vec<Option<String>> {
    let mut values = Vec::new();
    for task in tasks {
        let value = within("a get", task).await.unwrap();
        values.push(value.map(|v| (*v).clone()));
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_share_one_lookup() {
    for round in 0..20 {
        let (lower, open) = Gated::new(false);
        let cache = cache(&lower, PATIENT);
        let started = Arc::new(AtomicUsize::new(0));
        let tasks = spawn_gets(&cache, 200, &started);
        until("every get started", || {
            started.load(Ordering::SeqCst) == 200
        })
        .await;
        open.send_replace(true);
        let values = values(tasks).await;
        assert!(
            values.iter().all(|v| v.as_deref() == Some("lower")),
            "round {round}: every caller got the value"
        );
        assert_eq!(
            lower.lookups(),
            1,
            "round {round}: one lookup for 200 misses"
        );
        let stats = cache.stats();
        assert_eq!(stats.shared_lookups, 199, "round {round}");
        assert_eq!(stats.tiers[0].promotions, 1, "round {round}: promoted once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_first_caller_hands_the_lookup_to_one_waiter() {
    for round in 0..20 {
        let (lower, open) = Gated::new(false);
        let cache = cache(&lower, PATIENT);
        let (first, tasks) = first_and_waiters(&cache, &lower, 50).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        // One waiter looks in the first caller's place; the others wait on it.
        until("a waiter took over", || lower.lookups() == 2).await;
        open.send_replace(true);
        let values = values(tasks).await;
        assert!(
            values.iter().all(|v| v.as_deref() == Some("lower")),
            "round {round}: every waiter got the value"
        );
        assert_eq!(
            lower.lookups(),
            2,
            "round {round}: one takeover, not one per waiter"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_caller_that_is_never_polled_again_delays_the_others_but_never_strands_them() {
    // Only the first lookup is held: the waiters' own lookups answer.
    let (lower, _open) = Gated::new(true);
    let cache = cache(&lower, Duration::from_millis(25));
    // Polled once (its lookup is now held at the gate), then kept but never
    // polled again, as in a `select!` whose other branch won.
    let mut stalled = pin!(cache.get("k"));
    assert!(futures_poll_once(stalled.as_mut()).await.is_none());
    assert_eq!(lower.lookups(), 1);

    let started = Arc::new(AtomicUsize::new(0));
    let tasks = spawn_gets(&cache, 20, &started);
    // Patience: twice the 25 ms remote timeout per tier below the first.
    let values = within("waiters behind a stalled first caller", values(tasks)).await;
    assert!(values.iter().all(|v| v.as_deref() == Some("lower")));
    // The first to give up leads a new lookup; the others join it or, once
    // it is done, find its promotion in L1.
    assert_eq!(
        lower.lookups(),
        2,
        "the waiters left the stalled lookup behind and shared one new one"
    );
}

/// Polls `future` once: `Some(output)` if it finished.
async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn invalidate_detaches_a_lookup_in_progress() {
    let (lower, open) = Gated::new(false);
    let cache = cache(&lower, PATIENT);
    let first = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get("k").await })
    };
    until("the first lookup started", || lower.lookups() == 1).await;
    cache.invalidate("k").await;
    let second = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get("k").await })
    };
    until("a get after the invalidation looked afresh", || {
        lower.lookups() == 2
    })
    .await;
    open.send_replace(true);
    assert!(within("first", first).await.unwrap().is_some());
    assert!(within("second", second).await.unwrap().is_some());
}

/// A second tier whose first lookup panics once the gate opens.
#[derive(Clone)]
struct PanicsFirst(Gated);

impl Tier<String> for PanicsFirst {
    fn name(&self) -> &str {
        "panics-first"
    }
    fn get<'a>(&'a self, key: &'a str) -> TierFuture<'a, Option<Entry<String>>> {
        let first = self.0.lookups() == 0;
        let inner = self.0.get(key);
        Box::pin(async move {
            let found = inner.await;
            assert!(!first, "the tier's first lookup fails");
            found
        })
    }
    fn set<'a>(&'a self, write: &'a Write<'a, String>) -> TierFuture<'a, ()> {
        self.0.set(write)
    }
    fn delete<'a>(&'a self, key: &'a str) -> TierFuture<'a, ()> {
        self.0.delete(key)
    }
    fn clear(&self) -> TierFuture<'_, ()> {
        self.0.clear()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_lookup_panics_its_caller_and_the_waiters_look_again() {
    let (gated, open) = Gated::new(true);
    let cache: Cache<String> = Cache::builder()
        .tier(first_tier::l1(1_000))
        .tier(PanicsFirst(gated.clone()))
        .remote_timeout(PATIENT)
        .build()
        .unwrap();
    let (first, tasks) = first_and_waiters(&cache, &gated, 20).await;
    open.send_replace(true);
    assert!(within("first", first).await.unwrap_err().is_panic());
    let values = values(tasks).await;
    assert!(values.iter().all(|v| v.as_deref() == Some("lower")));
    assert_eq!(
        gated.lookups(),
        2,
        "one waiter looked again, the others shared it"
    );
}

/// The same on one thread with tokio's paused clock: a deterministic
/// schedule (loom cannot unwind a thread through its own operations, so the
/// panic is checked here; the models check the same drop path for a
/// cancelled first caller). The waiters look again at once, not after
/// their patience, and share one new lookup.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_lookup_sends_its_waiters_to_look_again_at_once() {
    let (gated, open) = Gated::new(true);
    let cache: Cache<String> = Cache::builder()
        .tier(first_tier::l1(1_000))
        .tier(PanicsFirst(gated.clone()))
        .remote_timeout(PATIENT)
        .build()
        .unwrap();
    let (first, tasks) = first_and_waiters(&cache, &gated, 3).await;
    let opened_at = tokio::time::Instant::now();
    open.send_replace(true);
    assert!(within("first", first).await.unwrap_err().is_panic());
    let values = values(tasks).await;
    assert!(values.iter().all(|v| v.as_deref() == Some("lower")));
    assert_eq!(
        gated.lookups(),
        2,
        "one waiter looked again, the others shared it"
    );
    assert!(
        opened_at.elapsed() < PATIENT,
        "the waiters waited {:?}: out of patience, not woken by the panic",
        opened_at.elapsed()
    );
}
