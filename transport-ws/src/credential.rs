//! Where a request carries its credential.

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// The credential of a client request: `x-api-key`, then `Authorization: Bearer`, then (when
/// `allow_query`, for browsers opening a WebSocket) the `api_key` query parameter.
pub(crate) fn client_credential(
    headers: &HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Option<String> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    if let Some(token) = bearer(headers) {
        return Some(token);
    }
    if allow_query {
        return query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "api_key")
                .map(|(_, v)| v.into_owned())
        });
    }
    None
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn finds_the_credential_in_each_place() {
        let mut h = HeaderMap::new();
        assert_eq!(
            client_credential(&h, Some("api_key=a%2Bb"), true).as_deref(),
            Some("a+b")
        );
        assert_eq!(client_credential(&h, Some("api_key=a"), false), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok"));
        assert_eq!(client_credential(&h, None, false).as_deref(), Some("tok"));
        assert_eq!(bearer(&h).as_deref(), Some("tok"));
        h.insert("x-api-key", HeaderValue::from_static("key"));
        assert_eq!(client_credential(&h, None, false).as_deref(), Some("key"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
