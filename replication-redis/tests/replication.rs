//! Replication through real Redis servers between real brokers, observed by real clients.

mod support;

use std::time::Duration;

use broker_core::Limits;
use support::*;
use transport_ws::{ClientError, Event};

/// Two regions, one node each, importing from each other.
async fn two_regions(a: &RedisServer, b: &RedisServer) -> (Node, Node) {
    let na = Node::start(config("a", &a.url()).peer(region("b"), b.url())).await;
    let nb = Node::start(config("b", &b.url()).peer(region("a"), a.url())).await;
    (na.ready().await, nb.ready().await)
}

#[tokio::test]
async fn a_message_published_in_one_region_arrives_once_in_both() {
    let (ra, rb) = (
        RedisServer::start(false).await,
        RedisServer::start(false).await,
    );
    let (na, nb) = two_regions(&ra, &rb).await;
    let mut sa = na.subscriber(&["tech"]).await;
    let mut sb = nb.subscriber(&["tech"]).await;
    let mut pa = na.client().await;
    let mut pb = nb.client().await;

    let id = pa.publish("tech", r#"{"text":"from a"}"#).await.unwrap();
    for s in [&mut sa, &mut sb] {
        let m = recv(s).await;
        assert_eq!(
            (m.message_id.as_str(), m.origin.as_str()),
            (id.as_str(), "a")
        );
        assert_eq!(m.data, r#"{"text":"from a"}"#);
    }
    let id = pb.publish("tech", r#""from b""#).await.unwrap();
    for s in [&mut sa, &mut sb] {
        let m = recv(s).await;
        assert_eq!(
            (m.message_id.as_str(), m.origin.as_str()),
            (id.as_str(), "b")
        );
    }
    silence(&mut sa, Duration::from_millis(500)).await;
    silence(&mut sb, Duration::from_millis(300)).await;
    assert!(
        na.metrics()
            .contains("pubsub_replication_imported_total{region=\"b\"} 1")
    );
    assert!(
        nb.metrics()
            .contains("pubsub_replication_imported_total{region=\"a\"} 1")
    );
}

#[tokio::test]
async fn nodes_of_one_region_deliver_each_others_messages() {
    let r = RedisServer::start(false).await;
    let n1 = Node::start(config("eu", &r.url())).await.ready().await;
    let n2 = Node::start(config("eu", &r.url())).await.ready().await;
    let mut s1 = n1.subscriber(&["cars"]).await;
    let mut s2 = n2.subscriber(&["cars"]).await;
    let mut p1 = n1.client().await;
    for i in 0..20 {
        p1.publish("cars", &i.to_string()).await.unwrap();
    }
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(collect(&mut s2, 20, WAIT).await, expected);
    assert_eq!(collect(&mut s1, 20, WAIT).await, expected);
    silence(&mut s2, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn three_regions_deliver_every_message_exactly_once_without_loops() {
    let rs = [
        RedisServer::start(false).await,
        RedisServer::start(false).await,
        RedisServer::start(false).await,
    ];
    let names = ["a", "b", "c"];
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut c = config(name, &rs[i].url());
        for (j, other) in names.iter().enumerate() {
            if i != j {
                c = c.peer(region(other), rs[j].url());
            }
        }
        nodes.push(Node::start(c).await);
    }
    let mut ready = Vec::new();
    for n in nodes {
        ready.push(n.ready().await);
    }
    let nodes = ready;
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(n.subscriber(&["music"]).await);
    }
    const PER_REGION: usize = 10;
    for (i, n) in nodes.iter().enumerate() {
        let mut p = n.client().await;
        for k in 0..PER_REGION {
            p.publish("music", &format!("\"{}-{k}\"", names[i]))
                .await
                .unwrap();
        }
    }
    for s in &mut subs {
        let mut got = collect(s, 3 * PER_REGION, WAIT).await;
        // Per origin, in publish order.
        for name in names {
            let from: Vec<_> = got
                .iter()
                .filter(|d| d.starts_with(&format!("\"{name}-")))
                .cloned()
                .collect();
            let expected: Vec<_> = (0..PER_REGION).map(|k| format!("\"{name}-{k}\"")).collect();
            assert_eq!(from, expected);
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 3 * PER_REGION);
        silence(s, Duration::from_millis(500)).await;
    }
    for (i, n) in nodes.iter().enumerate() {
        let text = n.metrics();
        for (j, other) in names.iter().enumerate() {
            if i != j {
                let line =
                    format!("pubsub_replication_imported_total{{region=\"{other}\"}} {PER_REGION}");
                assert!(text.contains(&line), "{} lacks {line}\n{text}", names[i]);
            }
        }
    }
}

/// Publishes `n` numbered messages on `channel` at a steady rate, each acknowledged.
async fn publish_steadily(
    node: &Node,
    channel: &'static str,
    n: usize,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut p = node.client().await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for i in 0..n {
            tick.tick().await;
            p.publish(channel, &i.to_string()).await.unwrap();
        }
    })
}

#[tokio::test]
async fn a_regions_redis_killed_and_restarted_loses_and_duplicates_nothing() {
    let ra = RedisServer::start(false).await;
    let mut rb = RedisServer::start(true).await;
    let (na, nb) = two_regions(&ra, &rb).await;
    let mut sb = nb.subscriber(&["robots"]).await;
    let mut sa = na.subscriber(&["robots"]).await;

    const N: usize = 300;
    let publisher = publish_steadily(&na, "robots", N, Duration::from_millis(5)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    rb.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    rb.restart().await;
    publisher.await.unwrap();

    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(collect(&mut sb, N, Duration::from_secs(20)).await, expected);
    assert_eq!(collect(&mut sa, N, Duration::from_secs(5)).await, expected);
    silence(&mut sb, Duration::from_millis(500)).await;
    let text = nb.metrics();
    let reconnects = metric(
        &text,
        "pubsub_replication_redis_reconnects_total{region=\"local\"}",
    );
    assert!(reconnects >= Some(1.0), "{text}");
}

#[tokio::test]
async fn a_partition_between_regions_heals_without_loss_or_duplicates() {
    let (ra, rb) = (
        RedisServer::start(false).await,
        RedisServer::start(false).await,
    );
    let proxy = Proxy::start(ra.socket()).await;
    // Region b reaches region a's Redis only through the proxy.
    let na = Node::start(config("a", &ra.url()).peer(region("b"), rb.url()))
        .await
        .ready()
        .await;
    let nb = Node::start(config("b", &rb.url()).peer(region("a"), proxy.url()))
        .await
        .ready()
        .await;
    let mut sb = nb.subscriber(&["media"]).await;

    const N: usize = 400;
    let publisher = publish_steadily(&na, "media", N, Duration::from_millis(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.partition(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = nb.metrics();
    proxy.partition(false);
    publisher.await.unwrap();

    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(collect(&mut sb, N, Duration::from_secs(20)).await, expected);
    silence(&mut sb, Duration::from_millis(500)).await;
    let lag = metric(&during, "pubsub_replication_lag_seconds{region=\"a\"}");
    assert!(
        lag >= Some(0.5),
        "lag did not grow during a 1.5 s partition:\n{during}"
    );
    let text = nb.metrics();
    let reconnects = metric(
        &text,
        "pubsub_replication_redis_reconnects_total{region=\"a\"}",
    );
    assert!(
        reconnects >= Some(1.0),
        "the importer never noticed the partition:\n{text}"
    );
}

#[tokio::test]
async fn a_replayed_import_is_delivered_once() {
    // As after a Redis restart that lost its newest writes: the importer's cursor goes back and
    // the same entries are appended to the region's stream a second time.
    let (ra, rb) = (
        RedisServer::start(false).await,
        RedisServer::start(false).await,
    );
    let (na, nb) = two_regions(&ra, &rb).await;
    let mut sb = nb.subscriber(&["tech"]).await;
    let mut pa = na.client().await;
    for i in 0..10 {
        pa.publish("tech", &i.to_string()).await.unwrap();
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(collect(&mut sb, 10, WAIT).await, expected);

    redis_cmd(&rb, &["SET", "pubsub:{b}:cursor:a", "0-0"]).await;
    pa.publish("tech", "10").await.unwrap();
    assert_eq!(collect(&mut sb, 1, WAIT).await, vec!["10".to_owned()]);
    silence(&mut sb, Duration::from_millis(500)).await;
    let text = nb.metrics();
    assert!(
        text.contains("pubsub_replication_dedup_drops_total 10"),
        "{text}"
    );
}

#[tokio::test]
async fn publishing_fails_with_unavailable_while_the_local_redis_is_down_and_recovers() {
    let mut r = RedisServer::start(false).await;
    let n = Node::start(config("eu", &r.url())).await.ready().await;
    let mut s = n.subscriber(&["tech"]).await;
    let mut p = n.client().await;
    p.publish("tech", "1").await.unwrap();
    assert_eq!(recv(&mut s).await.data, "1");

    r.kill9();
    match p.publish("tech", "2").await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, "unavailable"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    let (status, body) = post(n.addr, "/publish", KEY, r#"{"channel":"tech","data":3}"#).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"unavailable\""));
    // The connections stay up and usable.
    p.subscribe("cars").await.unwrap();
    silence(&mut s, Duration::from_millis(300)).await;

    r.restart().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match p.publish("tech", "4").await {
            Ok(_) => break,
            Err(ClientError::Refused { code, .. }) if code == "unavailable" => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publishing did not recover"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(recv(&mut s).await.data, "4");
}

#[tokio::test]
async fn invalidation_reaches_every_region_and_node_by_default() {
    let (ra, rb) = (
        RedisServer::start(false).await,
        RedisServer::start(false).await,
    );
    let (na, nb) = two_regions(&ra, &rb).await;
    let na2 = Node::start(config("a", &ra.url()).peer(region("b"), rb.url()))
        .await
        .ready()
        .await;
    let mut subs = [
        na.subscriber(&["tech"]).await,
        na2.subscriber(&["tech"]).await,
        nb.subscriber(&["tech"]).await,
    ];
    let mut bystander = nb.subscriber(&["cars"]).await;
    let (status, body) = post(
        na.addr,
        "/admin/unsubscribe",
        ADMIN,
        r#"{"channel":"tech"}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"channel":"tech","invalidated":1}"#)
    );
    for s in &mut subs {
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        let e = tokio::time::timeout_at(until, s.next_event())
            .await
            .expect("not invalidated within 1 s");
        assert_eq!(e.unwrap(), Event::Invalidated("tech".into()));
        match tokio::time::timeout(WAIT, s.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Closed { code, .. } => assert_eq!(code, Some(4001)),
            other => panic!("expected close, got {other:?}"),
        }
    }
    silence(&mut bystander, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn regional_invalidation_stays_in_its_region() {
    let (ra, rb) = (
        RedisServer::start(false).await,
        RedisServer::start(false).await,
    );
    let regional = |c: replication_redis::RedisReplicationConfig| {
        let mut c = c;
        c.invalidation = replication_redis::InvalidationScope::Regional;
        c
    };
    let na = Node::start(regional(config("a", &ra.url()).peer(region("b"), rb.url())))
        .await
        .ready()
        .await;
    let na2 = Node::start(regional(config("a", &ra.url()).peer(region("b"), rb.url())))
        .await
        .ready()
        .await;
    let nb = Node::start(regional(config("b", &rb.url()).peer(region("a"), ra.url())))
        .await
        .ready()
        .await;
    let mut s_a2 = na2.subscriber(&["tech"]).await;
    let mut s_b = nb.subscriber(&["tech"]).await;
    let (status, _) = post(
        na.addr,
        "/admin/unsubscribe",
        ADMIN,
        r#"{"channel":"tech"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let e = tokio::time::timeout(Duration::from_secs(1), s_a2.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e, Event::Invalidated("tech".into()));
    // Region b keeps its subscription: it still receives what a publishes.
    let mut p = na.client().await;
    p.publish("tech", "\"still here\"").await.unwrap();
    assert_eq!(recv(&mut s_b).await.data, "\"still here\"");
}

#[tokio::test]
async fn a_region_on_a_redis_cluster_replicates_both_ways_and_across_its_nodes() {
    let cluster = RedisCluster::start().await;
    let rb = RedisServer::start(false).await;
    let na1 = Node::start(config("a", &cluster.url()).peer(region("b"), rb.url()))
        .await
        .ready()
        .await;
    let na2 = Node::start(config("a", &cluster.url()).peer(region("b"), rb.url()))
        .await
        .ready()
        .await;
    let nb = Node::start(config("b", &rb.url()).peer(region("a"), cluster.url()))
        .await
        .ready()
        .await;
    let mut s_a2 = na2.subscriber(&["tech"]).await;
    let mut s_b = nb.subscriber(&["tech"]).await;

    let mut p_a1 = na1.client().await;
    for i in 0..10 {
        p_a1.publish("tech", &i.to_string()).await.unwrap();
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(collect(&mut s_a2, 10, WAIT).await, expected);
    assert_eq!(collect(&mut s_b, 10, WAIT).await, expected);

    let mut p_b = nb.client().await;
    p_b.publish("tech", "\"from b\"").await.unwrap();
    let m = recv(&mut s_a2).await;
    assert_eq!((m.origin.as_str(), m.data.as_str()), ("b", "\"from b\""));
    silence(&mut s_a2, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn readiness_waits_for_every_importer() {
    let (ra, rb) = (
        RedisServer::start(false).await,
        RedisServer::start(false).await,
    );
    let gone = ra.dir.join("no-such.sock");
    let lonely = Node::start(
        config("a", &ra.url()).peer(region("b"), format!("redis+unix://{}", gone.display())),
    )
    .await;
    let nb = Node::start(config("b", &rb.url()).peer(region("a"), ra.url()))
        .await
        .ready()
        .await;
    assert_eq!(get(nb.addr, "/readyz").await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get(lonely.addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, r#"{"status":"starting"}"#));
    // Publishing in its own region still works; only the import from b is missing.
    let mut p = lonely.client().await;
    p.publish("tech", "1").await.unwrap();
}

/// Publishes sent back to back without waiting for their replies (pipelined) are each
/// acknowledged, in publish order, and delivered once in both regions in that order: with the
/// default in-flight window, and with a window and an append queue of one, where every
/// publish waits for room.
#[tokio::test]
async fn pipelined_publishes_are_acknowledged_and_delivered_in_order() {
    const N: usize = 300;
    for (inflight, queue) in [(64, 8192), (1, 1)] {
        let (ra, rb) = (
            RedisServer::start(false).await,
            RedisServer::start(false).await,
        );
        let mut limits = Limits::default();
        limits.max_inflight_publishes = inflight;
        let mut ca = config("a", &ra.url()).peer(region("b"), rb.url());
        ca.export_queue = queue;
        let na = Node::start_with(ca, limits).await.ready().await;
        let nb = Node::start(config("b", &rb.url()).peer(region("a"), ra.url()))
            .await
            .ready()
            .await;
        let mut sa = na.subscriber(&["tech"]).await;
        let mut sb = nb.subscriber(&["tech"]).await;
        // Two publishers at once, so that their publishes share the append queue.
        let mut pubs = [na.client().await, na.client().await];
        let mut sent = Vec::new();
        for i in 0..N {
            for (p, publisher) in pubs.iter_mut().enumerate() {
                let id = publisher
                    .send_publish("tech", &format!(r#"{{"p":{p},"i":{i}}}"#))
                    .await
                    .unwrap();
                sent.push((p, id));
            }
        }
        for (p, publisher) in pubs.iter_mut().enumerate() {
            let expected: Vec<_> = sent
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, id)| id.clone())
                .collect();
            let mut acked = Vec::new();
            while acked.len() < N {
                let event = tokio::time::timeout(WAIT, publisher.next_event())
                    .await
                    .expect("timed out waiting for publish replies")
                    .unwrap();
                match event {
                    Event::Published { id, .. } => acked.push(id.unwrap()),
                    Event::Message(_) => {}
                    other => panic!("unexpected {other:?} (window {inflight})"),
                }
            }
            assert_eq!(
                acked, expected,
                "replies in publish order (window {inflight})"
            );
        }
        for s in [&mut sa, &mut sb] {
            let got = collect(s, 2 * N, WAIT).await;
            assert_eq!(got.len(), 2 * N, "every message once (window {inflight})");
            for p in 0..2 {
                let order: Vec<_> = got
                    .iter()
                    .filter(|d| d.starts_with(&format!(r#"{{"p":{p},"#)))
                    .cloned()
                    .collect();
                let want: Vec<_> = (0..N).map(|i| format!(r#"{{"p":{p},"i":{i}}}"#)).collect();
                assert_eq!(order, want, "per-publisher order (window {inflight})");
            }
            silence(s, Duration::from_millis(300)).await;
        }
    }
}
