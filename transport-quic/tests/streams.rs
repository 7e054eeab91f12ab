//! Head-of-line independence: each subscription has its own QUIC stream, so a subscription the
//! client does not read stalls only itself, until the connection's outbound limit closes the
//! connection as a slow consumer.

mod support;

use broker_core::Limits;
use serde_json::json;
use support::*;
use tokio::time::timeout;
use transport_quic::QuicConfig;
use transport_quic::client::{CloseInfo, RecvError};

/// 32 KiB of padding per message.
fn pad() -> String {
    "p".repeat(32 * 1024)
}

/// The subscriber lets the server send this much ahead of what it reads, per stream. Messages of
/// 32 KiB fill it after two, so the server's writer for an unread channel blocks quickly.
const WINDOW: u32 = 64 * 1024;

#[tokio::test]
async fn a_channel_stream_left_unread_does_not_stall_the_other_channels() {
    let b = TestBroker::start().await;
    let mut config = b.client_config();
    config.stream_receive_window = WINDOW;
    let subscriber = b.quic_with(KEY, config).await;
    let mut stalled = subscriber.subscribe("cars").await.unwrap();
    let mut flowing = subscriber.subscribe("tech").await.unwrap();

    // 40 messages of 32 KiB on each channel: 1.3 MB for `cars`, twenty times what its stream
    // may carry unread. A server writing the connection's messages in one sequence would block
    // on `cars` after the second message and starve `tech`.
    const N: usize = 40;
    let publisher = b.quic(KEY2).await;
    for i in 0..N {
        publisher
            .publish("cars", &json!({"i": i, "pad": pad()}))
            .await
            .unwrap();
        publisher
            .publish("tech", &json!({"i": i, "pad": pad()}))
            .await
            .unwrap();
    }
    for i in 0..N {
        assert_eq!(next(&mut flowing).await.data["i"], i);
    }
    // The control stream is not held up either.
    subscriber.ping().await.unwrap();

    // Nothing was lost on the stalled stream: once read, it delivers everything, in order.
    for i in 0..N {
        assert_eq!(next(&mut stalled).await.data["i"], i);
    }
    assert_eq!(b.broker.metrics().slow_consumers.get(), 0);
}

#[tokio::test]
async fn a_channel_stream_left_unread_past_the_outbound_limit_closes_the_connection_4008() {
    let mut limits = Limits::default();
    limits.outbound_queue = 16;
    let b = TestBroker::with(limits, QuicConfig::default()).await;
    let mut config = b.client_config();
    config.stream_receive_window = WINDOW;
    let slow = b.quic_with(KEY, config).await;
    let mut stalled = slow.subscribe("cars").await.unwrap();
    let mut flowing = slow.subscribe("tech").await.unwrap();
    // Another subscriber that keeps up, on another connection.
    let fast = b.quic(KEY2).await;
    let mut fast_cars = fast.subscribe("cars").await.unwrap();
    const N: usize = 120;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            assert_eq!(next(&mut fast_cars).await.data["i"], i);
        }
        (fast, fast_cars)
    });

    // Stall `cars` (eight messages, four times its window, fewer than the limit of 16 waiting),
    // and `tech` still flows.
    let publisher = b.quic(KEY2).await;
    for i in 0..8 {
        publisher
            .publish("cars", &json!({"i": i, "pad": pad()}))
            .await
            .unwrap();
    }
    for i in 0..4 {
        publisher.publish("tech", &json!({"i": i})).await.unwrap();
        assert_eq!(next(&mut flowing).await.data["i"], i);
    }

    // Keep publishing on `cars`: its backlog passes the limit and the connection is closed.
    for i in 8..N {
        publisher
            .publish("cars", &json!({"i": i, "pad": pad()}))
            .await
            .unwrap();
    }
    let closed = timeout(WAIT, slow.closed()).await.unwrap();
    assert_eq!(
        closed,
        CloseInfo {
            code: Some(4008),
            reason: "slow consumer".into()
        }
    );
    assert!(matches!(
        end_of(&mut flowing).await,
        RecvError::Closed(CloseInfo {
            code: Some(4008),
            ..
        })
    ));
    // What reached the client before the close can still be read, in order, but not all of it:
    // the backlog was dropped.
    let mut got = 0;
    while let Ok(m) = timeout(WAIT, stalled.next()).await.unwrap() {
        assert_eq!(m.data["i"], got);
        got += 1;
    }
    assert!(got < N, "the stalled stream received everything");

    // The fast subscriber and the publisher were not held up.
    let (fast, _) = reader.await.unwrap();
    fast.ping().await.unwrap();
    publisher.ping().await.unwrap();
    assert_eq!(b.broker.metrics().slow_consumers.get(), 1);
}
