//! The load generator against a real broker on a loopback port: it must count every delivery
//! and lose nothing on a broker that loses nothing. (Performance is measured by
//! `bench/compare.sh`, never asserted here.)

use std::sync::Arc;
use std::time::Duration;

use broker_core::{AllowAll, Broker, StaticKeys};
use examples::loadgen::backend::Backend;
use examples::loadgen::backend::pubsub_ws::PubsubWs;
use examples::loadgen::traffic::{self, PublisherSpec, SubscriberSpec, TrafficPlan};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use transport_ws::{WsConfig, WsServer};

const KEY: &str = "bench-key";

async fn start_broker() -> (String, oneshot::Sender<()>) {
    let broker = Broker::builder()
        .authenticator(Arc::new(StaticKeys::new().with_api_key("bench", KEY, None)))
        .policy(Arc::new(AllowAll))
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = WsServer::new(broker, WsConfig::default())
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop)
}

fn plan(channels: usize, subs_per_channel: usize, rate: Option<f64>) -> TrafficPlan {
    TrafficPlan {
        channels: (0..channels).map(|i| format!("test.{i}")).collect(),
        groups: vec!["all".into()],
        subscribers: (0..channels * subs_per_channel)
            .map(|i| SubscriberSpec {
                backend: 0,
                channel: i % channels,
                group: 0,
            })
            .collect(),
        publishers: (0..channels)
            .map(|c| PublisherSpec {
                backend: 0,
                channel: c,
            })
            .collect(),
        rate,
        window: 16,
        batch: 8,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        drain: Duration::from_secs(10),
        payload_size: 128,
        connect_concurrency: 8,
        sources: Vec::new(),
        broker_pids: vec![std::process::id()],
        store_pids: Vec::new(),
    }
}

#[tokio::test]
async fn every_delivery_is_counted_at_maximum_and_at_a_fixed_rate() {
    let (url, _stop) = start_broker().await;
    let backend: Arc<dyn Backend> = Arc::new(PubsubWs::new(&url, KEY, 128).unwrap());
    for (channels, subs, rate) in [(1, 5, None), (3, 2, None), (1, 4, Some(200.0))] {
        let outcome = traffic::run(&plan(channels, subs, rate), &[Arc::clone(&backend)])
            .await
            .unwrap();
        let r = &outcome.report;
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert!(r.published > 0);
        assert_eq!(r.expected, r.published * subs as u64);
        assert_eq!(
            (r.received, r.lost, r.duplicates, r.errors),
            (r.expected, 0, 0, 0)
        );
        assert!(r.latency.count > 0 && r.latency.p50_us > 0.0);
        if let Some(rate) = rate {
            // 500 ms at 200/s: about 100 messages, whatever the machine's speed.
            assert!((80..=120).contains(&r.published), "{}", r.published);
            assert_eq!(r.rate_per_publisher, Some(rate));
        }
    }
}

#[tokio::test]
async fn a_refused_connection_fails_the_run_instead_of_skewing_it() {
    let (url, _stop) = start_broker().await;
    let backend: Arc<dyn Backend> = Arc::new(PubsubWs::new(&url, "wrong-key", 128).unwrap());
    let err = traffic::run(&plan(1, 2, None), &[backend])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("failed to connect"), "{err}");
}
