//! The rate limiter as a tower middleware: every call waits for room for one
//! request and its estimated tokens.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::error::LimitError;
use crate::limiter::RateLimiter;

/// How a request's tokens are estimated, and a response's usage read.
type Weigher<Req> = Arc<dyn Fn(&Req) -> u32 + Send + Sync>;
type Usage<Res> = Arc<dyn Fn(&Res) -> Option<u32> + Send + Sync>;

/// Applies a [`RateLimiter`] to a tower service: each call first waits, in
/// FIFO order with every other user of the limiter, for room for one
/// request and the tokens `weigh` estimates; the usage `usage` reads from
/// the response (if any) reconciles the estimate.
///
/// Clones share the limiter. A request over the token burst fails at once
/// with [`RateLimitError::Limit`]; the inner service's errors come back as
/// [`RateLimitError::Inner`].
///
/// ```
/// use std::num::NonZeroU32;
///
/// use perfkit_llm_batcher::{RateLimitLayer, RateLimiter};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let limiter = RateLimiter::builder()
///     .requests_per_minute(NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN))
///     .tokens_per_minute(NonZeroU32::new(40_000).unwrap_or(NonZeroU32::MIN))
///     .build()?;
/// // Prompts as requests, estimated at four characters per token.
/// let layer = RateLimitLayer::new(limiter, |prompt: &String| perfkit_llm_batcher::estimate_tokens(prompt));
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|prompt: String| async move { Ok::<_, std::io::Error>(prompt.len()) });
/// assert_eq!(service.oneshot("hello".to_owned()).await?, 5);
/// # Ok(())
/// # }
/// ```
pub struct RateLimitLayer<Req, Res> {
    limiter: RateLimiter,
    weigh: Weigher<Req>,
    usage: Option<Usage<Res>>,
}

impl<Req, Res> RateLimitLayer<Req, Res> {
    /// Limits calls by `limiter`, each weighing `weigh(&request)` tokens;
    /// the estimates stand.
    pub fn new(limiter: RateLimiter, weigh: impl Fn(&Req) -> u32 + Send + Sync + 'static) -> Self {
        Self {
            limiter,
            weigh: Arc::new(weigh),
            usage: None,
        }
    }

    /// As [`new`](Self::new), and reconciles each call's estimate with the
    /// usage `usage` reads from its response (`None`: the estimate stands).
    pub fn reconciled(
        limiter: RateLimiter,
        weigh: impl Fn(&Req) -> u32 + Send + Sync + 'static,
        usage: impl Fn(&Res) -> Option<u32> + Send + Sync + 'static,
    ) -> Self {
        Self {
            limiter,
            weigh: Arc::new(weigh),
            usage: Some(Arc::new(usage)),
        }
    }
}

impl<Req, Res> Clone for RateLimitLayer<Req, Res> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            weigh: Arc::clone(&self.weigh),
            usage: self.usage.clone(),
        }
    }
}

impl<Req, Res> std::fmt::Debug for RateLimitLayer<Req, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, Req, Res> Layer<S> for RateLimitLayer<Req, Res> {
    type Service = RateLimit<S, Req, Res>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
pub struct RateLimit<S, Req, Res> {
    inner: S,
    layer: RateLimitLayer<Req, Res>,
}

impl<S: Clone, Req, Res> Clone for RateLimit<S, Req, Res> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, Req, Res> std::fmt::Debug for RateLimit<S, Req, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("limiter", &self.layer.limiter)
            .finish_non_exhaustive()
    }
}

/// Why a rate-limited call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError<E> {
    /// The limiter refused the request (over the token burst).
    #[error(transparent)]
    Limit(LimitError),
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<S, Req, Res> Service<Req> for RateLimit<S, Req, Res>
where
    S: Service<Req, Response = Res> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    Res: 'static,
{
    type Response = Res;
    type Error = RateLimitError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<Res, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RateLimitError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The ready service goes with this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.layer.limiter.clone();
        let tokens = (self.layer.weigh)(&request);
        let usage = self.layer.usage.clone();
        Box::pin(async move {
            let reservation = limiter
                .acquire(tokens)
                .await
                .map_err(RateLimitError::Limit)?;
            let response = inner.call(request).await.map_err(RateLimitError::Inner)?;
            match usage.and_then(|usage| usage(&response)) {
                Some(used) => reservation.reconcile(used),
                None => drop(reservation),
            }
            Ok(response)
        })
    }
}
