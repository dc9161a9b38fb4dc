//! `DedupLayer`, the `Dedup` service and its `ResponseFuture`.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use metrics::{Counter, counter};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::DedupBody;
use super::builder::DedupLayerBuilder;
use super::key::RequestKey;
use crate::builder::GroupBuilder;
use crate::error::Error;
use crate::group::Group;

/// The default key function type: [`RequestKey::for_safe_methods`].
pub type DefaultKeyFn = fn(&Parts) -> Option<RequestKey>;

/// Coalesces identical in-flight requests; see the [module docs](crate::layer).
///
/// `K` is the key type and `F` the key function (`GET`/`HEAD` by method, URI
/// and varying headers by default). Clones share one coalescing scope.
/// [`DedupLayer::new`] for the defaults, [`DedupLayer::builder`] to change
/// them.
#[derive(Clone)]
pub struct DedupLayer<K = RequestKey, F = DefaultKeyFn> {
    pub(super) group: Group<K, SharedResponse, Infallible>,
    pub(super) key: F,
    pub(super) max_body_bytes: usize,
    pub(super) name: Arc<str>,
}

impl DedupLayer {
    /// Coalesces `GET` and `HEAD` requests by [`RequestKey`], sharing bodies
    /// up to 1 MiB, named `"http"` in metrics and spans.
    #[must_use]
    pub fn new() -> Self {
        Self::from_builder(DedupLayerBuilder::new())
    }

    /// A builder starting from the defaults of [`DedupLayer::new`].
    pub fn builder() -> DedupLayerBuilder {
        DedupLayerBuilder::new()
    }
}

impl Default for DedupLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, F> DedupLayer<K, F>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    pub(super) fn from_builder(builder: DedupLayerBuilder<K, F>) -> Self {
        Self {
            group: Group::from_builder(GroupBuilder::default().name(&*builder.name)),
            key: builder.key,
            max_body_bytes: builder.max_body_bytes,
            name: builder.name,
        }
    }
}

impl<S, K: Clone, F: Clone> Layer<S> for DedupLayer<K, F> {
    type Service = Dedup<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup {
            inner,
            group: self.group.clone(),
            key: self.key.clone(),
            max_body_bytes: self.max_body_bytes,
            unshared: counter!("perfkit_dedup_http_unshared_total", "name" => self.name.to_string()),
        }
    }
}

impl<K, F> std::fmt::Debug for DedupLayer<K, F>
where
    K: Hash + Eq,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupLayer")
            .field("group", &self.group)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// The service made by [`DedupLayer`].
#[derive(Clone)]
pub struct Dedup<S, K = RequestKey, F = DefaultKeyFn> {
    inner: S,
    group: Group<K, SharedResponse, Infallible>,
    key: F,
    max_body_bytes: usize,
    unshared: Counter,
}

impl<S, K, F> std::fmt::Debug for Dedup<S, K, F>
where
    S: std::fmt::Debug,
    K: Hash + Eq,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("group", &self.group)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, ReqBody, ResBody> Service<Request<ReqBody>> for Dedup<S, K, F>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: Fn(&Parts) -> Option<K>,
{
    type Response = Response<DedupBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let key = (self.key)(&parts);
        let request = Request::from_parts(parts, body);
        let Some(key) = key else {
            return ResponseFuture {
                kind: Kind::Passthrough {
                    future: self.inner.call(request),
                },
            };
        };
        // The ready service goes with this request; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let future = coalesce(
            self.group.clone(),
            key,
            inner,
            request,
            self.max_body_bytes,
            self.unshared.clone(),
        );
        ResponseFuture {
            kind: Kind::Coalesced {
                future: Box::pin(future),
            },
        }
    }
}

/// One request's way through the group: lead or join, then take a copy of
/// the shared response, or fall back to a call of its own.
async fn coalesce<S, K, ReqBody, ResBody>(
    group: Group<K, SharedResponse, Infallible>,
    key: K,
    service: S,
    request: Request<ReqBody>,
    max_body_bytes: usize,
    unshared: Counter,
) -> Result<Response<DedupBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    // This request and its ready service: taken by the work if this request
    // leads, kept for a call of its own if it follows and cannot share.
    let own = Arc::new(Mutex::new(Some((service, request))));
    let work = {
        let own = Arc::clone(&own);
        move || {
            let taken = own.lock().unwrap_or_else(PoisonError::into_inner).take();
            async move {
                Ok(match taken {
                    Some((mut service, request)) => {
                        SharedResponse::buffer(service.call(request).await, max_body_bytes).await
                    }
                    None => SharedResponse::gone(),
                })
            }
        }
    };
    let outcome = group.run(key, work).await;
    let shared = match outcome.result {
        Ok(shared) => shared,
        Err(Error::Panicked(message)) => return Ok(panic_response(&message)),
        Err(Error::Failed(never)) => match *never {},
    };
    if let Some(response) = shared.copy::<ResBody>() {
        return Ok(response);
    }
    // Not shareable: the request that was executed gets the response (or
    // error); every other request makes a call of its own.
    let taken = own.lock().unwrap_or_else(PoisonError::into_inner).take();
    match taken {
        Some((mut service, request)) => {
            unshared.increment(1);
            service.call(request).await.map(|r| r.map(DedupBody::inner))
        }
        None => match shared.take::<ResBody, S::Error>() {
            Some(result) => result,
            None => Ok(panic_response(
                "the executed response could not be handed back",
            )),
        },
    }
}

/// The answer to every request that waited on a panicked call: an RFC 9457
/// problem, as the idempotency layer gives.
const PANIC_PROBLEM: &str = concat!(
    r#"{"type":"urn:perfkit:dedup:handler-failed","title":"The request failed","#,
    r#""status":500,"detail":"the server failed while processing the request"}"#
);

fn panic_response<B: Body>(message: &str) -> Response<DedupBody<B>> {
    tracing::error!(
        dedup.error = message,
        "the coalesced inner service panicked"
    );
    let body = Bytes::from_static(PANIC_PROBLEM.as_bytes());
    let mut response = Response::new(DedupBody::full(body.clone(), None));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// What the flight hands to each waiting request.
#[derive(Clone)]
pub(crate) struct SharedResponse(Arc<Shared>);

#[allow(clippy::large_enum_variant)] // one per flight, behind an `Arc`
enum Shared {
    /// Fully buffered: every waiter gets a copy.
    Buffered {
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Too large, or an error: the request that was executed takes it. Type-erased
    /// (`Result<Response<DedupBody<B>>, E>`) so the group's type does not
    /// depend on the inner service's.
    Single(Mutex<Option<Box<dyn Any + Send>>>),
    /// The leader's request had already been taken (cannot happen; handled anyway).
    Gone,
}

impl SharedResponse {
    fn gone() -> Self {
        Self(Arc::new(Shared::Gone))
    }

    fn single<B, E>(result: Result<Response<DedupBody<B>>, E>) -> Self
    where
        B: Body + Send + 'static,
        B::Error: Send + 'static,
        E: Send + 'static,
    {
        Self(Arc::new(Shared::Single(Mutex::new(Some(Box::new(result))))))
    }

    /// Reads the body into memory up to `limit`; past it, or on an error,
    /// keeps the response for a single taker.
    async fn buffer<B, E>(result: Result<Response<B>, E>, limit: usize) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Send + 'static,
        E: Send + 'static,
    {
        let response = match result {
            Ok(response) => response,
            Err(error) => return Self::single::<B, E>(Err(error)),
        };
        let (parts, body) = response.into_parts();
        let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
        if body.size_hint().lower() > limit_u64 {
            return Self::single::<B, E>(Ok(Response::from_parts(parts, DedupBody::inner(body))));
        }
        let mut body = Box::pin(body);
        let mut chunks = Vec::new();
        let mut size = 0_usize;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(chunk) => {
                        size = size.saturating_add(chunk.len());
                        chunks.push(chunk);
                        if size > limit {
                            let body = DedupBody::prefixed(chunks, body);
                            return Self::single::<B, E>(Ok(Response::from_parts(parts, body)));
                        }
                    }
                    Err(frame) => {
                        if let Ok(map) = frame.into_trailers() {
                            trailers = Some(map);
                        }
                    }
                },
                Err(error) => {
                    let body = DedupBody::failed(chunks, error);
                    return Self::single::<B, E>(Ok(Response::from_parts(parts, body)));
                }
            }
        }
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => chunks.concat().into(),
        };
        Self(Arc::new(Shared::Buffered {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            trailers,
        }))
    }

    /// A copy of a buffered response.
    fn copy<B: Body>(&self) -> Option<Response<DedupBody<B>>> {
        let Shared::Buffered {
            status,
            version,
            headers,
            body,
            trailers,
        } = &*self.0
        else {
            return None;
        };
        let mut response = Response::new(DedupBody::full(body.clone(), trailers.clone()));
        *response.status_mut() = *status;
        *response.version_mut() = *version;
        *response.headers_mut() = headers.clone();
        Some(response)
    }

    /// The unshared response or error, for the request that was executed.
    fn take<B, E>(&self) -> Option<Result<Response<DedupBody<B>>, E>>
    where
        B: Body + 'static,
        E: 'static,
    {
        let Shared::Single(slot) = &*self.0 else {
            return None;
        };
        let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        taken
            .downcast::<Result<Response<DedupBody<B>>, E>>()
            .ok()
            .map(|boxed| *boxed)
    }
}

pin_project! {
    /// The response future of [`Dedup`].
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

type CoalescedFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<DedupBody<B>>, E>> + Send>>;

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E>
    where
        B: Body,
    {
        Passthrough { #[pin] future: F },
        Coalesced { future: CoalescedFuture<B, E> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<DedupBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(DedupBody::inner))),
            KindProj::Coalesced { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B: Body, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
