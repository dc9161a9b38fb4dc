//! Which requests may share a response.

use http::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, AUTHORIZATION, COOKIE, HeaderName, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::request::Parts;
use http::{HeaderValue, Method, Uri};

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
    pub fn for_safe_methods(head: &Parts) -> Option<Self> {
        (head.method == Method::GET || head.method == Method::HEAD).then(|| Self::of(head))
    }

    /// The key of any request, whatever its method: for custom key functions
    /// that widen the default.
    #[must_use]
    pub fn of(head: &Parts) -> Self {
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
