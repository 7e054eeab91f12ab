//! Shared helpers: one broker served over WebSocket and QUIC at once on port 0, real QUIC
//! clients (the crate's `Client`, and raw quinn connections speaking the wire format by hand),
//! real WebSocket clients and real HTTP requests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_core::{Broker, BrokerConfig, Limits, StaticKeys};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use quinn::crypto::rustls::QuicClientConfig;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use transport_quic::client::{ChannelMessage, RecvError, Subscription};
use transport_quic::{Client, ClientConfig, QuicConfig, QuicServer, TlsIdentity};
use transport_ws::{WsConfig, WsServer};

pub const KEY: &str = "key-1";
pub const KEY2: &str = "key-2";
pub const ADMIN: &str = "admin-1";
/// How long a test waits for something it expects before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The test credentials: [`KEY`], [`KEY2`] and the admin token [`ADMIN`].
pub fn keys() -> StaticKeys {
    StaticKeys::new()
        .with_api_key("app", KEY, None)
        .with_api_key("app2", KEY2, None)
        .with_admin_token("ops", ADMIN)
}

pub struct TestBroker {
    pub ws_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    pub broker: Arc<Broker>,
    pub identity: TlsIdentity,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::with(Limits::default(), QuicConfig::default()).await
    }

    /// One broker, served by a WebSocket server and a QUIC server.
    pub async fn with(limits: Limits, quic: QuicConfig) -> Self {
        let mut config = BrokerConfig::default();
        config.limits = limits;
        let broker = Broker::builder()
            .config(config)
            .authenticator(Arc::new(keys()))
            .build();
        Self::serving(broker, quic).await
    }

    /// Serves `broker` (built with [`keys`]) over WebSocket and QUIC.
    pub async fn serving(broker: Arc<Broker>, quic: QuicConfig) -> Self {
        let identity = TlsIdentity::self_signed(&["localhost".into()]).unwrap();
        let stop = CancellationToken::new();

        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = tcp.local_addr().unwrap();
        let ws = WsServer::new(broker.clone(), WsConfig::default());
        let ws_task = tokio::spawn(ws.serve(tcp, stop.clone().cancelled_owned()));

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quic_addr = udp.local_addr().unwrap();
        let quic = QuicServer::new(broker.clone(), &identity, quic).unwrap();
        let quic_task = tokio::spawn(quic.serve(udp, stop.clone().cancelled_owned()));

        let tasks = vec![
            tokio::spawn(async move { ws_task.await.unwrap().unwrap() }),
            tokio::spawn(async move { quic_task.await.unwrap().unwrap() }),
        ];
        Self {
            ws_addr,
            quic_addr,
            broker,
            identity,
            stop,
            tasks,
        }
    }

    /// Triggers shutdown and waits for both servers to return.
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("servers did not stop")
                .unwrap();
        }
    }

    /// Client settings trusting this broker's certificate.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::trusting(self.identity.certificate().clone())
    }

    pub async fn quic(&self, key: &str) -> Client {
        self.quic_with(key, self.client_config()).await
    }

    pub async fn quic_with(&self, key: &str, config: ClientConfig) -> Client {
        tokio::time::timeout(WAIT, Client::connect(self.quic_addr, key, config))
            .await
            .expect("timed out connecting")
            .expect("connect")
    }

    pub async fn ws(&self, key: &str) -> Ws {
        Ws::connect(self.ws_addr, key).await
    }

    /// A WebSocket client subscribed to `channels`, with the replies consumed.
    pub async fn ws_subscriber(&self, key: &str, channels: &[&str]) -> Ws {
        let mut c = self.ws(key).await;
        for ch in channels {
            c.send(serde_json::json!({"type":"subscribe","id":ch,"channel":ch}))
                .await;
            let reply = c.recv().await;
            assert_eq!(reply["type"], "subscribed", "{reply}");
        }
        c
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        http(self.ws_addr, method, path, headers, body).await
    }

    /// A raw QUIC connection offering `alpn`, trusting this broker's certificate.
    pub async fn raw_connection(&self, alpn: &[u8]) -> Result<Raw, quinn::ConnectionError> {
        Raw::connect(self.quic_addr, self.identity.certificate().clone(), alpn).await
    }

    /// A raw QUIC connection whose control stream is open and authenticated with `key`.
    pub async fn raw(&self, key: &str) -> Raw {
        let mut raw = self.raw_connection(b"pubsub.v1").await.unwrap();
        raw.open().await;
        raw.frame(&format!(r#"{{"type":"auth","id":"a","api_key":"{key}"}}"#))
            .await;
        assert_eq!(
            raw.recv().await,
            serde_json::json!({"type":"authed","id":"a"})
        );
        raw
    }
}

/// The next message of a subscription; fails the test after [`WAIT`].
pub async fn next(sub: &mut Subscription) -> ChannelMessage {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for a message")
        .unwrap_or_else(|e| panic!("subscription to {} ended: {e}", sub.channel()))
}

/// How a subscription ends; fails the test after [`WAIT`] or if a message arrives instead.
pub async fn end_of(sub: &mut Subscription) -> RecvError {
    match tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("timed out waiting for the end of a subscription")
    {
        Ok(m) => panic!("expected the end of {}, got {m:?}", sub.channel()),
        Err(e) => e,
    }
}

/// A QUIC connection driven by hand: frames are written and read with the documented byte
/// layout, independently of the crate's own framing code.
pub struct Raw {
    pub conn: quinn::Connection,
    pub send: Option<quinn::SendStream>,
    pub recv: Option<quinn::RecvStream>,
    _endpoint: quinn::Endpoint,
}

impl Raw {
    pub async fn connect(
        addr: SocketAddr,
        cert: rustls::pki_types::CertificateDer<'static>,
        alpn: &[u8],
    ) -> Result<Self, quinn::ConnectionError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = tokio::time::timeout(
            WAIT,
            endpoint.connect_with(config, addr, "localhost").unwrap(),
        )
        .await
        .expect("handshake timed out")?;
        Ok(Self {
            conn,
            send: None,
            recv: None,
            _endpoint: endpoint,
        })
    }

    /// Opens the control stream.
    pub async fn open(&mut self) {
        let (send, recv) = self.conn.open_bi().await.unwrap();
        self.send = Some(send);
        self.recv = Some(recv);
    }

    /// Writes raw bytes on the control stream.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.send.as_mut().unwrap().write_all(bytes).await.unwrap();
    }

    /// Writes one frame: a 4-byte big-endian length, then `json`.
    pub async fn frame(&mut self, json: &str) {
        let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        self.write(&bytes).await;
    }

    /// Finishes the client's side of the control stream.
    pub fn finish(&mut self) {
        self.send.as_mut().unwrap().finish().unwrap();
    }

    /// Reads one frame from the control stream.
    pub async fn recv(&mut self) -> Value {
        let recv = self.recv.as_mut().unwrap();
        tokio::time::timeout(WAIT, async {
            let mut len = [0u8; 4];
            recv.read_exact(&mut len).await.expect("length prefix");
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            recv.read_exact(&mut body).await.expect("frame body");
            serde_json::from_slice(&body).expect("a JSON frame")
        })
        .await
        .expect("timed out waiting for a frame")
    }

    /// Waits for the server to close the connection; returns its code and reason.
    pub async fn closed(&self) -> (Option<u64>, String) {
        match tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("timed out waiting for the server to close")
        {
            quinn::ConnectionError::ApplicationClosed(c) => (
                Some(c.error_code.into_inner()),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => (None, other.to_string()),
        }
    }
}

pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(addr: SocketAddr, key: &str) -> Self {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Self { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame; fails the test after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("websocket error");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame of `ty`, skipping others (a publisher's own message and its `published`
    /// reply may come in either order).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] == ty {
                return f;
            }
        }
    }

    /// Reads until the server closes; returns the close code and the text frames before it.
    pub async fn until_close(&mut self) -> (Option<u16>, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match next {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return (frame.map(|f| u16::from(f.code)), frames);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (None, frames),
            }
        }
    }

    /// A round trip proving the connection is still usable.
    pub async fn ping(&mut self) {
        self.send(serde_json::json!({"type":"ping","id":"alive"}))
            .await;
        let f = self.recv_type("pong").await;
        assert_eq!(f["id"], "alive");
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}
