//! The layer's own answers: RFC 9457 `application/problem+json` bodies.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

/// A problem the layer answers itself, without running the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// 400: the `Idempotency-Key` header is missing, repeated or malformed.
    BadKey(String),
    /// 400: the scope function found no scope (tenant, API key) for the request.
    NoScope,
    /// 400: the request body could not be read.
    BadBody(String),
    /// 409: a request with this key is still being processed.
    InProgress {
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
    /// 409: the request with this key completed, but its response was over the
    /// recording limit and cannot be replayed.
    NotReplayable {
        /// The status the original request was answered with.
        status: StatusCode,
    },
    /// 413: the request body is over the fingerprinting limit.
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 422: the key was used with a different request (method, path, query,
    /// chosen headers or body).
    Mismatch,
    /// 500: the handler panicked or its response body failed (the claim was
    /// released; a retry runs it again).
    HandlerFailed,
    /// 503: the idempotency store is unreachable (fail-closed).
    StoreUnavailable {
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
}

/// A `Retry-After` delay in whole seconds, rounded up, at least 1 (the header has no fractions).
fn whole_seconds(delay: Duration) -> u64 {
    (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)).max(1)
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// The response status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadKey(_) | Self::NoScope | Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::InProgress { .. } | Self::NotReplayable { .. } => StatusCode::CONFLICT,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::HandlerFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The problem `type` URI; stable, so clients can branch on it.
    #[must_use]
    pub fn type_uri(&self) -> &'static str {
        match self {
            Self::BadKey(_) => "urn:perfkit:idempotency:bad-key",
            Self::NoScope => "urn:perfkit:idempotency:no-scope",
            Self::BadBody(_) => "urn:perfkit:idempotency:bad-body",
            Self::InProgress { .. } => "urn:perfkit:idempotency:in-progress",
            Self::NotReplayable { .. } => "urn:perfkit:idempotency:not-replayable",
            Self::BodyTooLarge { .. } => "urn:perfkit:idempotency:body-too-large",
            Self::Mismatch => "urn:perfkit:idempotency:key-reused",
            Self::HandlerFailed => "urn:perfkit:idempotency:handler-failed",
            Self::StoreUnavailable { .. } => "urn:perfkit:idempotency:store-unavailable",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::BadKey(_) => "Invalid Idempotency-Key",
            Self::NoScope => "Request cannot be scoped",
            Self::BadBody(_) => "Unreadable request body",
            Self::InProgress { .. } => "A request with this Idempotency-Key is in progress",
            Self::NotReplayable { .. } => "The response to this Idempotency-Key cannot be replayed",
            Self::BodyTooLarge { .. } => "Request body too large",
            Self::Mismatch => "Idempotency-Key reused with a different request",
            Self::HandlerFailed => "The request failed",
            Self::StoreUnavailable { .. } => "Idempotency store unavailable",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::BadKey(why) => why.clone(),
            Self::NoScope => "the server could not tell which client this request belongs to, so it cannot keep its Idempotency-Key apart from other clients' keys; authenticate the request".to_owned(),
            Self::BadBody(why) => format!("the request body could not be read: {why}"),
            Self::InProgress { retry_after } => format!(
                "the first request with this key has not finished; retry after {} s to get its response",
                whole_seconds(*retry_after)
            ),
            Self::NotReplayable { status } => format!(
                "the request with this key was processed once (status {}), but its response was too large to record; do not retry it, look its result up instead",
                status.as_u16()
            ),
            Self::BodyTooLarge { limit } => format!("requests with an Idempotency-Key may carry at most {limit} bytes of body"),
            Self::Mismatch => "this key was first used with another method, path, query, media type or body; use a new key for a new request".to_owned(),
            Self::HandlerFailed => "the server failed while processing the request; it was not recorded, so a retry with the same key runs it again".to_owned(),
            Self::StoreUnavailable { retry_after } => format!(
                "the server cannot check the Idempotency-Key right now, so it did not process the request; retry after {} s",
                whole_seconds(*retry_after)
            ),
        }
    }

    /// The `application/problem+json` response.
    pub(crate) fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let detail = self.detail();
        let body = serde_json::to_vec(&Body {
            kind: self.type_uri(),
            title: self.title(),
            status: self.status().as_u16(),
            detail: &detail,
        })
        .unwrap_or_default();
        let mut response = Response::new(B::from(Bytes::from(body)));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::InProgress { retry_after } | Self::StoreUnavailable { retry_after } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(whole_seconds(retry_after)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds_and_never_zero() {
        for (delay, seconds) in [(0, 1), (1, 1), (1_000, 1), (1_001, 2), (2_500, 3)] {
            assert_eq!(
                whole_seconds(Duration::from_millis(delay)),
                seconds,
                "{delay} ms"
            );
        }
    }
}
