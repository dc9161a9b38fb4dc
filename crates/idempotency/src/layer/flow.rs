//! The life of a protected request: claim, run, record — or replay.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;
use tracing::{Instrument, field};

use crate::config::{Config, FailMode};
use crate::error::StoreError;
use crate::fingerprint::Fingerprint;
use crate::key::StoreKey;
use crate::metrics::count_failed;
use crate::problem::Problem;
use crate::record::{Existing, NotExecuted, RecordedResponse};
use crate::renewal::{Held, Renewals};
use crate::store::{Claim, ClaimToken};

/// The header a replayed response carries.
pub const IDEMPOTENT_REPLAYED: http::HeaderName =
    http::HeaderName::from_static("idempotent-replayed");

/// Attempts at recording a completed response before giving up (the
/// handler ran: losing its record would let a retry run it again).
const RECORD_ATTEMPTS: u32 = 3;

pub(crate) async fn run<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    parts: http::request::Parts,
    body: ReqBody,
    key: StoreKey,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Body + From<Bytes> + Send + 'static,
    ResBody::Error: std::fmt::Display,
{
    let body = match read_body(body, config.max_body_bytes).await {
        Ok(body) => body,
        Err(failure) => {
            config.metrics.rejected.increment(1);
            return Ok(match failure {
                ReadFailure::TooLarge => Problem::BodyTooLarge {
                    limit: config.max_body_bytes,
                },
                ReadFailure::Body(error) => Problem::BadBody(error.into().to_string()),
            }
            .into_response());
        }
    };
    let fingerprint = Fingerprint::of(&parts, &config.fingerprint_headers, &body);
    // Armed before the claim is sent: if this future is dropped while the claim is
    // in flight, the claim may have been taken, and the drop releases it (a
    // compare-and-set on the token, harmless if it was not).
    let mut guard = ClaimGuard {
        config: Arc::clone(&config),
        key,
        token: ClaimToken::new(),
        settled: false,
        renewal: None,
    };
    let span = tracing::debug_span!(
        "idempotency.claim",
        idempotency.name = %config.name,
        idempotency.outcome = field::Empty,
        idempotency.bloom_skipped = field::Empty,
    );
    let claim = claim(&config, &guard.key, &guard.token, &fingerprint)
        .instrument(span.clone())
        .await;
    match claim {
        Ok(Claim::Acquired) => {
            span.record("idempotency.outcome", "acquired");
            config.metrics.new.increment(1);
            guard.renewal = Renewals::hold(&config, &guard.key, &guard.token);
        }
        Ok(Claim::Existing(existing)) => {
            guard.settled = true;
            span.record("idempotency.outcome", "existing");
            return Ok(answer(&config, existing, &fingerprint));
        }
        Err(failure) => {
            let error = match failure {
                // Nothing was claimed: nothing to release.
                ClaimFailure::NothingClaimed(error) => {
                    guard.settled = true;
                    error
                }
                // The guard's drop releases what a timed-out claim may have taken.
                ClaimFailure::MaybeClaimed(error) => error,
            };
            config.metrics.store_unavailable.increment(1);
            let skipped = matches!(error, StoreError::CircuitOpen);
            return match config.fail_mode {
                FailMode::Closed => {
                    if skipped {
                        tracing::debug!(idempotency.name = %config.name, "idempotency store failing (circuit open): answering 503 (fail-closed)");
                    } else {
                        tracing::error!(idempotency.name = %config.name, %error, "idempotency store unavailable: answering 503 (fail-closed)");
                    }
                    Ok(Problem::StoreUnavailable {
                        retry_after: config.retry_after,
                    }
                    .into_response())
                }
                FailMode::Open => {
                    let request = handler_request(parts, body, &guard.key);
                    if skipped {
                        tracing::debug!(idempotency.name = %config.name, "idempotency store failing (circuit open): running the request unprotected (fail-open)");
                    } else {
                        tracing::error!(idempotency.name = %config.name, %error, "idempotency store unavailable: running the request unprotected (fail-open)");
                    }
                    config.metrics.passed_through.increment(1);
                    inner.call(request).await
                }
            };
        }
    }

    // Runs in the caller's task; if the caller goes away, `ResponseFuture`
    // detaches this future onto the runtime (per `OnDisconnect`).
    let request = handler_request(parts, body, &guard.key);
    execute(guard, inner, request).await
}

/// The request the handler gets: the buffered body, and its key and scope
/// in the extensions (to make its own writes unique by them). Built only for
/// requests that run, so a replay never converts the body.
fn handler_request<B: From<Bytes>>(
    mut parts: http::request::Parts,
    body: Bytes,
    key: &StoreKey,
) -> Request<B> {
    parts.extensions.insert(key.clone());
    Request::from_parts(parts, B::from(body))
}

/// Why no claim outcome came back.
enum ClaimFailure {
    /// The read before the claim failed, or the claim was never sent
    /// (circuit open): nothing was claimed.
    NothingClaimed(StoreError),
    /// The claim itself failed: it may have been applied (a timeout).
    MaybeClaimed(StoreError),
}

/// Reads first only for keys this instance may have seen (retries); claims
/// directly otherwise. The claim alone decides whether the request runs.
async fn claim(
    config: &Config,
    key: &StoreKey,
    token: &ClaimToken,
    fingerprint: &Fingerprint,
) -> Result<Claim, ClaimFailure> {
    // The key is remembered before it is claimed (one pass over the filter):
    // should the claim fail, the key stays remembered, which costs its retry
    // one read and changes no outcome.
    let seen = config.bloom.as_ref().map(|bloom| {
        let seen = bloom.see(bloom.digest(key));
        if seen.publish_stats {
            config.publish_bloom_stats();
        }
        seen.before
    });
    if seen == Some(true) {
        match config.store_call(|store| store.lookup(key)).await {
            Ok(Some(existing)) => return Ok(Claim::Existing(existing)),
            Ok(None) => {}
            Err(error) => {
                count_failed(&config.metrics.store_errors.lookup, &error);
                return Err(ClaimFailure::NothingClaimed(error));
            }
        }
    } else if seen == Some(false) {
        config.metrics.bloom_skipped_reads.increment(1);
        tracing::Span::current().record("idempotency.bloom_skipped", true);
    }
    let claim = config
        .store_call(|store| store.claim(key, token, fingerprint, config.lock_ttl))
        .await;
    match &claim {
        Ok(_) => {}
        // Never sent: nothing was claimed.
        Err(StoreError::CircuitOpen) => {
            return Err(ClaimFailure::NothingClaimed(StoreError::CircuitOpen));
        }
        Err(_) => config.metrics.store_errors.claim.increment(1),
    }
    claim.map_err(ClaimFailure::MaybeClaimed)
}

/// The answer to a request whose key was claimed by another request.
fn answer<B: From<Bytes>>(
    config: &Config,
    existing: Existing,
    fingerprint: &Fingerprint,
) -> Response<B> {
    if existing.fingerprint() != fingerprint {
        config.metrics.mismatch.increment(1);
        return Problem::Mismatch.into_response();
    }
    match existing {
        Existing::InProgress { .. } => {
            config.metrics.conflict.increment(1);
            Problem::InProgress {
                retry_after: config.retry_after,
            }
            .into_response()
        }
        Existing::Completed { response, .. } if response.body_dropped() => {
            config.metrics.conflict.increment(1);
            Problem::NotReplayable {
                status: response.status(),
            }
            .into_response()
        }
        Existing::Completed { response, .. } => {
            let _span = tracing::debug_span!("idempotency.replay", idempotency.name = %config.name, http.response.status_code = response.status().as_u16()).entered();
            config.metrics.replayed.increment(1);
            let mut replay = Response::new(B::from(response.body().clone()));
            *replay.status_mut() = response.status();
            *replay.headers_mut() = response.headers().clone();
            replay
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            replay
        }
    }
}

/// Runs the handler under the claim, then records its response or releases the claim.
async fn execute<S, ReqBody, ResBody>(
    guard: ClaimGuard,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body + From<Bytes>,
    ResBody::Error: std::fmt::Display,
{
    let config = Arc::clone(&guard.config);
    let mut response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            guard.release("handler error").await;
            return Err(error);
        }
    };
    if response.extensions_mut().remove::<NotExecuted>().is_some() {
        guard.release("marked not executed").await;
        return Ok(response);
    }
    if !config.record_policy.records_status(response.status()) {
        guard.release("status not recorded").await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    // Read whole: it reaches the client in any case, and is recorded when within the limit.
    let Ok(body) = read_body(body, usize::MAX).await.inspect_err(|failure| {
        if let ReadFailure::Body(error) = failure {
            tracing::error!(idempotency.name = %config.name, %error, "the idempotent handler's response body failed");
        }
    }) else {
        guard.release("response body failed").await;
        return Ok(Problem::HandlerFailed.into_response());
    };
    let recorded = (body.len() <= config.max_recorded_body_bytes).then(|| body.clone());
    if recorded.is_none() {
        tracing::warn!(
            idempotency.name = %config.name,
            bytes = body.len(),
            limit = config.max_recorded_body_bytes,
            "response over the recording limit: recorded without its body, retries get 409"
        );
    }
    let record = Arc::new(RecordedResponse::new(
        parts.status,
        &parts.headers,
        &config.deny_headers,
        recorded,
    ));
    guard.complete(&record).await;
    Ok(Response::from_parts(parts, ResBody::from(body)))
}

/// Why a body could not be read whole.
enum ReadFailure<E> {
    TooLarge,
    Body(E),
}

/// The body's data frames as one `Bytes`: without a copy when the body is one
/// chunk (the common case: a buffered request or a `Full` response);
/// `TooLarge` as soon as more than `limit` bytes arrived.
async fn read_body<B: Body>(body: B, limit: usize) -> Result<Bytes, ReadFailure<B::Error>> {
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut more: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(mut data) = frame.map_err(ReadFailure::Body)?.into_data() else {
            continue; // trailers are not recorded
        };
        let chunk = data.copy_to_bytes(data.remaining());
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(ReadFailure::TooLarge);
        }
        match &mut more {
            Some(joined) => joined.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut joined = BytesMut::with_capacity(total);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                more = Some(joined);
            }
        }
    }
    Ok(more.map_or(first, BytesMut::freeze))
}

/// A held claim: completed or released explicitly, released on drop
/// otherwise (panic, cancelled request), so a retry is never locked out
/// longer than needed.
struct ClaimGuard {
    config: Arc<Config>,
    key: StoreKey,
    token: ClaimToken,
    settled: bool,
    /// Registered for renewal while held (renewal on); dropped before the
    /// claim is completed or released.
    renewal: Option<Held>,
}

impl ClaimGuard {
    async fn complete(mut self, record: &Arc<RecordedResponse>) {
        self.settled = true;
        drop(self.renewal.take());
        let config = &self.config;
        let span = tracing::debug_span!("idempotency.record", idempotency.name = %config.name, http.response.status_code = record.status().as_u16());
        async {
            let mut backoff = Duration::from_millis(20);
            for attempt in 1..=RECORD_ATTEMPTS {
                match config
                    .store_call(|store| store.complete(&self.key, &self.token, record, config.key_ttl))
                    .await
                {
                    Ok(true) => return,
                    Ok(false) => {
                        config.metrics.lost_claims.increment(1);
                        tracing::error!(
                            key = ?self.key,
                            lock_ttl = ?config.lock_ttl,
                            "the handler outlived its claim (lock TTL): its response was not recorded, another request may hold the key"
                        );
                        return;
                    }
                    Err(error) => {
                        count_failed(&config.metrics.store_errors.complete, &error);
                        tracing::warn!(key = ?self.key, attempt, %error, "recording the response failed");
                        if attempt < RECORD_ATTEMPTS {
                            tokio::time::sleep(backoff).await;
                            backoff *= 4;
                        }
                    }
                }
            }
            tracing::error!(
                key = ?self.key,
                lock_ttl = ?config.lock_ttl,
                "the response could not be recorded: retries get 409 until the lock TTL passes, then run the handler again"
            );
        }
        .instrument(span)
        .await;
    }

    async fn release(mut self, why: &'static str) {
        self.settled = true;
        drop(self.renewal.take());
        release(&self.config, &self.key, &self.token, why).await;
    }
}

async fn release(config: &Config, key: &StoreKey, token: &ClaimToken, why: &'static str) {
    let span = tracing::debug_span!("idempotency.record", idempotency.name = %config.name, idempotency.released = why);
    match config
        .store_call(|store| store.release(key, token))
        .instrument(span)
        .await
    {
        Ok(true) => {
            config.metrics.released.increment(1);
            tracing::debug!(?key, why, "claim released");
        }
        Ok(false) => tracing::debug!(?key, why, "nothing to release: the claim was not held"),
        Err(error) => {
            count_failed(&config.metrics.store_errors.release, &error);
            tracing::warn!(?key, why, %error, "releasing the claim failed: retries get 409 until the lock TTL passes");
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        drop(self.renewal.take());
        if self.settled {
            return;
        }
        let why = if std::thread::panicking() {
            "handler panicked"
        } else {
            "request dropped before completion"
        };
        let config = Arc::clone(&self.config);
        let key = self.key.clone();
        let token = self.token.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { release(&config, &key, &token, why).await });
            }
            Err(_) => tracing::warn!(
                ?key,
                why,
                "no runtime to release the claim on: retries get 409 until the lock TTL passes"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::Frame;

    use super::*;

    /// A body of the given chunks, then trailers.
    struct Chunks(VecDeque<Frame<Bytes>>);

    impl Chunks {
        fn of(chunks: &[&'static str]) -> Self {
            let mut frames: VecDeque<_> = chunks
                .iter()
                .map(|chunk| Frame::data(Bytes::from_static(chunk.as_bytes())))
                .collect();
            frames.push_back(Frame::trailers(http::HeaderMap::new()));
            Self(frames)
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn bodies_are_read_whole_in_order_and_limited() {
        for (chunks, whole) in [
            (&[][..], ""),
            (&["one"][..], "one"),
            (&["", "a", "", "bc", "def"][..], "abcdef"),
        ] {
            let read = read_body(Chunks::of(chunks), 6).await.ok().unwrap();
            assert_eq!(read, whole);
        }
        assert!(matches!(
            read_body(Chunks::of(&["abc", "defg"]), 6).await,
            Err(ReadFailure::TooLarge)
        ));
    }

    #[tokio::test]
    async fn one_chunk_is_not_copied() {
        let chunk = Bytes::from_static(b"payload");
        let read = read_body(http_body_util::Full::new(chunk.clone()), 100)
            .await
            .ok()
            .unwrap();
        assert_eq!(read.as_ptr(), chunk.as_ptr());
    }
}
