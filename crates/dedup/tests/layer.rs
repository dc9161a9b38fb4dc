//! `DedupLayer` through `ServiceBuilder`, called the way a server calls it.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use perfkit_dedup::DedupLayer;
use perfkit_test_support::concurrency::{count_first_poll, until, within};
use tokio::sync::watch;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// A body of several chunks whose size is not known up front, like a stream.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|chunk| Ok(Frame::data(chunk))),
        )
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

/// A handler that counts its calls and answers `body` once the gate opens.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    chunks: Vec<Bytes>,
}

impl Backend {
    fn new(chunks: Vec<Bytes>) -> (Self, watch::Sender<bool>) {
        let (open, gate) = watch::channel(false);
        let backend = Self {
            calls: Arc::default(),
            gate,
            chunks,
        };
        (backend, open)
    }

    async fn handle(self, request: Request<Full<Bytes>>) -> Result<Response<Chunks>, Infallible> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        if request.uri().path() == "/panic" {
            panic!("handler bug");
        }
        let mut response = Response::new(Chunks(self.chunks.into()));
        response
            .headers_mut()
            .insert("x-served-for", request.method().as_str().parse().unwrap());
        Ok(response)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn request(method: Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Full::default())
        .unwrap()
}

/// Sends `requests` concurrently through one layer, opens the gate once all
/// have joined, and returns (status, x-served-for, body) of each.
async fn send_all(
    layer: DedupLayer,
    backend: &Backend,
    open: &watch::Sender<bool>,
    requests: Vec<Request<Full<Bytes>>>,
) -> Vec<(StatusCode, Option<String>, Bytes)> {
    let service = ServiceBuilder::new().layer(layer).service_fn({
        let backend = backend.clone();
        move |request| backend.clone().handle(request)
    });
    let joined = Arc::new(AtomicUsize::new(0));
    let count = requests.len();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let (service, joined) = (service.clone(), joined.clone());
            tokio::spawn(async move {
                let response = count_first_poll(service.oneshot(request), joined)
                    .await
                    .unwrap();
                let status = response.status();
                let served = response
                    .headers()
                    .get("x-served-for")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, served, body)
            })
        })
        .collect();
    until("every request joined", || {
        joined.load(Ordering::SeqCst) == count
    })
    .await;
    open.send_replace(true);
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(within("a request", task).await.unwrap());
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_gets_share_one_inner_call_and_each_gets_the_full_response() {
    let chunks = vec![Bytes::from_static(b"hello, "), Bytes::from_static(b"world")];
    let (backend, open) = Backend::new(chunks);
    let requests = (0..100)
        .map(|_| request(Method::GET, "/prices/42?currency=EUR"))
        .collect();
    let responses = send_all(DedupLayer::new(), &backend, &open, requests).await;

    assert_eq!(
        backend.calls(),
        1,
        "the inner service ran once for 100 requests"
    );
    assert_eq!(responses.len(), 100);
    for (status, served, body) in responses {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served.as_deref(), Some("GET"), "headers are copied");
        assert_eq!(body, "hello, world");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_not_coalesced() {
    let (backend, open) = Backend::new(vec![Bytes::from_static(b"created")]);
    let requests = (0..20).map(|_| request(Method::POST, "/orders")).collect();
    let responses = send_all(DedupLayer::new(), &backend, &open, requests).await;
    assert_eq!(backend.calls(), 20, "every POST reached the inner service");
    assert!(
        responses
            .iter()
            .all(|(s, _, b)| *s == StatusCode::OK && b == "created")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_credentials_are_never_coalesced() {
    let (backend, open) = Backend::new(vec![Bytes::from_static(b"private")]);
    let requests = (0..10)
        .map(|i| {
            let mut r = request(Method::GET, "/me");
            r.headers_mut().insert(
                "authorization",
                format!("Bearer user-{}", i % 2).parse().unwrap(),
            );
            r
        })
        .collect();
    let _ = send_all(DedupLayer::new(), &backend, &open, requests).await;
    assert_eq!(
        backend.calls(),
        2,
        "one inner call per user, never one user's response for another"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_body_is_passed_through_and_others_call_the_inner_service() {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let (backend, open) = Backend::new(vec![chunk; 32]); // 2 MiB in 32 chunks, size unknown up front
    let requests = (0..20).map(|_| request(Method::GET, "/export")).collect();
    let layer = DedupLayer::builder()
        .max_body_bytes(100 * 1024)
        .build()
        .unwrap();
    let responses = send_all(layer, &backend, &open, requests).await;

    assert_eq!(backend.calls(), 20, "the large response was not shared");
    for (status, _, body) in responses {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body.len(),
            2 * 1024 * 1024,
            "every caller got the whole body"
        );
        assert!(body.iter().all(|b| *b == b'x'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_panic_gives_every_waiter_a_500() {
    let (backend, open) = Backend::new(vec![]);
    let requests = (0..10).map(|_| request(Method::GET, "/panic")).collect();
    let responses = send_all(DedupLayer::new(), &backend, &open, requests).await;
    assert_eq!(backend.calls(), 1);
    assert!(
        responses
            .iter()
            .all(|(status, _, _)| *status == StatusCode::INTERNAL_SERVER_ERROR)
    );
    // The same RFC 9457 problem the idempotency layer answers a panic with.
    for (_, _, body) in &responses {
        let body = std::str::from_utf8(body).unwrap();
        assert!(
            body.starts_with(r#"{"type":"urn:perfkit:dedup:handler-failed","#)
                && body.contains(r#""status":500"#),
            "{body}"
        );
    }
}

#[tokio::test]
async fn custom_key_function_decides_what_is_coalesced() {
    let layer = DedupLayer::builder()
        .key(|head: &http::request::Parts| {
            (head.method == Method::GET).then(|| head.uri.path().to_owned()) // ignore the query
        })
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new().layer(layer).service_fn({
        let calls = calls.clone();
        move |_request: Request<Full<Bytes>>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, BoxError>(Response::new(Full::from("shared")))
            }
        }
    });
    let (a, b) = tokio::join!(
        service
            .clone()
            .oneshot(request(Method::GET, "/items?page=1")),
        service
            .clone()
            .oneshot(request(Method::GET, "/items?page=2")),
    );
    assert_eq!(a.unwrap().status(), StatusCode::OK);
    assert_eq!(b.unwrap().status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "same path, one call");
}

#[test]
fn a_blank_name_is_refused() {
    for name in ["", "  "] {
        assert!(matches!(
            DedupLayer::builder().name(name).build(),
            Err(perfkit_dedup::ConfigError::EmptyName)
        ));
    }
    assert!(DedupLayer::builder().name("reports").build().is_ok());
}
