//! The recorded response that a replay returns, and which responses are recorded.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::error::RecordError;
use crate::fingerprint::Fingerprint;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, never a response.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A response as the layer recorded it for replays: status, headers
/// (hop-by-hop, `Content-Length` and the layer's deny list removed) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The body was over the recording limit: it is not kept, and a replay
    /// answers `409` saying so instead of a truncated body.
    body_dropped: bool,
}

/// The stored form: plain types, so that every store encodes it the same way.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    status: u16,
    #[serde(borrow)]
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a [u8],
    body_dropped: bool,
}

impl RecordedResponse {
    /// Records `status`, the replayable part of `headers`, and `body` (or
    /// only the fact that there was one, when `body` is `None` because it was
    /// over the limit).
    pub(crate) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        deny: &[HeaderName],
        body: Option<Bytes>,
    ) -> Self {
        let hop_by_hop_named = connection_tokens(headers);
        let mut kept = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            let dropped = HOP_BY_HOP.contains(name)
                || name == header::CONTENT_LENGTH
                || deny.contains(name)
                || hop_by_hop_named
                    .iter()
                    .any(|token| name.as_str().eq_ignore_ascii_case(token));
            if !dropped {
                kept.append(name.clone(), value.clone());
            }
        }
        Self {
            status,
            headers: kept,
            body_dropped: body.is_none(),
            body: body.unwrap_or_default(),
        }
    }

    /// The recorded status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The recorded headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The recorded body (empty when it was [not kept](Self::body_dropped)).
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether the body was over the recording limit and not kept.
    #[must_use]
    pub fn body_dropped(&self) -> bool {
        self.body_dropped
    }

    /// The bytes a store keeps (postcard).
    ///
    /// # Errors
    /// Never in practice (every field is plain data); a failure is reported
    /// instead of a panic.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        postcard::to_allocvec(&Wire {
            status: self.status.as_u16(),
            headers,
            body: &self.body,
            body_dropped: self.body_dropped,
        })
        .map_err(RecordError::format)
    }

    /// Reads what [`encode`](Self::encode) wrote.
    ///
    /// # Errors
    /// When the bytes are not a recorded response (corrupt or foreign data
    /// under the store's prefix).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let wire: Wire<'_> = postcard::from_bytes(bytes).map_err(RecordError::format)?;
        let status = StatusCode::from_u16(wire.status)
            .map_err(|_| RecordError::invalid("the status is not an HTTP status"))?;
        let mut headers = HeaderMap::with_capacity(wire.headers.len());
        for (name, value) in wire.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| RecordError::invalid("a header name is not valid"))?;
            let value = HeaderValue::from_bytes(value)
                .map_err(|_| RecordError::invalid("a header value is not valid"))?;
            headers.append(name, value);
        }
        Ok(Self {
            status,
            headers,
            body: Bytes::copy_from_slice(wire.body),
            body_dropped: wire.body_dropped,
        })
    }
}

/// Header names listed in `Connection` (they are hop-by-hop too).
fn connection_tokens(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .collect()
}

/// What a store holds for a key that some request has claimed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Existing {
    /// A request holds the claim and is running.
    InProgress {
        /// The fingerprint of the request that holds the claim.
        fingerprint: Fingerprint,
    },
    /// A request ran to completion and its response was recorded.
    Completed {
        /// The fingerprint of the request that ran.
        fingerprint: Fingerprint,
        /// Its recorded response.
        response: Arc<RecordedResponse>,
    },
}

impl Existing {
    /// The fingerprint of the request that claimed the key.
    #[must_use]
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Self::InProgress { fingerprint } | Self::Completed { fingerprint, .. } => fingerprint,
        }
    }
}

/// Which outcomes of the handler are recorded (and replayed to retries) and
/// which release the claim so that a retry runs the handler again.
///
/// Default: a response is recorded when the request ran, as Stripe does:
/// every status below 500 except those that mean the request never ran
/// ([`RecordPolicy::never_ran`]: 400, 401, 403, 408, 413, 415, 422, 429,
/// the answers of validation, authentication, rate limiting and body
/// extractors), so a client that fixes its request (its body, its token, its
/// pace) and retries with the same key runs it. A 5xx response, a handler
/// error and a panic release the claim too. Whatever the policy, a response
/// the handler marks [`NotExecuted`] is never recorded.
#[derive(Clone, Copy)]
pub struct RecordPolicy {
    record: fn(StatusCode) -> bool,
}

impl RecordPolicy {
    /// Records responses for which `record` returns `true`; the others
    /// release the claim. Handler errors, panics and responses marked
    /// [`NotExecuted`] always release it.
    ///
    /// ```
    /// use perfkit_idempotency::RecordPolicy;
    ///
    /// // Only successes are final: any 4xx lets the client retry with the same key.
    /// let policy = RecordPolicy::records(|status| status.is_success());
    /// // The draft's reading: every answer below 500 is final, validation failures included.
    /// let strict = RecordPolicy::records(|status| !status.is_server_error());
    /// ```
    #[must_use]
    pub fn records(record: fn(StatusCode) -> bool) -> Self {
        Self { record }
    }

    /// Whether a response with `status` is recorded.
    #[must_use]
    pub fn records_status(&self, status: StatusCode) -> bool {
        (self.record)(status)
    }

    /// Whether `status` says the request never ran: `400 Bad Request`,
    /// `401 Unauthorized`, `403 Forbidden`, `408 Request Timeout`,
    /// `413 Content Too Large`, `415 Unsupported Media Type`,
    /// `422 Unprocessable Content`, `429 Too Many Requests`. The default
    /// policy records none of them.
    #[must_use]
    pub fn never_ran(status: StatusCode) -> bool {
        matches!(
            status.as_u16(),
            400 | 401 | 403 | 408 | 413 | 415 | 422 | 429
        )
    }
}

impl Default for RecordPolicy {
    fn default() -> Self {
        Self::records(|status| !status.is_server_error() && !Self::never_ran(status))
    }
}

/// Put in a response's extensions by a handler whose request did not run
/// (a validation failure the status alone does not tell, a precondition
/// that failed before any side effect): the layer does not record the
/// response, releases the key, and removes the marker. The client's retry
/// with the same key runs the handler.
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use perfkit_idempotency::NotExecuted;
///
/// fn insufficient_funds() -> Response {
///     let mut response = (StatusCode::PAYMENT_REQUIRED, "top up and retry").into_response();
///     response.extensions_mut().insert(NotExecuted);
///     response
/// }
/// # let _ = insufficient_funds();
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotExecuted;

impl std::fmt::Debug for RecordPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordPolicy").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_length_and_denied_headers_are_not_recorded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("x-trace-hop"));
        headers.insert("x-trace-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        headers.insert(
            header::SET_COOKIE,
            HeaderValue::from_static("session=secret"),
        );
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        let recorded = RecordedResponse::new(
            StatusCode::CREATED,
            &headers,
            &[header::SET_COOKIE],
            Some(Bytes::from_static(b"{}")),
        );
        let names: Vec<&str> = recorded.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "x-many"]);
        assert_eq!(recorded.headers().get_all("x-many").iter().count(), 2);
    }

    #[test]
    fn a_recorded_response_survives_encoding() {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_static("/payments/7"));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        for body in [Some(Bytes::from_static(b"\x00binary\xff")), None] {
            let recorded = RecordedResponse::new(StatusCode::CREATED, &headers, &[], body);
            let decoded = RecordedResponse::decode(&recorded.encode().unwrap()).unwrap();
            assert_eq!(decoded, recorded);
        }
        assert!(RecordedResponse::decode(b"\xff\xff\xff").is_err());
    }
}
