//! The browser client (`examples/web/`), embedded in the binary and served at `/`.

use transport_ws::StaticAssets;

/// The client's files: the page at `/` and what it loads.
pub fn assets() -> StaticAssets {
    StaticAssets::new()
        .with_file(
            "/",
            "text/html; charset=utf-8",
            &include_bytes!("../web/index.html")[..],
        )
        .with_file(
            "/app.js",
            "text/javascript; charset=utf-8",
            &include_bytes!("../web/app.js")[..],
        )
        .with_file(
            "/style.css",
            "text/css; charset=utf-8",
            &include_bytes!("../web/style.css")[..],
        )
        .with_file(
            "/favicon.svg",
            "image/svg+xml",
            &include_bytes!("../web/favicon.svg")[..],
        )
}

/// The address a person opens in a browser: the page with the API key in its query. An
/// unspecified listen address (`0.0.0.0`, `[::]`) is replaced by loopback, which reaches it.
pub fn page_url(listen: std::net::SocketAddr, api_key: &str) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}/?api_key={}", percent_encode(api_key))
}

/// Everything but RFC 3986's unreserved characters, percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_reaches_the_listener_and_escapes_the_key() {
        assert_eq!(
            page_url("127.0.0.1:8080".parse().unwrap(), "key-1"),
            "http://127.0.0.1:8080/?api_key=key-1"
        );
        assert_eq!(
            page_url("0.0.0.0:80".parse().unwrap(), "a b&cé"),
            "http://127.0.0.1:80/?api_key=a%20b%26c%C3%A9"
        );
        assert_eq!(
            page_url("[::]:9000".parse().unwrap(), "k"),
            "http://[::1]:9000/?api_key=k"
        );
    }
}
