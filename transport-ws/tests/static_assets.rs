//! Static files beside the broker's routes, fetched over loopback by a real HTTP client.

mod support;

use support::*;
use transport_ws::StaticAssets;

const PAGE: &str = "<!doctype html><title>client</title><script src=/app.js></script>";

fn assets() -> StaticAssets {
    StaticAssets::new()
        .with_file("/", "text/html; charset=utf-8", PAGE)
        .with_file("/app.js", "text/javascript; charset=utf-8", "let x = 1;")
}

#[tokio::test]
async fn files_are_served_with_their_headers_beside_the_broker_routes() {
    let b = TestBroker::with_assets(assets()).await;
    let (st, h, body) = http_raw(b.addr, "GET", "/?api_key=k", &[]).await;
    assert_eq!(st, 200);
    assert_eq!(body, PAGE.as_bytes());
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let csp = h["content-security-policy"].to_str().unwrap();
    let host = b.addr.to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        csp.contains(&format!("connect-src 'self' ws://{host} wss://{host}")),
        "{csp}"
    );

    let (st, h, body) = http_raw(b.addr, "GET", "/app.js", &[]).await;
    assert_eq!((st, body.as_ref()), (200, &b"let x = 1;"[..]));
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");

    // The broker's routes are untouched.
    let (st, body) = b.http("GET", "/healthz", &[], "").await;
    assert_eq!((st, body["status"].as_str()), (200, Some("ok")));
    let _ws = b.client(KEY).await;
    let (st, e) = b.http("GET", "/nope", &[], "").await;
    assert_eq!((st, e["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn head_has_no_body_and_revalidation_is_not_modified() {
    let b = TestBroker::with_assets(assets()).await;
    let (st, h, body) = http_raw(b.addr, "HEAD", "/", &[]).await;
    assert_eq!(st, 200);
    assert!(body.is_empty());
    assert_eq!(h["content-length"], PAGE.len().to_string());
    let etag = h["etag"].to_str().unwrap().to_owned();

    let (st, h, body) = http_raw(b.addr, "GET", "/", &[("if-none-match", &etag)]).await;
    assert_eq!(st, 304);
    assert!(body.is_empty());
    assert_eq!(h["etag"].to_str().unwrap(), etag);

    let (st, h, _) = http_raw(b.addr, "POST", "/", &[]).await;
    assert_eq!(st, 405);
    assert_eq!(h["allow"], "GET, HEAD");
}

#[tokio::test]
async fn without_assets_nothing_but_the_broker_answers() {
    let b = TestBroker::start().await;
    let (st, e) = b.http("GET", "/", &[], "").await;
    assert_eq!((st, e["code"].as_str()), (404, Some("not_found")));
}
