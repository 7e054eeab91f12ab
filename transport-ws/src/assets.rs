//! Static files served beside the broker's routes, such as a browser client.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::http::{API_ROUTES, Body};

/// A fixed set of files served with `GET` and `HEAD` on the broker's listener, for example a
/// web client embedded in the binary with `include_bytes!`.
///
/// Each file is sent with its content type, `cache-control: no-cache` and an `ETag` (browsers
/// revalidate and get `304 Not Modified` while the file is unchanged), `x-content-type-options:
/// nosniff`, `referrer-policy: no-referrer` (page URLs may carry an `api_key`), and this
/// Content-Security-Policy: everything from the broker's own origin only, WebSocket
/// connections back to the same host, no frames, no inline scripts or styles:
///
/// ```text
/// default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';
/// connect-src 'self' ws://HOST wss://HOST; base-uri 'none'; form-action 'self';
/// frame-ancestors 'none'
/// ```
///
/// (`HOST` is the request's `Host` header, left out when it is not a plain host and port.)
/// Other methods on these paths get `405`. The broker's own routes (`/ws`, `/publish`, …)
/// cannot be shadowed.
///
/// ```
/// use transport_ws::StaticAssets;
///
/// let assets = StaticAssets::new()
///     .with_file("/", "text/html; charset=utf-8", &b"<!doctype html><title>hi</title>"[..])
///     .with_file("/app.js", "text/javascript; charset=utf-8", "console.log('hi')");
/// assert_eq!(assets.len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct StaticAssets {
    files: HashMap<String, Arc<StaticFile>>,
}

struct StaticFile {
    content_type: HeaderValue,
    etag: HeaderValue,
    body: Bytes,
}

impl StaticAssets {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file served at `path`.
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/`, names one of the broker's routes, or `content_type`
    /// is not a valid header value. These are mistakes in the program, found at start.
    pub fn with_file(mut self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Self {
        assert!(
            path.starts_with('/'),
            "static path {path:?} must start with '/'"
        );
        assert!(
            !API_ROUTES.contains(&path),
            "static path {path:?} would shadow a broker route"
        );
        let content_type = HeaderValue::from_str(content_type)
            .unwrap_or_else(|_| panic!("invalid content type {content_type:?}"));
        let body = body.into();
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        content_type.as_bytes().hash(&mut hasher);
        // A quoted hex string is always a valid header value.
        let etag = HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish()))
            .expect("hex etag is a valid header value");
        let file = StaticFile {
            content_type,
            etag,
            body,
        };
        self.files.insert(path.to_owned(), Arc::new(file));
        self
    }

    /// How many files the set holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the set holds no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The response for a request to `path`, or `None` when no file is served there.
    pub(crate) fn respond(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        let file = self.files.get(path)?;
        if method != Method::GET && method != Method::HEAD {
            let mut resp = crate::http::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "method not allowed",
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(resp);
        }
        let fresh = headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim())
            .any(|t| t == "*" || t.trim_start_matches("W/").as_bytes() == file.etag.as_bytes());
        let mut resp = if fresh {
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            // hyper sends no body for HEAD but keeps the content-length of this one.
            Response::new(Body::from(file.body.clone()))
        };
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, file.content_type.clone());
        h.insert(ETAG, file.etag.clone());
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(CONTENT_SECURITY_POLICY, content_security_policy(headers));
        Some(resp)
    }
}

impl fmt::Debug for StaticAssets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut paths: Vec<_> = self.files.iter().collect();
        paths.sort_by(|a, b| a.0.cmp(b.0));
        f.debug_map()
            .entries(paths.into_iter().map(|(p, file)| {
                (
                    p,
                    format!("{:?}, {} bytes", file.content_type, file.body.len()),
                )
            }))
            .finish()
    }
}

/// The policy described on [`StaticAssets`]. Browsers before CSP level 3 do not count
/// `ws:`/`wss:` as `'self'`, so the request's host is named too, when it is safe to repeat.
fn content_security_policy(headers: &HeaderMap) -> HeaderValue {
    const BASE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                        img-src 'self'; base-uri 'none'; form-action 'self'; \
                        frame-ancestors 'none'; connect-src 'self'";
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_plain_host(h));
    let policy = match host {
        Some(h) => format!("{BASE} ws://{h} wss://{h}"),
        None => BASE.to_owned(),
    };
    // Only ASCII letters, digits and `.-:[]'; ` reach the string.
    HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static(BASE))
}

/// A host name or IP literal with an optional port: nothing that could end a CSP source or
/// directive.
fn is_plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 262
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> StaticAssets {
        StaticAssets::new()
            .with_file("/", "text/html; charset=utf-8", "<p>hi</p>")
            .with_file("/a.js", "text/javascript", "1")
    }

    fn get(
        a: &StaticAssets,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<Response<Body>> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        a.respond(&method, path, &map)
    }

    #[test]
    fn serves_files_with_type_cache_and_policy_headers() {
        let a = assets();
        let r = get(&a, Method::GET, "/", &[("host", "127.0.0.1:8080")]).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[CACHE_CONTROL], "no-cache");
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self';"),
            "{csp}"
        );
        assert!(
            csp.ends_with("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080"),
            "{csp}"
        );
        assert!(get(&a, Method::GET, "/missing", &[]).is_none());
        assert_eq!(
            get(&a, Method::GET, "/a.js", &[]).unwrap().headers()[CONTENT_TYPE],
            "text/javascript"
        );
    }

    #[test]
    fn a_hostile_host_header_does_not_reach_the_policy() {
        let a = assets();
        for host in ["evil; script-src *", "a b", ""] {
            let r = get(&a, Method::GET, "/", &[("host", host)]).unwrap();
            let csp = r.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.ends_with("connect-src 'self'"), "{csp}");
            assert!(!csp.contains("evil"));
        }
    }

    #[test]
    fn revalidation_answers_not_modified_only_for_the_current_etag() {
        let a = assets();
        let etag = get(&a, Method::GET, "/", &[]).unwrap().headers()[ETAG]
            .to_str()
            .unwrap()
            .to_owned();
        let other = get(&a, Method::GET, "/a.js", &[]).unwrap().headers()[ETAG].clone();
        assert_ne!(etag, other);
        let list = format!("\"x\", W/{etag}");
        let r = get(&a, Method::GET, "/", &[("if-none-match", &list)]).unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = get(&a, Method::GET, "/", &[("if-none-match", "\"stale\"")]).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn only_get_and_head_are_allowed() {
        let a = assets();
        assert_eq!(
            get(&a, Method::HEAD, "/", &[]).unwrap().status(),
            StatusCode::OK
        );
        let r = get(&a, Method::POST, "/", &[]).unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
    }

    #[test]
    #[should_panic(expected = "would shadow a broker route")]
    fn broker_routes_cannot_be_shadowed() {
        let _ = StaticAssets::new().with_file("/ws", "text/plain", "no");
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn paths_are_absolute() {
        let _ = StaticAssets::new().with_file("index.html", "text/html", "no");
    }
}
