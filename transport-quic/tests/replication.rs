//! QUIC across regions: two brokers, each with its own real `redis-server` and a real
//! `RedisReplicator` importing from the other, one observed over WebSocket, one over QUIC.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use broker_core::{Broker, BrokerConfig, Metrics, RegionName};
use replication_redis::{RedisReplicationConfig, RedisReplicator};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;
use transport_quic::QuicConfig;
use transport_quic::client::RecvError;

/// A `redis-server` of our own on a Unix socket in a fresh temporary directory.
struct RedisServer {
    dir: PathBuf,
    child: Child,
}

impl RedisServer {
    async fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pubsub-quic-redis-{}-{name}-{:x}",
            std::process::id(),
            broker_core::ids::random_u64() & 0xffff_ffff
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let server = Self { dir, child };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = UnixStream::connect(&socket).await {
                let _ = s.write_all(b"PING\r\n").await;
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n" {
                    return server;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One region's broker, replicating through `own` and importing from `peer`, served over
/// WebSocket and QUIC.
struct Region {
    served: TestBroker,
    replicator: Arc<RedisReplicator>,
}

impl Region {
    async fn start(name: &str, own: &RedisServer, peer_name: &str, peer: &RedisServer) -> Self {
        let region = RegionName::parse(name).unwrap();
        let mut config = RedisReplicationConfig::new(region.clone(), own.url())
            .peer(RegionName::parse(peer_name).unwrap(), peer.url());
        // Short blocking reads, so that the test does not wait on them.
        config.block = Duration::from_millis(200);
        let metrics = Arc::new(Metrics::new());
        let replicator = Arc::new(RedisReplicator::new(config, &metrics).unwrap());
        let broker = Broker::builder()
            .config(BrokerConfig::with_region(region))
            .authenticator(Arc::new(keys()))
            .metrics(metrics)
            .replicator(replicator.clone())
            .build();
        let served = TestBroker::serving(broker, QuicConfig::default()).await;
        Self { served, replicator }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.replicator.shutdown();
    }
}

#[tokio::test]
async fn a_quic_subscriber_in_one_region_receives_what_a_websocket_client_published_in_another() {
    let (us_redis, eu_redis) = (
        RedisServer::start("us").await,
        RedisServer::start("eu").await,
    );
    let us = Region::start("us", &us_redis, "eu", &eu_redis).await;
    let eu = Region::start("eu", &eu_redis, "us", &us_redis).await;
    for r in [&us, &eu] {
        assert!(r.replicator.wait_ready(WAIT).await, "replication not ready");
    }

    // WebSocket in region us, to QUIC in region eu.
    let eu_quic = eu.served.quic(KEY).await;
    let mut eu_tech = eu_quic.subscribe("tech").await.unwrap();
    let mut us_ws = us.served.ws_subscriber(KEY2, &["tech"]).await;
    us_ws
        .send(json!({"type":"publish","id":"p","channel":"tech","data":{"text":"from us"}}))
        .await;
    let ack = us_ws.recv_type("published").await;
    let m = next(&mut eu_tech).await;
    assert_eq!(
        (m.message_id.as_str(), m.origin.as_str(), &m.data),
        (
            ack["message_id"].as_str().unwrap(),
            "us",
            &json!({"text": "from us"})
        )
    );

    // And back: QUIC in eu, to WebSocket in us.
    let id = eu_quic.publish("tech", &"from eu").await.unwrap();
    let m = loop {
        let m = us_ws.recv_type("message").await;
        if m["message_id"] == id.as_str() {
            break m;
        }
    };
    assert_eq!(
        (m["origin"].as_str(), &m["data"]),
        (Some("eu"), &json!("from eu"))
    );

    // An administrator in us invalidates the channel everywhere: the QUIC subscriber in eu loses
    // its last subscription and is closed with 4001.
    let (status, _) = us
        .served
        .http(
            "POST",
            "/admin/unsubscribe",
            &[("authorization", "Bearer admin-1")],
            r#"{"channel":"tech"}"#,
        )
        .await;
    assert_eq!(status, 200);
    let end = loop {
        // Its own "from eu" may come first.
        match timeout(WAIT, eu_tech.next()).await.unwrap() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(end, RecvError::Invalidated);
    assert_eq!(
        timeout(WAIT, eu_quic.closed()).await.unwrap().code,
        Some(4001)
    );
}
