//! Which requests may share a response.

use http::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, AUTHORIZATION, COOKIE, HeaderName, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri};

/// The parts of a request a key function may look at (everything but the body).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI, with its query.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Extensions set by earlier layers (an authenticated principal, say).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    #[must_use]
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// Request headers that can change a response, and are therefore part of the
/// default key.
pub(crate) const VARYING_HEADERS: [HeaderName; 11] = [
    AUTHORIZATION,
    COOKIE,
    ACCEPT,
    ACCEPT_ENCODING,
    ACCEPT_LANGUAGE,
    RANGE,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

/// The default coalescing key: method, URI, and the values of the request
/// headers that can change a response (`Authorization`, `Cookie`, `Accept`,
/// `Accept-Encoding`, `Accept-Language`, `Range`, `If-Match`,
/// `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`, `If-Range`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    method: Method,
    uri: Uri,
    varying: Vec<(HeaderName, HeaderValue)>,
}

impl RequestKey {
    /// The default key function: a key for `GET` and `HEAD`, `None` (pass
    /// through) for every other method.
    #[must_use]
    pub fn for_safe_methods(head: &RequestHead<'_>) -> Option<Self> {
        (*head.method == Method::GET || *head.method == Method::HEAD).then(|| Self::of(head))
    }

    /// The key of any request, whatever its method: for custom key functions
    /// that widen the default.
    #[must_use]
    pub fn of(head: &RequestHead<'_>) -> Self {
        let varying = VARYING_HEADERS
            .iter()
            .flat_map(|name| {
                head.headers
                    .get_all(name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
            })
            .collect();
        Self {
            method: head.method.clone(),
            uri: head.uri.clone(),
            varying,
        }
    }
}
