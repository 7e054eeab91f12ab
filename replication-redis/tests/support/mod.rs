//! Real Redis servers, a TCP proxy that can partition, and real brokers with real clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use broker_core::{Broker, BrokerConfig, Limits, Metrics, RegionName, StaticKeys};
use replication_redis::{RedisReplicationConfig, RedisReplicator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{oneshot, watch};
use transport_ws::{Client, Event, Received, WsConfig, WsServer};

pub const KEY: &str = "key-1";
pub const ADMIN: &str = "admin-1";
pub const WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` of our own on a Unix socket in a fresh temporary directory: no port to
/// race for, and restartable in place.
pub struct RedisServer {
    pub dir: PathBuf,
    aof: bool,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start(aof: bool) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pubsub-redis-{}-{}-{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            broker_core::ids::random_u64() & 0xffff_ffff
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            dir,
            aof,
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    async fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if self.aof { "yes" } else { "no" })
            .arg("--appendfsync")
            .arg("always")
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if pongs(UnixStream::connect(self.socket()).await).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a Redis Unix socket. `partition(true)` stops forwarding in both
/// directions (bytes are held, as a dropped network link would), `partition(false)` heals it.
pub struct Proxy {
    pub addr: SocketAddr,
    blocked: watch::Sender<bool>,
    _stop: oneshot::Sender<()>,
}

impl Proxy {
    pub async fn start(target: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (blocked, rx) = watch::channel(false);
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = &mut stopped => return,
                };
                let Ok((client, _)) = accepted else { continue };
                let target = target.clone();
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut gate = rx.clone();
                    if gate.wait_for(|b| !*b).await.is_err() {
                        return;
                    }
                    let Ok(server) = UnixStream::connect(&target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                });
            }
        });
        Self {
            addr,
            blocked,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn partition(&self, on: bool) {
        self.blocked.send_replace(on);
    }
}

async fn pump<R, W>(mut from: R, mut to: W, mut gate: watch::Receiver<bool>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|b| !*b).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One broker node: a broker with a Redis replicator behind a WebSocket server on port 0.
pub struct Node {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    pub replicator: Arc<RedisReplicator>,
    stop: Option<oneshot::Sender<()>>,
}

impl Node {
    pub async fn start(config: RedisReplicationConfig) -> Self {
        Self::start_with(config, Limits::default()).await
    }

    pub async fn start_with(config: RedisReplicationConfig, limits: Limits) -> Self {
        let region = config.region.clone();
        let mut broker_config = BrokerConfig::with_region(region);
        broker_config.limits = limits;
        let metrics = Arc::new(Metrics::new());
        let replicator = Arc::new(RedisReplicator::new(config, &metrics).unwrap());
        let keys = StaticKeys::new()
            .with_api_key("app", KEY, None)
            .with_admin_token("ops", ADMIN);
        let broker = Broker::builder()
            .config(broker_config)
            .authenticator(Arc::new(keys))
            .metrics(metrics)
            .replicator(replicator.clone())
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = WsServer::new(broker.clone(), WsConfig::default());
        tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            broker,
            replicator,
            stop: Some(stop),
        }
    }

    pub async fn ready(self) -> Self {
        assert!(
            self.replicator.wait_ready(WAIT).await,
            "replication did not become ready"
        );
        self
    }

    pub async fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/ws", self.addr), KEY)
            .await
            .unwrap()
    }

    pub async fn subscriber(&self, channels: &[&str]) -> Client {
        let mut c = self.client().await;
        for ch in channels {
            c.subscribe(ch).await.unwrap();
        }
        c
    }

    pub fn metrics(&self) -> String {
        self.broker.metrics().encode()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.replicator.shutdown();
    }
}

pub fn region(name: &str) -> RegionName {
    RegionName::parse(name).unwrap()
}

/// Replication settings tuned for tests: short blocking reads and back-off, so that faults
/// heal in well under a second.
pub fn config(name: &str, url: &str) -> RedisReplicationConfig {
    let mut c = RedisReplicationConfig::new(region(name), url);
    c.block = Duration::from_millis(200);
    c.command_timeout = Duration::from_millis(500);
    c.connect_timeout = Duration::from_millis(300);
    c.reconnect_backoff = (Duration::from_millis(20), Duration::from_millis(200));
    c.lease = Duration::from_secs(2);
    c
}

/// The next message, failing the test after [`WAIT`].
pub async fn recv(c: &mut Client) -> Received {
    tokio::time::timeout(WAIT, c.next_message())
        .await
        .expect("timed out waiting for a message")
        .unwrap()
}

/// Asserts that no message arrives for a while.
pub async fn silence(c: &mut Client, d: Duration) {
    match tokio::time::timeout(d, c.next_event()).await {
        Err(_) => {}
        Ok(Ok(Event::Message(m))) => panic!("unexpected message {m:?}"),
        Ok(other) => panic!("unexpected event {other:?}"),
    }
}

/// Reads messages until `n` have arrived; returns their payloads in arrival order.
pub async fn collect(c: &mut Client, n: usize, deadline: Duration) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let until = tokio::time::Instant::now() + deadline;
    while out.len() < n {
        match tokio::time::timeout_at(until, c.next_message()).await {
            Ok(Ok(m)) => out.push(m.data),
            Ok(Err(e)) => panic!("connection failed after {} messages: {e}", out.len()),
            Err(_) => break,
        }
    }
    out
}

/// A raw HTTP/1.1 POST; returns the status code and body.
pub async fn post(addr: SocketAddr, path: &str, auth: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {auth}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// A raw HTTP/1.1 GET; returns the status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Sends a Redis command over the Unix socket of `server` with redis-cli semantics.
pub async fn redis_cmd(server: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// The value of one sample (name with labels, as printed) in Prometheus text.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// A three-master Redis Cluster of our own on free loopback ports.
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    pub dir: PathBuf,
}

struct RedisNode {
    port: u16,
    child: Child,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pubsub-cluster-{}-{:x}",
            std::process::id(),
            broker_core::ids::random_u64() & 0xffff_ffff
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            // Redis cannot be told to pick a port: take a free one and hand it over.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .arg("--port")
                .arg(port.to_string())
                .arg("--bind")
                .arg("127.0.0.1")
                .arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{i}.conf")))
                .arg("--dir")
                .arg(&dir)
                .arg("--save")
                .arg("")
                .arg("--appendonly")
                .arg("no")
                .arg("--logfile")
                .arg(dir.join(format!("redis-{i}.log")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            nodes.push(RedisNode { port, child });
        }
        for n in &nodes {
            wait_tcp_ping(n.port).await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed with redis-server");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Self { nodes, dir };
        let deadline = tokio::time::Instant::now() + WAIT;
        for n in &c.nodes {
            loop {
                let client = redis::Client::open(format!("redis://127.0.0.1:{}", n.port)).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cluster never became ok"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        c
    }

    /// The nodes' URLs, comma-separated: the replicator's cluster form.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a freshly connected Redis answers PING.
async fn pongs<S>(conn: std::io::Result<S>) -> bool
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let Ok(mut s) = conn else { return false };
    let _ = s.write_all(b"PING\r\n").await;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
}

async fn wait_tcp_ping(port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if pongs(TcpStream::connect(("127.0.0.1", port)).await).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not start on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
