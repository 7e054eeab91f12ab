//! Deterministic harness: one broker, N sessions driven by frames, queues drained by hand.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::*;

struct Harness {
    broker: Arc<Broker>,
    keys: StaticKeys,
    now: Instant,
}

struct Client {
    session: Session,
}

impl Harness {
    fn new(limits: Limits) -> Self {
        let keys = StaticKeys::new()
            .with_api_key("app", "key-1", None)
            .with_api_key("other", "key-2", None)
            .with_admin_token("ops", "admin-1");
        let config = BrokerConfig {
            limits,
            ..BrokerConfig::default()
        };
        let broker = Broker::builder()
            .config(config)
            .authenticator(Arc::new(keys.clone()))
            .build();
        Self {
            broker,
            keys,
            now: Instant::now(),
        }
    }

    fn client(&self, key: &str) -> Client {
        Client {
            session: self.broker.connect(self.principal(key)),
        }
    }

    fn principal(&self, key: &str) -> Principal {
        self.keys
            .lookup(key, std::time::SystemTime::now())
            .expect("test key")
    }

    async fn send(&self, c: &mut Client, frame: Value) {
        c.session
            .handle_frame(&JsonCodec, frame.to_string().as_bytes(), self.now)
            .await;
    }
}

impl Client {
    /// Every frame queued since the last call, as JSON, and the close reason if closing.
    fn drain(&self) -> (Vec<Value>, Option<CloseReason>) {
        let mut q = VecDeque::new();
        let close = self.session.connection().drain(&mut q);
        let frames = q
            .into_iter()
            .map(|o| {
                let bytes = match o {
                    Outbound::Frame(f) => JsonCodec.encode(&f),
                    Outbound::Message(env) => JsonCodec.encode_message(&env),
                };
                serde_json::from_slice(&bytes).unwrap()
            })
            .collect();
        (frames, close)
    }

    fn frames(&self) -> Vec<Value> {
        self.drain().0
    }

    fn messages(&self) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter(|f| f["type"] == "message")
            .collect()
    }
}

fn sub(ch: &str) -> Value {
    json!({"type":"subscribe","id":"s","channel":ch})
}

fn publish(ch: &str, data: Value) -> Value {
    json!({"type":"publish","id":"p","channel":ch,"data":data})
}

#[tokio::test]
async fn every_subscriber_gets_each_message_once_including_the_publisher() {
    let h = Harness::new(Limits::default());
    let mut subs: Vec<_> = (0..5).map(|_| h.client("key-1")).collect();
    for c in &mut subs {
        h.send(c, sub("tech")).await;
        h.send(c, sub("tech")).await; // idempotent
        let frames = c.frames();
        assert_eq!(
            frames,
            vec![json!({"type":"subscribed","id":"s","channel":"tech"}); 2]
        );
    }
    let mut bystander = h.client("key-2");
    h.send(&mut bystander, sub("cars")).await;
    bystander.frames();

    h.send(&mut subs[0], publish("tech", json!({"text":"hello"})))
        .await;
    let first = subs[0].frames();
    assert_eq!(first.len(), 2);
    let published = first.iter().find(|f| f["type"] == "published").unwrap();
    let message = first.iter().find(|f| f["type"] == "message").unwrap();
    assert_eq!(published["id"], "p");
    assert_eq!(message["message_id"], published["message_id"]);
    assert_eq!(message["origin"], "local");
    assert_eq!(message["data"], json!({"text":"hello"}));
    for c in &subs[1..] {
        assert_eq!(c.messages(), vec![message.clone()]);
    }
    assert!(bystander.frames().is_empty());
    assert_eq!(h.broker.metrics().delivered.get(), 5);
}

#[tokio::test]
async fn the_same_encoded_bytes_go_to_every_subscriber() {
    let h = Harness::new(Limits::default());
    let mut a = h.client("key-1");
    let mut b = h.client("key-1");
    h.send(&mut a, sub("tech")).await;
    h.send(&mut b, sub("tech")).await;
    a.frames();
    b.frames();
    h.send(&mut a, publish("tech", json!(1))).await;
    let take = |c: &Client| {
        let mut q = VecDeque::new();
        c.session.connection().drain(&mut q);
        q.into_iter()
            .find_map(|o| match o {
                Outbound::Message(env) => Some(JsonCodec.encode_message(&env)),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(take(&a).as_ptr(), take(&b).as_ptr());
}

#[tokio::test]
async fn allow_list_applies_to_subscribe_and_publish() {
    let h = Harness::new(Limits::default());
    let mut c = h.client("key-1");
    h.send(&mut c, sub("sports")).await;
    let frames = c.frames();
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["code"], "channel_not_allowed");
    assert_eq!(frames[0]["id"], "s");

    let mut listener = h.client("key-2");
    for ch in DEFAULT_CHANNELS {
        h.send(&mut listener, sub(ch)).await;
    }
    listener.frames();
    h.send(&mut c, publish("sports", json!("x"))).await;
    assert_eq!(c.frames()[0]["code"], "channel_not_allowed");
    assert!(listener.frames().is_empty());
    assert_eq!(h.broker.metrics().published.get(), 0);

    h.send(&mut c, sub("bad channel")).await;
    assert_eq!(c.frames()[0]["code"], "invalid_channel");
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_is_idempotent() {
    let h = Harness::new(Limits::default());
    let mut c = h.client("key-1");
    h.send(&mut c, sub("tech")).await;
    h.send(
        &mut c,
        json!({"type":"unsubscribe","id":"u","channel":"tech"}),
    )
    .await;
    h.send(
        &mut c,
        json!({"type":"unsubscribe","id":"u2","channel":"tech"}),
    )
    .await;
    let frames = c.frames();
    assert_eq!(
        frames[1],
        json!({"type":"unsubscribed","id":"u","channel":"tech"})
    );
    assert_eq!(
        frames[2],
        json!({"type":"unsubscribed","id":"u2","channel":"tech"})
    );
    h.send(&mut c, publish("tech", json!(1))).await;
    assert!(c.messages().is_empty());
}

#[tokio::test]
async fn invalidation_is_admin_only_and_closes_exactly_the_emptied_connections() {
    let h = Harness::new(Limits::default());
    let mut only_tech = h.client("key-1");
    let mut tech_and_cars = h.client("key-1");
    let mut only_cars = h.client("key-2");
    h.send(&mut only_tech, sub("tech")).await;
    h.send(&mut tech_and_cars, sub("tech")).await;
    h.send(&mut tech_and_cars, sub("cars")).await;
    h.send(&mut only_cars, sub("cars")).await;
    for c in [&only_tech, &tech_and_cars, &only_cars] {
        c.frames();
    }
    let tech = ChannelName::parse("tech").unwrap();
    let client = only_tech.session.connection().principal().clone();
    assert_eq!(
        h.broker
            .invalidate(&client, InvalidationFilter::Channel(tech.clone()))
            .await,
        Err(InvalidateError::Forbidden)
    );
    assert_eq!(only_tech.session.connection().closing(), None);

    let admin = h.principal("admin-1");
    let ended = h
        .broker
        .invalidate(&admin, InvalidationFilter::Channel(tech.clone()))
        .await;
    assert_eq!(ended, Ok(2));

    let (frames, close) = only_tech.drain();
    assert_eq!(frames, vec![json!({"type":"invalidated","channel":"tech"})]);
    assert_eq!(close, Some(CloseReason::Invalidated));
    let (frames, close) = tech_and_cars.drain();
    assert_eq!(frames, vec![json!({"type":"invalidated","channel":"tech"})]);
    assert_eq!(close, None);
    assert_eq!(only_cars.drain(), (vec![], None));

    // Nothing more arrives on the invalidated channel; the other channel still works.
    h.send(&mut only_cars, publish("tech", json!(1))).await;
    h.send(&mut only_cars, publish("cars", json!(2))).await;
    assert_eq!(tech_and_cars.messages().len(), 1);
    assert_eq!(h.broker.metrics().invalidations.get(), 2);
    assert_eq!(
        h.broker
            .invalidate(&admin, InvalidationFilter::Channel(tech))
            .await,
        Ok(0)
    );
}

#[tokio::test]
async fn invalidation_by_principal_ends_only_that_principals_subscriptions() {
    let h = Harness::new(Limits::default());
    let mut a = h.client("key-1");
    let mut b = h.client("key-2");
    h.send(&mut a, sub("tech")).await;
    h.send(&mut a, sub("cars")).await;
    h.send(&mut b, sub("tech")).await;
    let admin = h.principal("admin-1");
    let ended = h
        .broker
        .invalidate(&admin, InvalidationFilter::Principal("app".into()))
        .await;
    assert_eq!(ended, Ok(2));
    assert_eq!(
        a.session.connection().closing(),
        Some(CloseReason::Invalidated)
    );
    assert_eq!(b.session.connection().closing(), None);
    assert_eq!(
        h.broker
            .hub()
            .subscriber_count(&ChannelName::parse("tech").unwrap()),
        1
    );
}

#[tokio::test]
async fn a_slow_consumer_is_closed_without_slowing_the_others() {
    let h = Harness::new(Limits {
        outbound_queue: 4,
        ..Limits::default()
    });
    let mut slow = h.client("key-1");
    let mut fast = h.client("key-1");
    let mut publisher = h.client("key-2");
    h.send(&mut slow, sub("tech")).await;
    h.send(&mut fast, sub("tech")).await;
    slow.frames();
    fast.frames();
    let mut received = 0;
    for i in 0..10 {
        h.send(&mut publisher, publish("tech", json!(i))).await;
        received += fast.messages().len();
    }
    assert_eq!(received, 10);
    assert_eq!(
        slow.session.connection().closing(),
        Some(CloseReason::SlowConsumer)
    );
    assert_eq!(h.broker.metrics().slow_consumers.get(), 1);
    assert!(publisher.frames().iter().all(|f| f["type"] == "published"));
}

#[tokio::test]
async fn limits_are_enforced_with_the_request_id() {
    let h = Harness::new(Limits {
        max_subscriptions: 2,
        max_payload: 16,
        // A refused publish still spends a token, so spamming refused frames is limited too.
        publish_rate: Some(RateLimit {
            per_second: 1.0,
            burst: 3,
        }),
        ..Limits::default()
    });
    let mut c = h.client("key-1");
    h.send(&mut c, sub("tech")).await;
    h.send(&mut c, sub("cars")).await;
    h.send(&mut c, sub("music")).await;
    let frames = c.frames();
    assert_eq!(frames[2]["code"], "too_many_subscriptions");

    h.send(&mut c, publish("tech", json!("x".repeat(20)))).await;
    assert_eq!(c.frames()[0]["code"], "payload_too_large");
    h.send(&mut c, publish("tech", json!(1))).await;
    h.send(&mut c, publish("tech", json!(2))).await;
    h.send(&mut c, publish("tech", json!(3))).await;
    let errors: Vec<_> = c
        .frames()
        .into_iter()
        .filter(|f| f["type"] == "error")
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "rate_limited");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_session_stays_usable() {
    let h = Harness::new(Limits::default());
    let mut c = h.client("key-1");
    c.session.handle_frame(&JsonCodec, b"{nope", h.now).await;
    h.send(&mut c, json!({"type":"teleport","id":"7"})).await;
    h.send(&mut c, json!({"type":"publish","id":"8","channel":"tech"}))
        .await;
    h.send(&mut c, json!({"type":"ping","id":"9"})).await;
    let frames = c.frames();
    assert_eq!(frames[0]["code"], "bad_request");
    assert!(frames[0].get("id").is_none());
    assert_eq!(
        (&frames[1]["code"], &frames[1]["id"]),
        (&json!("bad_request"), &json!("7"))
    );
    assert_eq!(
        (&frames[2]["code"], &frames[2]["id"]),
        (&json!("bad_request"), &json!("8"))
    );
    assert_eq!(frames[3], json!({"type":"pong","id":"9"}));
}

#[tokio::test]
async fn dropping_a_session_removes_its_subscriptions() {
    let h = Harness::new(Limits::default());
    let mut c = h.client("key-1");
    h.send(&mut c, sub("tech")).await;
    let tech = ChannelName::parse("tech").unwrap();
    assert_eq!(h.broker.hub().subscriber_count(&tech), 1);
    assert_eq!(h.broker.metrics().connections.get(), 1);
    drop(c);
    assert_eq!(h.broker.hub().subscriber_count(&tech), 0);
    assert_eq!(h.broker.metrics().connections.get(), 0);
    assert_eq!(h.broker.metrics().subscriptions.get(), 0);
}

#[tokio::test]
async fn a_client_that_never_reads_replies_is_cut_off() {
    let h = Harness::new(Limits {
        outbound_queue: 2,
        ..Limits::default()
    });
    let mut c = h.client("key-1");
    for _ in 0..(2 + hub::CONTROL_SLACK + 1) {
        h.send(&mut c, json!({"type":"ping"})).await;
    }
    assert_eq!(
        c.session.connection().closing(),
        Some(CloseReason::SlowConsumer)
    );
}
