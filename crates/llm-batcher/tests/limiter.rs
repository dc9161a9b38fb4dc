//! The rate limiter under tokio's paused clock: the window bound checked
//! from the admission log, FIFO order, cancellation, reconciliation, pauses;
//! and on the default clock in real time, with admissions from several threads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Random;
use perfkit_llm_batcher::{Clock, ConfigError, LimitError, RateLimiter};
use tokio::time::Instant;

fn nz(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap()
}

fn limiter(rpm: u32, tpm: u32, request_burst: u32, token_burst: u32) -> RateLimiter {
    RateLimiter::builder()
        .clock(Clock::Tokio)
        .requests_per_minute(nz(rpm))
        .tokens_per_minute(nz(tpm))
        .request_burst(nz(request_burst))
        .token_burst(nz(token_burst))
        .build()
        .unwrap()
}

/// Every 60-second window that starts at an admission holds at most the
/// limits (a window's count only grows until its next admission leaves it,
/// so windows starting at admissions are the fullest).
fn assert_within_limits(log: &[(Instant, u32)], rpm: u32, tpm: u32) {
    let window = Duration::from_secs(60);
    for (start, (at, _)) in log.iter().enumerate() {
        let inside = log[start..]
            .iter()
            .take_while(|(other, _)| other.duration_since(*at) < window);
        let (requests, tokens) = inside.fold((0_u32, 0_u64), |(r, t), (_, tokens)| {
            (r + 1, t + u64::from(*tokens))
        });
        assert!(
            requests <= rpm,
            "{requests} requests in the window from admission {start}"
        );
        assert!(
            tokens <= u64::from(tpm),
            "{tokens} tokens in the window from admission {start}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_random_run_never_exceeds_either_limit_in_any_60_s_window() {
    let (rpm, tpm) = (60, 20_000);
    for (seed, request_burst, token_burst) in [(7, 6, 2_000), (11, 1, 5_000), (13, 30, 19_000)] {
        let limiter = limiter(rpm, tpm, request_burst, token_burst);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut random = Random(seed);
        let mut callers = Vec::new();
        // 600 requests from 20 concurrent callers, 1..=burst tokens each,
        // arriving at random moments: about ten minutes of traffic.
        for caller in 0..20 {
            let sizes: Vec<(u32, u64)> = (0..30)
                .map(|_| (1 + random.below(token_burst), random.next() % 3_000))
                .collect();
            let (limiter, log) = (limiter.clone(), log.clone());
            callers.push(tokio::spawn(async move {
                for (tokens, pause_ms) in sizes {
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    let reservation = limiter.acquire(tokens).await.unwrap();
                    log.lock().unwrap().push((Instant::now(), tokens, caller));
                    reservation.reconcile(tokens);
                }
            }));
        }
        for caller in callers {
            caller.await.unwrap();
        }
        let log: Vec<(Instant, u32)> = log
            .lock()
            .unwrap()
            .iter()
            .map(|(at, tokens, _)| (*at, *tokens))
            .collect();
        assert_eq!(log.len(), 600);
        assert_within_limits(&log, rpm, tpm);
        // And it holds nobody back for nothing: the run takes about what the
        // binding limit's sustained rate needs (plus the callers' own pauses).
        let tokens: u64 = log.iter().map(|(_, tokens)| u64::from(*tokens)).sum();
        let minutes = |units: u64, burst: u32, limit: u32| {
            units.saturating_sub(u64::from(burst)) as f64 / f64::from(limit - burst + 1)
        };
        let needed = minutes(600, request_burst, rpm).max(minutes(tokens, token_burst, tpm));
        let span = log.last().unwrap().0.duration_since(log[0].0);
        assert!(
            span.as_secs_f64() < needed * 60.0 * 1.02 + 100.0,
            "{span:?} for {needed:.1} minutes of sustained rate"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_burst_goes_at_once_then_admissions_are_spaced_by_the_sustained_rate() {
    // 10 requests per minute, burst 4: sustained 7 per minute, one per 60/7 s.
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .requests_per_minute(nz(10))
        .request_burst(nz(4))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut admitted = Vec::new();
    for _ in 0..7 {
        let _ = limiter.acquire(0).await.unwrap();
        admitted.push(start.elapsed());
    }
    assert_eq!(&admitted[..4], &[Duration::ZERO; 4]);
    let interval = Duration::from_secs(60).as_nanos().div_ceil(7);
    for (index, at) in admitted.iter().enumerate().skip(4) {
        let expected = Duration::from_nanos(u64::try_from(interval * (index as u128 - 3)).unwrap());
        // Never early; late only by the timer's millisecond resolution.
        assert!(
            *at >= expected && *at - expected < Duration::from_millis(2),
            "admission {index} at {at:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_request_is_not_starved_by_small_ones_behind_it() {
    // Tokens only: 6,000 per minute, burst 1,000.
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .tokens_per_minute(nz(6_000))
        .token_burst(nz(1_000))
        .build()
        .unwrap();
    let _ = limiter.acquire(1_000).await.unwrap(); // the burst is spent
    let order = Arc::new(Mutex::new(Vec::new()));
    let big = tokio::spawn({
        let (limiter, order) = (limiter.clone(), order.clone());
        async move {
            let _ = limiter.acquire(1_000).await.unwrap();
            order.lock().unwrap().push("big");
        }
    });
    tokio::task::yield_now().await;
    // Small requests keep arriving while the big one waits, each of which
    // would fit on its own long before the big one does.
    let mut small = Vec::new();
    for index in 0..20 {
        let (limiter, order) = (limiter.clone(), order.clone());
        small.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100) * index).await;
            let _ = limiter.acquire(10).await.unwrap();
            order.lock().unwrap().push("small");
        }));
    }
    big.await.unwrap();
    for task in small {
        task.await.unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order.first(), Some(&"big"), "{order:?}");
    assert_eq!(order.len(), 21);
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropped_while_queued_spends_nothing_and_unblocks_the_queue() {
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .tokens_per_minute(nz(6_000))
        .token_burst(nz(1_000))
        .build()
        .unwrap();
    let start = Instant::now();
    let _ = limiter.acquire(1_000).await.unwrap();
    // Needs the whole burst back (about 12 s at 5,001 tokens per minute): gives up after 1 s.
    let gave_up = tokio::time::timeout(Duration::from_secs(1), limiter.acquire(1_000)).await;
    assert!(gave_up.is_err());
    // The caller that left took nothing: 100 tokens go once 100 tokens'
    // time has passed since the first reservation, and 900 more once the
    // whole burst's time has.
    let per_token = Duration::from_secs(60).as_nanos().div_ceil(5_001);
    let after = |tokens: u128| Duration::from_nanos(u64::try_from(per_token * tokens).unwrap());
    let _ = limiter.acquire(100).await.unwrap();
    let at = start.elapsed();
    assert!(
        at >= after(100) && at - after(100) < Duration::from_millis(2),
        "{at:?}"
    );
    let _ = limiter.acquire(900).await.unwrap();
    let at = start.elapsed();
    assert!(
        at >= after(1_000) && at - after(1_000) < Duration::from_millis(2),
        "{at:?}"
    );
}

#[test]
fn a_request_over_the_token_burst_fails_at_once() {
    let limiter = limiter(100, 10_000, 10, 1_000);
    assert_eq!(
        limiter.try_acquire(1_001).unwrap_err(),
        LimitError::TooLarge {
            tokens: 1_001,
            burst: 1_000
        }
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let error = runtime.block_on(limiter.acquire(5_000)).unwrap_err();
    assert!(
        error.to_string().contains("split it or raise the burst"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refund_lets_the_next_caller_go_earlier_and_a_charge_holds_it_back() {
    let time_for_next = |used: Option<u32>| async move {
        let limiter = RateLimiter::builder()
            .clock(Clock::Tokio)
            .tokens_per_minute(nz(6_000))
            .token_burst(nz(1_000))
            .build()
            .unwrap();
        let reservation = limiter.acquire(1_000).await.unwrap();
        let start = Instant::now();
        let next = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let _ = limiter.acquire(1_000).await.unwrap();
                Instant::now()
            }
        });
        tokio::task::yield_now().await;
        match used {
            Some(used) => reservation.reconcile(used),
            None => drop(reservation),
        }
        next.await.unwrap().duration_since(start)
    };
    let estimate_stands = time_for_next(None).await;
    let refunded = time_for_next(Some(400)).await;
    let charged = time_for_next(Some(1_000)).await;
    assert!(
        refunded < estimate_stands,
        "{refunded:?} vs {estimate_stands:?}"
    );
    assert_eq!(charged, estimate_stands);
    // 600 tokens refunded: the wait shrinks by 600 tokens' time.
    let per_token = Duration::from_secs(60).as_nanos().div_ceil(5_001);
    let saved = estimate_stands - refunded;
    let expected = Duration::from_nanos(u64::try_from(per_token * 600).unwrap());
    assert!(
        saved.abs_diff(expected) < Duration::from_millis(2),
        "{saved:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_charge_delays_later_admissions() {
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .tokens_per_minute(nz(6_000))
        .token_burst(nz(1_000))
        .build()
        .unwrap();
    limiter.acquire(100).await.unwrap().reconcile(1_000);
    // The estimate was 100, the usage 1,000: the burst is spent.
    assert!(limiter.try_acquire(500).unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_pause_holds_every_admission_until_it_ends() {
    let limiter = limiter(100, 100_000, 10, 10_000);
    let start = Instant::now();
    limiter.pause_until(start + Duration::from_secs(3));
    limiter.pause_until(start + Duration::from_secs(1)); // earlier: ignored
    assert!(limiter.try_acquire(1).unwrap().is_none());
    let _ = limiter.acquire(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(limiter.try_acquire(1).unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_pause_for_a_delay_is_counted_in_the_limiters_time() {
    let limiter = limiter(100, 100_000, 10, 10_000);
    let start = Instant::now();
    limiter.pause_for(Duration::from_secs(2));
    assert!(limiter.try_acquire(1).unwrap().is_none());
    let _ = limiter.acquire(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

/// The default clock in real time: six requests under "5 per 200 ms, burst
/// 1" take at least the window (the sixth waits for the first to leave it).
#[tokio::test]
async fn the_fast_clock_holds_the_window_in_real_time() {
    let limiter = RateLimiter::builder()
        .requests_per_minute(nz(5))
        .request_burst(nz(1))
        .window(Duration::from_millis(200))
        .build()
        .unwrap();
    let start = std::time::Instant::now();
    for _ in 0..6 {
        let _ = limiter.acquire(1).await.unwrap();
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(199), "{elapsed:?}");
}

/// Admissions from four threads at once on the lock-free path: each takes
/// a request and its tokens together or nothing, so neither quantity is
/// ever over its burst (no refill: the window is a day long).
#[test]
fn concurrent_admissions_take_both_quantities_or_neither() {
    for clock in [Clock::Fast, Clock::Tokio] {
        let limiter = RateLimiter::builder()
            .clock(clock)
            .requests_per_minute(nz(1_000))
            .request_burst(nz(1_000))
            .tokens_per_minute(nz(30_000))
            .token_burst(nz(30_000))
            .window(Duration::from_secs(86_400))
            .build()
            .unwrap();
        let admitted: Vec<(u32, u64)> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4_u64)
                .map(|seed| {
                    let limiter = &limiter;
                    scope.spawn(move || {
                        let mut random = Random(seed + 1);
                        let (mut requests, mut tokens) = (0, 0);
                        for _ in 0..5_000 {
                            let size = 1 + random.below(100);
                            if let Some(reservation) = limiter.try_acquire(size).unwrap() {
                                requests += 1;
                                tokens += u64::from(reservation.tokens());
                            }
                        }
                        (requests, tokens)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let requests: u32 = admitted.iter().map(|(requests, _)| requests).sum();
        let tokens: u64 = admitted.iter().map(|(_, tokens)| tokens).sum();
        assert!(requests <= 1_000, "{clock:?}: {requests} requests");
        assert!(tokens <= 30_000, "{clock:?}: {tokens} tokens");
        // 20,000 attempts of ~50 tokens: one of the two budgets ran out.
        assert!(
            requests == 1_000 || tokens > 30_000 - 100,
            "{clock:?}: {requests} requests, {tokens} tokens"
        );
        assert!(limiter.try_acquire(100).unwrap().is_none());
    }
}

#[test]
fn impossible_settings_are_refused() {
    assert_eq!(
        RateLimiter::builder()
            .clock(Clock::Tokio)
            .build()
            .unwrap_err(),
        ConfigError::NoLimit
    );
    assert_eq!(
        RateLimiter::builder()
            .clock(Clock::Tokio)
            .requests_per_minute(nz(10))
            .request_burst(nz(11))
            .build()
            .unwrap_err(),
        ConfigError::BurstOverLimit {
            burst: 11,
            limit: 10
        }
    );
    assert_eq!(
        RateLimiter::builder()
            .clock(Clock::Tokio)
            .tokens_per_minute(nz(10))
            .name(" ")
            .build()
            .unwrap_err(),
        ConfigError::EmptyName
    );
    assert_eq!(
        RateLimiter::builder()
            .clock(Clock::Tokio)
            .requests_per_minute(nz(500))
            .tokens_per_minute(nz(200_000))
            .build()
            .unwrap()
            .limits(),
        (Some(500), Some(200_000))
    );
}

#[tokio::test(start_paused = true)]
async fn the_providers_remaining_budget_lowers_ours_but_never_raises_it() {
    use perfkit_llm_batcher::ProviderRemaining;

    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .requests_per_minute(nz(600))
        .tokens_per_minute(nz(6_000))
        .request_burst(nz(10))
        .token_burst(nz(1_000))
        .build()
        .unwrap();
    // More room than ours: nothing changes, the whole burst is there.
    limiter.observe_remaining(ProviderRemaining::new(Some(10_000), Some(1_000_000)));
    assert!(limiter.try_acquire(1_000).unwrap().is_some());

    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .tokens_per_minute(nz(6_000))
        .token_burst(nz(1_000))
        .build()
        .unwrap();
    // The provider has 100 tokens left for us (another client shares the key):
    // 500 tokens wait for 400 tokens' time.
    limiter.observe_remaining(ProviderRemaining::new(None, Some(100)));
    assert!(limiter.try_acquire(101).unwrap().is_none());
    let start = Instant::now();
    let _ = limiter.acquire(500).await.unwrap();
    let per_token = Duration::from_secs(60).as_nanos().div_ceil(5_001);
    let expected = Duration::from_nanos(u64::try_from(per_token * 400).unwrap());
    let waited = start.elapsed();
    assert!(
        waited >= expected && waited - expected < Duration::from_millis(2),
        "{waited:?}"
    );

    // Nothing left: every admission waits for the reset.
    let limiter = limiter_with_room();
    let start = Instant::now();
    limiter.observe_remaining(ProviderRemaining::new(Some(0), Some(5_000)).with_resets(
        Some(Duration::from_secs(3)),
        Some(Duration::from_millis(10)),
    ));
    let _ = limiter.acquire(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

fn limiter_with_room() -> RateLimiter {
    limiter(600, 60_000, 100, 10_000)
}

#[tokio::test(start_paused = true)]
async fn another_window_scales_the_limits_to_it() {
    // 10 requests per second, burst 1: spaced by 100 ms.
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .requests_per_minute(nz(10))
        .request_burst(nz(1))
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    for _ in 0..11 {
        let _ = limiter.acquire(0).await.unwrap();
    }
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        RateLimiter::builder()
            .clock(Clock::Tokio)
            .requests_per_minute(nz(10))
            .window(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::Zero("window")
    );
}
