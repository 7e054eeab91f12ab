//! Shared helpers: a broker on port 0, real WebSocket clients, real HTTP requests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_core::{Broker, BrokerConfig, Limits, StaticKeys};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use transport_ws::{StaticAssets, WsConfig, WsServer};

pub const KEY: &str = "key-1";
pub const KEY2: &str = "key-2";
pub const ADMIN: &str = "admin-1";
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::with(Limits::default(), WsConfig::default()).await
    }

    pub async fn with(limits: Limits, ws: WsConfig) -> Self {
        Self::serving(limits, ws, None).await
    }

    /// A broker that also serves `assets`.
    pub async fn with_assets(assets: StaticAssets) -> Self {
        Self::serving(Limits::default(), WsConfig::default(), Some(assets)).await
    }

    async fn serving(limits: Limits, ws: WsConfig, assets: Option<StaticAssets>) -> Self {
        let keys = StaticKeys::new()
            .with_api_key("app", KEY, None)
            .with_api_key("app2", KEY2, None)
            .with_admin_token("ops", ADMIN);
        let mut config = BrokerConfig::default();
        config.limits = limits;
        let broker = Broker::builder()
            .config(config)
            .authenticator(Arc::new(keys))
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = WsServer::new(broker.clone(), ws);
        if let Some(assets) = assets {
            server = server.with_static(assets);
        }
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            broker,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Triggers shutdown and waits for the server to return.
    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap();
        }
    }

    pub async fn client(&self, key: &str) -> Client {
        Client::connect(self.addr, Auth::Header(key)).await.unwrap()
    }

    /// A client subscribed to `channels`, with the replies consumed.
    pub async fn subscriber(&self, key: &str, channels: &[&str]) -> Client {
        let mut c = self.client(key).await;
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
        http(self.addr, method, path, headers, body).await
    }
}

#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Header(&'a str),
    Bearer(&'a str),
    Query(&'a str),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, auth: Auth<'_>) -> Result<Self, WsError> {
        Self::connect_with(addr, auth, &[]).await.map(|(c, _)| c)
    }

    /// Connects and also returns the handshake response headers.
    pub async fn connect_with(
        addr: SocketAddr,
        auth: Auth<'_>,
        extra: &[(&'static str, &str)],
    ) -> Result<(Self, http::HeaderMap), WsError> {
        let url = match auth {
            Auth::Query(k) => format!("ws://{addr}/ws?api_key={k}"),
            _ => format!("ws://{addr}/ws"),
        };
        let mut req = url.into_client_request()?;
        let h = req.headers_mut();
        match auth {
            Auth::Header(k) => {
                h.insert("x-api-key", k.parse().unwrap());
            }
            Auth::Bearer(k) => {
                h.insert("authorization", format!("Bearer {k}").parse().unwrap());
            }
            Auth::None | Auth::Query(_) => {}
        }
        for (name, value) in extra {
            h.insert(*name, value.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        Ok((Self { ws }, resp.headers().clone()))
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
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

    /// Asserts nothing arrives for a short while.
    pub async fn expect_silence(&mut self) {
        match tokio::time::timeout(Duration::from_millis(200), self.ws.next()).await {
            Err(_) => {}
            Ok(m) => panic!("expected silence, got {m:?}"),
        }
    }

    /// Reads until the server closes; returns the close code and the text frames before it.
    pub async fn until_close(&mut self) -> (Option<u16>, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
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
        loop {
            let f = self.recv().await;
            if f["type"] == "pong" {
                assert_eq!(f["id"], "alive");
                return;
            }
        }
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
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
    let is_json = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if is_json {
        serde_json::from_slice(&bytes).unwrap()
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    (status, value)
}

/// One HTTP/1.1 request over a fresh connection; the raw status, headers and body.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
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
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}
