//! `IdempotencyLayer`, the `Idempotency` service and its `ResponseFuture`.

use std::future::Future;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::flow;
use crate::bloom::BloomStats;
use crate::config::{Config, OnDisconnect};
use crate::key::{IDEMPOTENCY_KEY, KeyError, StoreKey, parse_key};
use crate::problem::Problem;

/// Applies `Idempotency-Key` handling to a service; see the [module docs](crate::layer).
///
/// Built with [`IdempotencyLayer::builder`]. Clones share one configuration,
/// store and Bloom filter.
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl IdempotencyLayer {
    pub(crate) fn from_config(config: Config) -> Self {
        let layer = Self {
            config: Arc::new(config),
        };
        layer.config.publish_bloom_stats();
        layer
    }

    /// The Bloom filter's size, fill and estimated false-positive rate
    /// (`None` without a filter); also published as the gauges
    /// `perfkit_idempotency_bloom_bytes` and `perfkit_idempotency_bloom_fp_ratio`.
    #[must_use]
    pub fn bloom_stats(&self) -> Option<BloomStats> {
        self.config.publish_bloom_stats()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("name", &self.config.name)
            .field("methods", &self.config.methods)
            .field("scoped", &self.config.scope.is_some())
            .field("fail_mode", &self.config.fail_mode)
            .field("on_disconnect", &self.config.on_disconnect)
            .finish_non_exhaustive()
    }
}

/// The service [`IdempotencyLayer`] wraps around `S`.
///
/// `S` takes and returns bodies that can be built from [`Bytes`]
/// (`axum::body::Body`, `http_body_util::Full<Bytes>`): the request body is
/// buffered to be fingerprinted and handed on whole, and the response body is
/// buffered to be recorded.
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// A protected request's outcome before the inner service runs.
enum Route<B> {
    Unprotected(Request<B>),
    Answer(Problem),
    Protected(http::request::Parts, B, StoreKey),
}

impl<S> Idempotency<S> {
    fn route<B>(&self, request: Request<B>) -> Route<B> {
        let config = &self.config;
        if !config.methods.contains(request.method()) {
            return Route::Unprotected(request);
        }
        let (parts, body) = request.into_parts();
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let key = match (values.next(), values.next()) {
            (None, _) if !config.require_key => {
                return Route::Unprotected(Request::from_parts(parts, body));
            }
            (None, _) => Err(KeyError::Missing(parts.method.to_string())),
            (Some(_), Some(_)) => Err(KeyError::Repeated),
            (Some(value), None) => parse_key(value),
        };
        let key = match key {
            Ok(key) => key,
            Err(error) => {
                config.metrics.rejected.increment(1);
                return Route::Answer(Problem::BadKey(error.to_string()));
            }
        };
        // The scope is read from the request as it arrived; the key is spelled
        // straight into its store form (one allocation).
        let key = match &config.scope {
            None => StoreKey::encode(None, &key),
            Some(scope) => match scope(&parts) {
                Some(scope) => StoreKey::encode(Some(&scope), &key),
                None => {
                    config.metrics.rejected.increment(1);
                    return Route::Answer(Problem::NoScope);
                }
            },
        };
        Route::Protected(parts, body, key)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Body + From<Bytes> + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: std::fmt::Display,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let kind = match self.route(request) {
            Route::Unprotected(request) => Kind::Unprotected {
                future: self.inner.call(request),
            },
            Route::Answer(problem) => Kind::Answer {
                response: Some(problem.into_response()),
            },
            Route::Protected(parts, body, key) => {
                // The ready service goes with the request; a clone stays for the next call.
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                Kind::Protected {
                    future: Detachable {
                        future: Some(Box::pin(flow::run(
                            Arc::clone(&self.config),
                            inner,
                            parts,
                            body,
                            key,
                        ))),
                        detach: (self.config.on_disconnect == OnDisconnect::RunToCompletion)
                            .then_some(detach),
                    },
                }
            }
        };
        ResponseFuture { kind }
    }
}

type BoxedResponse<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// The response future of [`Idempotency`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Unprotected { #[pin] future: F },
        Answer { response: Option<Response<B>> },
        Protected { future: Detachable<B, E> },
    }
}

/// A protected request's future, polled in the caller's task. Dropped before
/// it finished (the client went away), it moves onto the runtime and runs to
/// completion there, so the handler finishes and is recorded exactly once
/// ([`OnDisconnect::RunToCompletion`]); or it is dropped, releasing its claim
/// ([`OnDisconnect::Cancel`]). A panic in the handler becomes a `500`
/// problem, after the claim was released.
struct Detachable<B, E> {
    future: Option<BoxedResponse<B, E>>,
    /// What to do with an unfinished future on drop; `None` drops it.
    detach: Option<fn(BoxedResponse<B, E>)>,
}

/// Moves an abandoned request's future onto the runtime, where it finishes.
fn detach<B: Send + 'static, E: Send + 'static>(future: BoxedResponse<B, E>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            tracing::debug!(
                "client went away: the idempotent request runs to completion in the background"
            );
            runtime.spawn(async move {
                let _ = future.await;
            });
        }
        Err(_) => tracing::warn!(
            "no runtime to finish an abandoned idempotent request on; its claim is released"
        ),
    }
}

impl<B: From<Bytes>, E> Detachable<B, E> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<B>, E>> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Pending;
        };
        let polled = panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(outcome)) => {
                self.future = None;
                Poll::Ready(outcome)
            }
            Err(_) => {
                // Dropping the future drops its claim guard, which releases the claim.
                self.future = None;
                tracing::error!("an idempotent handler panicked; its claim was released");
                Poll::Ready(Ok(Problem::HandlerFailed.into_response()))
            }
        }
    }
}

impl<B, E> Drop for Detachable<B, E> {
    fn drop(&mut self) {
        if let (Some(future), Some(detach)) = (self.future.take(), self.detach) {
            detach(future);
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Unprotected { future } => future.poll(cx),
            KindProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            KindProj::Protected { future } => future.poll(cx),
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
