//! The `pubsub.v1` protocol and HTTP endpoints, driven by real clients over loopback.

mod support;

use std::time::Duration;

use broker_core::Limits;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use transport_ws::WsConfig;

fn publish(id: &str, ch: &str, data: Value) -> Value {
    json!({"type":"publish","id":id,"channel":ch,"data":data})
}

#[tokio::test]
async fn messages_reach_every_subscriber_once_including_the_publisher() {
    let b = TestBroker::start().await;
    let mut a = b.subscriber(KEY, &["tech"]).await;
    let mut c = b.subscriber(KEY2, &["tech", "cars"]).await;
    let mut other = b.subscriber(KEY, &["cars"]).await;

    a.send(publish("p1", "tech", json!({"text":"hello"}))).await;
    let mut frames = [a.recv().await, a.recv().await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap().to_owned());
    let (msg, ack) = (&frames[0], &frames[1]);
    assert_eq!(msg["type"], "message");
    assert_eq!(
        ack,
        &json!({"type":"published","id":"p1","message_id":msg["message_id"]})
    );
    assert_eq!(msg["channel"], "tech");
    assert_eq!(msg["origin"], "local");
    assert_eq!(msg["data"], json!({"text":"hello"}));
    assert_eq!(&c.recv().await, msg);
    c.expect_silence().await;
    other.expect_silence().await;
    a.expect_silence().await;
}

#[tokio::test]
async fn subscribe_is_idempotent_and_unsubscribe_stops_delivery() {
    let b = TestBroker::start().await;
    let mut s = b.subscriber(KEY, &["music", "music"]).await;
    let mut p = b.client(KEY2).await;
    p.send(publish("1", "music", json!(1))).await;
    assert_eq!(p.recv().await["type"], "published");
    assert_eq!(s.recv().await["data"], 1);
    s.expect_silence().await;

    s.send(json!({"type":"unsubscribe","id":"u","channel":"music"}))
        .await;
    assert_eq!(
        s.recv().await,
        json!({"type":"unsubscribed","id":"u","channel":"music"})
    );
    p.send(publish("2", "music", json!(2))).await;
    assert_eq!(p.recv().await["type"], "published");
    s.expect_silence().await;
}

#[tokio::test]
async fn the_allow_list_applies_to_subscribe_and_publish() {
    let b = TestBroker::start().await;
    let mut listener = b
        .subscriber(KEY, &["cars", "robots", "tech", "music", "media"])
        .await;
    let mut c = b.client(KEY2).await;
    c.send(json!({"type":"subscribe","id":"s","channel":"sports"}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("channel_not_allowed"), Some("s"))
    );

    c.send(publish("p", "sports", json!("nope"))).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("channel_not_allowed"), Some("p"))
    );
    let (status, body) = b
        .http(
            "POST",
            "/publish",
            &[("x-api-key", KEY)],
            r#"{"channel":"sports","data":1}"#,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("channel_not_allowed"))
    );
    listener.expect_silence().await;

    c.send(json!({"type":"subscribe","id":"bad","channel":"has space"}))
        .await;
    assert_eq!(c.recv().await["code"], "invalid_channel");
    let (status, body) = b
        .http(
            "POST",
            "/publish",
            &[("x-api-key", KEY)],
            r#"{"channel":"","data":1}"#,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_channel"))
    );
}

#[tokio::test]
async fn websocket_credentials_are_checked_before_the_upgrade() {
    let b = TestBroker::start().await;
    for auth in [
        Auth::None,
        Auth::Header("wrong"),
        Auth::Bearer("wrong"),
        Auth::Query("wrong"),
    ] {
        match Client::connect(b.addr, auth).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["code"], "unauthorized");
                assert!(
                    body["message"]
                        .as_str()
                        .is_some_and(|m| !m.contains("wrong"))
                );
            }
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    for auth in [
        Auth::Header(KEY),
        Auth::Bearer(KEY),
        Auth::Query(KEY),
        Auth::Header(ADMIN),
    ] {
        let mut c = Client::connect(b.addr, auth).await.unwrap();
        c.ping().await;
    }
}

#[tokio::test]
async fn the_server_selects_the_offered_subprotocol() {
    let b = TestBroker::start().await;
    let (_c, headers) = Client::connect_with(
        b.addr,
        Auth::Header(KEY),
        &[("sec-websocket-protocol", "pubsub.v1")],
    )
    .await
    .unwrap();
    assert_eq!(headers.get("sec-websocket-protocol").unwrap(), "pubsub.v1");
    let (_c, headers) = Client::connect_with(b.addr, Auth::Header(KEY), &[])
        .await
        .unwrap();
    assert!(headers.get("sec-websocket-protocol").is_none());
}

#[tokio::test]
async fn http_publish_checks_credentials_and_reaches_websocket_subscribers() {
    let b = TestBroker::start().await;
    let mut s = b.subscriber(KEY, &["tech"]).await;
    let body = r#"{"channel":"tech","data":{"n":1}}"#;
    let (st, e) = b.http("POST", "/publish", &[], body).await;
    assert_eq!((st, e["code"].as_str()), (401, Some("unauthorized")));
    let (st, _) = b
        .http("POST", "/publish", &[("x-api-key", "nope")], body)
        .await;
    assert_eq!(st, 401);
    let (st, _) = b.http("POST", "/publish?api_key=key-1", &[], body).await;
    assert_eq!(st, 401, "query credentials are only for WebSocket upgrades");

    let (st, ok) = b
        .http("POST", "/publish", &[("x-api-key", KEY)], body)
        .await;
    assert_eq!(st, 200);
    let m = s.recv().await;
    assert_eq!(m["message_id"], ok["message_id"]);
    assert_eq!(m["data"], json!({"n":1}));
    let (st, _) = b
        .http(
            "POST",
            "/publish",
            &[("authorization", "Bearer key-2")],
            body,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.recv().await["data"], json!({"n":1}));

    for (bad, code) in [
        ("{", "bad_request"),
        (r#"{"channel":"tech"}"#, "bad_request"),
        (r#"{"data":1}"#, "bad_request"),
        (r#"{"channel":"tech","data":nope}"#, "bad_request"),
    ] {
        let (st, e) = b.http("POST", "/publish", &[("x-api-key", KEY)], bad).await;
        assert_eq!((st, e["code"].as_str()), (400, Some(code)), "{bad}");
    }
    let big = format!(
        r#"{{"channel":"tech","data":"{}"}}"#,
        "x".repeat(241 * 1024)
    );
    let (st, e) = b
        .http("POST", "/publish", &[("x-api-key", KEY)], &big)
        .await;
    assert_eq!((st, e["code"].as_str()), (413, Some("payload_too_large")));
    s.expect_silence().await;
}

#[tokio::test]
async fn admin_unsubscribe_needs_an_admin_bearer_token() {
    let b = TestBroker::start().await;
    let mut s = b.subscriber(KEY, &["tech"]).await;
    let body = r#"{"channel":"tech"}"#;
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Headers<'_>, u16, &str); 5] = [
        (&[], 401, "unauthorized"),
        (&[("authorization", "Bearer nope")], 401, "unauthorized"),
        (&[("authorization", "Bearer key-1")], 403, "forbidden"),
        (&[("x-api-key", "key-1")], 401, "unauthorized"),
        (&[("x-api-key", ADMIN)], 401, "unauthorized"),
    ];
    for (headers, status, code) in cases {
        let (st, e) = b.http("POST", "/admin/unsubscribe", headers, body).await;
        assert_eq!(
            (st, e["code"].as_str()),
            (status, Some(code)),
            "{headers:?}"
        );
    }
    s.ping().await; // still subscribed and open

    let auth = [("authorization", "Bearer admin-1")];
    let (st, e) = b
        .http("POST", "/admin/unsubscribe", &auth, r#"{"channel":"a b"}"#)
        .await;
    assert_eq!((st, e["code"].as_str()), (400, Some("invalid_channel")));
    let (st, e) = b.http("POST", "/admin/unsubscribe", &auth, "{}").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("bad_request")));
    let (st, ok) = b.http("POST", "/admin/unsubscribe", &auth, body).await;
    assert_eq!((st, ok), (200, json!({"channel":"tech","invalidated":1})));
    let (code, frames) = s.until_close().await;
    assert_eq!(frames, vec![json!({"type":"invalidated","channel":"tech"})]);
    assert_eq!(code, Some(4001));
}

#[tokio::test]
async fn invalidation_closes_exactly_the_connections_left_without_subscriptions() {
    let b = TestBroker::start().await;
    let mut only_tech = b.subscriber(KEY, &["tech"]).await;
    let mut tech_and_cars = b.subscriber(KEY2, &["tech", "cars"]).await;
    let mut only_cars = b.subscriber(KEY, &["cars"]).await;
    let mut unsubscribed = b.client(KEY).await;

    let (st, ok) = b
        .http(
            "POST",
            "/admin/unsubscribe",
            &[("authorization", "Bearer admin-1")],
            r#"{"channel":"tech"}"#,
        )
        .await;
    assert_eq!((st, ok["invalidated"].as_u64()), (200, Some(2)));

    let (code, frames) = only_tech.until_close().await;
    assert_eq!(
        (code, frames),
        (
            Some(4001),
            vec![json!({"type":"invalidated","channel":"tech"})]
        )
    );
    assert_eq!(
        tech_and_cars.recv().await,
        json!({"type":"invalidated","channel":"tech"})
    );
    tech_and_cars.ping().await;
    only_cars.ping().await;
    unsubscribed.ping().await;

    // The survivors still get their channel, and nobody gets the invalidated one.
    let (st, _) = b
        .http(
            "POST",
            "/publish",
            &[("x-api-key", KEY)],
            r#"{"channel":"tech","data":0}"#,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = b
        .http(
            "POST",
            "/publish",
            &[("x-api-key", KEY)],
            r#"{"channel":"cars","data":1}"#,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(tech_and_cars.recv().await["channel"], "cars");
    assert_eq!(only_cars.recv().await["channel"], "cars");
    tech_and_cars.expect_silence().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_usable() {
    let b = TestBroker::start().await;
    let mut c = b.client(KEY).await;
    let cases: Vec<(Message, Option<&str>)> = vec![
        (Message::Text("{not json".into()), None),
        (Message::Text("[1,2,3]".into()), None),
        (Message::Text(r#"{"id":"1"}"#.into()), Some("1")),
        (
            Message::Text(r#"{"type":"dance","id":"2"}"#.into()),
            Some("2"),
        ),
        (
            Message::Text(r#"{"type":"subscribe","id":"3"}"#.into()),
            Some("3"),
        ),
        (
            Message::Text(r#"{"type":"publish","id":"4","channel":"tech"}"#.into()),
            Some("4"),
        ),
        (Message::Binary(vec![1u8, 2, 3].into()), None),
    ];
    for (frame, id) in cases {
        let shown = format!("{frame:?}");
        c.send_raw(frame).await;
        let e = c.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{shown}"
        );
        assert_eq!(e["id"].as_str(), id, "{shown}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.ping().await;
}

#[tokio::test]
async fn oversized_payloads_are_refused_and_oversized_frames_close_the_connection() {
    let b = TestBroker::start().await;
    let mut s = b.subscriber(KEY2, &["media"]).await;
    let mut c = b.client(KEY).await;
    c.send(publish("big", "media", json!("x".repeat(240 * 1024))))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("payload_too_large"), Some("big"))
    );
    c.send(publish("ok", "media", json!("x".repeat(200 * 1024))))
        .await;
    assert_eq!(c.recv().await["type"], "published");
    assert_eq!(
        s.recv().await["data"].as_str().map(str::len),
        Some(200 * 1024)
    );

    c.send_raw(Message::Text("x".repeat(2 * 1024 * 1024).into()))
        .await;
    let (code, _) = c.until_close().await;
    assert_eq!(code, Some(1009));
    s.ping().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_while_a_fast_one_keeps_receiving() {
    let mut limits = Limits::default();
    limits.outbound_queue = 32;
    let b = TestBroker::with(limits, WsConfig::default()).await;
    let mut slow = b.subscriber(KEY, &["robots"]).await;
    let mut fast = b.subscriber(KEY2, &["robots"]).await;
    let mut publisher = b.client(KEY).await;

    // 16 KiB messages: a few MB fill the loopback socket buffers of a client that never reads.
    const N: usize = 1500;
    let payload = "y".repeat(16 * 1024);
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let m = fast.recv().await;
            assert_eq!(m["data"]["i"], i);
        }
        fast
    });
    for i in 0..N {
        publisher
            .send(publish("p", "robots", json!({"i": i, "pad": payload})))
            .await;
        let ack = publisher.recv().await;
        assert_eq!(ack["type"], "published", "{ack}");
    }
    let mut fast = reader.await.unwrap();
    fast.ping().await;

    let (code, frames) = slow.until_close().await;
    assert_eq!(code, Some(4008));
    assert!(
        frames.len() < N,
        "the slow consumer got everything: nothing was slow"
    );
    assert_eq!(b.broker.metrics().slow_consumers.get(), 1);
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let mut b = TestBroker::start().await;
    let mut s = b.subscriber(KEY, &["tech"]).await;
    let mut idle = b.client(KEY2).await;
    b.shutdown().await;
    assert_eq!(s.until_close().await.0, Some(1001));
    assert_eq!(idle.until_close().await.0, Some(1001));
}

#[tokio::test]
async fn dead_connections_are_pinged_and_dropped() {
    let mut ws = WsConfig::default();
    ws.ping_interval = Duration::from_millis(100);
    ws.pong_timeout = Duration::from_millis(200);
    let b = TestBroker::with(Limits::default(), ws).await;
    let mut live = b.client(KEY).await;
    let mut dead = b.client(KEY).await;
    // `live` keeps reading, so its client answers pings; `dead` never polls its socket.
    let keep = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
        while let Ok(frame) = tokio::time::timeout_at(deadline, live.ws.next()).await {
            assert!(matches!(frame, Some(Ok(Message::Ping(_)))), "{frame:?}");
        }
        live
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (code, _) = dead.until_close().await;
    assert_eq!(
        code, None,
        "a dead connection is dropped, not closed politely"
    );
    let mut live = keep.await.unwrap();
    live.ping().await;
    assert_eq!(b.broker.hub().connection_count(), 1);
}

#[tokio::test]
async fn max_connections_bounds_open_websockets() {
    let mut ws = WsConfig::default();
    ws.max_connections = 2;
    let b = TestBroker::with(Limits::default(), ws).await;
    let first = b.subscriber(KEY, &["tech"]).await;
    let mut second = b.subscriber(KEY, &["tech"]).await;
    // Both upgraded connections hold their slot: a third is not served while they are open.
    let third = tokio::spawn({
        let addr = b.addr;
        async move { Client::connect(addr, Auth::Header(KEY)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");
    assert_eq!(b.broker.hub().connection_count(), 2);
    drop(first);
    let mut third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the freed slot is given to the waiting connection")
        .unwrap()
        .unwrap();
    third.ping().await;
    second.ping().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let b = TestBroker::start().await;
    let (st, body) = b.http("GET", "/healthz", &[], "").await;
    assert_eq!((st, body), (200, json!({"status":"ok"})));
    let (st, body) = b.http("GET", "/readyz", &[], "").await;
    assert_eq!((st, body), (200, json!({"status":"ready"})));
    let _s = b.subscriber(KEY, &["tech"]).await;
    let (st, _) = b
        .http(
            "POST",
            "/publish",
            &[("x-api-key", KEY)],
            r#"{"channel":"tech","data":1}"#,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = b
        .http(
            "POST",
            "/publish",
            &[("x-api-key", KEY)],
            r#"{"channel":"nope","data":1}"#,
        )
        .await;
    assert_eq!(st, 403);
    let (st, text) = b.http("GET", "/metrics", &[], "").await;
    assert_eq!(st, 200);
    let text = text.as_str().unwrap();
    for line in [
        "pubsub_connections 1",
        "pubsub_subscriptions 1",
        "pubsub_messages_published_total 1",
        "pubsub_messages_delivered_total 1",
        "pubsub_policy_rejections_total{operation=\"publish\"} 1",
        "pubsub_invalidations_total 0",
        "pubsub_slow_consumer_disconnects_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let (st, e) = b.http("GET", "/nope", &[], "").await;
    assert_eq!((st, e["code"].as_str()), (404, Some("not_found")));
}
