//! The `pubsub.v1` QUIC mapping, driven by real QUIC clients beside real WebSocket and HTTP
//! clients of the same broker.

mod support;

use broker_core::{ChannelName, InvalidationFilter, Limits};
use serde_json::{Value, json};
use support::*;
use tokio::time::timeout;
use transport_quic::client::{
    ChannelMessage, ConnectError, RecvError, RequestError, SubscribeError,
};
use transport_quic::{Client, ClientConfig, QuicConfig, TlsIdentity};

/// Reads one frame of a channel stream by hand: 4-byte big-endian length, then JSON.
async fn read_frame(stream: &mut quinn::RecvStream) -> Value {
    timeout(WAIT, async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).await.unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()
    })
    .await
    .expect("timed out waiting for a frame")
}

fn refused_code<T: std::fmt::Debug>(r: Result<T, RequestError>) -> String {
    match r {
        Err(RequestError::Refused { code, .. }) => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn quic_and_websocket_clients_exchange_messages_both_ways() {
    let b = TestBroker::start().await;
    let q = b.quic(KEY).await;
    let mut q_tech = q.subscribe("tech").await.unwrap();
    let other = b.quic(KEY2).await;
    let mut q_cars = other.subscribe("cars").await.unwrap();
    let mut w = b.ws_subscriber(KEY2, &["tech"]).await;

    // QUIC to WebSocket, and to the QUIC publisher itself, which is subscribed.
    let id = q.publish("tech", &json!({"from": "quic"})).await.unwrap();
    assert_eq!(
        w.recv_type("message").await,
        json!({"type":"message","channel":"tech","message_id":id,"origin":"local","data":{"from":"quic"}})
    );
    let own = next(&mut q_tech).await;
    assert_eq!(
        own,
        ChannelMessage {
            channel: "tech".into(),
            message_id: id,
            origin: "local".into(),
            data: json!({"from": "quic"}),
        }
    );

    // WebSocket to QUIC.
    w.send(json!({"type":"publish","id":"p","channel":"tech","data":[1,"two",null]}))
        .await;
    let ack = w.recv_type("published").await;
    let m = next(&mut q_tech).await;
    assert_eq!(m.message_id, ack["message_id"].as_str().unwrap());
    assert_eq!(m.data, json!([1, "two", null]));

    // HTTP to QUIC.
    let (status, ok) = b
        .http(
            "POST",
            "/publish",
            &[("x-api-key", KEY)],
            r#"{"channel":"tech","data":{"n":3}}"#,
        )
        .await;
    assert_eq!(status, 200);
    let m = next(&mut q_tech).await;
    assert_eq!(
        (m.message_id.as_str(), &m.data),
        (ok["message_id"].as_str().unwrap(), &json!({"n": 3}))
    );

    // Channels stay apart: the first message the cars subscriber sees is the cars one.
    w.send(json!({"type":"publish","id":"c","channel":"cars","data":"vroom"}))
        .await;
    assert_eq!(next(&mut q_cars).await.data, json!("vroom"));
}

#[tokio::test]
async fn the_allow_list_applies_to_quic_clients() {
    let b = TestBroker::start().await;
    let mut listener = b
        .ws_subscriber(KEY2, &["cars", "robots", "tech", "music", "media"])
        .await;
    let q = b.quic(KEY).await;
    match q.subscribe("sports").await {
        Err(SubscribeError::Request(e)) => {
            assert_eq!(refused_code::<()>(Err(e)), "channel_not_allowed")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        refused_code(q.publish("sports", &"nope").await),
        "channel_not_allowed"
    );
    assert_eq!(refused_code(q.publish("", &1).await), "invalid_channel");
    match q.subscribe("has space").await {
        Err(SubscribeError::Request(e)) => {
            assert_eq!(refused_code::<()>(Err(e)), "invalid_channel")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nobody received the refused publishes: the listener's next message is one published after.
    q.publish("media", &"sentinel").await.unwrap();
    assert_eq!(listener.recv_type("message").await["data"], "sentinel");

    // A refusal leaves the connection usable, and an allowed channel can still be subscribed.
    q.ping().await.unwrap();
    let mut music = q.subscribe("music").await.unwrap();
    listener
        .send(json!({"type":"publish","id":"m","channel":"music","data":1}))
        .await;
    assert_eq!(next(&mut music).await.data, json!(1));
}

#[tokio::test]
async fn quic_clients_authenticate_with_the_first_frame_of_the_control_stream() {
    let b = TestBroker::start().await;
    match Client::connect(b.quic_addr, "wrong-key", b.client_config()).await {
        Err(ConnectError::Refused { code, message }) => {
            assert_eq!(code, "unauthorized");
            assert!(!message.contains("wrong-key"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // On the wire: an error frame echoing the id, then the connection is closed with 4401.
    let mut raw = b.raw_connection(b"pubsub.v1").await.unwrap();
    raw.open().await;
    raw.frame(r#"{"type":"auth","id":"a","api_key":"nope"}"#)
        .await;
    let e = raw.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str(), e["code"].as_str()),
        (Some("error"), Some("a"), Some("unauthorized"))
    );
    assert_eq!(raw.closed().await.0, Some(4401));

    // Anything else first is refused the same way.
    let mut raw = b.raw_connection(b"pubsub.v1").await.unwrap();
    raw.open().await;
    raw.frame(r#"{"type":"subscribe","id":"s","channel":"tech"}"#)
        .await;
    let e = raw.recv().await;
    assert_eq!(
        (e["id"].as_str(), e["code"].as_str()),
        (Some("s"), Some("unauthorized"))
    );
    assert_eq!(raw.closed().await.0, Some(4401));

    // Client keys and admin tokens are accepted; a second auth is a bad request.
    let mut raw = b.raw(ADMIN).await;
    raw.frame(r#"{"type":"auth","id":"again","api_key":"key-1"}"#)
        .await;
    let e = raw.recv().await;
    assert_eq!(
        (e["id"].as_str(), e["code"].as_str()),
        (Some("again"), Some("bad_request"))
    );
    b.quic(KEY2).await.ping().await.unwrap();
}

#[tokio::test]
async fn the_handshake_requires_alpn_pubsub_v1_and_a_trusted_certificate() {
    let b = TestBroker::start().await;
    // TLS alert 120, no_application_protocol, carried as a QUIC CRYPTO_ERROR.
    match b.raw_connection(b"h3").await.err() {
        Some(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::crypto(120))
        }
        other => panic!("expected the handshake to be refused, got {other:?}"),
    }

    let stranger = TlsIdentity::self_signed(&["localhost".into()]).unwrap();
    let untrusted = ClientConfig::trusting(stranger.certificate().clone());
    match Client::connect(b.quic_addr, KEY, untrusted).await {
        Err(ConnectError::Connection(_)) => {}
        other => panic!("expected a failed handshake, got {other:?}"),
    }
    let mut wrong_name = b.client_config();
    wrong_name.server_name = "broker.example".into();
    match Client::connect(b.quic_addr, KEY, wrong_name).await {
        Err(ConnectError::Connection(_)) => {}
        other => panic!("expected a failed handshake, got {other:?}"),
    }
    b.quic(KEY).await.ping().await.unwrap();
}

#[tokio::test]
async fn the_wire_format_is_a_control_stream_and_one_stream_per_subscription() {
    let b = TestBroker::start().await;
    let mut raw = b.raw(KEY).await;
    raw.frame(r#"{"type":"subscribe","id":"s","channel":"tech"}"#)
        .await;
    assert_eq!(
        raw.recv().await,
        json!({"type":"subscribed","id":"s","channel":"tech"})
    );
    let mut tech = raw.conn.accept_uni().await.unwrap();
    assert_eq!(
        read_frame(&mut tech).await,
        json!({"type":"subscribed","channel":"tech"})
    );

    let publisher = b.quic(KEY2).await;
    let id = publisher.publish("tech", &json!({"k": "v"})).await.unwrap();
    assert_eq!(
        read_frame(&mut tech).await,
        json!({"type":"message","channel":"tech","message_id":id,"origin":"local","data":{"k":"v"}})
    );

    // Unsubscribe: the reply on the control stream, the end frame and FIN on the channel's.
    raw.frame(r#"{"type":"unsubscribe","id":"u","channel":"tech"}"#)
        .await;
    assert_eq!(
        raw.recv().await,
        json!({"type":"unsubscribed","id":"u","channel":"tech"})
    );
    assert_eq!(
        read_frame(&mut tech).await,
        json!({"type":"unsubscribed","channel":"tech"})
    );
    assert_eq!(tech.read_to_end(64).await.unwrap(), b"");

    // Finishing the control stream sends no more requests, but subscriptions keep delivering.
    raw.frame(r#"{"type":"subscribe","id":"s2","channel":"cars"}"#)
        .await;
    assert_eq!(raw.recv().await["type"], "subscribed");
    let mut cars = raw.conn.accept_uni().await.unwrap();
    assert_eq!(read_frame(&mut cars).await["channel"], "cars");
    raw.finish();
    publisher.publish("cars", &7).await.unwrap();
    assert_eq!(read_frame(&mut cars).await["data"], 7);
}

#[tokio::test]
async fn invalidation_ends_the_right_streams_and_closes_connections_left_without_any() {
    let b = TestBroker::start().await;
    let only_tech = b.quic(KEY).await;
    let mut only_tech_sub = only_tech.subscribe("tech").await.unwrap();
    let both = b.quic(KEY2).await;
    let mut both_tech = both.subscribe("tech").await.unwrap();
    let mut both_cars = both.subscribe("cars").await.unwrap();
    let only_cars = b.quic(KEY).await;
    let mut only_cars_sub = only_cars.subscribe("cars").await.unwrap();
    let mut ws_tech = b.ws_subscriber(KEY, &["tech"]).await;

    // Through the HTTP admin route.
    let (status, ok) = b
        .http(
            "POST",
            "/admin/unsubscribe",
            &[("authorization", "Bearer admin-1")],
            r#"{"channel":"tech"}"#,
        )
        .await;
    assert_eq!((status, ok["invalidated"].as_u64()), (200, Some(3)));

    assert_eq!(end_of(&mut only_tech_sub).await, RecvError::Invalidated);
    let closed = timeout(WAIT, only_tech.closed()).await.unwrap();
    assert_eq!(closed.code, Some(4001), "{closed}");
    assert_eq!(end_of(&mut both_tech).await, RecvError::Invalidated);
    both.ping().await.unwrap();
    assert_eq!(
        ws_tech.until_close().await,
        (
            Some(4001),
            vec![json!({"type":"invalidated","channel":"tech"})]
        )
    );

    // The survivors still get their channel, and nobody gets the invalidated one.
    let publisher = b.quic(KEY).await;
    publisher.publish("tech", &0).await.unwrap();
    publisher.publish("cars", &1).await.unwrap();
    assert_eq!(next(&mut both_cars).await.data, json!(1));
    assert_eq!(next(&mut only_cars_sub).await.data, json!(1));

    // Through the embedding API: the last subscription of both remaining subscribers.
    let admin = b.broker.authenticate(Some(ADMIN)).await.unwrap();
    let cars = InvalidationFilter::Channel(ChannelName::parse("cars").unwrap());
    assert_eq!(b.broker.invalidate(&admin, cars).await.unwrap(), 2);
    for (client, sub) in [(&both, &mut both_cars), (&only_cars, &mut only_cars_sub)] {
        assert_eq!(end_of(sub).await, RecvError::Invalidated);
        assert_eq!(
            timeout(WAIT, client.closed()).await.unwrap().code,
            Some(4001)
        );
    }

    // A connection that held no subscription was left alone, and may subscribe again.
    let mut again = publisher.subscribe("tech").await.unwrap();
    publisher.publish("tech", &2).await.unwrap();
    assert_eq!(next(&mut again).await.data, json!(2));
}

#[tokio::test]
async fn bad_frames_get_the_documented_errors_without_affecting_other_connections() {
    let b = TestBroker::start().await;
    let bystander = b.quic(KEY2).await;
    let mut tech = bystander.subscribe("tech").await.unwrap();
    let mut ws = b.ws_subscriber(KEY2, &["tech"]).await;

    // Bad JSON in a well-formed frame: an error frame, and the connection stays usable.
    let mut raw = b.raw(KEY).await;
    let cases = [
        ("{not json", None),
        ("[1,2,3]", None),
        ("", None),
        (r#"{"id":"1"}"#, Some("1")),
        (r#"{"type":"dance","id":"2"}"#, Some("2")),
        (r#"{"type":"publish","id":"3","channel":"tech"}"#, Some("3")),
    ];
    for (frame, id) in cases {
        raw.frame(frame).await;
        let e = raw.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
            (Some("error"), Some("bad_request"), id),
            "{frame:?}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A payload over the broker's limit, in a frame under the hard limit: refused, still usable.
    let big = format!(
        r#"{{"type":"publish","id":"big","channel":"tech","data":"{}"}}"#,
        "x".repeat(241 * 1024)
    );
    raw.frame(&big).await;
    let e = raw.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("payload_too_large"), Some("big"))
    );
    raw.frame(r#"{"type":"ping","id":"alive"}"#).await;
    assert_eq!(raw.recv().await, json!({"type":"pong","id":"alive"}));

    // A length prefix over the hard limit (1 MiB): closed with 1009 before the body is read.
    let mut over = b.raw(KEY).await;
    over.write(&(2u32 * 1024 * 1024).to_be_bytes()).await;
    let (code, reason) = over.closed().await;
    assert_eq!(code, Some(1009), "{reason}");
    assert!(reason.contains("over the limit"), "{reason}");
    // Also before authentication.
    let mut early = b.raw_connection(b"pubsub.v1").await.unwrap();
    early.open().await;
    early.write(&u32::MAX.to_be_bytes()).await;
    assert_eq!(early.closed().await.0, Some(1009));

    // A stream that ends inside a frame or inside a length prefix: closed with 1002.
    let mut cut = b.raw(KEY).await;
    cut.write(&[0, 0, 0, 50]).await;
    cut.write(br#"{"type":"#).await;
    cut.finish();
    assert_eq!(cut.closed().await.0, Some(1002));
    let mut half = b.raw(KEY).await;
    half.write(&[0, 0]).await;
    half.finish();
    assert_eq!(half.closed().await.0, Some(1002));

    // Nobody else noticed: the bad connection publishes, both subscribers receive it.
    raw.frame(r#"{"type":"publish","id":"p","channel":"tech","data":"after"}"#)
        .await;
    assert_eq!(raw.recv().await["type"], "published");
    assert_eq!(next(&mut tech).await.data, json!("after"));
    assert_eq!(ws.recv_type("message").await["data"], "after");
    bystander.ping().await.unwrap();
}

#[tokio::test]
async fn unsubscribing_ends_the_stream_and_dropping_a_subscription_unsubscribes() {
    let b = TestBroker::start().await;
    let q = b.quic(KEY).await;
    let publisher = b.quic(KEY2).await;
    let mut tech = q.subscribe("tech").await.unwrap();
    assert!(matches!(
        q.subscribe("tech").await,
        Err(SubscribeError::AlreadySubscribed(c)) if c == "tech"
    ));
    publisher.publish("tech", &1).await.unwrap();
    q.unsubscribe("tech").await.unwrap();
    publisher.publish("tech", &2).await.unwrap();
    // What was sent before the unsubscribe arrives, then the end; never the later message.
    assert_eq!(next(&mut tech).await.data, json!(1));
    assert_eq!(end_of(&mut tech).await, RecvError::Unsubscribed);
    assert_eq!(end_of(&mut tech).await, RecvError::Unsubscribed);

    // Subscribing again opens a new stream.
    let mut tech = q.subscribe("tech").await.unwrap();
    publisher.publish("tech", &3).await.unwrap();
    assert_eq!(next(&mut tech).await.data, json!(3));
    assert_eq!(b.broker.metrics().subscriptions.get(), 1);

    // Dropping the subscription unsubscribes on the server, ahead of later requests.
    drop(tech);
    q.ping().await.unwrap();
    assert_eq!(b.broker.metrics().subscriptions.get(), 0);
    let mut tech = q.subscribe("tech").await.unwrap();
    publisher.publish("tech", &4).await.unwrap();
    assert_eq!(next(&mut tech).await.data, json!(4));
}

#[tokio::test]
async fn the_subscription_limit_applies_per_quic_connection() {
    let mut limits = Limits::default();
    limits.max_subscriptions = 2;
    let b = TestBroker::with(limits, QuicConfig::default()).await;
    let q = b.quic(KEY).await;
    let _a = q.subscribe("tech").await.unwrap();
    let _c = q.subscribe("cars").await.unwrap();
    match q.subscribe("music").await {
        Err(SubscribeError::Request(e)) => {
            assert_eq!(refused_code::<()>(Err(e)), "too_many_subscriptions")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Another connection has its own allowance.
    let _m = b.quic(KEY).await.subscribe("music").await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_quic_connections_with_1001() {
    let mut b = TestBroker::start().await;
    let subscriber = b.quic(KEY).await;
    let mut tech = subscriber.subscribe("tech").await.unwrap();
    let idle = b.quic(KEY2).await;
    let mut ws = b.ws(KEY).await;
    b.shutdown().await;
    assert_eq!(
        end_of(&mut tech).await,
        RecvError::Closed(transport_quic::client::CloseInfo {
            code: Some(1001),
            reason: "server shutting down".into()
        })
    );
    assert_eq!(timeout(WAIT, idle.closed()).await.unwrap().code, Some(1001));
    assert_eq!(ws.until_close().await.0, Some(1001));
    // Nobody answers any more (QUIC ignores ICMP, so the attempt ends at its idle timeout).
    let mut config = b.client_config();
    config.idle_timeout = std::time::Duration::from_millis(300);
    match Client::connect(b.quic_addr, KEY, config).await {
        Err(ConnectError::Connection(quinn::ConnectionError::TimedOut)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
}
