//! The rate limiter as a tower layer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;
use std::time::Duration;

use perfkit_llm_batcher::{Clock, LimitError, RateLimitError, RateLimitLayer, RateLimiter};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

fn limiter() -> RateLimiter {
    // 6,000 tokens per minute, burst 1,000: 5,001 tokens per minute sustained.
    RateLimiter::builder()
        .clock(Clock::Tokio)
        .tokens_per_minute(NonZeroU32::new(6_000).unwrap())
        .token_burst(NonZeroU32::new(1_000).unwrap())
        .build()
        .unwrap()
}

/// Answers with the usage the "provider" reports: half the estimate.
fn service(
    limiter: RateLimiter,
) -> impl tower::Service<u32, Response = u32, Error = RateLimitError<std::io::Error>, Future: Send> + Clone
{
    let layer =
        RateLimitLayer::reconciled(limiter, |tokens: &u32| *tokens, |used: &u32| Some(*used));
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(|tokens: u32| async move { Ok::<_, std::io::Error>(tokens / 2) })
}

#[tokio::test(start_paused = true)]
async fn calls_wait_for_room_and_are_reconciled_with_the_reported_usage() {
    let limiter = limiter();
    let service = service(limiter.clone());
    let start = Instant::now();
    // 800 estimated, 400 used: 600 of the burst left afterwards.
    assert_eq!(service.clone().oneshot(800).await.unwrap(), 400);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(limiter.try_acquire(600).unwrap().is_some());
    // Now the burst is spent: the next call waits for its tokens' time.
    assert_eq!(service.clone().oneshot(500).await.unwrap(), 250);
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_over_the_token_burst_fails_without_reaching_the_service() {
    let outcome = service(limiter()).oneshot(1_001).await;
    assert!(matches!(
        outcome,
        Err(RateLimitError::Limit(LimitError::TooLarge {
            tokens: 1_001,
            burst: 1_000
        }))
    ));
}
