//! The response body every request through [`Dedup`](super::Dedup) gets.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A response body from [`Dedup`](super::Dedup): a copy of a shared,
    /// buffered body, or the inner service's own body (possibly with its
    /// first chunks already read into memory).
    pub struct DedupBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        // A copy of a buffered body (cheap: `Bytes` is reference counted).
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
        // An unshared body whose first chunks were read while trying to buffer it.
        Prefixed { prefix: VecDeque<Bytes>, rest: Option<Pin<Box<B>>>, error: Option<<B as Body>::Error> },
        // The inner body, untouched.
        Inner { #[pin] body: B },
    }
}

impl<B: Body> DedupBody<B> {
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full { data, trailers },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// `prefix` followed by the rest of `body`.
    pub(crate) fn prefixed(prefix: Vec<Bytes>, body: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix: prefix.into(),
                rest: Some(body),
                error: None,
            },
        }
    }

    /// `prefix` followed by the error that interrupted reading the body.
    pub(crate) fn failed(prefix: Vec<Bytes>, error: B::Error) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix: prefix.into(),
                rest: None,
                error: Some(error),
            },
        }
    }
}

impl<B> Body for DedupBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data, trailers } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data))).or_else(|| {
                    trailers
                        .take()
                        .map(|trailers| Ok(Frame::trailers(trailers)))
                }))
            }
            KindProj::Prefixed {
                prefix,
                rest,
                error,
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
            KindProj::Inner { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Prefixed {
                prefix,
                rest,
                error,
            } => {
                prefix.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(Body::is_end_stream)
            }
            Kind::Inner { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Prefixed { prefix, rest, .. } => {
                let buffered: u64 = prefix.iter().map(|chunk| chunk.len() as u64).sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(buffered.saturating_add(rest.lower()));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(buffered.saturating_add(upper));
                }
                hint
            }
            Kind::Inner { body } => body.size_hint(),
        }
    }
}

impl<B: Body> fmt::Debug for DedupBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "shared copy",
            Kind::Prefixed { .. } => "unshared, partly read",
            Kind::Inner { .. } => "pass-through",
        };
        f.debug_struct("DedupBody").field("kind", &kind).finish()
    }
}
