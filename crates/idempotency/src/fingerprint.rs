//! What makes two requests with one key "the same request".

use std::fmt;

use http::HeaderName;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use sha2::{Digest, Sha256};

/// A SHA-256 digest of a request's method, path, query, media type
/// (`Content-Type`), chosen headers and body. A second request with the same key and another fingerprint is
/// answered `422 Unprocessable Content` instead of replaying the first
/// one's response.
///
/// A cryptographic hash, so that no crafted body can collide with another
/// request's fingerprint and be handed that request's response. Each part is
/// length-prefixed, so moving bytes between parts changes the digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request head and its buffered body, including
    /// its media type and the values of `headers` (in the order given; an
    /// absent header and an empty one differ).
    ///
    /// The media type is always part of it: the same bytes sent as
    /// `text/plain` and as `application/json` are different requests (a
    /// handler may reject one with `415` and accept the other). It is
    /// compared as HTTP defines it: case-insensitively, whitespace around
    /// parameters ignored (`Application/JSON; charset=UTF-8` is
    /// `application/json;charset=utf-8`); an absent `Content-Type` differs
    /// from every present one.
    #[must_use]
    pub fn of(parts: &Parts, headers: &[HeaderName], body: &[u8]) -> Self {
        let mut digest = Sha256::new();
        part(&mut digest, parts.method.as_str().as_bytes());
        part(&mut digest, parts.uri.path().as_bytes());
        part(
            &mut digest,
            parts.uri.query().unwrap_or_default().as_bytes(),
        );
        match parts.headers.get(CONTENT_TYPE) {
            None => part(&mut digest, b"\x00absent"),
            Some(value) => media_type_part(&mut digest, value.as_bytes()),
        }
        for name in headers {
            part(&mut digest, name.as_str().as_bytes());
            // The count first: an absent header (0) differs from an empty one (1).
            let values = parts.headers.get_all(name);
            part(&mut digest, &(values.iter().count() as u64).to_le_bytes());
            for value in values {
                part(&mut digest, value.as_bytes());
            }
        }
        part(&mut digest, body);
        Self(digest.finalize().into())
    }

    /// A fingerprint from its 32 bytes, as a store returns them.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the digest.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// One length-prefixed part of the digest.
#[inline]
fn part(digest: &mut Sha256, bytes: &[u8]) {
    digest.update((bytes.len() as u64).to_le_bytes());
    digest.update(bytes);
}

/// The media type as a part: lowercased, spaces and tabs dropped, fed
/// through a stack buffer (no allocation).
fn media_type_part(digest: &mut Sha256, value: &[u8]) {
    // The common case, already normal (`application/json`): as it is.
    if !value
        .iter()
        .any(|byte| byte.is_ascii_uppercase() || matches!(byte, b' ' | b'\t'))
    {
        part(digest, value);
        return;
    }
    let kept = |byte: &&u8| !matches!(byte, b' ' | b'\t');
    digest.update((value.iter().filter(kept).count() as u64).to_le_bytes());
    let mut buffer = [0_u8; 64];
    let mut filled = 0;
    for byte in value.iter().filter(kept) {
        if filled == buffer.len() {
            digest.update(buffer);
            filled = 0;
        }
        if let Some(slot) = buffer.get_mut(filled) {
            *slot = byte.to_ascii_lowercase();
        }
        filled += 1;
    }
    digest.update(buffer.get(..filled).unwrap_or_default());
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn fingerprint(method: &str, uri: &str, header: Option<&str>, body: &[u8]) -> Fingerprint {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = header {
            request = request.header("x-account", value);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        Fingerprint::of(&parts, &[HeaderName::from_static("x-account")], body)
    }

    #[test]
    fn every_part_of_the_request_changes_the_fingerprint() {
        let base = fingerprint("POST", "/pay?x=1", Some("a"), b"{}");
        assert_eq!(base, fingerprint("POST", "/pay?x=1", Some("a"), b"{}"));
        for other in [
            fingerprint("PATCH", "/pay?x=1", Some("a"), b"{}"),
            fingerprint("POST", "/pay2?x=1", Some("a"), b"{}"),
            fingerprint("POST", "/pay?x=2", Some("a"), b"{}"),
            fingerprint("POST", "/pay?x=1", Some("b"), b"{}"),
            fingerprint("POST", "/pay?x=1", None, b"{}"),
            fingerprint("POST", "/pay?x=1", Some(""), b"{}"),
            fingerprint("POST", "/pay?x=1", Some("a"), b"{ }"),
        ] {
            assert_ne!(base, other);
        }
    }

    fn with_media_type(media_type: Option<&str>) -> Fingerprint {
        let mut request = Request::builder().method("POST").uri("/pay");
        if let Some(value) = media_type {
            request = request.header("content-type", value);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        Fingerprint::of(&parts, &[], b"{}")
    }

    #[test]
    fn the_media_type_is_part_of_the_fingerprint_compared_as_http_does() {
        let json = with_media_type(Some("application/json"));
        assert_ne!(json, with_media_type(Some("text/plain")));
        assert_ne!(json, with_media_type(None));
        assert_ne!(json, with_media_type(Some("")));
        assert_ne!(
            with_media_type(Some("application/json; charset=utf-8")),
            with_media_type(Some("application/json; charset=latin1"))
        );
        assert_eq!(
            with_media_type(Some("Application/JSON ; Charset=UTF-8")),
            with_media_type(Some("application/json;charset=utf-8"))
        );
        let long = "x".repeat(150);
        assert_eq!(
            with_media_type(Some(&format!("Application/Vnd.Long ; Profile={long}"))),
            with_media_type(Some(&format!("application/vnd.long;profile={long}"))),
            "past the 64-byte buffer too"
        );
        assert_ne!(
            with_media_type(Some(&format!("application/vnd.long;profile={long}"))),
            with_media_type(Some(&format!("application/vnd.long;profile={long}y")))
        );
    }

    #[test]
    fn bytes_moved_between_parts_change_the_fingerprint() {
        assert_ne!(
            fingerprint("POST", "/a?b", None, b"c"),
            fingerprint("POST", "/a?", None, b"bc")
        );
    }

    /// The digest of the length-prefixed parts hashed in one piece: what a
    /// stored fingerprint was computed as, whatever the buffering.
    fn reference(parts: &[&[u8]]) -> Fingerprint {
        let mut input = Vec::new();
        for part in parts {
            input.extend_from_slice(&(part.len() as u64).to_le_bytes());
            input.extend_from_slice(part);
        }
        Fingerprint(Sha256::digest(&input).into())
    }

    #[test]
    fn the_digest_is_the_length_prefixed_parts_whatever_their_sizes() {
        for (path, account, media_type, body) in [
            ("/pay", "a", "application/json", 2),
            ("/pay", "a", "Application/JSON; Charset=UTF-8", 0),
            (&*format!("/{}", "p".repeat(300)), "a", "text/plain", 63),
            (
                "/pay",
                &*"x".repeat(120),
                &*format!("text/{}", "X ".repeat(100)),
                64,
            ),
            ("/pay", "", "application/json", 5_000),
        ] {
            let body = vec![7_u8; body];
            let (parts, ()) = Request::post(format!("{path}?q=1"))
                .header("content-type", media_type)
                .header("x-account", account)
                .body(())
                .unwrap()
                .into_parts();
            let normal: Vec<u8> = media_type
                .bytes()
                .filter(|byte| !matches!(byte, b' ' | b'\t'))
                .map(|byte| byte.to_ascii_lowercase())
                .collect();
            let expected = reference(&[
                b"POST",
                path.as_bytes(),
                b"q=1",
                &normal,
                b"x-account",
                &1_u64.to_le_bytes(),
                account.as_bytes(),
                &body,
            ]);
            let headers = [HeaderName::from_static("x-account")];
            assert_eq!(
                Fingerprint::of(&parts, &headers, &body),
                expected,
                "{path} {media_type}"
            );
        }
    }
}
