//! `OpenAiEmbeddings` against a mock OpenAI-compatible provider served by
//! axum on an ephemeral port: the provider enforces its own request and
//! token limits over a sliding window and answers `429` with `OpenAI`'s
//! headers, so the batcher's limiter, retries and header feedback meet a
//! real HTTP peer. Windows are 2 s instead of a minute, on both sides, so
//! the tests run in real time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use perfkit_llm_batcher::{Batcher, Clock, Error, OpenAiEmbeddings, OpenAiError, RateLimiter};
use serde_json::{Value, json};

const KEY: &str = "sk-test-secret-0123456789";
const WINDOW: Duration = Duration::from_secs(2);

/// How the provider counts a text: exactly, as `OpenAI` does (cl100k for the
/// embeddings models) when the client can count exactly too, else with the
/// client's heuristic, so that both sides agree on units as with the real API.
fn provider_tokens(text: &str) -> u32 {
    #[cfg(feature = "tokenizer")]
    {
        perfkit_llm_batcher::Encoding::Cl100k.count(text)
    }
    #[cfg(not(feature = "tokenizer"))]
    {
        perfkit_llm_batcher::estimate_tokens(text)
    }
}

#[derive(Default)]
struct Provider {
    /// Requests and tokens allowed per window.
    requests: usize,
    tokens: u32,
    /// Accepted calls: when, how many tokens.
    accepted: VecDeque<(Instant, u32)>,
    /// Every call's arrival and its answer's status.
    calls: Vec<(Instant, u16, usize)>,
    /// Answer the next calls `429` with this `retry-after-ms`, whatever the limits.
    forced_429: VecDeque<u64>,
    quota_exhausted: bool,
}

type Shared = Arc<Mutex<Provider>>;

async fn embeddings(
    State(provider): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "bad key"}})),
        )
            .into_response();
    }
    let inputs: Vec<String> = body["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|text| text.as_str().unwrap().to_owned())
        .collect();
    let tokens: u32 = inputs.iter().map(|text| provider_tokens(text)).sum();
    let now = Instant::now();
    let mut provider = provider.lock().unwrap();
    let too_many =
        |status: u16, provider: &mut Provider| provider.calls.push((now, status, inputs.len()));
    if provider.quota_exhausted {
        too_many(429, &mut provider);
        let body = json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}});
        return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    }
    if let Some(ms) = provider.forced_429.pop_front() {
        too_many(429, &mut provider);
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": {"message": "slow down"}})),
        )
            .into_response();
        response
            .headers_mut()
            .insert("retry-after-ms", ms.to_string().parse().unwrap());
        return response;
    }
    while provider
        .accepted
        .front()
        .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
    {
        provider.accepted.pop_front();
    }
    let used: u32 = provider.accepted.iter().map(|(_, tokens)| tokens).sum();
    if provider.accepted.len() + 1 > provider.requests || used + tokens > provider.tokens {
        // Wait until the oldest call leaves the window.
        let oldest = provider.accepted.front().map_or(now, |(at, _)| *at);
        let wait = (oldest + WINDOW).saturating_duration_since(now);
        too_many(429, &mut provider);
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": {"message": "Rate limit reached"}})),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            "retry-after-ms",
            wait.as_millis().to_string().parse().unwrap(),
        );
        return response;
    }
    provider.accepted.push_back((now, tokens));
    too_many(200, &mut provider);
    let left_requests = provider.requests - provider.accepted.len();
    let left_tokens = provider.tokens - used - tokens;
    let reset = provider.accepted.front().map_or(Duration::ZERO, |(at, _)| {
        (*at + WINDOW).saturating_duration_since(now)
    });
    drop(provider);
    // Out of order on purpose: the client must map by index.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": [text.len() as f32]}))
        .collect();
    let mut response = Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response();
    let headers = response.headers_mut();
    let reset = format!("{}ms", reset.as_millis());
    headers.insert(
        "x-ratelimit-remaining-requests",
        left_requests.to_string().parse().unwrap(),
    );
    headers.insert(
        "x-ratelimit-remaining-tokens",
        left_tokens.to_string().parse().unwrap(),
    );
    headers.insert("x-ratelimit-reset-requests", reset.parse().unwrap());
    headers.insert("x-ratelimit-reset-tokens", reset.parse().unwrap());
    response
}

async fn serve(requests: usize, tokens: u32) -> (String, Shared) {
    let provider = Arc::new(Mutex::new(Provider {
        requests,
        tokens,
        ..Provider::default()
    }));
    let app = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(Arc::clone(&provider));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/v1"), provider)
}

fn executor(base_url: &str) -> OpenAiEmbeddings {
    OpenAiEmbeddings::builder("text-embedding-3-small")
        .base_url(base_url)
        .api_key(KEY)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn nz(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap()
}

/// `count` texts of about `tokens` tokens each, each distinct in length.
fn texts(count: usize, tokens: usize) -> Vec<String> {
    (0..count)
        .map(|index| "x".repeat(tokens * 4 + index % 3))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_through_and_header_feedback_stops_the_429s() {
    // The provider allows 6 calls and 3,000 tokens per 2 s; the client is
    // configured for four times that, so only the provider's headers and
    // 429s can keep it in line.
    let (base_url, provider) = serve(6, 3_000).await;
    let limiter = RateLimiter::builder()
        .clock(Clock::Tokio)
        .requests_per_minute(nz(24))
        .tokens_per_minute(nz(12_000))
        .token_burst(nz(3_000))
        .window(WINDOW)
        .build()
        .unwrap();
    let batcher = Batcher::builder(executor(&base_url))
        .max_items(NonZeroUsize::new(5).unwrap())
        .max_tokens(3_000)
        .max_in_flight(NonZeroUsize::new(1).unwrap())
        .rate_limiter(limiter)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .unwrap();
    let inputs = texts(60, 100);
    let tasks: Vec<_> = inputs
        .iter()
        .cloned()
        .map(|text| {
            let batcher = batcher.clone();
            tokio::spawn(async move { (text.len(), batcher.submit(text).await) })
        })
        .collect();
    for task in tasks {
        let (length, outcome) = task.await.unwrap();
        // Each caller gets the embedding of its own text.
        assert_eq!(outcome.unwrap(), vec![length as f32]);
    }
    let provider = provider.lock().unwrap();
    let first_ok = provider
        .calls
        .iter()
        .position(|(_, status, _)| *status == 200)
        .unwrap();
    let later_429s = provider.calls[first_ok..]
        .iter()
        .filter(|(_, status, _)| *status == 429)
        .count();
    assert_eq!(
        later_429s, 0,
        "429s after the first answer: {:?}",
        provider.calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let (base_url, provider) = serve(100, 100_000).await;
    provider.lock().unwrap().forced_429.push_back(400);
    let batcher = Batcher::builder(executor(&base_url)).build().unwrap();
    assert_eq!(batcher.submit("hello".to_owned()).await.unwrap(), vec![5.0]);
    let provider = provider.lock().unwrap();
    let statuses: Vec<u16> = provider
        .calls
        .iter()
        .map(|(_, status, _)| *status)
        .collect();
    assert_eq!(statuses, [429, 200]);
    let gap = provider.calls[1].0 - provider.calls[0].0;
    assert!(gap >= Duration::from_millis(400), "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exhaustion_fails_fast() {
    let (base_url, provider) = serve(100, 100_000).await;
    provider.lock().unwrap().quota_exhausted = true;
    let batcher = Batcher::builder(executor(&base_url)).build().unwrap();
    let outcome = batcher.submit("hello".to_owned()).await;
    match outcome {
        Err(Error::QuotaExhausted(error)) => {
            assert!(matches!(&*error, OpenAiError::Quota(message) if message.contains("quota")));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(provider.lock().unwrap().calls.len(), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_2048_inputs_is_split_and_every_result_goes_to_its_caller() {
    let (base_url, provider) = serve(100, 1_000_000).await;
    let batcher = Batcher::builder(executor(&base_url))
        .max_items(NonZeroUsize::new(5_000).unwrap())
        .linger(Duration::from_millis(300))
        .build()
        .unwrap();
    let inputs: Vec<String> = (0..3_000).map(|index| "y".repeat(1 + index % 50)).collect();
    let pending: Vec<_> = inputs
        .iter()
        .map(|text| batcher.try_submit(text.clone()).unwrap())
        .collect();
    for (text, pending) in inputs.iter().zip(pending) {
        assert_eq!(pending.await.unwrap(), vec![text.len() as f32]);
    }
    let provider = provider.lock().unwrap();
    let sizes: Vec<usize> = provider
        .calls
        .iter()
        .map(|(_, _, inputs)| *inputs)
        .collect();
    assert!(sizes.iter().all(|size| *size <= 2_048), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_shows_in_debug_or_errors() {
    let executor = OpenAiEmbeddings::builder("m")
        .base_url("http://127.0.0.1:1/v1")
        .api_key(KEY)
        .build()
        .unwrap();
    assert!(!format!("{executor:?}").contains(KEY));
    let batcher = Batcher::builder(executor).build().unwrap();
    let error = batcher.submit("hello".to_owned()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Failed(inner) if matches!(**inner, OpenAiError::Transport(_))),
        "{error:?}"
    );
    assert!(!format!("{error:?} {error}").contains(KEY));
    // A rejected key: the provider's message, not ours.
    let (base_url, _provider) = serve(100, 100_000).await;
    let wrong = OpenAiEmbeddings::builder("m")
        .base_url(&base_url)
        .api_key("sk-wrong-key")
        .build()
        .unwrap();
    let batcher = Batcher::builder(wrong).build().unwrap();
    let error = batcher.submit("hello".to_owned()).await.unwrap_err();
    assert!(
        matches!(&error, Error::Failed(inner) if matches!(&**inner, OpenAiError::Status { status: 401, .. })),
        "{error:?}"
    );
    assert!(!format!("{error:?} {error}").contains("sk-wrong-key"));
    assert!(matches!(
        OpenAiEmbeddings::builder("m").base_url("ftp://x").build(),
        Err(perfkit_llm_batcher::ConfigError::BaseUrl(_))
    ));
}
