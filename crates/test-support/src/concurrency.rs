//! Waiting in concurrency tests: hang guards (never speed targets) and a way
//! to know that a future has started.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a test waits for something that must happen before calling it a
/// hang. Generous on purpose: this catches deadlocks, it does not measure.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it takes longer than [`HANG_GUARD`].
///
/// # Panics
///
/// When `future` does not finish within [`HANG_GUARD`]; `what` names it.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        #[allow(clippy::panic)] // failing the test is the point
        Err(_) => panic!("{what} did not finish within {HANG_GUARD:?}: a hang"), // ok: test harness
    }
}

/// Waits until `condition` holds, checking every millisecond.
///
/// # Panics
///
/// When `condition` does not hold within [`HANG_GUARD`].
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Polls `future` to completion, adding one to `started` right after its
/// first poll: a test can wait until many futures have all started (joined a
/// flight, claimed a key, …) before letting anything finish.
pub async fn count_first_poll<F: Future>(future: F, started: Arc<AtomicUsize>) -> F::Output {
    let mut future = Box::pin(future);
    let mut first = true;
    poll_fn(move |cx| {
        let polled = future.as_mut().poll(cx);
        if std::mem::take(&mut first) {
            started.fetch_add(1, Ordering::SeqCst);
        }
        polled
    })
    .await
}
