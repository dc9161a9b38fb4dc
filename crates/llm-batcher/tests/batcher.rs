//! The batcher with a scripted executor under tokio's paused clock: when
//! batches close, who gets which result, cancellation, the queue bound,
//! shutdown, 429s and quota exhaustion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::VecDeque;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Random;
use perfkit_llm_batcher::{
    BatchExecutor, Batcher, Clock, Error, ExecError, ExecFuture, Executed, RateLimiter,
};
use tokio::time::Instant;

/// A request: its model, its text and its token estimate.
#[derive(Debug, Clone)]
struct Request {
    model: &'static str,
    text: String,
    tokens: u32,
}

fn request(model: &'static str, text: &str, tokens: u32) -> Request {
    Request {
        model,
        text: text.to_owned(),
        tokens,
    }
}

/// What a scripted call does instead of echoing.
enum Script {
    RateLimited(Option<Duration>),
    Quota,
    Fail,
    /// Returns one result fewer than requested.
    Short,
    /// Fails the items whose text is "bad".
    FailBad,
}

#[derive(Default)]
struct Log {
    calls: Vec<(Instant, String, Vec<String>)>,
    script: VecDeque<Script>,
}

/// Echoes each text, uppercased; records every call; follows its script first.
#[derive(Clone, Default)]
struct Echo {
    log: Arc<Mutex<Log>>,
    /// How long a call takes.
    latency: Duration,
}

impl Echo {
    fn script(&self, steps: impl IntoIterator<Item = Script>) {
        self.log.lock().unwrap().script.extend(steps);
    }

    fn calls(&self) -> Vec<(Instant, String, Vec<String>)> {
        self.log.lock().unwrap().calls.clone()
    }
}

impl BatchExecutor for Echo {
    type Request = Request;
    type Response = String;
    type Error = std::io::Error;

    fn model<'a>(&'a self, request: &'a Request) -> &'a str {
        request.model
    }

    fn estimate_tokens(&self, request: &Request) -> u32 {
        request.tokens
    }

    fn execute<'a>(
        &'a self,
        model: &'a str,
        batch: &'a [Request],
    ) -> ExecFuture<'a, String, std::io::Error> {
        Box::pin(async move {
            let step = {
                let mut log = self.log.lock().unwrap();
                let texts = batch.iter().map(|request| request.text.clone()).collect();
                log.calls.push((Instant::now(), model.to_owned(), texts));
                log.script.pop_front()
            };
            tokio::time::sleep(self.latency).await;
            let echo = |request: &Request| Ok(request.text.to_uppercase());
            match step {
                None => Ok(Executed::new(batch.iter().map(echo).collect())),
                Some(Script::RateLimited(retry_after)) => {
                    Err(ExecError::RateLimited { retry_after })
                }
                Some(Script::Quota) => Err(ExecError::QuotaExhausted(std::io::Error::other(
                    "insufficient_quota",
                ))),
                Some(Script::Fail) => Err(ExecError::Failed(std::io::Error::other("boom"))),
                Some(Script::Short) => Ok(Executed::new(batch.iter().skip(1).map(echo).collect())),
                Some(Script::FailBad) => Ok(Executed::new(
                    batch
                        .iter()
                        .map(|request| {
                            if request.text == "bad" {
                                Err(std::io::Error::other("bad input"))
                            } else {
                                echo(request)
                            }
                        })
                        .collect(),
                )),
            }
        })
    }
}

fn nz(value: usize) -> NonZeroUsize {
    NonZeroUsize::new(value).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_batch_closes_on_count_tokens_or_linger_whichever_comes_first() {
    let echo = Echo::default();
    let batcher = Batcher::builder(echo.clone())
        .max_items(nz(3))
        .max_tokens(100)
        .linger(Duration::from_millis(50))
        .build()
        .unwrap();
    let start = Instant::now();
    // Count: three requests close a batch at once.
    let results = futures_join(&batcher, ["a", "b", "c"].map(|t| request("m", t, 1))).await;
    assert_eq!(results, ["A", "B", "C"]);
    // Tokens: 60 + 40 reach the budget and close at once.
    let results = futures_join(&batcher, [request("m", "d", 60), request("m", "e", 40)]).await;
    assert_eq!(results, ["D", "E"]);
    // Linger: one request alone waits exactly the linger.
    let results = futures_join(&batcher, [request("m", "f", 1)]).await;
    assert_eq!(results, ["F"]);
    let calls = echo.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].0 - start, Duration::ZERO);
    assert_eq!(calls[1].0 - start, Duration::ZERO);
    assert_eq!(calls[2].0 - start, Duration::from_millis(50));
    // A request that would push a batch over the budget closes it and opens the next.
    let results = futures_join(&batcher, [request("m", "g", 70), request("m", "h", 70)]).await;
    assert_eq!(results, ["G", "H"]);
    let calls = echo.calls();
    assert_eq!(calls[3].2, ["g"]);
    assert_eq!(calls[4].2, ["h"]);
    batcher.shutdown().await;
}

/// Submits every request at once and returns the results in order.
async fn futures_join<const N: usize>(
    batcher: &Batcher<Echo>,
    requests: [Request; N],
) -> Vec<String> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit(request).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    results
}

#[tokio::test(start_paused = true)]
async fn requests_for_different_models_never_share_a_call() {
    let echo = Echo::default();
    let batcher = Batcher::builder(echo.clone()).build().unwrap();
    let results = futures_join(
        &batcher,
        [
            request("small", "a", 1),
            request("large", "b", 1),
            request("small", "c", 1),
            request("large", "d", 1),
        ],
    )
    .await;
    assert_eq!(results, ["A", "B", "C", "D"]);
    let mut calls: Vec<(String, Vec<String>)> = echo
        .calls()
        .into_iter()
        .map(|(_, model, texts)| (model, texts))
        .collect();
    calls.sort();
    assert_eq!(
        calls,
        [
            ("large".to_owned(), vec!["b".to_owned(), "d".to_owned()]),
            ("small".to_owned(), vec!["a".to_owned(), "c".to_owned()]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn each_caller_gets_its_own_result_and_errors_reach_only_whom_they_concern() {
    let echo = Echo::default();
    let batcher = Batcher::builder(echo.clone()).build().unwrap();
    // Per-item failure: only "bad" fails.
    echo.script([Script::FailBad]);
    let (a, bad, c) = tokio::join!(
        batcher.submit(request("m", "a", 1)),
        batcher.submit(request("m", "bad", 1)),
        batcher.submit(request("m", "c", 1)),
    );
    assert_eq!((a.unwrap(), c.unwrap()), ("A".to_owned(), "C".to_owned()));
    assert!(matches!(bad, Err(Error::Item(_))));
    // Whole-call failure: everyone gets the same error.
    echo.script([Script::Fail]);
    let (a, b) = tokio::join!(
        batcher.submit(request("m", "a", 1)),
        batcher.submit(request("m", "b", 1)),
    );
    match (a, b) {
        (Err(Error::Failed(a)), Err(Error::Failed(b))) => assert!(Arc::ptr_eq(&a, &b)),
        other => panic!("{other:?}"),
    }
    // A result count that does not match: nobody gets a result that may be another's.
    echo.script([Script::Short]);
    let (a, b) = tokio::join!(
        batcher.submit(request("m", "a", 1)),
        batcher.submit(request("m", "b", 1)),
    );
    for outcome in [a, b] {
        assert!(
            matches!(
                outcome,
                Err(Error::CountMismatch {
                    expected: 2,
                    got: 1
                })
            ),
            "{outcome:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_gone_before_dispatch_is_not_sent_and_after_dispatch_is_harmless() {
    let echo = Echo {
        latency: Duration::from_millis(100),
        ..Echo::default()
    };
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .tokens_per_minute(NonZeroU32::new(6_000).unwrap())
        .token_burst(NonZeroU32::new(1_000).unwrap())
        .build()
        .unwrap();
    let batcher = Batcher::builder(echo.clone())
        .max_tokens(1_000)
        .rate_limiter(limiter.clone())
        .linger(Duration::from_millis(10))
        .build()
        .unwrap();
    // Before dispatch: one caller leaves while its batch waits in the linger.
    let stays = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.submit(request("m", "stays", 10)).await }
    });
    let leaves = batcher.try_submit(request("m", "leaves", 500)).unwrap();
    tokio::task::yield_now().await;
    drop(leaves);
    assert_eq!(stays.await.unwrap().unwrap(), "STAYS");
    assert_eq!(echo.calls()[0].2, ["stays"]);
    // Its 500 tokens were not spent: 990 more fit in the burst right away.
    assert!(limiter.try_acquire(990).unwrap().is_some());
    // After dispatch: the call runs, the result is dropped, nothing breaks.
    let gone = batcher.try_submit(request("m", "late", 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await; // linger over: sent
    drop(gone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(echo.calls().len(), 2);
    assert_eq!(
        batcher.submit(request("m", "next", 1)).await.unwrap(),
        "NEXT"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_try_submit_and_holds_submit() {
    let echo = Echo {
        latency: Duration::from_secs(1),
        ..Echo::default()
    };
    let batcher = Batcher::builder(echo.clone())
        .queue_capacity(nz(2))
        .max_in_flight(nz(1))
        .max_items(nz(1))
        .build()
        .unwrap();
    // One call in flight (its slot given back), two queued behind it.
    let first = batcher.try_submit(request("m", "1", 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = batcher.try_submit(request("m", "2", 1)).unwrap();
    let third = batcher.try_submit(request("m", "3", 1)).unwrap();
    assert!(matches!(
        batcher.try_submit(request("m", "4", 1)),
        Err(Error::QueueFull)
    ));
    let fourth = tokio::spawn({
        let batcher = batcher.clone();
        async move { batcher.submit(request("m", "4", 1)).await }
    });
    assert_eq!(first.await.unwrap(), "1");
    assert_eq!(second.await.unwrap(), "2");
    assert_eq!(third.await.unwrap(), "3");
    assert_eq!(fourth.await.unwrap().unwrap(), "4");
}

#[tokio::test(start_paused = true)]
async fn places_of_callers_gone_before_dispatch_are_given_back_to_the_queue() {
    let echo = Echo::default();
    let batcher = Batcher::builder(echo.clone())
        .queue_capacity(nz(2))
        .linger(Duration::from_millis(10))
        .build()
        .unwrap();
    for round in 0..3 {
        let a = batcher.try_submit(request("m", "a", 1)).unwrap();
        let b = batcher.try_submit(request("m", "b", 1)).unwrap();
        assert!(
            matches!(
                batcher.try_submit(request("m", "c", 1)),
                Err(Error::QueueFull)
            ),
            "round {round}"
        );
        drop((a, b));
        // The batch closes on its linger, finds its callers gone and sends nothing.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(echo.calls().is_empty());
    let (c, d) = tokio::join!(
        batcher.submit(request("m", "c", 1)),
        batcher.submit(request("m", "d", 1))
    );
    assert_eq!((c.unwrap(), d.unwrap()), ("C".to_owned(), "D".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_what_is_queued_waits_for_it_and_refuses_the_rest() {
    let echo = Echo {
        latency: Duration::from_millis(300),
        ..Echo::default()
    };
    let batcher = Batcher::builder(echo.clone())
        .linger(Duration::from_secs(10))
        .build()
        .unwrap();
    let queued: Vec<_> = (0..5)
        .map(|index| {
            batcher
                .try_submit(request("m", &index.to_string(), 1))
                .unwrap()
        })
        .collect();
    tokio::task::yield_now().await;
    let start = Instant::now();
    batcher.shutdown().await;
    // Sent at once (not after the 10 s linger), finished before shutdown returned.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    for pending in queued {
        assert!(pending.await.is_ok());
    }
    assert!(matches!(
        batcher.submit(request("m", "late", 1)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_dispatch_for_its_retry_after_then_the_batch_is_sent_again() {
    let echo = Echo::default();
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .requests_per_minute(NonZeroU32::new(1_000).unwrap())
        .build()
        .unwrap();
    let batcher = Batcher::builder(echo.clone())
        .rate_limiter(limiter)
        .build()
        .unwrap();
    echo.script([Script::RateLimited(Some(Duration::from_secs(2)))]);
    let start = Instant::now();
    assert_eq!(batcher.submit(request("m", "a", 1)).await.unwrap(), "A");
    let calls = echo.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].0 - calls[0].0;
    assert!(
        gap >= Duration::from_secs(2) && gap < Duration::from_millis(2_010),
        "{gap:?}"
    );
    // Every batch waits out the pause, not only the limited one.
    echo.script([Script::RateLimited(Some(Duration::from_secs(5)))]);
    let (a, b) = tokio::join!(batcher.submit(request("m", "b", 1)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        batcher.submit(request("other", "c", 1)).await
    });
    assert_eq!((a.unwrap(), b.unwrap()), ("B".to_owned(), "C".to_owned()));
    let calls = echo.calls();
    let other = calls.iter().find(|(_, model, _)| model == "other").unwrap();
    assert!(
        other.0 - calls[2].0 >= Duration::from_secs(5),
        "{:?}",
        other.0 - start
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_on_every_attempt_fails_and_quota_exhaustion_fails_at_once() {
    let echo = Echo::default();
    let batcher = Batcher::builder(echo.clone())
        .max_attempts(3)
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .unwrap();
    echo.script((0..3).map(|_| Script::RateLimited(None)));
    let outcome = batcher.submit(request("m", "a", 1)).await;
    assert!(
        matches!(outcome, Err(Error::RateLimited { attempts: 3 })),
        "{outcome:?}"
    );
    assert_eq!(echo.calls().len(), 3);
    // Backoff with full jitter: within 0..=100 ms, then 0..=200 ms.
    let calls = echo.calls();
    assert!(calls[1].0 - calls[0].0 <= Duration::from_millis(101));
    assert!(calls[2].0 - calls[1].0 <= Duration::from_millis(201));

    echo.script([Script::Quota]);
    let outcome = batcher.submit(request("m", "b", 1)).await;
    assert!(
        matches!(outcome, Err(Error::QuotaExhausted(_))),
        "{outcome:?}"
    );
    assert_eq!(echo.calls().len(), 4, "quota exhaustion is not retried");
}

#[tokio::test]
async fn oversized_requests_and_impossible_settings_are_refused() {
    let batcher = Batcher::builder(Echo::default())
        .max_tokens(100)
        .build()
        .unwrap();
    assert!(matches!(
        batcher.submit(request("m", "big", 101)).await,
        Err(Error::TooLarge {
            tokens: 101,
            max: 100
        })
    ));
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .tokens_per_minute(NonZeroU32::new(10_000).unwrap())
        .build()
        .unwrap();
    assert!(matches!(
        Batcher::builder(Echo::default())
            .max_tokens(5_000)
            .rate_limiter(limiter.clone())
            .build(),
        Err(perfkit_llm_batcher::ConfigError::BatchOverBurst {
            max_tokens: 5_000,
            burst: 1_000
        })
    ));
    // Left at its default, the batch budget is lowered to the burst.
    let limited = Batcher::builder(Echo::default())
        .rate_limiter(limiter)
        .build()
        .unwrap();
    assert!(matches!(
        limited.submit(request("m", "big", 1_001)).await,
        Err(Error::TooLarge {
            tokens: 1_001,
            max: 1_000
        })
    ));
    assert!(matches!(
        Batcher::builder(Echo::default()).name("").build(),
        Err(perfkit_llm_batcher::ConfigError::EmptyName)
    ));
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(matches!(
        Batcher::builder(Echo::default()).build(),
        Err(perfkit_llm_batcher::ConfigError::NoRuntime)
    ));
}

#[tokio::test(start_paused = true)]
async fn calls_under_a_limiter_never_exceed_its_limits_in_any_60_s_window() {
    let (rpm, tpm) = (30_u32, 10_000_u32);
    let echo = Echo::default();
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .requests_per_minute(NonZeroU32::new(rpm).unwrap())
        .tokens_per_minute(NonZeroU32::new(tpm).unwrap())
        .token_burst(NonZeroU32::new(2_000).unwrap())
        .build()
        .unwrap();
    let batcher = Batcher::builder(echo.clone())
        .max_items(nz(16))
        .max_tokens(2_000)
        .linger(Duration::from_millis(200))
        .rate_limiter(limiter)
        .build()
        .unwrap();
    let mut random = Random(42);
    let mut callers = Vec::new();
    for index in 0..800_u32 {
        let tokens = 1 + u32::try_from(random.next() % 300).unwrap();
        let delay = Duration::from_millis(random.next() % 600_000);
        let batcher = batcher.clone();
        callers.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            batcher
                .submit(request("m", &index.to_string(), tokens))
                .await
                .unwrap()
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    // The dispatch log: one call per batch, its tokens from the requests' texts.
    let tokens_of: std::collections::HashMap<String, u32> = {
        let mut random = Random(42);
        (0..800_u32)
            .map(|index| {
                let tokens = 1 + u32::try_from(random.next() % 300).unwrap();
                let _delay = random.next();
                (index.to_string(), tokens)
            })
            .collect()
    };
    let calls: Vec<(Instant, u64)> = echo
        .calls()
        .into_iter()
        .map(|(at, _, texts)| {
            (
                at,
                texts.iter().map(|text| u64::from(tokens_of[text])).sum(),
            )
        })
        .collect();
    assert_eq!(
        echo.calls()
            .iter()
            .map(|(_, _, texts)| texts.len())
            .sum::<usize>(),
        800
    );
    for (start, (at, _)) in calls.iter().enumerate() {
        let inside: Vec<_> = calls[start..]
            .iter()
            .take_while(|(other, _)| other.duration_since(*at) < Duration::from_secs(60))
            .collect();
        let tokens: u64 = inside.iter().map(|(_, tokens)| tokens).sum();
        assert!(
            inside.len() <= rpm as usize,
            "{} calls in the window from call {start}",
            inside.len()
        );
        assert!(
            tokens <= u64::from(tpm),
            "{tokens} tokens in the window from call {start}"
        );
    }
}
